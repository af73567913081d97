"""Fine-tuning: labelled task files → BertForSequenceClassification, trained by the pretraining loop.

    for step in range(start, max_steps):
        batch = examples[batch_indices(step)], padded;   L = mean CE(z, y), or mean (z − y)² for regression
        backward; clip; lr = schedule(step); AdamW step          (trainer.Trainer: the same loop, reused)

The model starts from `task.init` (a bertmath or transformers checkpoint; the classifier and, for an MLM
checkpoint, the pooler from BERT's init). Checkpoints, exact resume, metrics.jsonl, tqdm and the curves are
the trainer's: which examples a step reads is a pure function of (seed, step), as for pretraining.
Evaluation scores the eval file with every applicable score (bertmath.tasks.scores) next to a baseline that knows
only the training labels: the majority class, or the mean score for regression.

Task files: .csv (comma-separated, quoted as by Python's csv), .tsv (tab-separated, no quoting) with a header
line naming the columns, or .jsonl (one JSON object per line). Bad rows stop the run with one line naming the
file, the line and the value.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import torch
from tokenizers import Tokenizer
from torch import nn

from ..checkpoint import load_state_into
from ..config import Config, DataConfig, ModelConfig, TaskConfig
from ..data import batch_indices
from ..errors import BertmathError, TaskDataError
from ..io import atomic_write_text, parse_json_object
from ..model import BertForSequenceClassification, parameter_counts, pooler_parameters
from ..pretrained import read_with_tokenizer
from ..tokenizer import special_tokens
from ..trainer import Trainer
from . import scores
from .classify import Encoded, collate, encode, predict_logits
from .qa import SpanShape
from .shape import BASELINES, TaskShape
from .tagging import TaggingShape

log = logging.getLogger(__name__)


@dataclass
class Examples:
    """A split: the texts (one or two per example) and labels (class indices, or float scores)."""

    texts: list[tuple[str, ...]]
    labels: torch.Tensor  # (N,) long for classification, float32 for regression
    source: str  # the file (or hub split) it came from, for messages


# --- task files -------------------------------------------------------------------------------------------


def _rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, {column: value}) of every example row; a missing column is a TaskDataError."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise TaskDataError(f"{path}: unknown task file type '{suffix}' (expected .csv, .tsv or .jsonl)")
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise TaskDataError(f"{path}: cannot read task file ({e.strerror or e})") from None
    with handle:
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
        except UnicodeDecodeError as e:
            raise TaskDataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except csv.Error as e:
            raise TaskDataError(f"{path}: {e}") from None


def parse_label(value, task: TaskConfig, where: str) -> float | int:
    """A row's label: a number for regression; for classification an index in 0..C-1 or a name in label_names."""
    if task.num_labels == 1:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise TaskDataError(f"{where}: regression label {value!r} is not a number")
        return number
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
    for number, row in _rows(path, [*task.text_columns, task.label_column]):
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


# --- the trainer ------------------------------------------------------------------------------------------


@dataclass
class InitCheckpoint:
    """The checkpoint fine-tuning starts from: where, its model config, weights (bertmath names), tokenizer."""

    directory: Path
    model_config: object
    state: dict
    tokenizer: Tokenizer


def load_init(path: str) -> InitCheckpoint:
    """task.init read once; a directory that is not a BERT checkpoint is a one-line CheckpointError."""
    directory, model_config, state, tokenizer = read_with_tokenizer(path)
    special_tokens(tokenizer, where=str(directory))
    return InitCheckpoint(directory, model_config, state, tokenizer)


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


def load_task_shape(task: TaskConfig) -> TaskShape:
    """The task's examples, read and checked, behind the interface of its kind (task.kind)."""
    shapes = {"sequence": SequenceShape, "tokens": TaggingShape, "span": SpanShape}
    return shapes[task.kind](task)


