"""The math of BERT, from scratch: pure tensor functions, no state, no nn.Module.

Each function is written with elementary tensor ops (exp, max, sum, matmul, erf, tanh, sqrt) and its
docstring states the formula. Each takes `fused=`: when true, it calls torch's fused kernel for the same
math instead (`F.scaled_dot_product_attention`, `F.layer_norm`, ...).
`tests/test_functional.py` proves both paths equal to `torch.nn.functional`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def relu(x: Tensor, fused: bool = False) -> Tensor:
    """relu(x) = max(x, 0)."""
    if fused:
        return F.relu(x)
    return torch.where(x > 0, x, torch.zeros_like(x))


def sigmoid(x: Tensor, fused: bool = False) -> Tensor:
    """σ(x) = 1 / (1 + e^{-x}), computed as e^{min(x,0)} / (1 + e^{-|x|}) so that no e^{large} overflows."""
    if fused:
        return torch.sigmoid(x)
    # z = e^{-|x|} in (0, 1]: never overflows. |x| is written as a `where` on the same condition as the
    # branches below, not x.abs(): abs'(0) = 0 would make σ'(0) come out 0 instead of 1/4.
    z = torch.exp(-torch.where(x >= 0, x, -x))
    return torch.where(x >= 0, 1 / (1 + z), z / (1 + z))


def gelu(x: Tensor, approximate: str = "none", fused: bool = False) -> Tensor:
    """gelu(x) = x Φ(x) = ½ x (1 + erf(x / √2))                              (approximate="none")
    gelu(x) ≈ ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))                        (approximate="tanh")
    Hendrycks & Gimpel 2016; BERT's released checkpoints use the erf form."""
    if approximate not in ("none", "tanh"):  # checked first so that both paths raise the same error
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    if fused:
        return F.gelu(x, approximate=approximate)
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def softmax(x: Tensor, dim: int = -1, fused: bool = False) -> Tensor:
    """softmax(x)_i = e^{x_i - max x} / Σ_j e^{x_j - max x}.

    Subtracting max x changes nothing mathematically and keeps every exponent <= 0, so logits of
    ±1e4 neither overflow nor give NaN. A row that is entirely -inf gives NaN, as torch's does."""
    if fused:
        return torch.softmax(x, dim=dim)
    e = torch.exp(x - x.amax(dim=dim, keepdim=True).detach())  # detach: the shift's gradient is 0 anyway
    return e / e.sum(dim=dim, keepdim=True)


