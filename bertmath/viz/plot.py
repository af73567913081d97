"""Training curves: run_dir/metrics.jsonl → run_dir/training.png (matplotlib, the optional `plot` extra).

Five panels against optimizer step: the MLM loss (each step's, faint, and smoothed, with the held-out loss
on top: both are the mean cross-entropy over masked tokens), the held-out masked-token accuracy beside the
most-frequent-token baseline it has to beat, the throughput in tokens/s, the learning-rate schedule, and
the gradient norm before clipping. A fine-tuning run's loss is its task's, and its held-out panel draws the
score its evaluations name (task.metric: accuracy, pearson, entity f1, span f1, ...) beside that score's
baseline. Drawn through `plotting` (Agg canvas only, nothing shown on screen).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

from ..metrics import read_metrics
from .plotting import new_figure, save_png

log = logging.getLogger(__name__)

FIGURE_FILE = "training.png"


def smooth(values: list[float], window: float) -> list[float]:
    """s_i = m_i / (1 - β^(i+1)), m_i = β m_{i-1} + (1-β) x_i, β = 1 - 1/window: a debiased exponential moving
    average (TensorBoard's). window ≤ 1 returns the values; a non-finite value (a diverged step) is passed
    through, not averaged in."""
    if window <= 1:
        return list(values)
    beta, m, weight, out = 1 - 1 / window, 0.0, 0.0, []
    for x in values:
        if not math.isfinite(x):
            out.append(x)
            continue
        m, weight = beta * m + (1 - beta) * x, beta * weight + (1 - beta)
        out.append(m / weight)
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw run_dir/metrics.jsonl to `out` (default run_dir/training.png); returns the PNG's path."""
    run_dir = Path(run_dir)
    train, evals = read_metrics(run_dir)
    fig = new_figure(12, 11)
    axes = fig.subplot_mosaic([["loss", "loss"], ["accuracy", "speed"], ["lr", "grad"]], sharex=True)
    steps = [r["step"] for r in train]
    last_step = max(steps + [r["step"] for r in evals])

    ax_loss = axes["loss"]
    losses = [float(r["loss"]) for r in train]
    window = max(1.0, len(losses) / 50)
    if window > 1:  # enough steps that smoothing shows the trend: the raw losses stay, faint, behind it
        ax_loss.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="training (each step)")
        ax_loss.plot(steps, smooth(losses, window), color="tab:blue", linewidth=1.8,
                     label=f"training (EMA over ~{window:.0f} steps)")
    elif losses:
        ax_loss.plot(steps, losses, color="tab:blue", linewidth=1.5, label="training")
    metric = _task_metric(evals)
    held_out_losses = [r for r in evals if "eval_loss" in r]  # a regression task logs its MSE, not a loss
    if held_out_losses:
        ax_loss.plot([r["step"] for r in held_out_losses], [r["eval_loss"] for r in held_out_losses], "o-",
                     color="tab:orange", markersize=4, label="held-out")
    ax_loss.set(title="MLM loss (cross-entropy over masked tokens)" if metric is None else "Task loss",
                ylabel="loss (nats)" if metric is None else "loss")
    _legend_or_note(ax_loss, "no steps logged")

    if metric is None:
        _plot_mask_accuracy(axes["accuracy"], evals)
    else:
        _plot_task_score(axes["accuracy"], evals, metric)

    _plot_throughput(axes["speed"], train)

    ax_lr = axes["lr"]
    if train and "lr" in train[0]:
        ax_lr.plot(steps, [r["lr"] for r in train], color="tab:purple", linewidth=1.5)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    else:
        _note(ax_lr, "no learning rate logged")
    ax_lr.set(title="Learning rate (warm-up, then decay)", xlabel="optimizer step", ylabel="learning rate")

    ax_grad = axes["grad"]
    grad = [(r["step"], r["grad_norm"]) for r in train if r.get("grad_norm") is not None]
    if grad:
        ax_grad.plot([s for s, _ in grad], [g for _, g in grad], color="tab:red", alpha=0.6, linewidth=0.8)
    else:
        _note(ax_grad, "no gradient norm logged")
    ax_grad.set(title="Gradient norm ‖g‖ (before clipping)", xlabel="optimizer step", ylabel="‖g‖")

    for ax in axes.values():
        ax.grid(alpha=0.3)
        ax.set_xlim(0, max(last_step, 1))
    fig.suptitle(_title(run_dir, train, evals))
    return save_png(fig, out if out is not None else run_dir / FIGURE_FILE)


def _task_metric(evals: list[dict]) -> str | None:
    """The score a fine-tuning run's evaluations name (task.metric); None for pretraining."""
    return evals[-1].get("metric") if evals else None


