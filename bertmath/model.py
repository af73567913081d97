"""The BERT encoder, one small class per concept; each forward reads as its formula.

    Embeddings → N × EncoderLayer(SelfAttention, FeedForward) → MLMHead        Devlin et al. 2019, §3.
                                                                → Pooler → classifier (fine-tuning, §4)
                                                                → classifier per token; start/end per token

The same classes build the encoders that followed BERT, each part a config switch picked at construction:
rotary positions (RoFormer, Su et al. 2021), pre-LN layers with a final norm (Xiong et al. 2020), a gated
feed-forward (Shazeer 2020), no biases, sliding-window local attention and unpadding (ModernBERT, Warner et
al. 2024); transformers' RoFormer and ModernBERT are their twins (hf_format.py).

Dims: B batch, T tokens, D hidden_size, H heads, Dh = D/H head size, F intermediate_size, V vocab;
N real (non-padding) tokens of a padded batch, when `config.unpad` takes the padding out (see `Unpadded`).
The math lives in `functional.py`; modules hold parameters and call it. No I/O here.
The ops, from scratch or torch's fused kernels, are chosen once, at construction, by `config.fused`: each
module keeps the flag and hands it to the functional ops it calls; no global switch is read in a forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch import Tensor

from . import functional as BF
from .config import ModelConfig
from .masking import prediction_slots


@dataclass
class BertOutput:
    last_hidden_state: Tensor  # (B, T, D)
    pooler_output: Tensor | None = None  # (B, D): tanh(W h_[CLS] + b), when the model has a pooler


@dataclass
class MaskedLMOutput:
    logits: Tensor  # (B, T, V); (S, V) at the S masked_positions when they are given (sparse MLM)
    loss: Tensor | None = None  # mean cross-entropy over positions whose label is not -100


@dataclass
class SequenceClassifierOutput:
    logits: Tensor  # (B, C) class scores, or (B, 1) predicted values for regression (C = num_labels = 1)
    loss: Tensor | None = None  # mean cross-entropy over the batch, or mean squared error for regression


@dataclass
class TokenClassifierOutput:
    logits: Tensor  # (B, T, L) label scores of every token
    loss: Tensor | None = None  # mean cross-entropy over tokens whose label is not -100


@dataclass
class EmbeddingOutput:
    embeddings: Tensor  # (B, D): one vector per text, unit length when the model normalises
    last_hidden_state: Tensor  # (B, T, D): the encoder's output it was pooled from


@dataclass
class SpanOutput:
    start_logits: Tensor  # (B, T): how likely each token starts the answer
    end_logits: Tensor  # (B, T): how likely each token ends it
    loss: Tensor | None = None  # (CE(start) + CE(end)) / 2


@dataclass(frozen=True)
class Unpadded:
    """The real tokens of a padded (B, T) batch: `index` (N,) holds their flat positions among the B·T, in order.

    No real token attends to padding, so padding rows change no result; yet every dense layer (Q, K, V and
    output projections, feed-forward, LayerNorm) would spend as much work on them as on real rows. With the
    padding taken out, those layers run on (N, D); only the attention's softmax(QKᵀ/√d_k + M)V, which mixes
    tokens of one sequence, needs the (B, T) layout, and gets it by `unpack` and `pack` around it.
    STS-B pairs in random batches of 32 are 60% padding. Unpadding as in MosaicBERT (Portes et al. 2023) and
    ModernBERT (Warner et al. 2024)."""

    index: Tensor  # (N,)
    batch: int  # B
    length: int  # T

    @classmethod
    def of(cls, attention_mask: Tensor | None) -> "Unpadded | None":
        """None when no position is padding, and under torch.compile, whose graphs want shapes that do not
        depend on the data (N does)."""
        if attention_mask is None or torch.compiler.is_compiling() or bool(attention_mask.all()):
            return None
        return cls(attention_mask.flatten().nonzero().squeeze(1), *attention_mask.shape)

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) → (N, ...): the rows of the real tokens."""
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, ...) → (B, T, ...), zeros at the padding."""
        flat = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(0, self.index, x)
        return flat.view(self.batch, self.length, *x.shape[1:])


def dropout(x: Tensor, p: float, training: bool, fused: bool, unpadded: Unpadded | None = None) -> Tensor:
    """functional.dropout of x, (B, T, D) or, unpadded, (N, D). Unpadded rows get their masks drawn for the
    whole padded batch: the random stream then moves as in the padded model (and in transformers' BERT), so
    a seed drops the same elements with or without unpadding, and the two train alike (tests/test_model.py)."""
    if unpadded is None or not training or p == 0.0:
        return BF.dropout(x, p, training, fused=fused)
    return unpadded.pack(BF.dropout(unpadded.unpack(x), p, training, fused=fused))


class LayerNorm(nn.Module):
    """LN(x) = (x - μ)/√(σ² + ε) · γ + β over the last dim (D); γ = 1, β = 0 at init; no β with config.bias off."""

    def __init__(self, size: int, eps: float, fused: bool, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None
        self.eps, self.fused = eps, fused

    @classmethod
    def of(cls, config: ModelConfig) -> "LayerNorm":
        """A D-wide LayerNorm as the config says (ε, fused kernel, bias)."""
        return cls(config.hidden_size, config.layer_norm_eps, config.fused, config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return BF.layer_norm(x, self.weight, self.bias, self.eps, fused=self.fused)


class Embeddings(nn.Module):
    """e_t = Drop(LN(E_tok[x_t] + E_pos[t] + E_seg[s_t])). (B, T) ids → (B, T, D).
    With alibi or rope positions there is no E_pos: order enters in the attention instead. With
    type_vocab_size 0 there is no E_seg (ModernBERT: e_t = Drop(LN(E_tok[x_t]))) and segment ids are ignored."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = (nn.Embedding(config.max_position_embeddings, config.hidden_size)
                                    if config.position_encoding == "learned" else None)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, config.hidden_size)
                                      if config.type_vocab_size > 0 else None)
        self.norm = LayerNorm.of(config)
        self.dropout_p, self.fused = config.hidden_dropout, config.fused

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        e = self.word_embeddings(input_ids)  # (B, T, D)
        if self.token_type_embeddings is not None:
            e = e + self.token_type_embeddings(torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        if self.position_embeddings is not None:
            T = input_ids.shape[1]
            if T > self.position_embeddings.num_embeddings:
                raise ValueError(f"sequence of {T} tokens is longer than max_position_embeddings "
                                 f"({self.position_embeddings.num_embeddings})")
            e = e + self.position_embeddings(torch.arange(T, device=input_ids.device))  # (T, D) broadcast over B
        return dropout(self.norm(e), self.dropout_p, self.training, self.fused)


class SelfAttention(nn.Module):
    """MultiHead(X) = Concat(head_1..head_H) W_O + b_O,
    head_h = softmax(Q_h K_hᵀ / √d_k + M) V_h with Q = X W_Q + b_Q, K = X W_K + b_K, V = X W_V + b_V.
    (B, T, D) → (B, T, D), or (N, D) → (N, D) with `unpadded` (the heads are formed in the (B, T) layout).
    Vaswani et al. 2017, §3.2. No biases b_Q, b_K, b_V, b_O with config.bias off.
    With rope positions, Q_h and K_h are rotated by their positions first (functional.rotary, or rotary_half
    for rope_style half), with the local layers' base in a local layer; ALiBi's distance bias and a local
    layer's window arrive inside M (BertModel.logit_masks)."""

    def __init__(self, config: ModelConfig, local: bool = False):
        super().__init__()
        D, bias = config.hidden_size, config.bias
        self.query, self.key, self.value = nn.Linear(D, D, bias), nn.Linear(D, D, bias), nn.Linear(D, D, bias)
        self.output = nn.Linear(D, D, bias)
        self.num_heads, self.head_size, self.dropout_p = config.num_heads, config.head_size, config.attention_dropout
        self.fused, self.fused_qkv = config.fused, config.fused_qkv
        self.qkv: nn.Module | None = None  # Q, K and V as one prepared matrix (inference.quantize_encoder)
        self.rope_base = None
        if config.position_encoding == "rope":
            self.rope_base = config.local_rope_base if local and config.local_rope_base is not None else config.rope_base
            self.rotate = BF.rotary_half if config.rope_style == "half" else partial(BF.rotary, fused=config.fused)

    def forward(self, x: Tensor, mask: Tensor | None = None, unpadded: Unpadded | None = None) -> Tensor:
        q, k, v = self.heads(x, unpadded)
        y = BF.scaled_dot_product_attention(q, k, v, mask, self.dropout_p, self.training, fused=self.fused)
        y = y.transpose(1, 2).flatten(2)  # (B, T, H·Dh): heads side by side
        return self.output(y if unpadded is None else unpadded.pack(y))

    def weights(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """A_h = softmax(Q_h K_hᵀ / √d_k + M), the weights `forward` averages V_h with (before dropout).
        (B, T, D) → (B, H, T, T). For looking at: the from-scratch path, which forms A."""
        q, k, v = self.heads(x)
        return BF.scaled_dot_product_attention(q, k, v, mask, return_weights=True)[1]

    def heads(self, x: Tensor, unpadded: Unpadded | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Q, K, V, each split into H heads of Dh = head_size (and rotated, with rope positions).
        (B, T, D), or (N, D) with `unpadded`, → 3 × (B, H, T, Dh)."""
        D = x.shape[-1]
        if self.qkv is not None or self.fused_qkv:  # one (D, 3D) matmul instead of three (D, D): same math
            if self.qkv is not None:
                qkv = self.qkv(x)
            else:  # the weights are concatenated on each call so that Q, K and V keep their own parameters (and
                # the names checkpoints and transformers' table use); the copy is 3D² numbers, small beside the matmul
                w = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3D, D)
                b = None if self.query.bias is None else torch.cat([self.query.bias, self.key.bias, self.value.bias])
                qkv = BF.linear(x, w, b)
            if unpadded is not None:
                qkv = unpadded.unpack(qkv)  # (B, T, 3D), zeros at the padding: one scatter for the three
            q, k, v = qkv.split(D, dim=-1)
        else:
            q, k, v = self.query(x), self.key(x), self.value(x)  # (B, T, D) or (N, D) each
            if unpadded is not None:
                q, k, v = (unpadded.unpack(t) for t in (q, k, v))  # (B, T, D), zeros at the padding
        B, T = q.shape[:2]
        q, k, v = (t.view(B, T, self.num_heads, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        if self.rope_base is not None:
            q, k = self.rotate(q, self.rope_base), self.rotate(k, self.rope_base)
        return q, k, v


class FeedForward(nn.Module):
    """FFN(x) = act(x W₁ + b₁) W₂ + b₂, act = ReLU (default) or GELU. (..., D) → (..., F) → (..., D)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, config.bias)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, config.bias)
        self.activation, self.fused = config.activation, config.fused

    def forward(self, x: Tensor) -> Tensor:
        return self.down(activate(self.up(x), self.activation, self.fused))


class GatedFeedForward(FeedForward):
    """FFN(x) = (act(x W_in + b_in) ⊙ (x W_gate + b_gate)) W_out + b_out: one F-wide projection, through the
    nonlinearity, gates another, elementwise. GeGLU with act = GELU (Shazeer 2020, "GLU Variants Improve
    Transformer"; ModernBERT, whose `Wi` is [W_in; W_gate] stacked). (..., D) → (..., F) → (..., D).
    W_in is FeedForward's `up`, W_out its `down`; `gate` is the third matrix."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.gate = nn.Linear(config.hidden_size, config.intermediate_size, config.bias)  # W_gate

    def forward(self, x: Tensor) -> Tensor:
        return self.down(activate(self.up(x), self.activation, self.fused) * self.gate(x))


def activate(x: Tensor, activation: str, fused: bool) -> Tensor:
    """The configured nonlinearity: relu(x), gelu(x) (erf form) or gelu_tanh(x)."""
    if activation == "relu":
        return BF.relu(x, fused=fused)
    return BF.gelu(x, approximate="tanh" if activation == "gelu_tanh" else "none", fused=fused)


class EncoderLayer(nn.Module):
    """h = LN(x + Drop(Attn(x))); y = LN(h + Drop(FFN(h))). Post-LN, as BERT.
    (B, T, D) → (B, T, D), or (N, D) → (N, D) with `unpadded`.
    FFN is a FeedForward or, with config.ffn glu, a GatedFeedForward. A `local` layer is handed the
    sliding-window mask by the Encoder (and turns its rotary positions by config.local_rope_base)."""

    def __init__(self, config: ModelConfig, index: int = 0):
        super().__init__()
        self.local = config.is_local(index)
        self.attention = SelfAttention(config, self.local)
        self.attention_norm = LayerNorm.of(config)
        self.feed_forward = GatedFeedForward(config) if config.ffn == "glu" else FeedForward(config)
        self.output_norm = LayerNorm.of(config)
        self.dropout_p, self.fused = config.hidden_dropout, config.fused

    def forward(self, x: Tensor, mask: Tensor | None = None, unpadded: Unpadded | None = None) -> Tensor:
        h = self.attention_norm(x + self._dropout(self.attention(x, mask, unpadded), unpadded))
        return self.output_norm(h + self._dropout(self.feed_forward(h), unpadded))

    def attention_weights(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The weights `forward` averages V with: SelfAttention.weights of what the attention reads."""
        return self.attention.weights(x, mask)

    def _dropout(self, x: Tensor, unpadded: Unpadded | None) -> Tensor:
        return dropout(x, self.dropout_p, self.training, self.fused, unpadded)


class PreNormEncoderLayer(EncoderLayer):
    """h = x + Drop(Attn(LN(x))); y = h + Drop(FFN(LN(h))). Pre-LN (Xiong et al. 2020): the residual stream
    is never normalised, so gradients reach early layers undamped and training tolerates larger learning rates;
    Encoder ends with one more LN. The first layer's input is already the embeddings' LN, so that layer skips its
    attention LN (ModernBERT, Warner et al. 2024: `attn_norm` is the identity in layer 0).
    `attention_norm` normalises the attention's input, `output_norm` the feed-forward's (the names post-LN gives
    to the norms of the two outputs)."""

    def __init__(self, config: ModelConfig, index: int = 0):
        super().__init__(config, index)
        if index == 0:
            self.attention_norm = nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None, unpadded: Unpadded | None = None) -> Tensor:
        h = x + self._dropout(self.attention(self.attention_norm(x), mask, unpadded), unpadded)
        return h + self._dropout(self.feed_forward(self.output_norm(h)), unpadded)

    def attention_weights(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attention.weights(self.attention_norm(x), mask)


class Encoder(nn.Module):
    """x_{l+1} = EncoderLayer_l(x_l, M_l), l = 0..N-1; M_l is the local mask in a local layer, else the global
    one. Pre-LN: h = LN_final(x_N) (post-LN layers end in a norm already: no final one). With `checkpointing`,
    each layer's activations are recomputed in the backward pass instead of stored (less memory for long
    sequences, ~1/3 more compute)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        layer = PreNormEncoderLayer if config.norm == "pre" else EncoderLayer
        self.layers = nn.ModuleList(layer(config, index) for index in range(config.num_layers))
        self.final_norm = LayerNorm.of(config) if config.norm == "pre" else None
        self.checkpointing = False

    def forward(self, x: Tensor, mask: Tensor | None = None, unpadded: Unpadded | None = None,
                local_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            m = local_mask if layer.local else mask
            if self.checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, m, unpadded, use_reentrant=False)
            else:
                x = layer(x, m, unpadded)
        return x if self.final_norm is None else self.final_norm(x)


class Pooler(nn.Module):
    """pooled = tanh(h_[CLS] W + b). (B, T, D) → (B, D). BERT's (config.pooler tanh): its next-sentence head's
    and BertForSequenceClassification's; kept so that checkpoints with it load and the parameter count matches BERT's."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, config.bias)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class ActPooler(Pooler):
    """pooled = act(Drop(h_[CLS]) W + b), act the model's activation (config.pooler act): transformers'
    RoFormerClassificationHead up to its output projection (RoBERTa's head, with hidden_act for tanh).
    (B, T, D) → (B, D)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.activation, self.dropout_p, self.fused = config.activation, config.hidden_dropout, config.fused

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        cls = dropout(hidden[:, 0], self.dropout_p, self.training, self.fused)  # (B, D)
        return activate(self.dense(cls), self.activation, self.fused)


class ActNormPooler(Pooler):
    """pooled = LN(act(h̄ W + b)), h̄ = h_[CLS] or, with config.pooling mean, the mean of the real tokens' h
    (config.pooler act_norm): ModernBERT's classification head up to its classifier (Warner et al. 2024; the
    same dense, act, LN as its MLM head). (B, T, D) → (B, D)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.norm = LayerNorm.of(config)
        self.activation, self.fused, self.mean = config.activation, config.fused, config.pooling == "mean"

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        pooled = BF.mean_pool(hidden, attention_mask) if self.mean else BF.cls_pool(hidden)  # (B, D)
        return self.norm(activate(self.dense(pooled), self.activation, self.fused))