class FinetuneTrainer(Trainer):
    """trainer.Trainer with a task model, task examples and task scores instead of masked blocks; what depends
    on the kind of task is the shape's (tasks.TaskShape)."""

    progress_name = "finetune"

    def __init__(self, config: Config, init: InitCheckpoint, shape: TaskShape):
        """shape: the task's examples, encoded with init's tokenizer (TaskShape.encode)."""
        super().__init__(config)
        self.init, self.shape = init, shape
        self.final_scores: tuple[dict, dict, int] | None = None  # (model's, baseline's, eval examples), by _evaluate

    def _prepare(self) -> None:
        c, t = self.config, self.config.train
        self.tokenizer = self.init.tokenizer  # the shape's rows are encoded with it already (finetune)
        # _batch_indices samples from range(len(data.train)), as for pretraining
        self.data = types.SimpleNamespace(train=range(self.shape.examples("train")),
                                          eval=range(self.shape.examples("eval")))
        torch.manual_seed(t.seed)  # the new head's init
        model = self.shape.model(c.model)
        load_state_into(model, self.init.state, str(self.init.directory))
        self._setup_training(model)

    def _parameter_report(self) -> str:
        """The encoder (with the pooler a sequence classifier has) and the task's head."""
        head = self.shape.head_parameters(self.config.model)
        encoder = parameter_counts(self.config.model)["encoder"]
        return (f"encoder {encoder:,} + {self.config.task.kind} head {head:,} = {encoder + head:,} "
                f"({(encoder + head) / 1e6:.1f}M), from {self.init.directory}")

    def _log_setup(self) -> None:
        t, task = self.config.train, self.config.task
        log.info("task (%s): %d train rows, %d eval rows of at most %d tokens; %d rows per step; device %s, "
                 "%s; %d process(es)", task.kind, self.shape.examples("train"), self.shape.examples("eval"),
                 task.max_seq_len, t.batch_size * t.grad_accum_steps, self.device, self.precision,
                 self.dist.world_size)

    def _micro_batch(self, m: int) -> tuple[dict[str, torch.Tensor], int]:
        """This process's share of global micro-batch m: the padded inputs with the targets of its rows, and the
        terms its loss averages."""
        return self.shape.micro_batch([int(i) for i in self._batch_indices(m)])

    def _tokens_in_step(self, step: int) -> int:
        """The real tokens (padding not counted) of the rows optimizer step `step` reads, all processes
        together: a pure function of (seed, step), as the rows are."""
        t = self.config.train
        micro_batches = range(step * t.grad_accum_steps, (step + 1) * t.grad_accum_steps)
        return sum(self.shape.tokens(int(i)) for m in micro_batches
                   for i in batch_indices(self.shape.examples("train"), t.batch_size, m, t.seed))

    def _evaluate(self, pbar) -> dict:
        """Every score of the eval split (task.metric first) and the loss, next to the baseline's."""
        task, t, s = self.config.task, self.config.train, self.state
        model_scores, baseline_scores, examples = self.shape.evaluate(self.model, t.batch_size, self.device,
                                                                      self._autocast)
        # eval_loss and eval_accuracy (classification) keep their pretraining meaning: `bertmath plot` draws them
        result = {"step": s.step, "metric": task.metric, **{f"eval_{k}": v for k, v in model_scores.items()},
                  **{f"baseline_{k}": v for k, v in baseline_scores.items()}, "eval_examples": examples}
        if s.best_eval_accuracy is None or model_scores[task.metric] > s.best_eval_accuracy:
            s.best_eval_accuracy, s.best_eval_step = model_scores[task.metric], s.step  # the best task.metric
        self.final_scores = (model_scores, baseline_scores, examples)
        if self.dist.is_main:
            self._log_metrics(result)
            pbar.write(f"step {s.step:>6}: {describe_scores(model_scores, baseline_scores, task)}")
        return result

    def _summary(self) -> dict:
        s = self.state
        model_scores, baseline_scores, examples = self.final_scores
        summary = {"out_dir": str(self.out_dir), "steps": s.step, "tokens": s.tokens_seen,
                   "time_s": round(s.elapsed_s, 1),
                   "tokens_per_s": round(s.tokens_seen / s.elapsed_s, 1) if s.elapsed_s else None,
                   "metric": self.config.task.metric, "best_metric": s.best_eval_accuracy,
                   "best_step": s.best_eval_step,
                   "scores": model_scores, "baseline": baseline_scores, "eval_examples": examples,
                   "precision": self.precision}
        if self.dist.is_main:
            atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


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


def describe_scores(model_scores: dict, baseline_scores: dict, task: TaskConfig) -> str:
    """"pearson 0.871 (baseline 0.000, the mean score); spearman 0.868 (0.000); mse 0.532 (2.301)"."""
    baseline_name = BASELINES[task.scoring]
    names = [task.metric] + [k for k in model_scores if k != task.metric]
    parts = []
    for n, name in enumerate(names):
        base = baseline_scores.get(name)
        shown = "" if base is None else f" (baseline {base:.3f}, {baseline_name})" if n == 0 else f" ({base:.3f})"
        parts.append(f"{name} {model_scores[name]:.3f}{shown}")
    return "; ".join(parts)


def resolve_config(config: Config, init: InitCheckpoint, train_examples: int) -> Config:
    """The config the run records: the model's shape from task.init (fused kernels as task.fused says; no
    sparse MLM, which only an MLM head has; the pooler and pooling of task.pooler/pooling when given),
    data.max_seq_len = task.max_seq_len, and train.max_steps from task.epochs when given (an epoch: every
    training row once; a span task's rows are its passages' windows)."""
    task, train = config.task, config.train
    if task.epochs is not None:
        examples_per_step = train.batch_size * train.grad_accum_steps
        train = replace(train, max_steps=max(1, math.ceil(task.epochs * train_examples / examples_per_step)))
    head = {key: getattr(task, key) for key in ("pooler", "pooling") if getattr(task, key) is not None}
    return replace(config, model=replace(init.model_config, fused=task.fused, sparse_mlm=False, **head),
                   data=DataConfig(max_seq_len=max(8, task.max_seq_len)), train=train)


def finetune(config: Config) -> dict:
    """Fine-tune the model of `config.task.kind` (BertForSequenceClassification, BertForTokenClassification or
    BertForQuestionAnswering) as `config.task` and `config.train` say; returns the summary (also in
    train.out_dir/summary.json)."""
    if config.task is None:
        raise BertmathError("the config has no task: section (what to fine-tune on; see configs/finetune_*.yaml)")
    init = load_init(config.task.init)
    shape = load_task_shape(config.task)
    shape.encode(init.tokenizer)
    trainer = FinetuneTrainer(resolve_config(config, init, shape.examples("train")), init, shape)
    try:
        return trainer.run()
    finally:
        trainer.close()