def log_softmax(x: Tensor, dim: int = -1, fused: bool = False) -> Tensor:
    """log softmax(x)_i = (x_i - max x) - log Σ_j e^{x_j - max x}."""
    if fused:
        return torch.log_softmax(x, dim=dim)
    shifted = x - x.amax(dim=dim, keepdim=True).detach()
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float = 1e-12, fused: bool = False) -> Tensor:
    """LN(x) = (x - μ) / √(σ² + ε) · γ + β over the last dim, with μ = mean(x), σ² = mean((x - μ)²)
    (the biased variance); no β when `bias` is None (ModernBERT's norms). Ba, Kiros & Hinton 2016."""
    if fused:
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * weight
    return y if bias is None else y + bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b, W of shape (out, in). (Already a single fused kernel; there is no other path.)"""
    return F.linear(x, weight, bias)


INT8_MAX = 127  # symmetric int8: −127..127 (−128 is left out, so that q and −q are both representable)


def quantize_int8(x: Tensor, dim: int = -1, q_max: int = INT8_MAX) -> tuple[Tensor, Tensor]:
    """q = round(x / s) clamped to [−q_max, q_max], s = max|x| / q_max over `dim` (keepdim): symmetric, no zero
    point. Over the last dim of activations (N, K) that is one scale per token (dynamic: computed from each input);
    over the last dim of a weight (out, in), one per output channel. x ≈ s·q, |x − s·q| ≤ s/2 elementwise.
    q_max 63 (7 bits) for weights a CPU without VNNI multiplies (hardware.int8_weight_max).
    An all-zero row gets s = 1 (q = 0), not 0/0. → (q int8 like x, s float32 with `dim` of size 1)."""
    # max|x| = max(max x, −min x): two reading passes, cheaper than writing |x| first (this runs on every activation)
    s = torch.maximum(x.amax(dim=dim, keepdim=True), -x.amin(dim=dim, keepdim=True)).float() / q_max
    s = torch.where(s > 0, s, torch.ones_like(s))
    # |x/s| ≤ q_max up to one rounding, which round() absorbs: no clamp pass
    return (x.float() / s).round_().to(torch.int8), s


def int8_linear(x: Tensor, q_w: Tensor, s_w: Tensor, bias: Tensor | None = None, packed_w: Tensor | None = None) -> Tensor:
    """y = (s_x s_w) ⊙ (q_x q_wᵀ) + b,  q_x, s_x = quantize_int8(x) per token; q_w (out, in) int8 and s_w (out,)
    its per-output-channel scales (quantize_int8 of W). (..., in) → (..., out) float32.

    q_x q_wᵀ is summed exactly in int32 (|Σ| ≤ 127²·in, no overflow below in = 133,000). From scratch it is an
    int32 matmul; with `packed_w` (q_w laid out by torch.ops.onednn.qlinear_prepack) oneDNN's int8 GEMM computes
    it: u8×s8 products (q_x + 128 against q_w, zero point 128) in VPDPBUSD (AVX512-VNNI, AVX-VNNI) or AMX tiles, int32 sums.
    Without VNNI, oneDNN uses VPMADDUBSW, which adds each pair of products in int16 and saturates above 32,767:
    exact only while 255·2·max|q_w| ≤ 32,767, i.e. |q_w| ≤ 63 (hardware.int8_weight_max gives such CPUs 7-bit
    weights). Jacob et al. 2018; per-token activation scales as LLM.int8() (Dettmers et al. 2022) without its
    outlier split."""
    shape = x.shape
    q_x, s_x = quantize_int8(x.reshape(-1, shape[-1]))  # (N, in), (N, 1)
    if packed_w is None:
        y = (q_x.to(torch.int32) @ q_w.to(torch.int32).T).float() * s_w  # (N, out): exact int32 sums, rescaled
    else:  # oneDNN: (q_x q_wᵀ) ⊙ s_w in one kernel. It is handed q_x + 128 as uint8 with zero point 128 (the
        # same sums; its u8×s8 kernels need no s8 compensation pass: 15-20% faster on AVX2); flipping the sign bit
        # of the int8 bytes adds the 128
        u_x = q_x.view(torch.uint8).bitwise_xor(128)
        y = torch.ops.onednn.qlinear_pointwise(u_x, 1.0, 128, packed_w, s_w, torch.zeros_like(s_w, dtype=torch.long),
                                               None, 1.0, 0, torch.float32, "none", [], "")
    y = y * s_x if bias is None else torch.addcmul(bias, y, s_x)  # one pass for the token scale and the bias
    return y.view(*shape[:-1], y.shape[-1])


def dropout(x: Tensor, p: float, training: bool, generator: torch.Generator | None = None,
            fused: bool = False) -> Tensor:
    """dropout(x)_i = x_i · m_i / (1 - p), m_i ~ Bernoulli(1 - p); the identity when not training.
    Srivastava et al. 2014 (inverted dropout: the expected value is unchanged)."""
    if not training or p == 0.0:
        return x
    if fused and generator is None:
        return F.dropout(x, p, training=True)
    if p == 1.0:  # every element dropped; x·0/(1 - p) would be 0/0 = NaN (F.dropout gives zeros)
        return x * 0
    # Bernoulli draws in F.dropout's order, and its rounding (x times the scaled mask): with the same seed both
    # paths drop the same elements, so a model trains the same on either (and as transformers' BERT does).
    keep = torch.empty_like(x).bernoulli_(1 - p, generator=generator)
    return x * (keep / (1 - p))


def attention_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Turn a key mask into the additive term of the attention logits.

    Boolean (True = attend) → 0 where True, the dtype's most negative finite number where False.
    A finite number, not -inf, so that a row with every key hidden gives uniform weights, not NaN.
    A float mask is taken to be additive already."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask.to(dtype)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 dropout_p: float = 0.0, training: bool = False,
                                 return_weights: bool = False, fused: bool = False):
    """Attention(Q, K, V) = softmax(QKᵀ / √d_k + M) V.                    Vaswani et al. 2017, §3.2.1.

    q: (B, H, Tq, d_k), k: (B, H, Tk, d_k), v: (B, H, Tk, d_v) → (B, H, Tq, d_v).
    mask: broadcastable to (B, H, Tq, Tk); boolean (True = attend) or additive (0 / large negative).
    Dropout (rate `dropout_p`, when `training`) is applied to the attention weights.
    With `return_weights=True` also returns softmax(QKᵀ/√d_k + M) (always the from-scratch path)."""
    p = dropout_p if training else 0.0
    if fused and not return_weights:
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores + attention_bias(mask, scores.dtype)
    weights = softmax(scores, dim=-1)
    out = dropout(weights, p, training=p > 0) @ v  # (B, H, Tq, d_v)
    return (out, weights) if return_weights else out


def alibi_slopes(num_heads: int) -> Tensor:
    """m_h = 2^(-8h/H), h = 1..H: one slope per head, a geometric sequence from 2^(-8/H) down to 2^-8.
    For H not a power of two, the slopes of the next lower power of two n, then every other slope of 2n
    (Press et al. 2022, ALiBi, §3 and their reference code). (H,) float32."""
    def powers_of_two(n: int) -> list[float]:
        return [2 ** (-8 * h / n) for h in range(1, n + 1)]
    n = 2 ** math.floor(math.log2(num_heads))
    slopes = powers_of_two(n) + powers_of_two(2 * n)[0::2][:num_heads - n]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(num_heads: int, length: int, device: torch.device | None = None) -> Tensor:
    """B_hij = -m_h · |i - j|: the attention-logit bias of ALiBi, symmetric for a bidirectional encoder
    (Press et al. 2022 define the causal -m_h·(i-j); MosaicBERT uses |i-j|). Nearby keys weigh more from
    step 0, at every length: no parameters, no table to run out of. → (H, T, T) float32."""
    positions = torch.arange(length, device=device)
    distance = (positions[None, :] - positions[:, None]).abs().float()  # (T, T)
    return -alibi_slopes(num_heads).to(device)[:, None, None] * distance  # (H, T, T)


def rotary_angles(length: int, dim: int, base: float, like: Tensor) -> Tensor:
    """t·θ_i for t = 0..T-1 and θ_i = 1 / base^(2i/d), i = 0..d/2-1: the angle each position turns the i-th
    pair of a d-wide head by. → (T, d/2) on `like`'s device, in float32 (float64 for a float64 `like`), computed
    as transformers' rotary embeddings compute it (θ_i first, then one product), so that both round alike:
    t·θ_i reaches T radians, where every last bit counts (bf16's 8-bit mantissa would be off by whole
    fractions of a turn)."""
    precise = torch.promote_types(like.dtype, torch.float32)
    theta = 1.0 / (base ** (torch.arange(0, dim, 2, device=like.device, dtype=precise) / dim))  # (d/2,)
    return torch.arange(length, device=like.device, dtype=precise)[:, None] * theta  # (T, d/2)


def rotary(x: Tensor, base: float = 10000.0, fused: bool = False) -> Tensor:
    """RoPE: rotate each pair (x_2i, x_2i+1) of the vector at position t by the angle t·θ_i, θ_i = base^(-2i/d):
        (x_2i, x_2i+1) → (x_2i cos tθ_i − x_2i+1 sin tθ_i,  x_2i sin tθ_i + x_2i+1 cos tθ_i).
    Applied to q and k, it makes q_s·k_t depend on s − t only (Su et al. 2021, RoFormer, §3.4.2; its pairs are
    neighbours, "interleaved"). x: (..., T, d) with d even → (..., T, d), in x's dtype (angles: rotary_angles).
    fused: the same rotation as RoFormer's §3.2 writes it, one complex product (x_2i + i·x_2i+1)·e^{i·tθ_i}: one
    kernel each way instead of six, which reads strided halves (float32/float64; other dtypes have no complex
    kernel on every device and take the real form)."""
    angle = rotary_angles(x.shape[-2], x.shape[-1], base, x)  # (T, d/2)
    if fused and x.dtype in (torch.float32, torch.float64):
        turn = torch.polar(torch.ones_like(angle), angle)  # e^{i·tθ_i}: (T, d/2) complex
        pairs = x.unflatten(-1, (-1, 2))  # (..., T, d/2, 2): a view, read as complex when its layout allows
        even_layout = pairs.storage_offset() % 2 == 0 and all(s % 2 == 0 for s in pairs.stride()[:-1])
        pairs = torch.view_as_complex(pairs if even_layout and pairs.stride(-1) == 1 else pairs.contiguous())
        return torch.view_as_real(pairs * turn).flatten(-2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]  # (..., T, d/2) each
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)  # interleave back


def rotary_half(x: Tensor, base: float = 10000.0) -> Tensor:
    """RoPE on the halves: the pairs are (x_i, x_i+d/2), i = 0..d/2-1, each rotated by t·θ_i as in `rotary`:
        (x_i, x_i+d/2) → (x_i cos tθ_i − x_i+d/2 sin tθ_i,  x_i sin tθ_i + x_i+d/2 cos tθ_i).
    The same rotations on a permutation of the dimensions (GPT-NeoX's layout, ModernBERT's: Warner et al. 2024);
    q_s·k_t again depends on s − t only. x: (..., T, d) with d even → (..., T, d), in x's dtype."""
    angle = rotary_angles(x.shape[-2], x.shape[-1], base, x)  # (T, d/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    first, second = x.chunk(2, dim=-1)  # (..., T, d/2) each
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def sliding_window_mask(length: int, window: int, device: torch.device | None = None) -> Tensor:
    """W_ij = |i − j| ≤ ⌊w/2⌋: query i sees the keys at most half a window away on either side (w + 1 keys for
    an even w, fewer at the ends). Local attention as in Longformer (Beltagy et al. 2020) and ModernBERT
    (Warner et al. 2024), whose `local_attention: 128` means |i − j| ≤ 64 (transformers'
    sliding_window_bidirectional_overlay with sliding_window = local_attention // 2). → (T, T) bool, True = attend."""
    positions = torch.arange(length, device=device)
    return (positions[None, :] - positions[:, None]).abs() <= window // 2  # (T, T)


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100, fused: bool = False) -> Tensor:
    """CE = -(1/|S|) Σ_{i∈S} log softmax(z_i)_{y_i}, S = {i : y_i ≠ ignore_index}.

    logits: (N, V), target: (N,). When every target is ignored (|S| = 0) the loss is 0 with zero
    gradient, not NaN as in `F.cross_entropy`: a batch with no masked token must not poison training."""
    logits = logits.reshape(-1, logits.shape[-1])
    target = target.reshape(-1)
    valid = target != ignore_index
    count = valid.sum().clamp(min=1).to(logits.dtype)
    if fused:
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum") / count
    safe_target = torch.where(valid, target, torch.zeros_like(target))  # any index; the term is zeroed below
    nll = -log_softmax(logits, dim=-1).gather(-1, safe_target[:, None])[:, 0]
    return torch.where(valid, nll, torch.zeros_like(nll)).sum() / count


