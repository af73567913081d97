"""Training curves: plot_run writes a readable PNG (loss, accuracy, throughput, learning rate, gradient norm),
the trainer draws one at the end of a run, `bertmath plot` gives one-line errors for a missing or empty metrics
file and for a missing matplotlib."""

import json
import logging
import math
import sys
from pathlib import Path

import pytest

from bertmath.viz import plot as figures
from bertmath.cli import main
from bertmath.config import config_from_dict
from bertmath.errors import BertmathError
from bertmath.trainer import train

from helpers import assert_one_line_error, assert_png, eval_records, write_finetune_config
from test_tasks_qa import span_run_inputs, write_span_config  # noqa: F401  (a fixture, and its config)
from test_tasks_tagging import TASK as TAGGING_TASK
from test_trainer import tiny_config_tree

pytest.importorskip("matplotlib")


def write_metrics(run_dir: Path, steps: int = 200, eval_every: int = 50) -> Path:
    """A synthetic metrics.jsonl as the trainer writes it, plus a torn last line (a killed run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(1, steps + 1):
        lr = 1e-3 * min(s / 20, (steps - s) / (steps - 20))
        lines.append({"step": s, "loss": 9.0 * math.exp(-s / 60) + 2 + 0.3 * math.sin(s), "lr": lr,
                      "grad_norm": 1 + 1 / s, "tokens": 512 * s, "elapsed_s": 0.1 * s, "tokens_per_s": 5120.0})
        if s % eval_every == 0:
            lines.append({"step": s, "eval_loss": 8 * math.exp(-s / 60) + 2.2, "eval_perplexity": 1.0,
                          "eval_accuracy": 0.05 + 0.3 * s / steps, "baseline_accuracy": 0.06,
                          "eval_masked_tokens": 400})
    path = run_dir / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 201, "lo', encoding="utf-8")
    return path


@pytest.mark.smoke
def test_plot_run_writes_a_png(tmp_path):
    write_metrics(tmp_path / "run")
    out = figures.plot_run(tmp_path / "run")
    assert out == tmp_path / "run" / "training.png"
    assert_png(out)
    assert figures.read_metrics(tmp_path / "run")[0][-1]["step"] == 200  # the torn line is skipped
    assert not list((tmp_path / "run").glob(".*"))  # no temporary file left behind


def test_plot_run_to_another_path_and_without_evaluations(tmp_path):
    run = tmp_path / "run"
    write_metrics(run, steps=30, eval_every=1000)  # no evaluation records yet
    out = figures.plot_run(run, tmp_path / "figs" / "curves.png")
    assert_png(out)
    assert not (run / "training.png").exists()


def test_smooth_is_a_debiased_moving_average():
    assert figures.smooth([1.0, 2.0, 3.0], 1) == [1.0, 2.0, 3.0]
    assert figures.smooth([4.0] * 10, 5) == pytest.approx([4.0] * 10)  # no pull towards 0 at the start
    s = figures.smooth([0.0, 10.0], 2)  # β = 1/2: m = 0, 5; debiased by 1/2, 3/4
    assert s == pytest.approx([0.0, 5 / 0.75])
    nan = figures.smooth([1.0, float("nan"), 1.0], 3)
    assert nan[0] == nan[2] == pytest.approx(1.0) and math.isnan(nan[1])


def test_step_throughput_is_tokens_over_time_between_logged_steps():
    records = [{"step": 1, "loss": 1.0, "tokens": 100, "elapsed_s": 1.0},
               {"step": 2, "loss": 1.0, "tokens": 200, "elapsed_s": 1.5},  # 100 tokens in 0.5 s
               {"step": 4, "loss": 1.0, "tokens": 400, "elapsed_s": 2.5},  # two steps apart: 200 in 1 s
               {"step": 5, "loss": 1.0},  # no tokens or time logged: no rate to or from it
               {"step": 6, "loss": 1.0, "tokens": 600, "elapsed_s": 3.0}]
    assert figures.step_throughput(records) == [(2, 200.0), (4, 200.0)]
    assert figures.step_throughput([]) == []


def test_trainer_draws_the_curves_at_the_end_of_a_run(tmp_path):
    tree = tiny_config_tree(tmp_path, max_steps=6, eval_every=3, save_every=6, plot=True)
    train(config_from_dict(tree))
    assert_png(Path(tree["train"]["out_dir"]) / "training.png")


def test_a_plotting_failure_only_warns(tmp_path, monkeypatch, caplog):
    def broken(run_dir, out=None):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(figures, "plot_run", broken)
    tree = tiny_config_tree(tmp_path, max_steps=2, eval_every=2, save_every=2, plot=True)
    with caplog.at_level(logging.WARNING, logger="bertmath.viz.plot"):
        summary = train(config_from_dict(tree))
    assert summary["steps"] == 2
    assert "could not plot" in caplog.text and "no fonts" in caplog.text
    assert not (Path(tree["train"]["out_dir"]) / "training.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind,metric", [("span", "f1"), ("tokens", "f1")])
def test_a_fine_tuning_run_plots_its_own_score(kind, metric, tmp_path, span_run_inputs, monkeypatch, caplog):
    """A span run (which has no accuracy) and a tagging run (whose accuracy is not its score) fine-tuned with
    the default plot: true: finetune draws training.png without a warning, and the held-out panel is the run's
    task.metric at each evaluation beside that score's baseline."""
    drawn = []
    save_png = figures.save_png
    monkeypatch.setattr(figures, "save_png", lambda fig, out: drawn.append(fig) or save_png(fig, out))
    config = (write_span_config(tmp_path, span_run_inputs, plot=True) if kind == "span" else
              write_finetune_config(tmp_path, span_run_inputs[0], TAGGING_TASK, plot=True))
    with caplog.at_level(logging.WARNING):
        assert main(["finetune", str(config)]) == 0
    assert "could not plot" not in caplog.text, caplog.text
    assert_png(tmp_path / "run" / "training.png")

    records = eval_records(tmp_path / "run")
    assert records[-1]["metric"] == metric and len(drawn) == 1
    panel = next(ax for ax in drawn[0].axes if ax.get_title() == f"Held-out {metric}")
    lines = {line.get_label(): line for line in panel.get_lines()}
    assert list(lines[f"{metric} (task.metric)"].get_ydata()) == [r[f"eval_{metric}"] for r in records]
    baseline = records[-1][f"baseline_{metric}"]
    assert list(lines[f"baseline ({baseline:.3f})"].get_ydata()) == [baseline, baseline]
    assert f"held-out {metric} {records[-1][f'eval_{metric}']:.3f} at step 6" in drawn[0].get_suptitle()

    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "again.png")]) == 0  # and `bertmath plot`
    assert_png(tmp_path / "again.png")


