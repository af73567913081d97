"""MLM pretraining: AdamW, warm-up + decay, precision, accumulation, evaluation, kill-safe resume.

    for step in range(start, max_steps):
        for each micro-batch m:  x = blocks[batch_indices(m)];  x̃, y = mask(x, generator(seed, m))
                                 (process r of P: rows [r·B/P, (r+1)·B/P) of them)
        L = Σ CE(BertForMaskedLM(x̃), y) / N over the N masked tokens of all micro-batches and processes
        backward;  clip ‖g‖ ≤ grad_clip;  lr = schedule(step);  AdamW step

Everything a step consumes is a pure function of (seed, step) — which blocks, which masks — or is saved
in the checkpoint (weights, AdamW moments, each process's RNG that drives dropout). A run killed at any
moment and resumed therefore continues exactly as if it had never stopped, without re-reading data; and
the blocks, masks and loss of a step do not depend on the number of processes P (see distributed.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed, metrics
from .config import Config, DataConfig, TrainConfig
from .corpus import Corpus
from .data import PretrainingData, batch_indices, data_changes, data_fingerprint, prepare
from .errors import CheckpointError, TrainingError
from .hardware import AUTOCAST_DTYPES, autocast, keep_freed_memory, resolve_device, resolve_precision
from .io import atomic_write_text, check_writable
from .masking import IGNORE_INDEX, mask_tokens, prediction_slots, slot_count
from .model import BertForMaskedLM, EncoderLayer, parameter_report
from .tokenizer import SpecialTokens, continuation_mask, special_tokens
from .viz.plot import plot_if_available

log = logging.getLogger(__name__)


# The context probe: what the model infers from context alone, the same for every training recipe and seed.
# 15% of held-out tokens chosen, every one replaced by [MASK] (none kept, none random), masks fixed by this
# seed. Kept positions can be copied (~90% right) and would hide whether the model reads its context.
CONTEXT_PROBE = DataConfig(mlm_probability=0.15, mask_token_probability=1.0, random_token_probability=0.0)
CONTEXT_PROBE_SEED = 0
EVAL_MASK_SEED_OFFSET = 12345  # held-out masks in the training corruption: a generator apart from the probe's
# How long the step time is measured before schedule_horizon "time" fixes the step budget: the first steps
# are slower (allocator, caches), so the window starts a little in.
HORIZON_WINDOW = (10, 50)
# Dropout re-seeded after a resume with another process count: index rank + step·RESEED_STRIDE, one per
# (rank, step) for any job of fewer processes than this.
RESEED_STRIDE = 65_537
EVAL_BATCH_COST = 0.5  # one held-out batch (forward only) in training steps (forward + backward ≈ 3 forwards)


@dataclass
class TrainState:
    """What, besides weights and optimizer moments, a resumed run needs to continue exactly."""

    step: int = 0  # optimizer steps done; also the data position (see batch_indices)
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training wall time before this process started
    best_eval_accuracy: float | None = None  # over all chosen positions, in the training corruption
    best_eval_step: int | None = None
    best_mask_accuracy: float | None = None  # the context probe: at [MASK] positions
    best_mask_step: int | None = None
    planned_steps: int | None = None  # schedule_horizon "time": the steps the budget allows, as last measured
    # ... and where a re-plan met the decay under way: the step and the decay's progress there, which the rest of
    # the decay goes on from (learning_rate's `anchor`)
    decay_anchor_step: int | None = None
    decay_anchor_progress: float | None = None

    @property
    def decay_anchor(self) -> tuple[int, float] | None:
        return None if self.decay_anchor_step is None else (self.decay_anchor_step, self.decay_anchor_progress)


def _now() -> float:
    """The training clock (seconds): the time budget and tokens/s are measured on it; tests replace it to
    run time-budgeted schedules deterministically."""
    return time.perf_counter()


# --- pure pieces ----------------------------------------------------------------------------------------


def learning_rate(step: int, lr: float, warmup_steps: int, max_steps: int, schedule: str,
                  min_lr_ratio: float = 0.0, decay_fraction: float = 1.0,
                  anchor: tuple[int, float] | None = None) -> float:
    """lr(s) = lr · (s+1)/W for s < W (linear warm-up); then the peak lr holds until the last fraction f of
    the S-W steps after warm-up, over which it decays from lr to lr·r:
    linear: lr·(r + (1-r)(1-p)), cosine: lr·(r + (1-r)·½(1 + cos πp)), p = decay_progress(s) ∈ [0, 1].
    f = 1 decays from the warm-up's end (BERT); f < 1 is warmup-stable-decay (Hägele et al. 2024)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant" or max_steps <= warmup_steps:
        return lr
    progress = decay_progress(step, warmup_steps, max_steps, decay_fraction, anchor)
    decay = (1 - progress) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * decay)