def mse_loss(prediction: Tensor, target: Tensor, fused: bool = False) -> Tensor:
    """MSE = (1/N) Σ_i (ŷ_i - y_i)², the regression loss of a one-output head. (N,) with (N,) → ()."""
    if fused:
        return F.mse_loss(prediction, target)
    return ((prediction - target) ** 2).mean()


def cosine_similarity(a: Tensor, b: Tensor, dim: int = -1, eps: float = 1e-8, fused: bool = False) -> Tensor:
    """cos(a, b) = a·b / (max(‖a‖, ε) · max(‖b‖, ε)), ‖a‖ = √(Σ_i a_i²), over `dim`; a, b broadcast.

    1 for vectors pointing the same way, 0 for orthogonal ones, -1 for opposite ones, whatever their lengths.
    ε keeps a zero vector at similarity 0 instead of 0/0. (…, D) with (…, D) → (…)."""
    if fused:
        return F.cosine_similarity(a, b, dim=dim, eps=eps)
    norm_a = torch.sqrt((a * a).sum(dim=dim)).clamp(min=eps)
    norm_b = torch.sqrt((b * b).sum(dim=dim)).clamp(min=eps)
    return (a * b).sum(dim=dim) / (norm_a * norm_b)


def l2_normalize(x: Tensor, dim: int = -1, eps: float = 1e-12, fused: bool = False) -> Tensor:
    """x̂ = x / max(‖x‖₂, ε) over `dim`: unit length, so that a dot product of two is their cosine. ε keeps a zero
    vector at zero instead of 0/0 (F.normalize's, sentence-transformers' Normalize). (…, D) → (…, D)."""
    if fused:
        return F.normalize(x, p=2.0, dim=dim, eps=eps)
    return x / torch.sqrt((x * x).sum(dim=dim, keepdim=True)).clamp(min=eps)