def _plot_mask_accuracy(ax, evals: list[dict]) -> None:
    """Pretraining: the [MASK] probe's accuracy and the accuracy over all chosen tokens, beside the unigram
    baseline, in percent."""
    if evals:
        eval_steps = [r["step"] for r in evals]
        probed = [r for r in evals if "eval_mask_accuracy" in r]  # runs logged before the probe existed lack it
        if probed:
            ax.plot([r["step"] for r in probed], [100 * r["eval_mask_accuracy"] for r in probed], "o-",
                    color="tab:red", markersize=4, linewidth=2, label="[MASK] accuracy (context)")
        ax.plot(eval_steps, [100 * r["eval_accuracy"] for r in evals], "o-", color="tab:green", markersize=3,
                alpha=0.6, label="accuracy over all chosen tokens (incl. kept ones)")
        baseline = probed[-1]["baseline_mask_accuracy"] if probed else evals[-1].get("baseline_accuracy")
        if baseline is not None:
            ax.axhline(100 * baseline, color="gray", linestyle="--", linewidth=1.2,
                       label=f"unigram baseline ({baseline:.1%})")
        ax.set_ylim(bottom=0)
    ax.set(title="Held-out accuracy", ylabel="accuracy (%)")
    _legend_or_note(ax, "no held-out evaluation yet")


def _plot_task_score(ax, evals: list[dict], metric: str) -> None:
    """Fine-tuning: eval_<metric> at each evaluation, beside baseline_<metric> where the task has one. Raw
    values, not percent: pearson, spearman and matthews run from -1 to 1."""
    scored = [r for r in evals if f"eval_{metric}" in r]
    values = [r[f"eval_{metric}"] for r in scored]
    ax.plot([r["step"] for r in scored], values, "o-", color="tab:red", markersize=4, linewidth=2,
            label=f"{metric} (task.metric)")
    baseline = scored[-1].get(f"baseline_{metric}")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", linewidth=1.2, label=f"baseline ({baseline:.3f})")
    if min(values + [baseline or 0]) >= 0:
        ax.set_ylim(bottom=0)
    ax.set(title=f"Held-out {metric}", ylabel=metric)
    _legend_or_note(ax, "no held-out evaluation yet")


def step_throughput(train: list[dict]) -> list[tuple[int, float]]:
    """(step, Δtokens / Δelapsed_s) between consecutive logged steps: the speed of each step, evaluation
    and checkpoint pauses included (they fall into the step after them). Pairs without both keys, or with
    no time between them, are skipped."""
    rates = []
    for before, after in zip(train, train[1:]):
        if all(k in r for r in (before, after) for k in ("tokens", "elapsed_s")):
            seconds = after["elapsed_s"] - before["elapsed_s"]
            if seconds > 0:
                rates.append((after["step"], (after["tokens"] - before["tokens"]) / seconds))
    return rates


def _plot_throughput(ax, train: list[dict]) -> None:
    rates = step_throughput(train)
    if rates:
        window = max(1.0, len(rates) / 50)
        ax.plot([s for s, _ in rates], smooth([r for _, r in rates], window), color="tab:cyan", linewidth=1.2,
                label="per step, Δtokens/Δtime" + (f" (EMA over ~{window:.0f} steps)" if window > 1 else ""))
    logged = [(r["step"], r["tokens_per_s"]) for r in train if r.get("tokens_per_s") is not None]
    if logged:
        ax.plot([s for s, _ in logged], [v for _, v in logged], color="tab:brown", linewidth=1.5,
                label="mean since the run (re)started")
        ax.set_ylim(bottom=0)
    ax.set(title="Throughput (training tokens per second)", ylabel="tokens/s")
    _legend_or_note(ax, "no throughput logged")


def _title(run_dir: Path, train: list[dict], evals: list[dict]) -> str:
    parts = [f"{run_dir.resolve().name}: {max([r['step'] for r in train + evals])} steps"]
    if train and train[-1].get("tokens"):
        parts.append(f"{train[-1]['tokens']:,} tokens")
    metric = _task_metric(evals)
    if metric is not None:
        last = [r for r in evals if f"eval_{metric}" in r][-1]
        parts.append(f"held-out {metric} {last[f'eval_{metric}']:.3f} at step {last['step']}")
    elif evals:
        last = evals[-1]
        name, key = ("[MASK] accuracy", "eval_mask_accuracy") if "eval_mask_accuracy" in last else ("held-out accuracy", "eval_accuracy")
        parts.append(f"{name} {last[key]:.1%} at step {last['step']}")
    return ", ".join(parts)


def _legend_or_note(ax, note: str) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=9)
    else:
        _note(ax, note)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def plot_if_available(run_dir: str | Path) -> Path | None:
    """plot_run(run_dir) when matplotlib is installed (else None, silently). The trainer calls this at the end
    of a run: a failure to plot logs a warning and returns None, never failing the run it describes."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    try:
        out = plot_run(run_dir)
    except Exception as e:  # noqa: BLE001  a figure is never worth losing a finished run over
        log.warning("could not plot the training curves of %s: %s", run_dir, e)
        return None
    log.info("training curves: %s", out)
    return out