def decay_progress(step: int, warmup_steps: int, max_steps: int, decay_fraction: float = 1.0,
                   anchor: tuple[int, float] | None = None) -> float:
    """How far step s is through the decay to step S: p = (s-W-(1-f)(S-W))/(f(S-W)), clipped to [0, 1].
    With `anchor` (s₀, p₀), from s₀ on p = p₀ + (1-p₀)(s-s₀)/(S-s₀): a horizon moved at step s₀ (a re-planned
    time budget) spreads the rest of the decay over the steps left, from where it was, so the lr never jumps.
    0 where the warm-up takes every step (S ≤ W: no decay)."""
    if anchor is not None and step >= anchor[0]:
        start, start_progress = anchor
        return min(1.0, start_progress + (1 - start_progress) * (step - start) / max(1, max_steps - start))
    if max_steps <= warmup_steps:
        return 0.0
    decay_steps = decay_fraction * (max_steps - warmup_steps)
    return min(1.0, max(0.0, (step - max_steps + decay_steps) / decay_steps))


def planned_last_step(step: int, step_time: float, elapsed_s: float, train: TrainConfig) -> int:
    """The last step that train.max_time_minutes allows, after `step` steps and `elapsed_s` seconds, at
    `step_time` seconds per step: what is left of the budget (less a 3% margin) pays for the remaining
    steps and the evaluations among them (2·eval_batches forward passes each, EVAL_BATCH_COST steps apiece).
    Never beyond max_steps, never before step + 1."""
    left_s = 0.97 * (60 * train.max_time_minutes - elapsed_s)
    steps = int(left_s / step_time)
    evaluations = steps // train.eval_every + 1
    steps -= math.ceil(evaluations * 2 * train.eval_batches * EVAL_BATCH_COST)
    return min(train.max_steps, max(step + 1, step + steps))


def derived_seed(seed: int, index: int, stream: int = 0) -> int:
    """A seed for item `index` of random stream `stream` (0: masks, 1: dropout), far from its neighbours'."""
    return (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB + 1) % 2**63


