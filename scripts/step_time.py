"""Seconds per training step of a config and of variants of it, side by side in one process, with the page
faults and the kernel time each step costs: what to run before and after a change to the training step.

    python scripts/step_time.py configs/small.yaml                                  # the main job's step
    python scripts/step_time.py configs/small.yaml --variant "model.fused_qkv=true"  # against a variant
    python scripts/step_time.py configs/small.yaml --glibc-default                  # glibc's malloc as it comes

Each variant is a Trainer built as `bertmath pretrain CONFIG --set ...` builds it (its own out_dir under --out,
the data prepared once, in a cache there); after --warmup steps each, the variants take turns, --steps steps a round, for
--rounds rounds, so that a machine whose speed drifts (a VM's does, by ~10% within minutes) slows them alike.
Reported per variant: the median and the fastest round's seconds per step, and per step the minor page faults
and the kernel (system) CPU seconds the process spent, from getrusage over that variant's rounds.

--glibc-default leaves glibc's malloc thresholds as they come (the trainer otherwise sets them at start-up:
hardware.keep_freed_memory); it is process-wide, so compare it by running the script twice, not as a variant.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import bertmath.trainer
from bertmath.config import load_config
from bertmath.errors import BertmathError
from bertmath.hardware import cpu_report
from bertmath.trainer import Trainer


def build(config_path: str, overrides: list[str], out_dir: Path, warmup: int) -> Trainer:
    """A Trainer of `config_path` with `overrides`, its data and model ready, `warmup` steps taken."""
    config = load_config(config_path, [*overrides, f"train.out_dir={out_dir}", "train.resume=never",
                                       "train.max_time_minutes=null", "train.schedule_horizon=max_steps"])
    trainer = Trainer(config)
    trainer._prepare()
    take_steps(trainer, warmup)
    return trainer


def take_steps(trainer: Trainer, steps: int) -> None:
    """`steps` optimizer steps as the training loop takes them (no evaluation, no checkpoint), each read back."""
    for _ in range(steps):
        loss, _ = trainer._train_step()
        loss.item()  # waits for the step, as the loop's record of it does
        trainer.state.step += 1


def measure(trainers: list[Trainer], steps: int, rounds: int) -> list[dict]:
    """The variants in turns of `steps` steps, `rounds` times: per variant its seconds per step in each round,
    and its page faults and kernel seconds per step over all its rounds."""
    results = [{"round_s_per_step": [], "faults": 0, "system_s": 0.0} for _ in trainers]
    for _ in range(rounds):
        for trainer, result in zip(trainers, results):
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            take_steps(trainer, steps)
            seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            result["round_s_per_step"].append(seconds / steps)
            result["faults"] += after.ru_minflt - before.ru_minflt
            result["system_s"] += after.ru_stime - before.ru_stime
    for result in results:
        total_steps = steps * rounds
        result.update(median_s_per_step=statistics.median(result["round_s_per_step"]),
                      fastest_s_per_step=min(result["round_s_per_step"]),
                      faults_per_step=result.pop("faults") / total_steps,
                      system_s_per_step=result.pop("system_s") / total_steps)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config, e.g. configs/small.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every variant")
    parser.add_argument("--variant", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="a variant: these overrides on top (the config as it is always runs first)")
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each variant first")
    parser.add_argument("--out", type=Path, default=Path("checkpoints/step_time"), help="the variants' out_dirs")
    parser.add_argument("--glibc-default", action="store_true",
                        help="keep glibc's malloc thresholds (no hardware.keep_freed_memory)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.glibc_default:
        bertmath.trainer.keep_freed_memory = lambda: False  # the trainer's setup calls it by this name
    variants = [[], *(shlex.split(v) for v in args.variant)]
    shared = [f"data.cache_dir={args.out / 'cache'}", *args.overrides]  # the data prepared once for all
    trainers = []
    try:
        for i, v in enumerate(variants):
            trainers.append(build(args.config, [*shared, *v], args.out / f"variant{i}", args.warmup))
        results = measure(trainers, args.steps, args.rounds)
    except (BertmathError, OSError) as e:  # a config key, a file: one line, as bertmath's commands say it
        print(f"step_time: {e}", file=sys.stderr)
        return 2
    finally:
        for trainer in trainers:
            trainer.close()
    report = {"config": args.config, "overrides": args.overrides, "glibc_default": args.glibc_default,
              "steps_per_round": args.steps, "rounds": args.rounds, "machine": cpu_report(),
              "variants": [{"overrides": v, **r} for v, r in zip(variants, results)]}
    print(f"{args.config} {' '.join(args.overrides)}; {args.rounds} rounds of {args.steps} steps; "
          f"malloc: {'glibc default' if args.glibc_default else 'freed memory kept'}; {json.dumps(report['machine'])}")
    print(f"{'variant':<40} {'median s/step':>13} {'fastest':>8} {'faults/step':>11} {'kernel s/step':>13}")
    for v, r in zip(variants, results):
        print(f"{' '.join(v) or '(the config)':<40} {r['median_s_per_step']:>13.4f} {r['fastest_s_per_step']:>8.4f} "
              f"{r['faults_per_step']:>11,.0f} {r['system_s_per_step']:>13.4f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
