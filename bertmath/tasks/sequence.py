"""The sequence shape: a text or a pair → one of C labels, or a score (C = 1), on BertForSequenceClassification.

    L = mean CE(z, y) for classification, mean (z − y)² for regression (C = 1)

Task files: .csv (comma-separated, quoted as by Python's csv), .tsv (tab-separated, no quoting) with a header
line naming the columns, or .jsonl (one JSON object per line). Bad rows stop the run with one line naming the
file, the line and the value. Evaluation scores the eval file with every applicable score (scores.py) next to a
baseline that knows only the training labels: the majority class, or the mean score for regression.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from tokenizers import Tokenizer
from torch import nn

from ..config import ModelConfig, TaskConfig
from ..errors import TaskDataError
from ..io import parse_json_object, read_text
from ..model import BertForSequenceClassification, pooler_parameters
from ..tokenizer import special_tokens
from . import scores
from .classify import predict_logits
from .encoding import Encoded, collate, encode
from .shape import TaskShape

log = logging.getLogger(__name__)


@dataclass
class Examples:
    """A split: the texts (one or two per example) and labels (class indices, or float scores)."""

    texts: list[tuple[str, ...]]
    labels: torch.Tensor  # (N,) long for classification, float32 for regression
    source: str  # the file (or hub split) it came from, for messages


# --- task files -------------------------------------------------------------------------------------------


def task_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, {column: value}) of every example row; a missing column is a TaskDataError."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise TaskDataError(f"{path}: unknown task file type '{suffix}' (expected .csv, .tsv or .jsonl)")
    # read whole (the examples are kept anyway) through read_text, which drops a BOM that would otherwise start
    # the first column's name; newline="": csv reads line ends inside quoted fields itself
    with io.StringIO(read_text(path, TaskDataError), newline="") as handle:
        try:
            if suffix == ".jsonl":
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    row = parse_json_object(line, f"{path}:{number}", TaskDataError)
                    missing = [c for c in columns if c not in row]
                    if missing:
                        raise TaskDataError(f"{path}:{number}: no column '{missing[0]}' (this line has: "
                                            f"{', '.join(row) or 'nothing'})")
                    yield number, row
                return
            reader = (csv.reader(handle) if suffix == ".csv" else
                      csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
            header = next(reader, None)
            if header is None:
                raise TaskDataError(f"{path}: empty file (expected a header line naming the columns)")
            missing = [c for c in columns if c not in header]
            if missing:
                raise TaskDataError(f"{path}:1: no column '{missing[0]}' (header: {', '.join(header)})")
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise TaskDataError(f"{path}:{reader.line_num}: {len(fields)} fields, but the header has "
                                        f"{len(header)}")
                yield reader.line_num, dict(zip(header, fields))
        except csv.Error as e:
            raise TaskDataError(f"{path}: {e}") from None


def parse_number(value, what: str, where: str) -> float:
    """A row's finite number (a JSON number or its text; not true/false); else a TaskDataError naming `where`."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise TaskDataError(f"{where}: {what} {value!r} is not a number")
    return number


def parse_label(value, task: TaskConfig, where: str) -> float | int:
    """A row's label: a number for regression; for classification an index in 0..C-1 or a name in label_names."""
    if task.num_labels == 1:
        return parse_number(value, "regression label", where)
    if isinstance(value, str) and value in task.label_names:
        return task.label_names.index(value)
    try:
        index = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError, OverflowError):
        index = None
    if index is None or not 0 <= index < task.num_labels:
        names = f" or one of {', '.join(task.label_names)}" if task.label_names else ""
        raise TaskDataError(f"{where}: label {value!r} is not in 0..{task.num_labels - 1}{names} "
                            f"(task.num_labels: {task.num_labels})")
    return index


def read_examples(path: str | Path, task: TaskConfig) -> Examples:
    """The examples of one task file, labels checked against the task."""
    path = Path(path)
    texts, labels = [], []
    for number, row in task_rows(path, [*task.text_columns, task.label_column]):
        where = f"{path}:{number}"
        for column in task.text_columns:
            if not isinstance(row[column], str):
                raise TaskDataError(f"{where}: column '{column}' holds {row[column]!r}, not text")
        texts.append(tuple(row[c] for c in task.text_columns))
        labels.append(parse_label(row[task.label_column], task, where))
    if not texts:
        raise TaskDataError(f"{path}: no examples (an empty split)")
    dtype = torch.float32 if task.num_labels == 1 else torch.long
    return Examples(texts, torch.tensor(labels, dtype=dtype), str(path))