def test_a_regression_run_without_a_loss_plots_its_score(tmp_path):
    """An evaluation record that names its metric is an evaluation even without eval_loss (regression logs its
    MSE as eval_mse); one that names a metric it does not hold is a one-line error."""
    write_metrics(tmp_path / "run", steps=30, eval_every=1000)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps({"step": 30, "metric": "pearson", "eval_pearson": -0.2, "baseline_pearson": 0.0,
                                   "eval_mse": 2.0}) + "\n")
    assert figures.read_metrics(tmp_path / "run")[1][-1]["eval_pearson"] == -0.2
    assert_png(figures.plot_run(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 31, "metric": "pearson", "eval_loss": 1.0, "eval_accuracy": 0.5}) + "\n")
    with pytest.raises(BertmathError, match="metrics.jsonl:33: 'eval_pearson' is missing"):
        figures.read_metrics(tmp_path / "run")


def test_without_matplotlib_the_trainer_skips_the_plot_and_plot_run_says_how_to_install(tmp_path, monkeypatch):
    write_metrics(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert figures.plot_if_available(tmp_path) is None
    with pytest.raises(BertmathError, match=r"pip install 'bertmath\[plot\]'"):
        figures.plot_run(tmp_path)
    assert not (tmp_path / "training.png").exists()


# --- the command line -------------------------------------------------------------------------------------


def test_cli_plot(tmp_path, capsys):
    write_metrics(tmp_path / "run")
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'run' / 'training.png'}"
    assert_png(tmp_path / "run" / "training.png")
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "other.png")]) == 0
    assert_png(tmp_path / "other.png")


def test_cli_plot_errors(tmp_path, capsys, monkeypatch):
    assert main(["plot", str(tmp_path / "nowhere")]) == 1
    assert_one_line_error(capsys, "plot", "metrics.jsonl", "run directory")

    (tmp_path / "step-0000010").mkdir()
    assert main(["plot", str(tmp_path / "step-0000010")]) == 1
    assert_one_line_error(capsys, "plot", "not a step-* directory")

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    assert main(["plot", str(tmp_path / "empty")]) == 1
    assert_one_line_error(capsys, "plot", "empty")

    write_metrics(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(tmp_path / "run")]) == 1
    assert_one_line_error(capsys, "plot", "matplotlib", "pip install 'bertmath[plot]'")
