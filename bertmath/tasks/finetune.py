"""Fine-tuning: any task shape (shape.TaskShape: sequence, tokens, span, embedding) trained by the pretraining loop.

    for step in range(start, max_steps):
        batch = rows[batch_indices(step)], padded;   L = the shape's loss on the batch
        backward; clip; lr = schedule(step); AdamW step          (trainer.Trainer: the same loop, reused)

The model starts from `task.init` (a bertmath or transformers checkpoint; the head and, for an MLM checkpoint,
the pooler from BERT's init). Checkpoints, exact resume, metrics.jsonl, tqdm and the curves are the trainer's:
which rows a step reads is a pure function of (seed, step), as for pretraining. Evaluation is the shape's: its
scores next to a baseline that knows nothing of the inputs.
"""

from __future__ import annotations

import json
import logging
import math
import types
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..checkpoint import load_state_into
from ..config import Config, DataConfig, TaskConfig, run_length
from ..data import batch_indices
from ..errors import BertmathError
from ..io import atomic_write_text
from ..model import parameter_counts
from ..pretrained import read_with_tokenizer
from ..tokenizer import special_tokens
from ..trainer import Trainer
from .pairs import EmbeddingShape
from .qa import SpanShape
from .sequence import SequenceShape
from .shape import BASELINES, TaskShape
from .tagging import TaggingShape

log = logging.getLogger(__name__)


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


def load_task_shape(task: TaskConfig, data: DataConfig | None = None) -> TaskShape:
    """The task's examples, read and checked, behind the interface of its kind (task.kind); `data`: the corpus
    unsupervised SimCSE (task.simcse) reads, as pretraining does."""
    if task.kind == "embedding":
        return EmbeddingShape(task, data or DataConfig())
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

    def _forward_backward(self, inputs: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
        """The shape's: the model's own loss, or one the shape computes from the model's outputs (embedding)."""
        return self.shape.forward_backward(self.train_model, inputs, weight, self._autocast, self._backward)

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
        # `bertmath plot` draws eval_<task.metric> beside baseline_<task.metric>, and eval_loss where the task has one
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


def resolve_config(config: Config, init: InitCheckpoint, train_examples: int, metric: str | None = None) -> Config:
    """The config the run records: the model's shape from task.init (fused kernels as task.fused says; no
    sparse MLM, which only an MLM head has; the pooler and pooling of task.pooler/pooling when given),
    data.max_seq_len = task.max_seq_len, the run's length from task.epochs or train.max_steps, whichever
    config.run_length says decides (an epoch: every training row once; a span task's rows are its passages'
    windows; the setting that did not decide is not recorded as if it had: task.epochs null), and an embedding
    task's metric, when left out, the shape's default `metric` (spearman for scored eval pairs, ndcg@10 for
    retrieval)."""
    task, train = config.task, config.train
    decides, why = run_length(config)
    if decides == "task.epochs":
        examples_per_step = train.batch_size * train.grad_accum_steps
        train = replace(train, max_steps=max(1, math.ceil(task.epochs * train_examples / examples_per_step)))
        log.info("run length: %d steps from task.epochs %g (%d training rows, %d a step); %s", train.max_steps,
                 task.epochs, train_examples, examples_per_step, why)
    else:
        task = replace(task, epochs=None)
        log.info("run length: %d steps from train.max_steps; %s", train.max_steps, why)
    # the classifier's pooler only: an embedding's pooling (task.sentence_pooling) is the task's, read from there
    head = {key: getattr(task, key) for key in ("pooler", "pooling") if getattr(task, key) is not None}
    # SimCSE's corpus is the data: section's, recorded as it ran; other tasks read only their task files
    data = replace(config.data, max_seq_len=max(8, task.max_seq_len)) if task.simcse else \
        DataConfig(max_seq_len=max(8, task.max_seq_len))
    if task.kind == "embedding" and task.metric is None:  # the eval file's kind decides (similarity or retrieval)
        task = replace(task, metric=metric)
    return replace(config, model=replace(init.model_config, fused=task.fused, sparse_mlm=False, **head),
                   data=data, train=train, task=task)


def finetune(config: Config) -> dict:
    """Fine-tune the model of `config.task.kind` (BertForSequenceClassification, BertForTokenClassification,
    BertForQuestionAnswering or BertForSentenceEmbedding) as `config.task` and `config.train` say; returns the summary (also in
    train.out_dir/summary.json)."""
    if config.task is None:
        raise BertmathError("the config has no task: section (what to fine-tune on; see configs/finetune_*.yaml)")
    init = load_init(config.task.init)
    shape = load_task_shape(config.task, config.data)
    shape.encode(init.tokenizer)
    trainer = FinetuneTrainer(resolve_config(config, init, shape.examples("train"), shape.default_metric), init,
                              shape)
    try:
        return trainer.run()
    finally:
        trainer.close()