def read_hub_examples(task: TaskConfig) -> tuple[Examples, Examples]:  # pragma: no cover - needs internet
    """train and eval splits of a Hugging Face hub dataset (e.g. glue/sst2); for users with internet."""
    import datasets

    out = []
    for split in task.hub_splits:
        rows = datasets.load_dataset(task.hub_dataset, task.hub_config, split=split)
        name = f"{task.hub_dataset}/{task.hub_config or ''}:{split}"
        missing = [c for c in [*task.text_columns, task.label_column] if c not in rows.column_names]
        if missing:
            raise TaskDataError(f"{name}: no column '{missing[0]}' (columns: {', '.join(rows.column_names)})")
        texts = [tuple(row[c] for c in task.text_columns) for row in rows]
        labels = [parse_label(row[task.label_column], task, f"{name}:{n + 1}") for n, row in enumerate(rows)]
        if not texts:
            raise TaskDataError(f"{name}: no examples (an empty split)")
        out.append(Examples(texts, torch.tensor(labels, dtype=torch.float32 if task.num_labels == 1 else torch.long),
                            name))
    return out[0], out[1]


def load_task(task: TaskConfig) -> tuple[Examples, Examples]:
    if task.hub_dataset is not None:
        return read_hub_examples(task)
    return read_examples(task.train_file, task), read_examples(task.eval_file, task)


def encode_split(tokenizer: Tokenizer, examples: Examples, max_seq_len: int) -> Encoded:
    """The split's ids; how many examples were truncated to max_seq_len is said once, here."""
    encoded = encode(tokenizer, examples.texts, max_seq_len)
    if encoded.truncated:
        log.warning("%s: %d of %d examples are longer than task.max_seq_len (%d tokens) and were truncated "
                    "(longest text first)", examples.source, encoded.truncated, len(encoded), max_seq_len)
    return encoded


def baseline_predictions(train_labels: torch.Tensor, n: int, num_labels: int) -> torch.Tensor:
    """What a model that saw only the training labels predicts for n examples: the majority class, or the mean."""
    if num_labels == 1:
        return torch.full((n,), float(train_labels.mean()))
    return torch.full((n,), int(torch.bincount(train_labels, minlength=num_labels).argmax()), dtype=torch.long)


class SequenceShape(TaskShape):
    """A text or a pair → one of C labels, or a score (C = 1): BertForSequenceClassification, the examples of
    task files (or a hub dataset), scored by accuracy/F1/MCC or Pearson/Spearman next to the majority class or
    the mean score."""

    def __init__(self, task: TaskConfig):
        super().__init__(task)
        self.train_set, self.eval_set = load_task(task)
        self.pad_id: int | None = None
        self.encoded: dict[str, Encoded] = {}
        # what a model that saw only the training labels predicts for the eval examples
        self.baseline = baseline_predictions(self.train_set.labels, len(self.eval_set.labels), task.num_labels)

    def model(self, config: ModelConfig) -> nn.Module:
        return BertForSequenceClassification(config, self.task.num_labels)

    def head_parameters(self, config: ModelConfig) -> int:
        """The pooler and the classifier's C·D + C."""
        C = self.task.num_labels
        return pooler_parameters(config) + C * config.hidden_size + C

    def encode(self, tokenizer: Tokenizer) -> None:
        self.pad_id = special_tokens(tokenizer).pad
        self.encoded = {name: encode_split(tokenizer, split, self.task.max_seq_len)
                        for name, split in (("train", self.train_set), ("eval", self.eval_set))}

    def examples(self, split: str) -> int:
        return len(self.encoded[split])

    def micro_batch(self, indices: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        return {**collate(self.encoded["train"], indices, self.pad_id), "labels": self.train_set.labels[indices]}, \
            len(indices)

    def tokens(self, index: int) -> int:
        return len(self.encoded["train"].ids[index])

    def evaluate(self, model, batch_size, device, autocast) -> tuple[dict, dict, int]:
        logits = predict_logits(model, self.encoded["eval"], batch_size, self.pad_id, device, autocast)
        labels = self.eval_set.labels
        model_scores, baseline_scores = evaluation_scores(logits, labels, self.baseline, self.task.num_labels)
        return model_scores, baseline_scores, len(labels)


def evaluation_scores(logits: torch.Tensor, labels: torch.Tensor, baseline: torch.Tensor,
                      num_labels: int) -> tuple[dict[str, float], dict[str, float]]:
    """(model's scores, baseline's scores). Regression: Pearson, Spearman and the MSE, the baseline's that of
    always predicting the training mean. Classification: accuracy, F1, MCC of the argmax, and the model's
    mean CE ("loss"; a constant class has no probabilities, so the baseline has no loss)."""
    if num_labels == 1:
        predicted = logits[:, 0]
        model = {**scores.task_scores(predicted, labels, 1), "mse": float(((predicted - labels) ** 2).mean())}
        base = {**scores.task_scores(baseline, labels, 1), "mse": float(((baseline - labels) ** 2).mean())}
        return model, base
    model = {**scores.task_scores(logits.argmax(-1), labels, num_labels),
             "loss": float(torch.nn.functional.cross_entropy(logits, labels))}
    return model, scores.task_scores(baseline, labels, num_labels)
