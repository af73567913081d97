"""The BERT encoder, one small class per concept; each forward reads as its formula.

    Embeddings → N × EncoderLayer(SelfAttention, FeedForward) → MLMHead        Devlin et al. 2019, §3.
                                                                → Pooler → classifier (fine-tuning, §4)

Dims: B batch, T tokens, D hidden_size, H heads, Dh = D/H head size, F intermediate_size, V vocab;
N real (non-padding) tokens of a padded batch, when `config.unpad` takes the padding out (see `Unpadded`).
The math lives in `functional.py`; modules hold parameters and call it. No I/O here.
The ops, from scratch or torch's fused kernels, are chosen once, at construction, by `config.fused`: each
module keeps the flag and hands it to the functional ops it calls; no global switch is read in a forward.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """LN(x) = (x - μ)/√(σ² + ε) · γ + β over the last dim (D); γ = 1, β = 0 at init."""

    def __init__(self, size: int, eps: float, fused: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps, self.fused = eps, fused

    def forward(self, x: Tensor) -> Tensor:
        return BF.layer_norm(x, self.weight, self.bias, self.eps, fused=self.fused)


class Embeddings(nn.Module):
    """e_t = Drop(LN(E_tok[x_t] + E_pos[t] + E_seg[s_t])). (B, T) ids → (B, T, D).
    With alibi or rope positions there is no E_pos: order enters in the attention instead."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = (nn.Embedding(config.max_position_embeddings, config.hidden_size)
                                    if config.position_encoding == "learned" else None)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = LayerNorm(config.hidden_size, config.layer_norm_eps, config.fused)
        self.dropout_p, self.fused = config.hidden_dropout, config.fused

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        e = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (B, T, D)
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
    Vaswani et al. 2017, §3.2.
    With rope positions, Q_h and K_h are rotated by their positions first (functional.rotary); ALiBi's
    distance bias arrives inside M (BertModel.logit_mask)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.hidden_size
        self.query, self.key, self.value = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.output = nn.Linear(D, D)
        self.num_heads, self.head_size, self.dropout_p = config.num_heads, config.head_size, config.attention_dropout
        self.fused, self.fused_qkv = config.fused, config.fused_qkv
        self.rope_base = config.rope_base if config.position_encoding == "rope" else None

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
        if self.fused_qkv:  # one (D, 3D) matmul instead of three (D, D): same math, fewer kernel launches
            # The weights are concatenated on each call so that Q, K and V keep their own parameters (and the
            # names checkpoints and transformers' table use); the copy is 3D² numbers, small beside the matmul.
            w = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3D, D)
            b = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # (3D,)
            q, k, v = BF.linear(x, w, b).split(D, dim=-1)
        else:
            q, k, v = self.query(x), self.key(x), self.value(x)  # (B, T, D) or (N, D) each
        if unpadded is not None:
            q, k, v = (unpadded.unpack(t) for t in (q, k, v))  # (B, T, D), zeros at the padding
        B, T = q.shape[:2]
        q, k, v = (t.view(B, T, self.num_heads, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        if self.rope_base is not None:
            q, k = BF.rotary(q, self.rope_base), BF.rotary(k, self.rope_base)
        return q, k, v


class FeedForward(nn.Module):
    """FFN(x) = act(x W₁ + b₁) W₂ + b₂, act = ReLU (default) or GELU. (..., D) → (..., F) → (..., D)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation, self.fused = config.activation, config.fused

    def forward(self, x: Tensor) -> Tensor:
        return self.down(activate(self.up(x), self.activation, self.fused))


def activate(x: Tensor, activation: str, fused: bool) -> Tensor:
    """The configured nonlinearity: relu(x), gelu(x) (erf form) or gelu_tanh(x)."""
    if activation == "relu":
        return BF.relu(x, fused=fused)
    return BF.gelu(x, approximate="tanh" if activation == "gelu_tanh" else "none", fused=fused)


class EncoderLayer(nn.Module):
    """h = LN(x + Drop(Attn(x))); y = LN(h + Drop(FFN(h))). Post-LN, as BERT.
    (B, T, D) → (B, T, D), or (N, D) → (N, D) with `unpadded`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = LayerNorm(config.hidden_size, config.layer_norm_eps, config.fused)
        self.feed_forward = FeedForward(config)
        self.output_norm = LayerNorm(config.hidden_size, config.layer_norm_eps, config.fused)
        self.dropout_p, self.fused = config.hidden_dropout, config.fused

    def forward(self, x: Tensor, mask: Tensor | None = None, unpadded: Unpadded | None = None) -> Tensor:
        h = self.attention_norm(x + self._dropout(self.attention(x, mask, unpadded), unpadded))
        return self.output_norm(h + self._dropout(self.feed_forward(h), unpadded))

    def _dropout(self, x: Tensor, unpadded: Unpadded | None) -> Tensor:
        return dropout(x, self.dropout_p, self.training, self.fused, unpadded)


class Encoder(nn.Module):
    """x_{l+1} = EncoderLayer_l(x_l), l = 0..N-1. With `checkpointing`, each layer's activations are
    recomputed in the backward pass instead of stored (less memory for long sequences, ~1/3 more compute)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.checkpointing = False

    def forward(self, x: Tensor, mask: Tensor | None = None, unpadded: Unpadded | None = None) -> Tensor:
        for layer in self.layers:
            if self.checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, mask, unpadded, use_reentrant=False)
            else:
                x = layer(x, mask, unpadded)
        return x


class Pooler(nn.Module):
    """pooled = tanh(h_[CLS] W + b). (B, T, D) → (B, D). Used by BERT's next-sentence head; kept so that
    checkpoints with it load and the parameter count matches BERT's."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """h = Encoder(Embeddings(x), mask). input_ids (B, T) → last_hidden_state (B, T, D).
    With config.unpad, a padded batch's encoder layers run on its N real tokens (`Unpadded`); the hidden
    states of padding positions are then zeros instead of values no real token depends on."""

    def __init__(self, config: ModelConfig, add_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config) if add_pooler else None
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> BertOutput:
        """attention_mask: (B, T), 1 for real tokens, 0 for padding; None = attend everywhere."""
        mask = self.logit_mask(attention_mask, input_ids.shape[1], input_ids.device)
        h = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        unpadded = Unpadded.of(attention_mask) if self.config.unpad else None
        if unpadded is None:
            h = self.encoder(h, mask)
        else:
            h = unpadded.unpack(self.encoder(unpadded.pack(h), mask, unpadded))
        return BertOutput(h, self.pooler(h) if self.pooler is not None else None)

    def attention_weights(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                          token_type_ids: Tensor | None = None) -> list[Tensor]:
        """A_l = softmax(Q_l K_lᵀ / √d_k + M) of every layer l = 0..N-1, each (B, H, T, T): row t is how
        token t spreads its attention over the keys. The same pass as `forward`: each layer's attention
        is asked for its weights on the layer's input x_l, then the layer maps x_l to x_{l+1}. For looking
        at, not training: the attention runs twice per layer, and `forward` stays free of a weights flag."""
        mask = self.logit_mask(attention_mask, input_ids.shape[1], input_ids.device)
        x = self.embeddings(input_ids, token_type_ids)
        weights = []
        for layer in self.encoder.layers:
            weights.append(layer.attention.weights(x, mask))  # (B, H, T, T)
            x = layer(x, mask)
        return weights

    def num_parameters(self) -> int:
        return count_unique_parameters(self)

    @classmethod
    def from_pretrained(cls, path, device="cpu") -> "BertModel":
        """Load a bertmath run/checkpoint directory or a transformers BERT directory."""
        return _from_pretrained(cls, path, device)


    def logit_mask(self, attention_mask: Tensor | None, length: int, device: torch.device) -> Tensor | None:
        """M, the mask every layer's attention adds to its logits; built once per forward.
        Learned or rope positions: the boolean key mask (B, 1, 1, T), True = real token (None: attend everywhere).
        alibi: the additive −m_h·|i−j| (1, H, T, T), plus the key mask's large negative at padding (B, H, T, T)."""
        keys = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        if self.config.position_encoding != "alibi":
            return keys
        bias = BF.alibi_bias(self.config.num_heads, length, device)[None]  # (1, H, T, T)
        return bias if keys is None else bias + BF.attention_bias(keys, bias.dtype)


class MLMHead(nn.Module):
    """logits = LN(act(h W + b)) Eᵀ + b_V; E is the token-embedding matrix when tied. (B, T, D) → (B, T, V)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = LayerNorm(config.hidden_size, config.layer_norm_eps, config.fused)
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
        self.mlm_head.apply(lambda m: init_weights(m, config.initializer_range))
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
    (bert.*, bert.pooler.dense.*, classifier.*)."""

    def __init__(self, config: ModelConfig, num_labels: int = 2):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1 (1 = regression), got {num_labels}")
        self.config, self.num_labels = config, num_labels
        self.bert = BertModel(config, add_pooler=True)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_weights(self.classifier, config.initializer_range)
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


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's init: weights ~ N(0, std²), biases 0, LayerNorm γ = 1, β = 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_unique_parameters(module: nn.Module) -> int:
    """Σ numel over parameters, a tied matrix counted once."""
    return sum(p.numel() for p in module.parameters())  # parameters() already yields a shared tensor once


def parameter_table(config: ModelConfig) -> list[tuple[str, int]]:
    """Parameter counts by part, from the config alone (no model built): rows (name, count).

    Embeddings V·D + P·D + S·D + 2D; per layer 4(D² + D) attention + 2D LN + (DF + F + FD + D) FFN + 2D LN;
    MLM head D² + D dense + 2D LN + V bias (+ V·D decoder when untied). Pooler D² + D."""
    c = config
    D, F, V = c.hidden_size, c.intermediate_size, c.vocab_size
    P = c.max_position_embeddings if c.position_encoding == "learned" else 0  # alibi and rope have no table
    attention = 4 * (D * D + D)
    ffn = D * F + F + F * D + D
    layer_norm = 2 * D
    rows = [
        ("embeddings.word", V * D),
        ("embeddings.position", P * D),
        ("embeddings.token_type", c.type_vocab_size * D),
        ("embeddings.layer_norm", layer_norm),
        (f"encoder.attention (x{c.num_layers})", c.num_layers * attention),
        (f"encoder.attention_norm (x{c.num_layers})", c.num_layers * layer_norm),
        (f"encoder.feed_forward (x{c.num_layers})", c.num_layers * ffn),
        (f"encoder.output_norm (x{c.num_layers})", c.num_layers * layer_norm),
        ("mlm_head.dense", D * D + D),
        ("mlm_head.layer_norm", layer_norm),
        ("mlm_head.decoder.bias", V),
        ("mlm_head.decoder.weight" + (" (tied to embeddings.word)" if c.tie_word_embeddings else ""),
         0 if c.tie_word_embeddings else V * D),
    ]
    return rows


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
        "encoder_with_pooler": "encoder with BERT's pooler",
    }
    lines += [f"{label:<48}{totals[key]:>14,}  ({totals[key] / 1e6:.1f}M)" for key, label in labels.items()]
    return "\n".join(lines)


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Totals: the MLM model (tied decoder counted once), the same with the decoder counted separately,
    the encoder alone (BertModel without pooler) and with BERT's pooler."""
    rows = dict(parameter_table(config))
    total = sum(rows.values())
    encoder = sum(v for k, v in rows.items() if not k.startswith("mlm_head"))
    D = config.hidden_size
    return {
        "bert_for_masked_lm": total,
        "bert_for_masked_lm_decoder_counted_separately": total + (config.vocab_size * D if config.tie_word_embeddings else 0),
        "encoder": encoder,
        "encoder_with_pooler": encoder + D * D + D,
    }


def flops_per_token(config: ModelConfig, seq_len: int, training: bool = True, mlm_fraction: float = 1.0) -> float:
    """Matmul FLOPs per input token (a multiply-add counts 2), the standard transformer estimate:

        forward   F = 2·N_enc + 4·L·T·D + r·2·N_head,   N_enc = L·(4D² + 2DF),  N_head = D² + D·V
        training  3F = 6·N_enc + 12·L·T·D + r·6·N_head  (backward ≈ 2 × forward: grads of inputs and weights)

    N_enc: the encoder's weight matrices per token (Q, K, V, O: 4D²; FFN up and down: 2DF); 4·L·T·D: QKᵀ and
    AV over T keys (2·T·D each, per layer); N_head: the MLM head's dense D² and vocabulary projection D·V;
    r = `mlm_fraction`, the share of positions the head runs on (1 for full logits; the masked share for
    sparse MLM or masked-position inference). Not counted: embedding lookups, biases, LayerNorm, softmax,
    GELU, dropout, the loss and the optimizer (elementwise work, well under 1% of BERT-base's FLOPs), nor
    the recomputation that activation checkpointing adds. Kaplan et al. 2020 §2.1; Chowdhery et al. 2022 App. B."""
    L, D, F, V, T = config.num_layers, config.hidden_size, config.intermediate_size, config.vocab_size, seq_len
    encoder = L * (4 * D * D + 2 * D * F)
    head = D * D + D * V
    forward = 2 * encoder + 4 * L * T * D + mlm_fraction * 2 * head
    return 3 * forward if training else forward
