"""A model as it runs for inference at one precision: fp32, bf16 or int8, chosen once (hardware.py).

    fp32   the model as built: every matmul in float32
    bf16   the same model under torch.autocast(bfloat16): matmuls in bf16 (oneDNN, native only: avx512_bf16,
           AMX or a CUDA GPU); LayerNorm and softmax statistics in fp32 (torch's kernels accumulate in fp32),
           the logits the heads return cast to fp32
    int8   the encoder layers' matrices (Q, K and V joined as one, attention output, FFN up and down) replaced by
           Int8Linear: y = (s_x s_w) ⊙ (q_x q_wᵀ) + b (functional.int8_linear), weights per output channel in
           8 bits (7 on a CPU without VNNI: hardware.int8_weight_max), activations per token; embeddings,
           LayerNorm, softmax, attention's QKᵀ and AV, the pooler and heads stay fp32

    runner = Precision.of("auto", device)          # resolves and logs the choice once
    model = runner.prepare(model)                   # int8: quantises the encoder's linears in place
    with runner.autocast(): out = model(...)        # bf16: autocast; else nothing

The wrappers (FillMask, Classifier, Tagger, Answerer) take `precision=` and do exactly this.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tokenizers import Tokenizer
from torch import Tensor

from . import functional as BF
from .config import ModelConfig
from .hardware import autocast, int8_weight_max, resolve_device, resolve_inference_precision
from .pretrained import build_from_state, read_with_tokenizer


class Int8Linear(nn.Module):
    """y = (s_x s_w) ⊙ (q_x q_wᵀ) + b: an nn.Linear's weight W (out, in) quantised once per output channel,
    q_w, s_w = quantize_int8(W, q_max=weight_max); the input quantised per token on every call
    (functional.int8_linear). `weight_max`: 127, or 63 on a CPU without VNNI (hardware.int8_weight_max).
    `fused`: oneDNN's int8 GEMM on a prepacked q_w, else the from-scratch int32 matmul (same sums, exactly).
    (..., in) → (..., out)."""

    def __init__(self, linear: nn.Linear, weight_max: int = BF.INT8_MAX, fused: bool = True):
        super().__init__()
        q_w, s_w = BF.quantize_int8(linear.weight.detach(), q_max=weight_max)
        self.register_buffer("q_w", q_w)  # (out, in) int8
        self.register_buffer("s_w", s_w[:, 0].contiguous())  # (out,) float32
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.packed_w = torch.ops.onednn.qlinear_prepack(q_w, None) if fused else None  # not state: rebuilt
        self.in_features, self.out_features, self.weight_max = linear.in_features, linear.out_features, weight_max

    def forward(self, x: Tensor) -> Tensor:
        return BF.int8_linear(x, self.q_w, self.s_w, self.bias, self.packed_w)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, weight_max={self.weight_max}, "
                f"fused={self.packed_w is not None}")


def joined_qkv(attention: nn.Module) -> nn.Linear:
    """Q, K and V's linears as one (3D, D) nn.Linear, [W_Q; W_K; W_V]: quantised per output channel, each row's
    scale is the one it had alone, so one int8 matmul (one quantisation of x) gives the same Q, K and V as three."""
    parts = (attention.query, attention.key, attention.value)
    joint = nn.Linear(parts[0].in_features, 3 * parts[0].out_features, parts[0].bias is not None)
    with torch.no_grad():
        joint.weight.copy_(torch.cat([p.weight for p in parts]))
        if joint.bias is not None:
            joint.bias.copy_(torch.cat([p.bias for p in parts]))
    return joint


def quantize_encoder(model: nn.Module, weight_max: int = BF.INT8_MAX, fused: bool = True) -> nn.Module:
    """`model` with every nn.Linear inside its encoder layers (model.encoder or model.bert.encoder) replaced by
    an Int8Linear, in place, Q, K and V joined into one (attention.qkv); embeddings, pooler and heads keep fp32.
    Returns the model."""
    bert = getattr(model, "bert", model)
    for layer in bert.encoder.layers:
        attention = layer.attention
        attention.qkv = joined_qkv(attention)
        attention.query = attention.key = attention.value = None
        for parent in layer.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear(child, weight_max, fused))
    return model


@dataclass(frozen=True)
class Precision:
    """The precision inference runs at ('fp32', 'bf16', 'int8'), why it was chosen, and on which device."""

    name: str
    why: str
    device: torch.device

    @classmethod
    def of(cls, precision: str, device: torch.device | str) -> "Precision":
        """`precision` ('auto', 'fp32', 'bf16', 'int8') resolved for `device` (hardware.resolve_inference_precision:
        a ConfigError where bf16 would be emulated or int8 has no VNNI/AMX)."""
        device = torch.device(device)
        return cls(*resolve_inference_precision(precision, device), device)

    def switches(self) -> dict:
        """The ModelConfig switches the model is built with: torch's fused kernels and one (D, 3D) matmul for Q, K
        and V (int8 joins them in quantize_encoder). The same math as the reference path
        (tests/test_fast_paths.py); on 2 AVX2 cores the one QKV matmul took MiniLM from 40 to 51 sentences/s
        (docs/benchmarks.md, "Inference precision")."""
        return dict(fused=True, fused_qkv=True)

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model to run: int8 quantises its encoder (quantize_encoder, with the weight range this CPU sums
        exactly); fp32 and bf16 leave it as it is."""
        if self.name != "int8":
            return model
        return quantize_encoder(model, int8_weight_max(self.device)[0])

    def autocast(self):
        """The context each forward runs in: bf16 autocast, or nothing."""
        if self.name == "bf16":
            return autocast(self.device, torch.bfloat16)
        return contextlib.nullcontext()

    def describe(self) -> str:
        """'precision fp32 (auto: CPU class avx2: no avx512_bf16 or amx_bf16 instructions)': for a summary line."""
        return f"precision {self.name} ({self.why})"


def load_for_inference(cls: type, path: str | Path, device: str | torch.device, precision: str
                   ) -> tuple[Path, ModelConfig, nn.Module, Tokenizer, Precision]:
    """(directory, config, model, tokenizer, precision): what each inference wrapper starts from. The precision
    is resolved first, so that a CPU without the instructions is told before the (slow) load; the model (`cls`
    with the checkpoint's weights, on `device`) is built with the precision's switches, not yet prepared."""
    device = resolve_device(device)
    precision = Precision.of(precision, device)
    directory, config, state, tokenizer = read_with_tokenizer(path)
    model = build_from_state(cls, dataclasses.replace(config, **precision.switches()), state, str(directory))
    return directory, config, model.to(device), tokenizer, precision
