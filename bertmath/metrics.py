"""metrics.jsonl, the log of a run: one JSON object per line, written and read here only.

    {"step": 12, "loss": 6.1, "lr": 2.4e-4, "grad_norm": 1.3, "tokens": 49152, "elapsed_s": 3.2, "tokens_per_s": 15360}
    {"step": 500, "eval_mask_accuracy": 0.2, "baseline_mask_accuracy": 0.066, "eval_loss": 4.9, ...}
    {"step": 60, "metric": "f1", "eval_f1": 0.44, "baseline_f1": 0.21, "eval_loss": 3.1, ...}    (fine-tuning)

A training record per optimizer step (it has "loss"), an evaluation record per evaluation (it has "eval_loss";
a fine-tuning one names its task.metric, and has eval_<metric>, but not every task has a loss). Each line is flushed as it is written, so a killed run leaves at most a torn last line, which
every reader skips; a resumed run first drops the records after its checkpoint (truncate_after), and logs
those steps again.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import BertmathError
from .io import atomic_write_text

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of run_dir/metrics.jsonl, each sorted by step; a step logged
    twice keeps its last record, a torn line (a killed run) is skipped. BertmathError if there is nothing."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        hint = " (give the run directory, train.out_dir, not a step-* directory)" if Path(run_dir).name.startswith(
            "step-") else ""
        raise BertmathError(f"{path}: no metrics file; is {run_dir} a bertmath run directory?{hint}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BertmathError(f"{path}: unreadable ({e.__class__.__name__}); is it a bertmath metrics file?") from None
    train, evals = {}, {}
    for number, line in enumerate(lines, 1):
        record = _parse(line)
        if record is None or not isinstance(record.get("step"), int):
            continue
        _check_numbers(record, f"{path}:{number}")
        if "loss" in record:
            train[record["step"]] = record
        if "eval_loss" in record or "metric" in record:
            evals[record["step"]] = record
    if not train and not evals:
        raise BertmathError(f"{path}: no metrics yet (the file is empty); plot once the run has logged a step")
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


# The numbers a record may hold (None: not measured) and those its kind must hold: what plot_run draws.
_NUMBERS = ("loss", "lr", "grad_norm", "tokens", "elapsed_s", "tokens_per_s", "eval_loss", "eval_accuracy",
            "baseline_accuracy", "eval_mask_accuracy", "baseline_mask_accuracy")
_REQUIRED = {"loss": ("loss",), "eval_loss": ("eval_loss", "eval_accuracy"),
             "eval_mask_accuracy": ("eval_mask_accuracy", "baseline_mask_accuracy")}


def _check_numbers(record: dict, where: str) -> None:
    """A BertmathError naming the line and key of a value plot_run could not draw (a foreign or edited file)."""
    required = {key for kind, keys in _REQUIRED.items() if kind in record for key in keys}
    scores = ()
    metric = record.get("metric")
    if metric is not None:  # a fine-tuning evaluation: its task.metric's score stands where pretraining's accuracy does
        if not (isinstance(metric, str) and metric.isidentifier()):
            raise BertmathError(f"{where}: 'metric' is {metric!r}, expected a score's name; is this a bertmath "
                                f"metrics file?")
        scores = (f"eval_{metric}", f"baseline_{metric}")
        required = (required - {"eval_accuracy"}) | {scores[0]}
    for key in (*_NUMBERS, *scores):
        value = record.get(key)
        if (value is None and key not in required) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            continue
        found = f"is {value!r}" if key in record else "is missing"
        raise BertmathError(f"{where}: '{key}' {found}, expected a number; is this a bertmath metrics file?")


class MetricsLog:
    """Appends records to run_dir/metrics.jsonl, one line each, flushed at once."""

    def __init__(self, run_dir: str | Path):
        self.file = open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def truncate_after(run_dir: str | Path, step: int) -> None:
    """Drop the records logged after `step` (a resumed run logs them again) and any torn line (a kill)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = _parse(line)
        if record is not None and isinstance(record.get("step", 0), int) and record.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_records(run_dir: str | Path) -> list[dict]:
    """Every record of run_dir/metrics.jsonl in the order written, torn lines skipped; [] if there is no file.
    For the trainer's summary, which reads what it has just written; read_metrics checks a file from outside."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [record for line in path.read_text(encoding="utf-8").splitlines()
            if (record := _parse(line)) is not None]


def _parse(line: str) -> dict | None:
    """The record on one line; None for a torn or foreign line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
