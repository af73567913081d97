"""The main job's recipe table: held-out [MASK] accuracy (the context probe) against steps and against minutes for
the main job's model (configs/small.yaml, on BASELINE's schedule) with each modern switch (pre-LN, GeGLU, no biases,
all of them), another lr, batch size or model size, on this machine's CPU class.

    python scripts/recipes.py run --out recipes/ --stop-at 1200        # each recipe to step 1200 (eval every 100)
    python scripts/recipes.py time --out recipes/                      # seconds per step of each, on a quiet machine
    python scripts/recipes.py table --out recipes/ --budget-minutes 9  # the table (markdown) and recipes.png

`run` trains each recipe as `bertmath pretrain configs/small.yaml --set ...` does, with BASELINE's schedule (over
3,000 steps) and no time budget, and stops it once step --stop-at is evaluated: the
accuracy a machine reaches in the budget is then the curve's value at the steps that machine makes in it.
The curve depends on the steps only (a seed fixes the data, masks and init), not on the machine's load, so it
can be measured on a busy machine; `time` measures the seconds per step alone (steps --time-from..--time-to of a
short run), which must be done on a quiet one. `table` joins the two: steps in the budget = budget / (s/step),
the accuracy at the last evaluation inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from bertmath.checkpoint import step_dir_name
from bertmath.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
# GeGLU with F = 344 keeps the feed-forward's parameters level with small.yaml's MLP (3·D·344 ≈ 2·D·512, D = 128),
# as ModernBERT sizes its GLU; GeGLU is gelu-gated (Shazeer 2020).
GLU = ["model.ffn=glu", "model.intermediate_size=344", "model.activation=gelu"]
# Every curve is measured on the main job's recipe before 2026-12-06 (configs/small.yaml then: lr 1e-3, linear
# decay over 3,000 steps, which an AVX2-only CPU followed to 42% of the peak lr in its 1,750 steps), so that the
# table stays what it measured whatever small.yaml becomes; a recipe's own keys replace these. A curve needs a
# schedule that does not depend on the budget: small.yaml's `schedule_horizon: time` does.
BASELINE = ["model.num_layers=4", "train.lr=1e-3", "train.schedule_horizon=max_steps", "train.max_steps=3000",
            "train.min_lr_ratio=0"]
# seconds between looks at a run's records: short beside the ~30 s (AVX2) of the 100 steps between evaluations
POLL_S = 2.0


def in_budget(steps: int, *overrides: str) -> list[str]:
    """The main job's recipe of 2026-12-06 (lr 2e-3, linear decay to 0) with its schedule fixed at `steps`, an
    estimate of what 9 minutes give that model on the AVX2 class, so that the curve ends about where the budget
    does (the main job as written measured fewer for 3 and 2 layers: docs/benchmarks.md)."""
    return ["train.lr=2e-3", f"train.max_steps={steps}", "train.min_lr_ratio=0", *overrides]


RECIPES = {
    "small.yaml (post-LN, MLP, biases)": [],
    "pre-LN": ["model.norm=pre"],
    "GeGLU": GLU,
    "no biases": ["model.bias=false"],
    # all three, in ModernBERT's exportable shape: rotary in halves, no segment embeddings
    "pre-LN + GeGLU + no biases": ["model.norm=pre", *GLU, "model.bias=false", "model.rope_style=half",
                                   "model.type_vocab_size=0"],
    # the small-budget literature's knobs (Cramming, MosaicBERT): steps, lr, model size
    "batch 16 (2x the steps)": ["train.batch_size=16", "train.max_steps=6000", "train.warmup_steps=200"],
    "lr 2e-3": ["train.lr=2e-3"],
    "GeGLU + lr 2e-3": [*GLU, "train.lr=2e-3"],
    "pre-LN + GeGLU + no biases, lr 2e-3": ["model.norm=pre", *GLU, "model.bias=false", "model.rope_style=half",
                                            "model.type_vocab_size=0", "train.lr=2e-3"],
    "D 256, F 1024, 4 heads": ["model.hidden_size=256", "model.intermediate_size=1024", "model.num_heads=4"],
    "2 layers": ["model.num_layers=2"],
    # second table (2026-12-06): each size on the schedule of its own budget (estimated steps, AVX2 class)
    "4 layers, lr 3e-3 to 40%": ["train.lr=3e-3", "train.max_steps=1650", "train.min_lr_ratio=0.4"],
    "4 layers, lr 2e-3 to 0": in_budget(1650),
    "3 layers, lr 2e-3 to 0": in_budget(2100, "model.num_layers=3"),
    "2 layers, lr 2e-3 to 0": in_budget(2900, "model.num_layers=2"),
    "2 layers, lr 2e-3 to 0, GELU": in_budget(2900, "model.num_layers=2", "model.activation=gelu"),
    "2 layers, lr 3e-3 to 0": in_budget(2900, "model.num_layers=2", "train.lr=3e-3"),
}


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return out


def train(name: str, overrides: list[str], out: Path, stop_at: int, extra: list[str], config: str,
          evaluated: bool = True) -> Path:
    """Pretrain one recipe until step `stop_at` has been evaluated (evaluated=False: trained, evaluating only
    at the end, for timing); its run directory."""
    run_dir = out / slug(name)
    eval_every = 100 if evaluated else 100_000
    keys = {o.split("=")[0] for o in overrides}
    sets = [*(s for s in BASELINE if s.split("=")[0] not in keys), *overrides, f"train.out_dir={run_dir}", "train.max_time_minutes=null", f"train.eval_every={eval_every}",
            f"train.save_every={stop_at}", "train.resume=never", "train.plot=false", *extra]
    key = "eval_mask_accuracy" if evaluated else "elapsed_s"
    command = [sys.executable, "-m", "bertmath", "pretrain", config] + [a for s in sets for a in ("--set", s)]
    print(f"{name}: {' '.join(command[2:])}", flush=True)
    with open(out / f"{slug(name)}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while process.poll() is None:
            logged = any(r.get("step", 0) >= stop_at and key in r for r in records(run_dir))
            if logged and (run_dir / step_dir_name(stop_at)).is_dir():  # evaluated and saved (for fill_mask_ood.py)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
            time.sleep(POLL_S)
    if process.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"{name}: pretrain failed (exit {process.returncode}); see {out / slug(name)}.log")
    return run_dir


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def read_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def curve(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["eval_mask_accuracy"]) for r in records(run_dir) if "eval_mask_accuracy" in r]


def step_time(run_dir: Path, first: int, last: int) -> float:
    """Seconds per step between steps `first` and `last` (the step records' training clock)."""
    elapsed = {r["step"]: r["elapsed_s"] for r in records(run_dir) if "elapsed_s" in r}
    return (elapsed[last] - elapsed[first]) / (last - first)


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor()
    return " ".join(sorted(f for f in flags.split() if f.startswith(("avx2", "avx512_bf16", "amx"))))


def table(results: dict, budget_s: float) -> list[str]:
    lines = [f"| recipe | s/step | steps in {budget_s / 60:g} min | [MASK] acc. at 500 | at 1,000 | "
             f"in the budget (step) |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        points = dict(r["curve"])
        steps = int(budget_s / r["step_time"]) if r.get("step_time") else None
        inside = [s for s in points if steps is not None and s <= steps]
        at = (lambda s: f"{points[s]:.1%}" if s in points else "–")
        budget = f"{points[max(inside)]:.1%} ({max(inside):,})" if inside else "–"
        lines.append(f"| {name} | {r.get('step_time', float('nan')):.3f} | {steps or '–'} | {at(500)} | {at(1000)} | "
                     f"{budget} |")
    return lines


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        steps, acc = zip(*r["curve"]) if r["curve"] else ((), ())
        by_step.plot(steps, acc, marker=".", label=name)
        if r.get("step_time"):
            by_time.plot([s * r["step_time"] / 60 for s in steps], acc, marker=".", label=name)
    by_step.set(xlabel="optimizer step", ylabel="held-out [MASK] accuracy", title="against steps")
    by_time.set(xlabel="minutes of training (this machine)", title="against time")
    by_step.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["run", "time", "table"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default=str(ROOT / "configs" / "small.yaml"))
    parser.add_argument("--recipe", action="append", choices=list(RECIPES), help="default: all")
    parser.add_argument("--stop-at", type=int, default=1200, help="run: the last step evaluated")
    parser.add_argument("--time-from", type=int, default=40, help="time: steps before it warm up")
    parser.add_argument("--time-to", type=int, default=140)
    parser.add_argument("--budget-minutes", type=float, default=9.0)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="more overrides, for every recipe")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.recipe or list(RECIPES)
    results_path = args.out / "recipes.json"
    for name in names if args.mode != "table" else []:
        entry = {"overrides": RECIPES[name], "curve": [], **read_results(results_path).get(name, {})}
        if args.mode == "run":
            entry["curve"] = curve(train(name, RECIPES[name], args.out, args.stop_at, args.extra, args.config))
        else:
            (args.out / "timing").mkdir(exist_ok=True)
            run_dir = train(name, RECIPES[name], args.out / "timing", args.time_to, args.extra, args.config,
                            evaluated=False)
            entry["step_time"] = step_time(run_dir, args.time_from, args.time_to)
            entry["cpu"] = cpu_flags()
        results = read_results(results_path)  # again: a `run` on the other core may have added recipes meanwhile
        results[name] = entry
        atomic_write_text(results_path, json.dumps(results, indent=2) + "\n")
    results = read_results(results_path)
    if args.mode == "table":
        print("\n".join(table({n: results[n] for n in names if n in results}, args.budget_minutes * 60)))
        if plot(results, args.out / "recipes.png"):
            print(f"figure: {args.out / 'recipes.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
