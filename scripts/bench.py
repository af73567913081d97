"""Benchmark bertmath against transformers' BertForMaskedLM, side by side in one process.

Both models are built from the same ModelConfig (transformers' through `hf_format.config_to_hf`), hold the
same weights (a transformers model's state dict copied into bertmath through `hf_format.state_dict_from_hf`)
and see the same inputs: B×T random token ids, a fixed 15% of positions per row replaced by a mask id and
labelled with the original id (the rest -100). No padding: packed blocks, as in pretraining, so neither
model gets an attention mask. Dropout is the config's (BERT-base: 0.1) in both.

  train  one optimizer step: forward with labels → loss (full logits over the vocabulary for transformers
         and for bertmath unless `sparse_mlm`), backward, AdamW step (torch's default foreach
         implementation, weight decay 0.01 on matrices only: `trainer.parameter_groups`), zero_grad.
         bf16/fp16: torch.autocast around the forward, fp32 weights and optimizer state (fp16 adds a GradScaler).
  infer  eval mode, torch.inference_mode: encoder, then the MLM head at the masked positions only:
         transformers `model.cls(model.bert(x).last_hidden_state[masked])`,
         bertmath     `model.mlm_head(model.bert(x).last_hidden_state[masked])`
         (`[masked]` taken as an index_select with precomputed flat indices: the same rows as a boolean
         index, without a data-dependent shape for torch.compile).

Timing: every system is built, then warmed up (`--warmup` steps per mode: first-call costs, the optimizer's
state allocation and torch.compile's compilation are excluded), then `--repeats` rounds; in each round every
system runs `--steps` steps per mode, one system after the other, the order rotated each round so that no
system always runs first. ms/step is the median over rounds, spread = (max − min)/median over rounds;
tokens/s = B·T / (s/step); a ratio is bertmath/transformers tokens/s, the median of the per-round ratios
of the two interleaved systems (with min–max).

Memory, after timing, one step per system and mode:
  cpu   peak resident-set growth during the step: after gc and malloc_trim(0), the RSS before the step is
        subtracted from the kernel's high-water mark VmHWM, reset just before the step by writing 5 to
        /proc/self/clear_refs (Linux). So it counts what the step allocates on top of the weights and the
        optimizer state it starts with (activations, gradients, temporaries). Where that is unavailable:
        the growth of resource.getrusage's ru_maxrss (a process-wide high-water mark that never falls, so
        only an upper-bound growth; marked in the output).
  cuda  torch.cuda.max_memory_allocated during the step minus memory_allocated before it.
  `state_mb` is the memory held between steps: parameters + optimizer state (bytes of the tensors);
  `peak_mb` = state_mb + step memory: what the system needs at its peak (on CUDA: allocated, not reserved).

FLOPs and MFU (`bertmath.model.flops_per_token`, matmuls only, a multiply-add = 2 FLOPs):
  forward per token   F = 2·N_enc + 4·L·T·D + r·2·(D² + D·V),   N_enc = L·(4D² + 2DF)
  training per token  3F = 6·N_enc + 12·L·T·D + r·6·(D² + D·V)
  train: r = 1, the FLOPs the plain model (full logits, no recomputation) needs — also for sparse MLM and
         activation checkpointing, whose MFU is therefore "useful work", comparable across systems.
         `mfu_executed` (JSON) uses the FLOPs actually executed: r = masked share with sparse MLM.
  infer: r = masked share (15%), the same work for both models.
  MFU = flops_per_token · tokens/s ÷ peak FLOP/s, the peak measured in this run: the best of 5 timed
  N×N @ N×N matmuls (`--peak-size`, default 2048 on CPU, 8192 on CUDA) in the system's compute dtype
  (fp32; bf16 or fp16 for autocast, whose matmuls run in that dtype).

Usage:
  python scripts/bench.py --config configs/base.yaml --batch-size 8 --seq-len 128 --precision fp32
  python scripts/bench.py --config configs/base.yaml --precision bf16 --sparse-mlm --fused-qkv --compile
  python scripts/bench.py --config configs/base.yaml --suite cpu       # the preset comparison rows
  python scripts/bench.py --config configs/base.yaml --suite ablation  # each fast path's contribution
  python scripts/bench.py --config configs/base.yaml --suite gpu --device cuda --batch-size 128  # eager & compiled
  python scripts/bench.py ... --profile                                # torch.profiler table per system
  python scripts/bench.py ... --json                                   # one JSON document on stdout
Unless given, the fast-path switches and the precision come from the config file (model.fused,
model.fused_qkv, model.sparse_mlm, train.precision, train.compile, train.activation_checkpointing); in a
--suite, a switch given on the command line overrides the suite's "best" bertmath settings.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

from bertmath.config import ModelConfig, load_config
from bertmath.hardware import AUTOCAST_DTYPES as DTYPES
from bertmath.hardware import autocast, resolve_precision
from bertmath.hf_format import BERT, config_to_hf, family, state_dict_from_hf
from bertmath.masking import prediction_slots, slot_count
from bertmath.model import BertForMaskedLM, flops_per_token
from bertmath.trainer import parameter_groups

log = logging.getLogger("bench")

PRECISIONS = [*DTYPES, "auto"]  # auto: bf16 where the hardware multiplies it natively, else fp32 (bertmath.hardware)
MODES = ("train", "infer")

# bertmath's best CPU settings, chosen by `--suite ablation` on BERT-base, batch 8, seq 128 (docs/benchmarks.md):
# bf16 autocast ×1.7 (on a CPU with native bf16; auto keeps fp32 where bf16 would be emulated, ~75× slower),
# sparse MLM ×1.25 (training), fused kernels ×1.15; torch.compile does not pay on CPU (×0.97 training),
# activation checkpointing costs ×0.8 for half the step memory.
BEST_CPU = dict(fused=True, fused_qkv=True, sparse_mlm=True, precision="auto", compile=False,
                activation_checkpointing=False)


@dataclass(frozen=True)
class System:
    """One model implementation with its settings: what a benchmark row measures."""

    impl: str  # "bertmath" or "transformers"
    precision: str = "fp32"  # autocast dtype; weights and optimizer state stay fp32
    fused: bool = True  # bertmath: torch's fused kernels (F.scaled_dot_product_attention, F.layer_norm, ...)
    fused_qkv: bool = False  # bertmath: one (D, 3D) matmul for Q, K, V
    sparse_mlm: bool = False  # bertmath: in training, the vocabulary projection only at masked positions
    compile: bool = False  # torch.compile the training forward and the inference function
    activation_checkpointing: bool = False  # recompute each layer in backward
    attn: str = "default"  # transformers: attn_implementation ("default" = what from_config picks)

    @property
    def name(self) -> str:
        if self.impl == "transformers":
            parts = [f"attn={self.attn}"]
        else:
            parts = ["fused" if self.fused else "from-scratch"]
            parts += [p for p, on in (("fused_qkv", self.fused_qkv), ("sparse_mlm", self.sparse_mlm)) if on]
        parts += [p for p, on in (("compile", self.compile), ("act-ckpt", self.activation_checkpointing)) if on]
        return f"{self.impl} {self.precision} " + " ".join(parts)


@dataclass
class Group:
    """Systems measured together (interleaved, in memory at once) and the rows (ratios a/b) they give."""

    title: str
    systems: list[System]
    rows: list[tuple[str, System, System]] = field(default_factory=list)


# --- inputs, models, steps ------------------------------------------------------------------------------


def make_batch(config: ModelConfig, batch_size: int, seq_len: int, mask_rate: float, seed: int,
               device: torch.device, compiled: bool = False) -> dict:
    """ids (B, T) with round(mask_rate·T) positions per row replaced by a mask id; labels (B, T): the
    original id there, -100 elsewhere; index (M,): the flat indices of the masked positions; slots and
    slot_labels (S,): sparse MLM's prediction slots, as the trainer makes them (masking.slot_count)."""
    g = torch.Generator().manual_seed(seed)
    V = config.vocab_size
    ids = torch.randint(1, V, (batch_size, seq_len), generator=g)
    k = max(1, round(mask_rate * seq_len))
    chosen = torch.rand(batch_size, seq_len, generator=g).argsort(dim=1)[:, :k]  # (B, k) distinct positions
    masked = torch.zeros(batch_size, seq_len, dtype=torch.bool).scatter_(1, chosen, True)
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    mask_id = 103 if V > 103 else V - 1  # BERT's [MASK]
    inputs = torch.where(masked, torch.full_like(ids, mask_id), ids)
    index = masked.flatten().nonzero().squeeze(1)  # (M,)
    slots, slot_labels = prediction_slots(labels, slot_count(labels.numel(), mask_rate, device, compiled))
    batch = {"inputs": inputs, "labels": labels, "index": index, "slots": slots, "slot_labels": slot_labels}
    return {name: tensor.to(device) for name, tensor in batch.items()}


