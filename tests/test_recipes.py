"""scripts/recipes.py: every recipe is a valid config, the table reads the curve at the steps the budget allows,
and one recipe runs end to end (stopped at the step asked for). No timing is asserted."""

import json

import pytest

from bertmath.config import load_config
from helpers import load_script

recipes = load_script("recipes")


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_every_recipe_is_a_valid_config(name):
    config = load_config(recipes.ROOT / "configs" / "small.yaml", recipes.RECIPES[name])
    assert config.model.position_encoding == "rope"


def test_the_combined_recipe_is_exportable_as_modernbert():
    from bertmath.hf_format import MODERNBERT, family
    config = load_config(recipes.ROOT / "configs" / "small.yaml", recipes.RECIPES["pre-LN + GeGLU + no biases"])
    assert family(config.model) is MODERNBERT


def test_table_takes_the_last_evaluation_inside_the_budget():
    results = {"a": {"curve": [[100, 0.1], [500, 0.2], [1000, 0.3]], "step_time": 0.5},   # 1,080 steps in 9 min
               "b": {"curve": [[100, 0.1], [500, 0.25], [1000, 0.35]], "step_time": 1.0}}  # 540 steps
    rows = recipes.table(results, budget_s=540)
    assert rows[2].endswith("| 1080 | 20.0% | 30.0% | 30.0% (1,000) |")
    assert rows[3].endswith("| 540 | 25.0% | 35.0% | 25.0% (500) |")


def test_step_time_reads_the_training_clock(tmp_path):
    lines = [{"step": s, "elapsed_s": 2.0 + 0.25 * s} for s in range(1, 11)] + [{"step": 10, "eval_mask_accuracy": 0.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 11, "lo')
    assert recipes.step_time(tmp_path, 2, 10) == pytest.approx(0.25)
    assert recipes.curve(tmp_path) == [(10, 0.1)]  # the half-written last line is skipped


@pytest.mark.slow
def test_run_stops_at_the_step_asked_for(tmp_path, monkeypatch):
    # step 2, evaluated every step: the fewest steps whose curve still shows the evaluations in order.
    # keep_checkpoints: a run this small (~10 steps/s) would otherwise prune step 2's checkpoint at step 8, before
    # the script saw it: it then trained on to step 3,000 (6 minutes)
    monkeypatch.setattr(recipes, "POLL_S", 0.2)  # 2 s between looks: on average 1 s of the wait, for nothing here
    tiny = ["--set", "model.num_layers=1", "--set", "data.max_documents=2000", "--set", "model.vocab_size=2000",
            "--set", "train.eval_batches=2", "--set", "train.eval_every=1", "--set", "data.max_seq_len=32",
            "--set", "train.keep_checkpoints=1000"]
    assert recipes.main(["run", "--out", str(tmp_path), "--recipe", "GeGLU", "--stop-at", "2", *tiny]) == 0
    curve = json.loads((tmp_path / "recipes.json").read_text())["GeGLU"]["curve"]
    assert [step for step, _ in curve][:2] == [1, 2] and all(0 <= acc <= 1 for _, acc in curve)
    assert curve[-1][0] < 3000  # stopped: not trained on to the end of BASELINE's schedule