def mean_pool(h: Tensor, mask: Tensor | None = None) -> Tensor:
    """e = Σ_t m_t h_t / Σ_t m_t: the mean of the real tokens' vectors (m_t = 1; every token without a mask).
    Sentence-BERT's default pooling (Reimers & Gurevych 2019, §3). (B, T, D) with (B, T) → (B, D)."""
    if mask is None:
        return h.mean(dim=1)
    m = mask.to(h.dtype)[:, :, None]  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)  # (clamp: an all-padding row gives 0, not NaN)


def max_pool(h: Tensor, mask: Tensor | None = None) -> Tensor:
    """e_d = max_{t : m_t = 1} h_td: each dimension's largest value over the real tokens. Padding is set to the
    lowest value first, so that it never wins (sentence-transformers' -1e9; here the dtype's minimum).
    (B, T, D) with (B, T) → (B, D)."""
    if mask is not None:
        h = h.masked_fill(~mask.bool()[:, :, None], torch.finfo(h.dtype).min)
    return h.max(dim=1).values


def cls_pool(h: Tensor, mask: Tensor | None = None) -> Tensor:
    """e = h_[CLS] = h_0: the first token's vector, which BERT's pooler and classifier read. (B, T, D) → (B, D)."""
    return h[:, 0]


POOLING = {"mean": mean_pool, "max": max_pool, "cls": cls_pool}