def reference_weights(config: ModelConfig, seed: int) -> dict:
    """A randomly initialised transformers BertForMaskedLM's state dict: the weights every system loads."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.BertForMaskedLM(transformers.BertConfig(**config_to_hf(config)))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def build_model(system: System, config: ModelConfig, hf_state: dict, device: torch.device) -> torch.nn.Module:
    if system.impl == "transformers":
        import transformers

        hf_config = transformers.BertConfig(**config_to_hf(config))
        kwargs = {} if system.attn == "default" else {"attn_implementation": system.attn}
        model = transformers.AutoModelForMaskedLM.from_config(hf_config, **kwargs)
        model.load_state_dict(hf_state, strict=True)
        assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight or \
            not config.tie_word_embeddings
        if system.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = BertForMaskedLM(dataclasses.replace(config, fused=system.fused, fused_qkv=system.fused_qkv,
                                                    sparse_mlm=system.sparse_mlm))
        model.load_state_dict(state_dict_from_hf(hf_state), strict=True)
        model.set_activation_checkpointing(system.activation_checkpointing)
    return model.to(device)


def transformers_default_attention(config: ModelConfig) -> str:
    """The attn_implementation transformers picks when none is asked for (read from a built model)."""
    import transformers

    tiny = dataclasses.replace(config, vocab_size=8, hidden_size=config.num_heads, intermediate_size=4,
                               num_layers=1, max_position_embeddings=8, pad_token_id=0)
    model = transformers.AutoModelForMaskedLM.from_config(transformers.BertConfig(**config_to_hf(tiny)))
    return model.config._attn_implementation


class Runner:
    """A built system with its optimizer: `train_step()` and `infer_step()` on a fixed batch."""

    def __init__(self, system: System, config: ModelConfig, hf_state: dict, batch: dict, device: torch.device,
                 fused_adam: bool = False):
        self.system, self.batch, self.device = system, batch, device
        self.model = build_model(system, config, hf_state, device)
        # foreach (torch's default) unless --fused-adam (one fused kernel; what bertmath's trainer uses on CUDA)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, 0.01), lr=1e-4,
                                           **({"fused": True} if fused_adam else {}))
        self.scaler = torch.amp.GradScaler(device.type, enabled=system.precision == "fp16")
        self.amp = DTYPES[system.precision]
        self.forward_loss = self._bertmath_loss if system.impl == "bertmath" else self._transformers_loss
        self.masked_logits = (self._bertmath_masked_logits if system.impl == "bertmath"
                              else self._transformers_masked_logits)
        if system.compile:
            self.forward_loss = torch.compile(self.forward_loss)
            self.masked_logits = torch.compile(self.masked_logits)

    def _autocast(self):
        return autocast(self.device, self.amp)

    def _bertmath_loss(self, batch):
        if self.system.sparse_mlm:  # static-shape slots on CUDA or compiled: no host sync, no graph break
            return self.model(batch["inputs"], labels=batch["slot_labels"], masked_positions=batch["slots"]).loss
        return self.model(batch["inputs"], labels=batch["labels"]).loss

    def _transformers_loss(self, batch):
        return self.model(input_ids=batch["inputs"], labels=batch["labels"]).loss

    def _bertmath_masked_logits(self, inputs, index):
        h = self.model.bert(inputs).last_hidden_state  # (B, T, D)
        return self.model.mlm_head(h.flatten(0, 1).index_select(0, index))  # (M, V)

    def _transformers_masked_logits(self, inputs, index):
        h = self.model.bert(input_ids=inputs).last_hidden_state  # (B, T, D)
        return self.model.cls(h.flatten(0, 1).index_select(0, index))  # (M, V)

    def train_step(self) -> torch.Tensor:
        self.model.train()
        with self._autocast():
            loss = self.forward_loss(self.batch)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def infer_step(self) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            return self.masked_logits(self.batch["inputs"], self.batch["index"])

    def step(self, mode: str) -> torch.Tensor:
        return self.train_step() if mode == "train" else self.infer_step()

    def state_bytes(self) -> int:
        """Parameters + optimizer state (the memory held between steps)."""
        tensors = list(self.model.parameters())
        tensors += [v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


# --- measuring ------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of `fn`, averaged over `steps` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def peak_flops(dtype: torch.dtype, device: torch.device, n: int, trials: int = 5) -> float:
    """The best FLOP/s of `trials` timed (n, n) @ (n, n) matmuls in `dtype` (2n³ FLOPs each), after one warm-up."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b), 1, device) for _ in range(trials))
    return 2 * n**3 / best