def mask_generator(seed: int, micro_batch: int) -> torch.Generator:
    """The generator that masks global micro-batch `micro_batch`: a pure function of (seed, index)."""
    return torch.Generator().manual_seed(derived_seed(seed, micro_batch))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices (weights, embeddings); none on biases and LayerNorm γ/β (1-D)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --- evaluation -------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int,
             device: torch.device, autocast, baseline_token: int,
             info: distributed.DistInfo = distributed.DistInfo()) -> dict:
    """On one masked held-out set: the MLM loss (mean CE over the labelled tokens), top-1 accuracy there, and
    the accuracy of always predicting the most frequent training token (the unigram baseline to beat).

    With P processes each evaluates 1/P of the rows, padded with unlabelled rows to the same length (under
    FSDP every process must run the same forwards), and the sums of loss, hits and counts are added up."""
    was_training = model.training
    model.eval()
    share = -(-len(inputs) // info.world_size)
    pad = share * info.world_size - len(inputs)
    padded_inputs = torch.cat([inputs, inputs[:1].expand(pad, -1)])
    padded_labels = torch.cat([labels, torch.full((pad, labels.shape[1]), IGNORE_INDEX, dtype=labels.dtype)])
    start, stop = info.rank * share, (info.rank + 1) * share
    sums = torch.zeros(3, dtype=torch.float64)  # Σ CE, hits, labelled tokens
    for i in range(start, stop, batch_size):
        x, y = padded_inputs[i:min(i + batch_size, stop)].to(device), padded_labels[i:min(i + batch_size, stop)].to(device)
        with autocast():
            out = model(x, labels=y)
        n = int((y != IGNORE_INDEX).sum())
        hits = int(((out.logits.argmax(-1) == y) & (y != IGNORE_INDEX)).sum())
        sums += torch.tensor([float(out.loss) * n, hits, n], dtype=torch.float64)
    model.train(was_training)
    loss_sum, correct, count = distributed.total(sums, info).tolist()
    count = max(int(count), 1)
    return {"loss": loss_sum / count, "accuracy": correct / count,
            "baseline_accuracy": int((labels == baseline_token).sum()) / count, "tokens": int(count)}


# --- the trainer ------------------------------------------------------------------------------------------


def setup_process(train: TrainConfig) -> tuple[torch.device, distributed.DistInfo]:
    """This process's device and its place in a torchrun job; and, in this one place, the process-global
    settings a run makes: the log level (one copy of the progress), TF32 matmuls on CUDA, the CPU threads, and
    freed memory kept for the next step (hardware.keep_freed_memory)."""
    keep_freed_memory()
    device = resolve_device(train.device, key="train.device")
    info = distributed.setup(device.type, train.parallel, train.batch_size, train.timeout_minutes)
    if not info.is_main:  # one copy of the progress: the others speak only to warn
        logging.getLogger("bertmath").setLevel(logging.WARNING)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores; bf16/fp16 unaffected
        torch.backends.cudnn.allow_tf32 = True
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    return device, info


@dataclass(frozen=True)
class _StepRecord:
    """What a step logs; loss and grad_norm still on the device until `Trainer._finish_step` reads them."""

    step: int
    tokens: int
    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor
    elapsed_s: float  # training time of the whole run at this step
    tokens_per_s: float  # over this session since its last save


class Trainer:
    progress_name = "pretrain"  # the tqdm bar's label

    def __init__(self, config: Config):
        self.config = config
        train = config.train
        self.device, self.dist = setup_process(train)
        self.out_dir = Path(train.out_dir)
        self.state = TrainState()
        self.lock = None
        if self.dist.is_main:  # before anything reads out_dir: a second writer stops here, in one line
            check_writable(self.out_dir)
            self.lock = ckpt.lock_run_dir(self.out_dir)
        try:
            self.resume_from = self._resume_source()
        except BaseException:
            self.close()
            raise
        if self.dist.is_main:
            ckpt.remove_temporaries(self.out_dir)  # left by a killed run; the lock says nobody else writes
            if self.resume_from is not None:  # out_dir's tokenizer.json is read: that of the step we continue from
                ckpt.link_latest(self.out_dir, self.resume_from)  # (a newer, damaged one may have been moved aside)
        self.precision = resolve_precision(train.precision, self.device)
        self.amp_dtype = AUTOCAST_DTYPES[self.precision]
        # Built by _prepare when the run starts (it reads the corpus and builds the model: slow, and collective).
        self.tokenizer: Tokenizer | None = None
        self.data: PretrainingData | None = None
        self.data_fingerprint: dict | None = None  # data.data_fingerprint of what it trains on (pretraining)
        self.specials: SpecialTokens | None = None
        self.is_continuation: torch.Tensor | None = None  # whole-word masking: which ids continue a word
        self.probe_inputs = self.probe_labels = self.eval_inputs = self.eval_labels = None  # fixed held-out batches
        self.baseline_token: int | None = None  # the most frequent training token
        self.model: BertForMaskedLM | None = None
        self.train_model: nn.Module | None = None  # self.model, or DDP around it
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.metrics_log: metrics.MetricsLog | None = None  # rank 0, while run() runs

    def close(self) -> None:
        """Release train.out_dir (the end of the run, or an error): another run may write there now."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    # setup ----------------------------------------------------------------------------------------------

    def _resume_source(self) -> Path | None:
        """The checkpoint to continue from, or None; errors for a mismatched or absent checkpoint."""
        train = self.config.train
        latest = ckpt.latest_checkpoint(self.out_dir)
        if train.resume == "required" and latest is None:
            raise CheckpointError(f"--resume: no checkpoint in {self.out_dir} (expected step-* directories)")
        if latest is None:
            return None
        if train.resume == "never":
            raise CheckpointError(f"{self.out_dir} already holds checkpoints ({latest.name}); resume with "
                                  "--resume / train.resume: auto, or choose another train.out_dir")
        ckpt.check_resumable(latest)  # a damaged one: an error naming the newest intact earlier checkpoint
        saved = ckpt.read_config(latest)
        if saved.model != self.config.model:
            diffs = [f"model.{k}: {v} in checkpoint vs {getattr(self.config.model, k)} now"
                     for k, v in asdict(saved.model).items() if getattr(self.config.model, k) != v]
            raise CheckpointError(f"cannot resume from {latest}: it has a different model config ({'; '.join(diffs)})")
        return latest

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _prepare(self) -> None:
        config, train = self.config, self.config.train
        corpus = Corpus.plan(config.data)  # file metadata only: the data is compared before it is prepared
        self.data_fingerprint = data_fingerprint(config.data, corpus)
        self._check_data()
        prepared = prepare(config, self.out_dir, dist=self.dist, corpus=corpus)
        self.tokenizer, self.data = prepared.tokenizer, prepared.data
        log.info("data: prepared in %.1f s", prepared.seconds)
        self.specials = special_tokens(self.tokenizer)
        if config.data.whole_word_masking:
            self.is_continuation = torch.tensor(continuation_mask(self.tokenizer))
        self._prepare_eval_set()

        torch.manual_seed(train.seed)  # the same initial weights in every process
        self._setup_training(BertForMaskedLM(config.model))

    def _check_data(self) -> None:
        """A resumed run goes on with the data its checkpoint was trained on: a change (data_changes) is refused
        in one line naming it, unless train.allow_data_change, which warns. A checkpoint that recorded no data
        (written before checkpoints did) is resumed, and that said once."""
        if self.resume_from is None:
            return
        saved = ckpt.saved_data(self.resume_from)
        if saved is None:
            log.info("%s records no data fingerprint (saved before checkpoints did): whether the corpus, "
                     "data.max_seq_len or the masking changed since is not checked", self.resume_from)
            return
        changes = data_changes(saved, self.data_fingerprint)
        if changes and not self.config.train.allow_data_change:
            raise CheckpointError(f"cannot resume from {self.resume_from}: the data changed since it was saved "
                                  f"({'; '.join(changes)}); undo the change, choose another train.out_dir, or set "
                                  "train.allow_data_change: true to continue on the new data")
        if changes:
            log.warning("resuming from %s on changed data (%s), as train.allow_data_change allows: the step and the "
                        "batch order go on over the new blocks", self.resume_from, "; ".join(changes))

    def _setup_training(self, model: nn.Module) -> None:
        """Put `model` on the device (compiled, wrapped for DDP/FSDP), build AdamW and the grad scaler, seed
        dropout, and restore the checkpoint this run resumes from, if any."""
        train = self.config.train
        self.model = model.to(self.device)
        self.model.set_activation_checkpointing(train.activation_checkpointing)
        if train.compile:
            self.model.compile()  # in place: parameter names stay bare
        # FSDP shards self.model in place, per EncoderLayer
        self.train_model = distributed.wrap(self.model, self.dist, self.device, EncoderLayer)
        fused_adam = self.device.type == "cuda" and self.dist.parallel != "fsdp"
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, train.weight_decay), lr=train.lr,
                                           betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_eps,
                                           fused=fused_adam)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        torch.manual_seed(derived_seed(train.seed, self.dist.rank, stream=1))  # dropout: each process its own masks
        if self.resume_from is not None:
            self._restore(self.resume_from)
        steps = distributed.gather_objects(self.state.step, self.dist)
        if len(set(steps)) > 1:  # e.g. machines that do not share out_dir: their weights would silently differ
            raise CheckpointError(f"the processes would start from different steps ({steps}): train.out_dir "
                                  f"({self.out_dir}) must be one directory that every process sees")

    def _prepare_eval_set(self) -> None:
        """Two fixed masked copies of the first eval_batches·batch_size held-out blocks: the context probe
        (CONTEXT_PROBE, the same for every recipe) and the training corruption (data.mlm_probability and the
        [MASK]/random/keep split), each masked once."""
        train = self.config.train
        n = min(len(self.data.eval), train.eval_batches * train.batch_size)
        blocks = self.data.batch("eval", torch.arange(n))
        self.probe_inputs, self.probe_labels = mask_tokens(
            blocks, self.specials, self.config.model.vocab_size, CONTEXT_PROBE,
            torch.Generator().manual_seed(CONTEXT_PROBE_SEED))
        self.eval_inputs, self.eval_labels = self._mask(
            blocks, torch.Generator().manual_seed(train.seed + EVAL_MASK_SEED_OFFSET))
        self.baseline_token = self.data.most_frequent_token(self.specials)

    def _mask(self, blocks: torch.Tensor, generator: torch.Generator, shard: tuple[int, int] = (0, 1)):
        return mask_tokens(blocks, self.specials, self.config.model.vocab_size, self.config.data, generator,
                           self.is_continuation, shard)

    # checkpoints ----------------------------------------------------------------------------------------

    def _save(self) -> Path | None:
        """Write a checkpoint of the whole training state (checkpoint.save_training_state; every process takes part)."""
        return ckpt.save_training_state(self.out_dir, self.model, self.optimizer, self.scaler, self.config,
                                        self.tokenizer, asdict(self.state), self.dist, self.device,
                                        self.data_fingerprint)

    def _restore(self, directory: Path) -> None:
        train_state, rng_restored = ckpt.restore_training_state(directory, self.model, self.optimizer, self.scaler,
                                                                self.dist, self.device)
        try:
            self.state = TrainState(**train_state)
        except TypeError as e:
            raise CheckpointError(f"{directory}: trainer state does not fit this model/optimizer ({e})") from None
        if not rng_restored:  # another process count: weights, moments, data and masks continue exactly; dropout cannot
            index = self.dist.rank + self.state.step * RESEED_STRIDE
            torch.manual_seed(derived_seed(self.config.train.seed, index, stream=1))
        if self.dist.is_main:
            metrics.truncate_after(self.out_dir, self.state.step)  # those steps are logged again
        log.info("resumed from %s at step %d", directory, self.state.step)

    # the loop -------------------------------------------------------------------------------------------

    def _log_metrics(self, record: dict) -> None:
        if self.metrics_log is not None:
            self.metrics_log.write(record)

    def _evaluate(self, pbar) -> dict:
        """Held-out metrics, led by the context probe: accuracy at [MASK] positions (eval_mask_accuracy)
        against the unigram baseline there; then loss, perplexity and accuracy over all chosen positions of
        the training corruption."""
        train = self.config.train
        if not len(self.eval_inputs):  # data.eval_fraction: 0 means no held-out set
            return {}
        probe, chosen = (evaluate(self.model, inputs, labels, train.batch_size // self.dist.world_size, self.device,
                                  self._autocast, self.baseline_token, self.dist)
                         for inputs, labels in ((self.probe_inputs, self.probe_labels),
                                                (self.eval_inputs, self.eval_labels)))
        result = {"step": self.state.step,
                  "eval_mask_accuracy": probe["accuracy"], "baseline_mask_accuracy": probe["baseline_accuracy"],
                  "eval_mask_loss": probe["loss"],
                  "eval_loss": chosen["loss"], "eval_perplexity": math.exp(min(chosen["loss"], 50.0)),
                  "eval_accuracy": chosen["accuracy"], "baseline_accuracy": chosen["baseline_accuracy"],
                  "eval_masked_tokens": chosen["tokens"]}
        s = self.state
        if s.best_mask_accuracy is None or result["eval_mask_accuracy"] > s.best_mask_accuracy:
            s.best_mask_accuracy, s.best_mask_step = result["eval_mask_accuracy"], s.step
        if s.best_eval_accuracy is None or result["eval_accuracy"] > s.best_eval_accuracy:
            s.best_eval_accuracy, s.best_eval_step = result["eval_accuracy"], s.step
        if self.dist.is_main:
            self._log_metrics(result)
            pbar.write(f"step {s.step:>6}: [MASK] accuracy {result['eval_mask_accuracy']:.1%} (unigram baseline "
                       f"{result['baseline_mask_accuracy']:.1%}); held-out loss {result['eval_loss']:.3f}, "
                       f"perplexity {result['eval_perplexity']:.1f}, accuracy over chosen tokens "
                       f"{result['eval_accuracy']:.1%}")
        return result

    def _micro_batch(self, m: int) -> tuple[dict[str, torch.Tensor], int]:
        """This process's share of global micro-batch m: the model's inputs with its targets ({"input_ids":
        masked ids, "labels": labels}, each (B/P, T)) and how many terms its loss averages (the masked tokens)."""
        train, info = self.config.train, self.dist
        inputs, labels = self._mask(self.data.batch("train", self._batch_indices(m)), mask_generator(train.seed, m),
                                    (info.rank, info.world_size))
        return {"input_ids": inputs, "labels": labels}, int((labels != IGNORE_INDEX).sum())

    def _batch_indices(self, m: int) -> torch.Tensor:
        """This process's rows of global micro-batch m: the indices of the training examples it computes on."""
        train, info = self.config.train, self.dist
        share = train.batch_size // info.world_size
        indices = batch_indices(len(self.data.train), train.batch_size, m, train.seed)
        return indices[info.rank * share:(info.rank + 1) * share]

    def _train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on L = Σ CE / N, the mean over the N masked tokens of all grad_accum_steps
        micro-batches in all P processes (for fine-tuning: over the N labelled examples, tokens or answers); returns (L, ‖∇L‖ before
        clipping) as 0-d tensors on the device, not read yet: reading them waits for the device (see `_loop`).

        Each process back-propagates the Σ CE of its own tokens times P/N, and DDP / FSDP average gradients
        over processes: (1/P) Σ_p P/N ∇Σ_p CE = ∇L, the gradient one process with the whole batch gets."""
        train, info = self.config.train, self.dist
        micro_batches = [self._micro_batch(self.state.step * train.grad_accum_steps + micro)
                         for micro in range(train.grad_accum_steps)]
        masked = [terms for _, terms in micro_batches]  # counted on the CPU: no sync
        all_masked = float(distributed.total(torch.tensor(float(sum(masked))), info))
        scale = info.world_size / max(all_masked, 1.0)
        total_loss = torch.zeros((), device=self.device)
        for micro, (inputs, _) in enumerate(micro_batches):
            last = micro == train.grad_accum_steps - 1
            if self.config.model.sparse_mlm:
                labels = inputs["labels"]
                inputs = {**inputs}
                inputs["masked_positions"], inputs["labels"] = prediction_slots(labels, slot_count(
                    labels.numel(), self.config.data.mlm_probability, self.device, train.compile))
            with distributed.gradient_sync(self.train_model, info, enabled=last):
                inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
                total_loss += self._forward_backward(inputs, masked[micro] * scale)  # this process's Σ CE · P/N
        self.scaler.unscale_(self.optimizer)
        # max_norm ∞ leaves the gradients as they are (scaled by exactly 1) and still returns ‖g‖
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   train.grad_clip if train.grad_clip > 0 else math.inf)
        # schedule_horizon time, before the step time is measured: warm-up, then the peak (no horizon to decay to yet)
        schedule = "constant" if self._awaiting_plan() else train.schedule
        lr = learning_rate(self.state.step, train.lr, train.warmup_steps, self._last_step(), schedule,
                           train.min_lr_ratio, train.decay_fraction, self.state.decay_anchor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = distributed.total(total_loss, info) / info.world_size  # Σ_p (P/N) Σ CE / P = L
        return step_loss.detach(), distributed.full_tensor(grad_norm).detach()

    def _forward_backward(self, inputs: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
        """w · L of one micro-batch (L: the model's own loss on `inputs`, already on the device), back-propagated
        through the grad scaler; returns w · L, detached. Fine-tuning hands this to the task's shape."""
        with self._autocast():
            loss = self.train_model(**inputs).loss * weight
        self._backward(loss)
        return loss.detach()

    def _backward(self, loss: torch.Tensor) -> None:
        """∇ of `loss` added to the parameters' .grad (scaled by the fp16 grad scaler, which unscales before the step)."""
        self.scaler.scale(loss).backward()

    def run(self) -> dict:
        """Prepare the data and the model, train (the loop), and return the summary; rank 0 also plots."""
        if self.dist.is_main:
            log.info("model parameters:\n%s", self._parameter_report())
        self._prepare()
        if self.dist.is_main:
            self._log_setup()
            self.metrics_log = metrics.MetricsLog(self.out_dir)
        pbar = tqdm(total=self._last_step(), initial=self.state.step, desc=self.progress_name, unit="step",
                    dynamic_ncols=True, disable=not self.dist.is_main)
        try:
            self._loop(pbar)
        finally:
            pbar.close()
            if self.metrics_log is not None:
                self.metrics_log.close()
        summary = self._summary()
        if self.dist.is_main and self.config.train.plot:
            plot_if_available(self.out_dir)  # out_dir/training.png; only warns if plotting fails
        return summary

    def _loop(self, pbar) -> None:
        """Step until the last step or the time budget; evaluate and save at their cadence, and always at the end."""
        train = self.config.train
        start_step, start_time, session_tokens = self.state.step, _now(), 0
        # schedule_horizon time: the step time is measured over a window of steps. The first plan: HORIZON_WINDOW of
        # this process, as it ran. Each re-plan at a checkpoint: the window on to it, less the evaluations in it.
        window_start, window_step, window_eval_s = start_time, start_step, 0.0

        def plan(window_s: float) -> None:  # the budget's last step, from the window's seconds of training
            self._plan_steps(window_s / (self.state.step - window_step), self.state.elapsed_s + _now() - start_time)
            pbar.total = self._last_step()

        last_saved = start_step if self.resume_from is not None else None
        pending: _StepRecord | None = None
        while self.state.step < self._last_step():
            if self._awaiting_plan() and self.state.step - start_step == HORIZON_WINDOW[0]:
                window_start, window_step, window_eval_s = _now(), self.state.step, 0.0
            loss, grad_norm = self._train_step()
            # The previous step's loss is read only now, with this step queued: on a GPU, reading a value waits
            # for the device, and waiting here instead of before this step keeps the device busy meanwhile.
            if pending is not None:
                self._finish_step(pending, pbar)
            step_tokens = self._tokens_in_step(self.state.step)
            self.state.step += 1
            self.state.tokens_seen += step_tokens
            session_tokens += step_tokens
            elapsed = _now() - start_time
            pending = _StepRecord(self.state.step, self.state.tokens_seen, self.optimizer.param_groups[0]["lr"],
                                  loss, grad_norm, self.state.elapsed_s + elapsed, session_tokens / elapsed)
            measure_plan = self._awaiting_plan() and self.state.step - start_step == HORIZON_WINDOW[1]
            done = self.state.step == self._last_step()
            out_of_time = (train.max_time_minutes is not None
                           and self.state.elapsed_s + elapsed > 60 * train.max_time_minutes)
            out_of_time = distributed.broadcast_flag(out_of_time, self.dist)
            evaluate = self.state.step % train.eval_every == 0 or done or out_of_time
            save = self.state.step % train.save_every == 0 or done or out_of_time
            if measure_plan or evaluate or save:  # checked and logged before anything is measured or saved
                self._finish_step(pending, pbar)
                pending = None
            if measure_plan:
                plan(_now() - window_start)
            if evaluate:
                eval_start = _now()
                self._evaluate(pbar)
                window_eval_s += _now() - eval_start
            if save:
                # re-planned where it is saved: a resumed run continues from the plan its checkpoint was made with
                replan = (not self._awaiting_plan() and not measure_plan and not done and not out_of_time
                          and train.schedule_horizon == "time" and self.state.step > window_step)
                if replan:
                    plan(_now() - window_start - window_eval_s)
                self.state.elapsed_s += _now() - start_time
                start_time, session_tokens = _now(), 0
                self._save()
                last_saved = self.state.step
                if not self._awaiting_plan():
                    window_start, window_step, window_eval_s = start_time, self.state.step, 0.0
            if out_of_time:
                pbar.write(f"train.max_time_minutes ({train.max_time_minutes}) reached at step {self.state.step}")
                break
        if pending is not None:
            self._finish_step(pending, pbar)
        if last_saved is None or last_saved != self.state.step:  # e.g. resumed at max_steps
            self._evaluate(pbar)
            self._save()
        elif self.state.step == start_step:  # nothing trained in this process: still report the model
            self._evaluate(pbar)

    def _tokens_per_step(self) -> int:
        """Tokens one optimizer step reads, all processes together."""
        train = self.config.train
        return train.batch_size * train.grad_accum_steps * self.config.data.max_seq_len

    def _tokens_in_step(self, step: int) -> int:
        """Tokens optimizer step `step` (0-based) reads, all processes together: packed blocks, every position
        (fine-tuning counts the real tokens of its padded examples instead)."""
        return self._tokens_per_step()

    def _log_setup(self) -> None:
        info = self.dist
        processes = (f"{info.world_size} processes ({info.parallel}, {self.config.train.batch_size // info.world_size}"
                     f" sequences each per micro-batch)" if info.enabled else "1 process")
        log.info("data: %d train blocks, %d eval blocks of %d tokens; %s tokens per step; device %s, %s; %s",
                 len(self.data.train), len(self.data.eval), self.config.data.max_seq_len,
                 f"{self._tokens_per_step():,}", self.device, self.precision, processes)

    def _finish_step(self, record: "_StepRecord", pbar) -> None:
        """Read a step's loss and gradient norm (a host sync on a GPU), stop on a non-finite loss, and log the
        step's metrics record and progress bar."""
        loss, grad_norm = float(record.loss), float(record.grad_norm)
        if not math.isfinite(loss):
            latest = ckpt.latest_checkpoint(self.out_dir)
            raise TrainingError(f"loss became {loss} at step {record.step}; last good checkpoint: "
                                f"{latest or 'none'} (try a lower train.lr, a longer warm-up, or fp32)")
        self._log_metrics({"step": record.step, "loss": loss, "lr": record.lr, "grad_norm": grad_norm,
                           "tokens": record.tokens, "elapsed_s": round(record.elapsed_s, 3),
                           "tokens_per_s": round(record.tokens_per_s, 1)})
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss:.3f}", lr=f"{record.lr:.2e}", tok_s=f"{record.tokens_per_s:,.0f}", refresh=False)

    def _parameter_report(self) -> str:
        """The parameter table logged at the start of a run (before the model is built)."""
        return parameter_report(self.config.model)

    def _awaiting_plan(self) -> bool:
        """schedule_horizon "time" before the step time is measured: the last step is not known yet."""
        return self.config.train.schedule_horizon == "time" and self.state.planned_steps is None

    def _last_step(self) -> int:
        """The step the run ends at, and the lr schedule decays to: max_steps, or the budget's planned steps."""
        return self.state.planned_steps or self.config.train.max_steps

    def _plan_steps(self, step_time: float, elapsed_s: float) -> None:
        """schedule_horizon "time": set the last step from rank 0's measured step time (the processes' clocks
        differ): first after HORIZON_WINDOW, then again at each checkpoint, from the steps since the previous one,
        so a run whose first steps were slowed (or sped up) by other work still ends where its budget does. The
        plan is saved in the checkpoint: a resumed run continues with the schedule its checkpoint had. A re-plan
        during the decay anchors it where it is (TrainState.decay_anchor): the lr goes on from its value, towards
        the new last step."""
        train = self.config.train
        first = self.state.planned_steps is None
        if not first:
            progress = decay_progress(self.state.step, train.warmup_steps, self._last_step(), train.decay_fraction,
                                      self.state.decay_anchor)
            anchor = (self.state.step, progress) if progress > 0 else (None, None)  # still at the peak: none needed
            self.state.decay_anchor_step, self.state.decay_anchor_progress = anchor
        planned = planned_last_step(self.state.step, step_time, elapsed_s, train)
        self.state.planned_steps = distributed.gather_objects(planned, self.dist)[0]
        message = ("schedule_horizon time: %.3f s per step, %.0f s left of %s min → the run and its lr decay end "
                   "at step %d")
        (log.info if first else log.debug)(message, step_time, 60 * train.max_time_minutes - elapsed_s,
                                           train.max_time_minutes, self.state.planned_steps)

    def _summary(self) -> dict:
        records = metrics.read_records(self.out_dir) if self.dist.is_main else []
        evals = [m for m in records if "eval_loss" in m]
        last_eval = evals[-1] if evals else {}
        steps = self.state.step
        summary = {
            "out_dir": str(self.out_dir), "steps": steps, "tokens": self.state.tokens_seen,
            "time_s": round(self.state.elapsed_s, 1),
            "tokens_per_s": round(self.state.tokens_seen / self.state.elapsed_s, 1) if self.state.elapsed_s else None,
            "final_mask_accuracy": last_eval.get("eval_mask_accuracy"),
            "best_mask_accuracy": self.state.best_mask_accuracy, "best_mask_step": self.state.best_mask_step,
            "baseline_mask_accuracy": last_eval.get("baseline_mask_accuracy"),
            "final_eval_loss": last_eval.get("eval_loss"), "final_eval_accuracy": last_eval.get("eval_accuracy"),
            "best_eval_accuracy": self.state.best_eval_accuracy, "best_eval_step": self.state.best_eval_step,
            "baseline_accuracy": last_eval.get("baseline_accuracy"), "precision": self.precision,
        }
        if self.dist.is_main:
            atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def train(config: Config) -> dict:
    """Pretrain BertForMaskedLM as `config` says; returns the run summary (also in out_dir/summary.json)."""
    trainer = Trainer(config)
    try:
        summary = trainer.run()
        # Rank 0 still plots and writes the summary; a rank that tore the Gloo group down meanwhile aborts.
        distributed.barrier(trainer.dist)
    except Exception as e:
        # A failing process leaves without the group teardown (it would wait for the others); torchrun then
        # stops them. One that notices another's failure says so in one line instead of a collective's traceback.
        if distributed.peer_failure(e, trainer.dist):
            latest = ckpt.latest_checkpoint(trainer.out_dir)
            raise TrainingError(f"another process failed or stopped answering "
                                f"({str(e).splitlines()[0][:200]}); last good checkpoint: {latest or 'none'}; "
                                "run the same command again to resume from it") from None
        raise
    finally:
        trainer.close()
    distributed.cleanup(trainer.dist)
    return summary
