"""scripts/step_time.py: variants of a config take their steps in turns, each with its own overrides, and the report
holds a time, page faults and kernel time per step for each. No timing is asserted."""

import json

from helpers import load_script

step_time = load_script("step_time")

TINY = ["--set", "model.num_layers=1", "--set", "model.hidden_size=32", "--set", "model.intermediate_size=64",
        "--set", "data.max_documents=2000", "--set", "model.vocab_size=2000", "--set", "data.max_seq_len=32",
        "--set", "train.batch_size=4"]


def test_variants_take_turns_and_are_reported(tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["configs/small.yaml", *TINY, "--variant", "model.num_heads=4 train.lr=1e-3", "--steps", "2",
            "--rounds", "3", "--warmup", "1", "--out", str(tmp_path / "runs"), "--json", str(out)]
    assert step_time.main(argv) == 0
    report = json.loads(out.read_text())
    assert [v["overrides"] for v in report["variants"]] == [[], ["model.num_heads=4", "train.lr=1e-3"]]
    for variant in report["variants"]:
        assert len(variant["round_s_per_step"]) == 3
        assert 0 < variant["fastest_s_per_step"] <= variant["median_s_per_step"]
        assert variant["faults_per_step"] >= 0 and variant["system_s_per_step"] >= 0
    printed = capsys.readouterr().out
    assert "model.num_heads=4 train.lr=1e-3" in printed and "(the config)" in printed


def test_take_steps_trains_as_the_loop_does(tmp_path):
    trainer = step_time.build("configs/small.yaml", [a for a in TINY if a != "--set"] +
                              [f"data.cache_dir={tmp_path / 'cache'}"], tmp_path / "run", warmup=2)
    try:
        before = [p.detach().clone() for p in trainer.model.parameters()]
        step_time.take_steps(trainer, 1)
        assert trainer.state.step == 3
        assert any(not b.equal(p) for b, p in zip(before, trainer.model.parameters()))
    finally:
        trainer.close()


def test_a_bad_key_is_one_line_and_exit_2(tmp_path, capsys):
    argv = ["configs/small.yaml", "--set", "train.no_such_key=1", "--out", str(tmp_path / "runs"), *TINY]
    assert step_time.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("step_time: ") and "train.no_such_key" in err and "\n" not in err