POOLERS = {"tanh": Pooler, "act": ActPooler, "act_norm": ActNormPooler}


class BertModel(nn.Module):
    """h = Encoder(Embeddings(x), mask). input_ids (B, T) → last_hidden_state (B, T, D).
    With config.unpad, a padded batch's encoder layers run on its N real tokens (`Unpadded`); the hidden
    states of padding positions are then zeros instead of values no real token depends on."""

    def __init__(self, config: ModelConfig, add_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = POOLERS[config.pooler](config) if add_pooler else None
        init_model(self, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> BertOutput:
        """attention_mask: (B, T), 1 for real tokens, 0 for padding; None = attend everywhere."""
        mask, local_mask = self.logit_masks(attention_mask, input_ids.shape[1], input_ids.device)
        h = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        unpadded = Unpadded.of(attention_mask) if self.config.unpad else None
        if unpadded is None:
            h = self.encoder(h, mask, None, local_mask)
        else:
            h = unpadded.unpack(self.encoder(unpadded.pack(h), mask, unpadded, local_mask))
        return BertOutput(h, self.pooler(h, attention_mask) if self.pooler is not None else None)

    def attention_weights(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                          token_type_ids: Tensor | None = None) -> list[Tensor]:
        """A_l = softmax(Q_l K_lᵀ / √d_k + M) of every layer l = 0..N-1, each (B, H, T, T): row t is how
        token t spreads its attention over the keys. The same pass as `forward`: each layer's attention
        is asked for its weights on the layer's input x_l, then the layer maps x_l to x_{l+1}. For looking
        at, not training: the attention runs twice per layer, and `forward` stays free of a weights flag."""
        mask, local_mask = self.logit_masks(attention_mask, input_ids.shape[1], input_ids.device)
        x = self.embeddings(input_ids, token_type_ids)
        weights = []
        for layer in self.encoder.layers:
            m = local_mask if layer.local else mask
            weights.append(layer.attention_weights(x, m))  # (B, H, T, T)
            x = layer(x, m)
        return weights

    def num_parameters(self) -> int:
        return count_unique_parameters(self)

    @classmethod
    def from_pretrained(cls, path, device="cpu") -> "BertModel":
        """Load a bertmath run/checkpoint directory or a transformers BERT directory."""
        return _from_pretrained(cls, path, device)


    def logit_masks(self, attention_mask: Tensor | None, length: int,
                    device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """(M, M_local): the masks the global and the local layers' attention add to their logits; built once
        per forward. M_local is None when the model has no local layer.
        M allows the real keys: the boolean key mask (B, 1, 1, T), True = real token (None: attend everywhere).
        M_local allows the real keys within the window, W_ij = |i − j| ≤ w/2 (functional.sliding_window_mask),
        and always the query itself: a padding query may have no real key within its window, and a row with
        no key at all would be NaN in torch's fused kernel; a real query sees itself anyway. (B, 1, T, T).
        alibi: the additive −m_h·|i−j| (1, H, T, T), plus a large negative where the boolean mask is False."""
        allowed = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        local = None
        if any(layer.local for layer in self.encoder.layers):
            window = BF.sliding_window_mask(length, self.config.local_attention, device)  # (T, T)
            local = window if allowed is None else (allowed & window) | torch.eye(length, dtype=torch.bool,
                                                                                  device=device)  # (B, 1, T, T)
        return self._with_position_bias(allowed, length, device), self._with_position_bias(local, length, device)

    def _with_position_bias(self, allowed: Tensor | None, length: int, device: torch.device) -> Tensor | None:
        """M from a boolean mask: itself, or with alibi the additive −m_h·|i−j| plus a large negative where False."""
        if self.config.position_encoding != "alibi":
            return allowed
        bias = BF.alibi_bias(self.config.num_heads, length, device)[None]  # (1, H, T, T)
        return bias if allowed is None else bias + BF.attention_bias(allowed, bias.dtype)


class MLMHead(nn.Module):
    """logits = LN(act(h W + b)) Eᵀ + b_V; E is the token-embedding matrix when tied. (B, T, D) → (B, T, V).
    With config.bias off, no b and no LN β; the decoder keeps b_V (ModernBERT's decoder_bias)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, config.bias)
        self.norm = LayerNorm.of(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.activation, self.fused = config.activation, config.fused

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(activate(self.dense(h), self.activation, self.fused)))


class BertWithHead(nn.Module):
    """What the task models share: a BertModel under `self.bert` (transformers' "bert." prefix) below a head."""

    bert: BertModel

    def num_parameters(self) -> int:
        return count_unique_parameters(self)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.bert.encoder.checkpointing = enabled

    @classmethod
    def from_pretrained(cls, path, device="cpu") -> "BertWithHead":
        """Load a bertmath run/checkpoint directory or a transformers BERT directory (for a classifier, a
        fine-tuned one: num_labels comes from its classifier's weights)."""
        return _from_pretrained(cls, path, device)


def _from_pretrained(cls, path, device) -> nn.Module:
    """`cls` built from the checkpoint at `path`, in eval mode (pretrained.load_pretrained).

    The package's one function-local import outside cli.py, and deliberate: pretrained.py builds models, so it
    imports this module; the model, which does no I/O, reaches the loader only when a user asks it to load."""
    from .pretrained import load_pretrained
    return load_pretrained(cls, path, device=device)


class BertForMaskedLM(BertWithHead):
    """p(x_t | x_masked) = softmax(MLMHead(BertModel(x_masked))_t);
    loss = CE over the positions whose label is not -100. Devlin et al. 2019, §3.1 task #1."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooler=False)
        self.mlm_head = MLMHead(config)
        init_model(self.mlm_head, config)
        if config.tie_word_embeddings:  # one matrix both embeds tokens and scores them
            self.mlm_head.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None,
                masked_positions: Tensor | None = None) -> MaskedLMOutput:
        """labels: (B, T), -100 where nothing is predicted. Sparse MLM: masked_positions (S,) flat indices into
        the B·T positions (masking.prediction_slots) and labels (S,) for them; the head then runs on those S
        rows only, because the vocabulary projection is most of its cost and only the ~15% masked rows need it.
        With config.sparse_mlm in training and no positions given, they are taken from the labels here (exact,
        but a data-dependent shape: the trainer passes static ones instead)."""
        h = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, D)
        if masked_positions is None and labels is not None and self.config.sparse_mlm and self.training:
            masked_positions, labels = prediction_slots(labels)
        if masked_positions is not None:
            h = h.flatten(0, 1).index_select(0, masked_positions)  # (S, D)
        logits = self.mlm_head(h)
        if labels is None:
            return MaskedLMOutput(logits)
        return MaskedLMOutput(logits, BF.cross_entropy(logits.float(), labels, fused=self.config.fused))


class BertForSequenceClassification(BertWithHead):
    """z = W_c Drop(tanh(W_p h_[CLS] + b_p)) + b_c: BERT's pooler, dropout, then one linear layer to C labels.
    (B, T) ids → (B, C) logits. Classification (C ≥ 2): loss = CE(z, y), y ∈ {0..C-1};
    regression (C = 1): loss = MSE(z, y), y real. Sentence pairs arrive as [CLS] a [SEP] b [SEP] with segment
    ids 0 for a and 1 for b. Devlin et al. 2019, §4.1 (GLUE). Weight names are transformers'
    (bert.*, bert.pooler.dense.*, classifier.*). The pooler is config.pooler's: BERT's tanh, or RoFormer's and
    ModernBERT's heads up to their last linear layer (ActPooler, ActNormPooler)."""

    def __init__(self, config: ModelConfig, num_labels: int = 2):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1 (1 = regression), got {num_labels}")
        self.config, self.num_labels = config, num_labels
        self.bert = BertModel(config, add_pooler=True)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_weights(self.classifier, config.initializer_range)
        if config.init_scheme == "modernbert":  # ModernBERT's classifier: N(0, 1/D) truncated at ±2σ
            init_truncated(self.classifier, config.hidden_size ** -0.5)
        self.dropout_p, self.fused = config.hidden_dropout, config.fused

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None) -> SequenceClassifierOutput:
        pooled = self.bert(input_ids, attention_mask, token_type_ids).pooler_output  # (B, D)
        logits = self.classifier(dropout(pooled, self.dropout_p, self.training, self.fused))  # (B, C)
        if labels is None:
            return SequenceClassifierOutput(logits)
        if self.num_labels == 1:
            loss = BF.mse_loss(logits.float()[:, 0], labels.float(), fused=self.fused)
        else:
            loss = BF.cross_entropy(logits.float(), labels, fused=self.fused)
        return SequenceClassifierOutput(logits, loss)


class TokenTransform(nn.Module):
    """u_t = LN(act(h_t W + b)), every token: ModernBERT's `head` before its token and span classifiers (the
    dense, act, LN of ActNormPooler, per token). The token heads have it when config.pooler is act_norm, as
    ModernBERT's; BERT's and RoFormer's read h directly. (B, T, D) → (B, T, D)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, config.bias)
        self.norm = LayerNorm.of(config)
        self.activation, self.fused = config.activation, config.fused

    def forward(self, h: Tensor) -> Tensor:
        return self.norm(activate(self.dense(h), self.activation, self.fused))


class BertWithTokenHead(BertWithHead):
    """A BertModel (no pooler) whose head reads every token: u = h, or TokenTransform(h) (ModernBERT's)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooler=False)
        self.head = TokenTransform(config) if config.pooler == "act_norm" else None
        self.dropout_p, self.fused = config.hidden_dropout, config.fused

    def token_states(self, input_ids: Tensor, attention_mask: Tensor | None,
                     token_type_ids: Tensor | None) -> Tensor:
        """u = h or TokenTransform(h), h the last hidden states. (B, T) → (B, T, D)."""
        h = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, D)
        return h if self.head is None else self.head(h)

    def _init_head(self, linear: nn.Linear) -> None:
        """BERT's init for the new layer, and the transform's; ModernBERT's classifier: N(0, 1/D) truncated at ±2σ."""
        init_weights(linear, self.config.initializer_range)
        if self.head is not None:
            init_model(self.head, self.config)
        if self.config.init_scheme == "modernbert":
            init_truncated(linear, self.config.hidden_size ** -0.5)


class BertForTokenClassification(BertWithTokenHead):
    """z_t = W Drop(u_t) + b, u_t = h_t (ModernBERT: TokenTransform(h_t)): L label scores for every token.
    (B, T) ids → (B, T, L) logits. loss = CE over the tokens whose label is not -100 (word pieces after a word's
    first, [CLS], [SEP], padding). Devlin et al. 2019, §5.3 (CoNLL-2003 NER). Weight names are transformers'
    (bert.*, classifier.*; ModernBERT's head.*)."""

    def __init__(self, config: ModelConfig, num_labels: int = 2):
        super().__init__(config)
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {num_labels}")
        self.num_labels = num_labels
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self._init_head(self.classifier)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None) -> TokenClassifierOutput:
        u = self.token_states(input_ids, attention_mask, token_type_ids)  # (B, T, D)
        logits = self.classifier(dropout(u, self.dropout_p, self.training, self.fused))  # (B, T, L)
        if labels is None:
            return TokenClassifierOutput(logits)
        return TokenClassifierOutput(logits, BF.cross_entropy(logits.float(), labels, fused=self.fused))


class BertForQuestionAnswering(BertWithTokenHead):
    """[s_t, e_t] = u_t W + b, W (D, 2): every token's score as the answer's start and as its end; the answer is
    the span s ≤ e maximising s_s + e_e. loss = (CE(s, start) + CE(e, end)) / 2 over the batch, each softmax over
    the real tokens; a position outside the window (≥ T) is ignored, as transformers clamps it to T and ignores T.
    Devlin et al. 2019, §4.2 (SQuAD). BERT's and RoFormer's heads read h (no dropout); ModernBERT's
    u = Drop(TokenTransform(h)). Weight names are transformers' (bert.*, qa_outputs.*; ModernBERT's head.* and
    classifier.*, see hf_format).
    transformers' softmax also spans the padding positions of a padded batch, so its loss for an example changes
    with the batch it is padded in; here padding gets probability 0, and a padded batch's loss is its examples'
    (equal to transformers' on a batch without padding, tests/test_task_heads.py)."""

    num_labels = 2

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self._init_head(self.qa_outputs)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                start_positions: Tensor | None = None, end_positions: Tensor | None = None) -> SpanOutput:
        u = self.token_states(input_ids, attention_mask, token_type_ids)  # (B, T, D)
        if self.head is not None:  # ModernBERT drops out its head's output; BERT's span head has no dropout
            u = dropout(u, self.dropout_p, self.training, self.fused)
        start, end = self.qa_outputs(u).float().unbind(dim=-1)  # (B, T) each
        if start_positions is None or end_positions is None:
            return SpanOutput(start, end)
        loss = (span_cross_entropy(start, start_positions, attention_mask, self.fused) +
                span_cross_entropy(end, end_positions, attention_mask, self.fused)) / 2
        return SpanOutput(start, end, loss)



class BertForSentenceEmbedding(BertWithHead):
    """e = pool(BertModel(x)), then ê = e / ‖e‖₂ when `normalize`: one vector per text, compared by cosine
    similarity. pool: the mean of the real tokens' h (Sentence-BERT's default; Reimers & Gurevych 2019, §3), h_[CLS],
    or the per-dimension max over real tokens (functional.POOLING). No parameters beyond the encoder's: the
    weights are a BertModel's, under transformers' names (bert.*), so any encoder checkpoint gives vectors.
    (B, T) ids → (B, D)."""

    def __init__(self, config: ModelConfig, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        if pooling not in BF.POOLING:
            raise ValueError(f"pooling must be one of {', '.join(BF.POOLING)}, got {pooling!r}")
        self.config, self.pooling, self.normalize = config, pooling, normalize
        self.bert = BertModel(config, add_pooler=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> EmbeddingOutput:
        h = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, D)
        e = BF.POOLING[self.pooling](h, attention_mask)  # (B, D)
        if self.normalize:
            e = BF.l2_normalize(e, fused=self.config.fused)
        return EmbeddingOutput(e, h)

def span_cross_entropy(logits: Tensor, positions: Tensor, attention_mask: Tensor | None, fused: bool) -> Tensor:
    """CE(z, p) over the batch, z_t = −∞ at padding (probability 0: the most negative float, which exp takes to
    0 as it does −∞, with no inf to turn a zero gradient into NaN); p ≥ T (outside the window) ignored.
    (B, T) with (B,) → ()."""
    T = logits.shape[1]
    if attention_mask is not None:
        logits = logits.masked_fill(attention_mask == 0, torch.finfo(logits.dtype).min)
    positions = torch.where(positions >= T, torch.full_like(positions, -100), positions.clamp(min=0))
    return BF.cross_entropy(logits, positions, fused=fused)


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's init: weights ~ N(0, std²), biases 0, LayerNorm γ = 1, β = 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, LayerNorm):
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


TRUNCATION = 2.0  # ModernBERT's initializer_cutoff_factor: weights beyond ±2σ are redrawn


def init_truncated(module: nn.Module, std: float) -> None:
    """weights ~ N(0, std²) truncated to [−2·std, 2·std], biases 0 (ModernBERT's init_weight)."""
    nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-TRUNCATION * std, b=TRUNCATION * std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def init_model(module: nn.Module, config: ModelConfig) -> None:
    """Initialise every part of `module` by config.init_scheme.
    bert: init_weights, N(0, σ²) with σ = initializer_range, everywhere.
    modernbert: N(0, σ²) truncated at ±2σ for the embeddings and the matrices that read the residual stream
    (Q, K, V, W_in, W_gate), σ/√(2N) for those that write to it (attention output, FFN W_out) and for the heads'
    dense layer, as transformers' ModernBertPreTrainedModel._init_weights (Warner et al. 2024; the 1/√(2N)
    keeps the residual stream's variance from growing with depth, Shoeybi et al. 2019). Norms γ = 1, β = 0."""
    module.apply(lambda m: init_weights(m, config.initializer_range))  # norms, biases; BERT's weights
    if config.init_scheme == "bert":
        return
    std, out_std = config.initializer_range, config.initializer_range / math.sqrt(2.0 * config.num_layers)
    for m in module.modules():
        if isinstance(m, Embeddings):
            init_truncated(m.word_embeddings, std)
        elif isinstance(m, SelfAttention):
            for linear in (m.query, m.key, m.value):
                init_truncated(linear, std)
            init_truncated(m.output, out_std)
        elif isinstance(m, FeedForward):  # and GatedFeedForward
            init_truncated(m.up, std)
            init_truncated(m.down, out_std)
            if isinstance(m, GatedFeedForward):
                init_truncated(m.gate, std)
        elif isinstance(m, (MLMHead, Pooler, TokenTransform)):
            init_truncated(m.dense, out_std)


def count_unique_parameters(module: nn.Module) -> int:
    """Σ numel over parameters, a tied matrix counted once."""
    return sum(p.numel() for p in module.parameters())  # parameters() already yields a shared tensor once


def parameter_table(config: ModelConfig) -> list[tuple[str, int]]:
    """Parameter counts by part, from the config alone (no model built): rows (name, count).

    Embeddings V·D + P·D + S·D + LN; per layer 4D² (+ 4D biases) attention + LN + FFN + LN, the FFN
    D·F + F·D (+ F + D) or, gated, 3·D·F (+ 2F + D); a LayerNorm 2D (D without β). Pre-LN: the first layer has no
    attention LN, the encoder a final one. MLM head D² (+ D) dense + LN + V bias (+ V·D decoder when untied).
    Pooler D² (+ D), and an LN for act_norm. Biases and β only with config.bias."""
    c = config
    D, F, V, L = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_layers
    P = c.max_position_embeddings if c.position_encoding == "learned" else 0  # alibi and rope have no table
    bias = int(c.bias)
    attention = 4 * (D * D + bias * D)
    ffn = (3 * D * F + bias * (2 * F + D)) if c.ffn == "glu" else (2 * D * F + bias * (F + D))
    layer_norm = (1 + bias) * D
    pre = c.norm == "pre"
    rows = [
        ("embeddings.word", V * D),
        ("embeddings.position", P * D),
        ("embeddings.token_type", c.type_vocab_size * D),
        ("embeddings.layer_norm", layer_norm),
        (f"encoder.attention (x{L})", L * attention),
        (f"encoder.attention_norm (x{L - 1 if pre else L})", (L - 1 if pre else L) * layer_norm),
        (f"encoder.feed_forward (x{L})", L * ffn),
        (f"encoder.output_norm (x{L})", L * layer_norm),
        ("encoder.final_norm", layer_norm if pre else 0),
        ("mlm_head.dense", D * D + bias * D),
        ("mlm_head.layer_norm", layer_norm),
        ("mlm_head.decoder.bias", V),
        ("mlm_head.decoder.weight" + (" (tied to embeddings.word)" if c.tie_word_embeddings else ""),
         0 if c.tie_word_embeddings else V * D),
    ]
    return rows


def pooler_parameters(config: ModelConfig) -> int:
    """The pooler's: D² (+ D) dense, and for act_norm its LayerNorm (2D, or D without β)."""
    D, bias = config.hidden_size, int(config.bias)
    return D * D + bias * D + ((1 + bias) * D if config.pooler == "act_norm" else 0)


def token_head_parameters(config: ModelConfig, outputs: int) -> int:
    """A token or span head: ModernBERT's per-token transform (as many as its pooler; with model.pooler
    act_norm), then a linear layer to `outputs` per token, L·D + L."""
    transform = pooler_parameters(config) if config.pooler == "act_norm" else 0
    return transform + outputs * config.hidden_size + outputs


def parameter_report(config: ModelConfig) -> str:
    """The parameter table as text: one row per part, then the totals in full and in millions."""
    rows, totals = parameter_table(config), parameter_counts(config)
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{'part':<{width}}{'parameters':>14}"]
    lines += [f"{name:<{width}}{count:>14,}" for name, count in rows]
    lines.append("-" * (width + 14))
    labels = {
        "bert_for_masked_lm": "BertForMaskedLM (tied decoder counted once)",
        "bert_for_masked_lm_decoder_counted_separately": "BertForMaskedLM (decoder counted separately)",
        "encoder": "encoder alone (BertModel, no pooler)",
        "encoder_with_pooler": "encoder with its pooler (a classifier's)",
    }
    lines += [f"{label:<48}{totals[key]:>14,}  ({totals[key] / 1e6:.1f}M)" for key, label in labels.items()]
    return "\n".join(lines)


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Totals: the MLM model (tied decoder counted once), the same with the decoder counted separately,
    the encoder alone (BertModel without pooler) and with its pooler (config.pooler's)."""
    rows = dict(parameter_table(config))
    total = sum(rows.values())
    encoder = sum(v for k, v in rows.items() if not k.startswith("mlm_head"))
    D = config.hidden_size
    return {
        "bert_for_masked_lm": total,
        "bert_for_masked_lm_decoder_counted_separately": total + (config.vocab_size * D if config.tie_word_embeddings else 0),
        "encoder": encoder,
        "encoder_with_pooler": encoder + pooler_parameters(config),
    }


def flops_per_token(config: ModelConfig, seq_len: int, training: bool = True, mlm_fraction: float = 1.0) -> float:
    """Matmul FLOPs per input token (a multiply-add counts 2), the standard transformer estimate:

        forward   F = 2·N_enc + 4·L·T·D + r·2·N_head,   N_enc = L·(4D² + 2DF),  N_head = D² + D·V
        training  3F = 6·N_enc + 12·L·T·D + r·6·N_head  (backward ≈ 2 × forward: grads of inputs and weights)

    N_enc: the encoder's weight matrices per token (Q, K, V, O: 4D²; FFN up and down: 2DF, 3DF gated); 4·L·T·D:
    QKᵀ and AV over T keys (2·T·D each, per layer; local layers too: their window is a mask on the T×T scores); N_head: the MLM head's dense D² and vocabulary projection D·V;
    r = `mlm_fraction`, the share of positions the head runs on (1 for full logits; the masked share for
    sparse MLM or masked-position inference). Not counted: embedding lookups, biases, LayerNorm, softmax,
    GELU, dropout, the loss and the optimizer (elementwise work, well under 1% of BERT-base's FLOPs), nor
    the recomputation that activation checkpointing adds. Kaplan et al. 2020 §2.1; Chowdhery et al. 2022 App. B."""
    L, D, F, V, T = config.num_layers, config.hidden_size, config.intermediate_size, config.vocab_size, seq_len
    encoder = L * (4 * D * D + (3 if config.ffn == "glu" else 2) * D * F)  # a gated FFN has a third D×F matrix
    head = D * D + D * V
    forward = 2 * encoder + 4 * L * T * D + mlm_fraction * 2 * head
    return 3 * forward if training else forward
