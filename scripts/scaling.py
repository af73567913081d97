"""Data-parallel scaling: the same pretraining config in 1 process and under torchrun with P processes.

    python scripts/scaling.py --config configs/small.yaml --processes 1 2 --parallel ddp fsdp --steps 60

Each run trains `--steps` optimizer steps of the config (its batch_size is the batch of all processes
together, so every run does the same work) in a fresh run directory, with no evaluation or checkpoint
until the end; the torch threads are split evenly, cores // P per process, so P processes share the same
cores as one. Throughput is measured from metrics.jsonl between step `--skip` and the last step (the first
steps warm up allocators and kernels): tokens/s = Δtokens / Δelapsed_s. Prints a table with the speed-up
over one process and, since the runs see identical data and masks, the final loss of each (equal up to
float rounding and dropout draws).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bertmath.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]


def run(config: str, processes: int, parallel: str, steps: int, threads: int, out_dir: Path, cache_dir: Path,
        overrides: list[str]) -> list[dict]:
    """Train; return metrics.jsonl's training records."""
    settings = [f"train.out_dir={out_dir}", f"train.max_steps={steps}", f"train.eval_every={steps}",
                f"train.save_every={steps}", f"train.num_threads={threads}", "train.max_time_minutes=null",
                "train.schedule_horizon=max_steps",  # a fixed number of steps: no budget to plan the schedule over
                f"data.cache_dir={cache_dir}", *overrides]
    args = ["pretrain", config] + [a for kv in settings for a in ("--set", kv)]
    if processes == 1:
        command = [sys.executable, "-m", "bertmath", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   "-m", "bertmath", *args, "--set", f"train.parallel={parallel}"]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"scaling.py: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return read_metrics(out_dir)[0]


def throughput(records: list[dict], skip: int) -> float:
    first, last = records[skip - 1], records[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/small.yaml")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--parallel", nargs="+", choices=["ddp", "fsdp"], default=["ddp", "fsdp"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the throughput")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="threads shared by the processes of a run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. --set train.precision=fp32")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of the table")
    args = p.parse_args()
    if not 0 < args.skip < args.steps:
        p.error("--skip must be between 0 and --steps")

    rows = []
    with tempfile.TemporaryDirectory(prefix="bertmath-scaling-") as tmp:
        layouts = [(n, "none" if n == 1 else mode) for n in args.processes for mode in args.parallel]
        for processes, parallel in dict.fromkeys(layouts):  # one single-process run, however many modes
            threads = max(1, args.cores // processes)
            records = run(args.config, processes, parallel, args.steps, threads,
                          Path(tmp) / f"p{processes}-{parallel}", Path(tmp) / "cache", args.overrides)
            rows.append({"processes": processes, "parallel": parallel, "threads_each": threads,
                         "tokens_per_s": round(throughput(records, args.skip), 1), "final_loss": records[-1]["loss"]})
    base = next((r["tokens_per_s"] for r in rows if r["processes"] == 1), None)
    for r in rows:
        r["speedup"] = round(r["tokens_per_s"] / base, 3) if base else None
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"{args.config}, {args.steps} steps (throughput over steps {args.skip}-{args.steps}), {args.cores} cores")
    print(f"{'processes':>9} {'parallel':>8} {'threads':>7} {'tokens/s':>10} {'speed-up':>8} {'final loss':>10}")
    for r in rows:
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(f"{r['processes']:>9} {r['parallel']:>8} {r['threads_each']:>7} {r['tokens_per_s']:>10,.0f} "
              f"{speedup:>8} {r['final_loss']:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