_LIBC = None


def _malloc_trim() -> None:
    global _LIBC
    try:
        _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_kib("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda max_memory_allocated - memory_allocated before the step"
    if _can_reset_hwm():
        return "peak RSS growth during the step (VmHWM reset via /proc/self/clear_refs, minus RSS before)"
    return "growth of ru_maxrss (process high-water mark; an upper bound, 0 when an earlier step peaked higher)"


def step_memory_bytes(fn, device: torch.device) -> int:
    """The memory one call of `fn` needs on top of what is allocated before it (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _malloc_trim()
    if _can_reset_hwm():
        before = _proc_status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        fn()
        return max(0, _proc_status_kib("VmHWM") - before) * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


def measure_group(group: Group, config: ModelConfig, args, device: torch.device) -> dict:
    """Build the group's systems, warm up, time interleaved rounds, then measure memory; results per system."""
    hf_state = reference_weights(config, args.seed)
    batch = make_batch(config, args.batch_size, args.seq_len, args.mask_rate, args.seed + 1, device,
                       compiled=any(system.compile for system in group.systems))
    B, T = batch["inputs"].shape
    masked_share = batch["index"].numel() / (B * T)
    runners = []
    for system in group.systems:
        log.info("building %s", system.name)
        runners.append(Runner(system, config, hf_state, batch, device, fused_adam=args.fused_adam))
    del hf_state
    modes = MODES if args.mode == "both" else (args.mode,)
    first_s = {}
    for runner in runners:
        for mode in modes:
            log.info("warm-up %s %s (%d steps)", runner.system.name, mode, args.warmup)
            first_s[(runner.system, mode)] = timed(lambda: runner.step(mode), 1, device)
            if args.warmup > 1:
                timed(lambda: runner.step(mode), args.warmup - 1, device)
    if args.profile:
        for runner in runners:
            for mode in modes:
                profile(runner, mode, args.steps, args.profile_rows)
        return {"systems": [], "rows": []}
    samples = {(r.system, m): [] for r in runners for m in modes}
    for round_ in range(args.repeats):
        order = runners[round_ % len(runners):] + runners[:round_ % len(runners)]
        for mode in modes:
            for runner in order:
                samples[(runner.system, mode)].append(timed(lambda: runner.step(mode), args.steps, device))
        log.info("round %d/%d: %s", round_ + 1, args.repeats, ", ".join(
            f"{r.system.name} {m} {1e3 * samples[(r.system, m)][-1]:.0f} ms" for r in runners for m in modes))
    results = []
    for runner in runners:
        s = runner.system
        for mode in modes:
            memory = step_memory_bytes(lambda: runner.step(mode), device) if args.memory else None
            times = samples[(s, mode)]
            median = statistics.median(times)
            tokens_per_s = B * T / median
            training = mode == "train"
            state_mb = (runner.state_bytes() if training else
                        sum(p.numel() * p.element_size() for p in runner.model.parameters())) / 2**20
            flops = flops_per_token(config, T, training=training, mlm_fraction=1.0 if training else masked_share)
            executed = flops_per_token(config, T, training=training,
                                       mlm_fraction=masked_share if (s.sparse_mlm and s.impl == "bertmath")
                                       or not training else 1.0)
            results.append({
                "system": s.name, "impl": s.impl, "mode": mode, "settings": dataclasses.asdict(s),
                "ms_per_step": 1e3 * median, "ms_min": 1e3 * min(times), "ms_max": 1e3 * max(times),
                "spread_pct": 100 * (max(times) - min(times)) / median, "samples_ms": [1e3 * t for t in times],
                "tokens_per_s": tokens_per_s, "first_step_s": first_s[(s, mode)],
                "step_memory_mb": None if memory is None else memory / 2**20,
                "state_mb": state_mb,
                "peak_mb": None if memory is None else state_mb + memory / 2**20,
                "flops_per_token": flops, "flops_per_token_executed": executed,
            })
    rows = []
    for title, a, b in group.rows:
        row = {"row": title, "bertmath": a.name, "transformers": b.name}
        for mode in modes:
            ratios = [tb / ta for ta, tb in zip(samples[(a, mode)], samples[(b, mode)])]  # tokens/s a ÷ b
            row[mode] = {"ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        rows.append(row)
    del runners
    gc.collect()
    return {"title": group.title, "systems": results, "rows": rows}


def profile(runner: Runner, mode: str, steps: int, row_limit: int) -> None:
    """torch.profiler over `steps` steps; the key_averages table sorted by self CPU time (self GPU time on
    CUDA), on stdout."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            runner.step(mode)
        synchronize(runner.device)
    sort_by = "self_device_time_total" if runner.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=row_limit, max_name_column_width=48)
    print(f"\n### profile: {runner.system.name}, {mode}, {steps} steps\n\n```\n{table}\n```", flush=True)


# --- what to measure ------------------------------------------------------------------------------------


def single_group(args, config: ModelConfig, train_cfg) -> Group:
    """The command line's bertmath settings side by side with transformers (its attention, same precision)."""
    pick = lambda flag, default: default if flag is None else flag  # noqa: E731
    bertmath = System("bertmath", precision=args.precision or train_cfg.precision,
                      fused=pick(args.fused, config.fused), fused_qkv=pick(args.fused_qkv, config.fused_qkv),
                      sparse_mlm=pick(args.sparse_mlm, config.sparse_mlm), compile=pick(args.compile, train_cfg.compile),
                      activation_checkpointing=pick(args.activation_checkpointing, train_cfg.activation_checkpointing))
    hf = System("transformers", precision=args.hf_precision or bertmath.precision, attn=args.hf_attn,
                compile=args.hf_compile)
    return Group("bertmath vs transformers", [bertmath, hf], [("bertmath / transformers", bertmath, hf)])


def suite_groups(name: str, args) -> list[Group]:
    """Preset matrices. cpu: the comparison rows of docs/benchmarks.md; ablation: each fast path alone."""
    overrides = {k: getattr(args, k) for k in ("fused", "fused_qkv", "sparse_mlm", "compile", "activation_checkpointing")
                 if getattr(args, k) is not None}
    if args.precision:
        overrides["precision"] = args.precision
    best = System("bertmath", **{**BEST_CPU, **overrides})
    plain = System("bertmath", "fp32", fused=True)  # identical math: torch's kernels, full logits, fp32
    hf32 = System("transformers", "fp32")  # its defaults: fp32, its default attention (sdpa in 5.x)
    hf16 = System("transformers", "auto", attn="sdpa")  # bf16 autocast where native (else fp32), sdpa
    hf32_eager = System("transformers", "fp32", attn="eager")  # with dropout, eager trains faster than sdpa on CPU
    hf16_eager = System("transformers", "auto", attn="eager")
    scratch = System("bertmath", "fp32", fused=False)  # the from-scratch ops
    if name == "cpu":
        return [
            Group("bertmath vs transformers", [plain, hf32, best, hf16, hf16_eager, hf32_eager], [
                ("(1) identical math & precision: bertmath fp32 full logits vs transformers fp32 (its default attention)",
                 plain, hf32),
                ("(1b) bertmath fp32 full logits vs transformers fp32 eager attention", plain, hf32_eager),
                ("(2) bertmath best vs transformers default (fp32, its default attention)", best, hf32),
                ("(3) bertmath best vs transformers bf16 autocast, sdpa", best, hf16),
                ("(3b) bertmath best vs transformers bf16 autocast, eager attention", best, hf16_eager),
            ]),
            Group("from-scratch math", [scratch, hf32_eager], [
                ("(0) bertmath from-scratch ops (fused=False) vs transformers eager attention, fp32", scratch, hf32_eager),
            ]),
        ]
    if name == "ablation":
        qkv = dataclasses.replace(plain, fused_qkv=True)
        sparse = dataclasses.replace(plain, sparse_mlm=True)
        bf16 = dataclasses.replace(plain, precision="bf16")
        compiled = dataclasses.replace(plain, compile=True)
        other_compile = dataclasses.replace(best, compile=not best.compile)
        ckpt = dataclasses.replace(best, activation_checkpointing=True)
        return [
            Group("one switch at a time (vs fused fp32)", [plain, scratch, qkv, sparse], [
                ("fused=False (from scratch) / fused", scratch, plain), ("+fused_qkv / fused", qkv, plain),
                ("+sparse_mlm / fused", sparse, plain)]),
            Group("one switch at a time (vs fused fp32), continued", [plain, bf16, compiled], [
                ("+bf16 autocast / fp32", bf16, plain), ("+compile / eager", compiled, plain)]),
            Group("the best settings, with and without compile, with checkpointing", [best, other_compile, ckpt], [
                (f"best {'without' if best.compile else 'with'} compile / best", other_compile, best),
                ("best + activation checkpointing / best", ckpt, best)]),
        ]
    if name == "gpu":
        # bertmath's best (eager) and the same + torch.compile vs transformers' best (bf16 autocast, sdpa); with
        # --hf-compile also transformers + torch.compile. --compile/--no-compile is ignored here (both are run).
        eager = dataclasses.replace(best, compile=False)
        compiled = dataclasses.replace(best, compile=True)
        systems = [eager, compiled, hf16]
        rows = [("bertmath best (eager) / transformers bf16 sdpa", eager, hf16),
                ("bertmath best + compile / transformers bf16 sdpa", compiled, hf16),
                ("bertmath: compile / eager", compiled, eager)]
        if args.hf_compile:
            hf16_compiled = dataclasses.replace(hf16, compile=True)
            systems.append(hf16_compiled)
            rows += [("bertmath best + compile / transformers bf16 sdpa + compile", compiled, hf16_compiled),
                     ("transformers: compile / eager", hf16_compiled, hf16)]
        return [Group("bertmath vs transformers, GPU", systems, rows)]
    raise SystemExit(f"unknown suite {name!r}; choose cpu, ablation or gpu")


# --- output ---------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "platform": platform.platform()}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["cpu"] = model
        info["cpu_count"] = os.cpu_count()
        info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_sms"] = props.multi_processor_count
        info["cuda"] = torch.version.cuda
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip() or "?"
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def markdown(report: dict) -> str:
    lines = []
    meta = report["meta"]
    lines.append(f"{meta['config']} | batch {meta['batch_size']} × seq {meta['seq_len']} | {meta['device']} | "
                 f"torch {meta['machine']['torch']}, transformers {meta['machine'].get('transformers', '-')} | "
                 f"{meta['machine'].get('cpu', '')} ({meta['machine']['threads']} threads)"
                 + (f" | {meta['machine']['gpu']} ({meta['machine'].get('gpu_memory_gib', '?')} GiB), CUDA "
                    f"{meta['machine'].get('cuda', '?')}, driver {meta['machine'].get('driver', '?')}"
                    if "gpu" in meta["machine"] else ""))
    lines.append("peak matmul FLOP/s: " + ", ".join(f"{k} {v / 1e9:.0f} G" for k, v in meta["peak_flops"].items())
                 + (f" (bf16/fp32 = {meta['peak_flops']['bf16'] / meta['peak_flops']['fp32']:.2f})"
                    if "bf16" in meta["peak_flops"] and "fp32" in meta["peak_flops"] else ""))
    lines.append(f"steps/round {meta['steps']}, rounds {meta['repeats']}, warm-up {meta['warmup']}; "
                 f"transformers' default attention: {meta['transformers_default_attention']}; memory: {meta['memory_method']}")
    for group in report["groups"]:
        lines += ["", f"#### {group['title']}", "",
                  "| system | mode | ms/step | spread | tokens/s | step mem MB | state MB | peak MB | MFU |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group["systems"]:
            mem = "-" if r["step_memory_mb"] is None else f"{r['step_memory_mb']:.0f}"
            peak = "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
            lines.append(f"| {r['system']} | {r['mode']} | {r['ms_per_step']:.1f} | {r['spread_pct']:.1f}% | "
                         f"{r['tokens_per_s']:.0f} | {mem} | {r['state_mb']:.0f} | {peak} | {100 * r['mfu']:.1f}% |")
        if group["rows"]:
            modes = [m for m in MODES if m in group["rows"][0]]
            lines += ["", "| row | " + " | ".join(f"{m} ratio [min–max]" for m in modes) + " |",
                      "|---|" + "---:|" * len(modes)]
            for row in group["rows"]:
                cells = [f"**{row[m]['ratio']:.2f}** [{row[m]['min']:.2f}–{row[m]['max']:.2f}]" for m in modes]
                lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/base.yaml", help="YAML config: the model shape (and defaults)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=None, help="default: the config's data.max_seq_len")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="bertmath autocast dtype; default: train.precision")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=2, help="steps per system and mode in each timed round")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (interleaved across systems)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per system and mode first (compilation)")
    p.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    for name, text in (("fused", "torch's fused kernels (F.scaled_dot_product_attention, ...)"),
                       ("fused-qkv", "one (D, 3D) matmul for Q, K, V"),
                       ("sparse-mlm", "vocabulary projection only at masked positions in training"),
                       ("compile", "torch.compile (compilation excluded by the warm-up)"),
                       ("activation-checkpointing", "recompute each layer in backward")):
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                       help=f"bertmath: {text}; default from the config")
    p.add_argument("--hf-attn", default="default", help="transformers' attn_implementation: default, sdpa or eager")
    p.add_argument("--hf-precision", choices=PRECISIONS, default=None, help="default: bertmath's precision")
    p.add_argument("--hf-compile", action="store_true", help="torch.compile transformers' model too")
    p.add_argument("--fused-adam", action="store_true",
                   help="both systems: AdamW(fused=True) instead of torch's default foreach implementation")
    p.add_argument("--inductor-freezing", action="store_true",
                   help="compiled inference graphs: inductor freezing (weights as constants, prepacked for oneDNN); "
                        "applies to every compiled system")
    p.add_argument("--suite", choices=["cpu", "ablation", "gpu"], default=None, help="run a preset matrix of rows")
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's")
    p.add_argument("--tf32", action="store_true", help="CUDA: allow TF32 matmuls for fp32 (both models)")
    p.add_argument("--peak-size", type=int, default=None, help="matmul size for the peak FLOP/s (2048 cpu, 8192 cuda)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory pass")
    p.add_argument("--profile", action="store_true", help="instead of timing: torch.profiler tables per system")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (logs on stderr)")
    p.add_argument("--out", default=None, help="also write the JSON document to this file")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available")
    if args.inductor_freezing:
        from torch._inductor import config as inductor_config
        inductor_config.freezing = True  # only inference graphs (no grad) are frozen
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = load_config(args.config)
    config, train_cfg = cfg.model, cfg.train
    if family(config) is not BERT:  # the transformers side below is BertForMaskedLM
        raise SystemExit(f"{args.config}: bench.py compares with transformers' BERT; this model's twin is "
                         f"{family(config).classes['mlm']}")
    args.seq_len = args.seq_len or cfg.data.max_seq_len
    groups = suite_groups(args.suite, args) if args.suite else [single_group(args, config, train_cfg)]
    default_attn = transformers_default_attention(config)
    resolved = {p: resolve_precision(p, device) for p in PRECISIONS}  # auto → what the trainer would pick here
    for group in groups:  # name the attention and the precision each system will actually use
        rename = lambda s: dataclasses.replace(s, attn=default_attn if s.attn == "default" else s.attn,  # noqa: E731
                                               precision=resolved[s.precision])
        group.systems = [rename(s) for s in group.systems]
        group.rows = [(t, rename(a), rename(b)) for t, a, b in group.rows]
    precisions = sorted({"fp32"} | {s.precision for g in groups for s in g.systems}, key=list(DTYPES).index)
    size = args.peak_size or (8192 if device.type == "cuda" else 2048)
    peaks = {p: peak_flops(DTYPES[p], device, size) for p in precisions}
    log.info("peak matmul FLOP/s (%d×%d): %s", size, size, ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in peaks.items()))
    report = {"meta": {"config": args.config, "batch_size": args.batch_size, "seq_len": args.seq_len,
                       "device": str(device), "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
                       "mask_rate": args.mask_rate, "peak_flops": peaks, "peak_size": size,
                       "inductor_freezing": args.inductor_freezing,
                       "transformers_default_attention": default_attn, "memory_method": memory_method(device),
                       "machine": machine_info(device), "command": " ".join(sys.argv)},
              "groups": []}
    for group in groups:
        result = measure_group(group, config, args, device)
        if not args.profile:
            report["groups"].append(result)
            log.info("done: %s", group.title)
    if args.profile:
        return report
    # MFU against the larger of the peaks measured before and after the timing (the conservative choice)
    after = {p: peak_flops(DTYPES[p], device, size) for p in precisions}
    report["meta"]["peak_flops_before"], report["meta"]["peak_flops_after"] = peaks, after
    report["meta"]["peak_flops"] = peaks = {p: max(peaks[p], after[p]) for p in precisions}
    for result in (r for g in report["groups"] for r in g["systems"]):
        peak = peaks[result["settings"]["precision"]]
        result["peak_flops"] = peak
        result["mfu"] = result["flops_per_token"] * result["tokens_per_s"] / peak
        result["mfu_executed"] = result["flops_per_token_executed"] * result["tokens_per_s"] / peak
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(markdown(report))
    return report


if __name__ == "__main__":
    main()
