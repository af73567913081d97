"""transformers' layouts: the one name mapping between bertmath's parameters and transformers', and the config
translations, for the three transformers encoders bertmath's models are twins of:

    BERT        post-LN, learned positions                      (BertForMaskedLM, ...ForSequenceClassification)
    RoFormer    post-LN, rotary positions in interleaved pairs  (RoFormerForMaskedLM, ...)
    ModernBERT  pre-LN, GeGLU, no biases, rotary in halves,     (ModernBertForMaskedLM, ...)
                global and sliding-window layers, no segments

Used by import and export (pretrained.py) and the parity tests; nothing else knows transformers' names. Which
twin a model has is `family(config)`: a setting none of them can hold is a one-line CheckpointError naming it.
Reading and writing transformers' directories is pretrained.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import functional as BF
from .config import ModelConfig
from .errors import CheckpointError

# Name pairs (transformers name, bertmath name), read top to bottom; `{i}` is a layer index, `{p}` weight or bias.
# A bertmath side that is a tuple names the parts of one transformers tensor stacked along its first dimension
# (ModernBERT's Wqkv = [W_Q; W_K; W_V], Wi = [W_in; W_gate]).
# BODY pairs are the encoder's, after the architecture's prefix ("bert." on both sides; none in a bare encoder);
# HEAD pairs are whole names, by the kind of head a state dict has: "mlm", "classifier" (a sequence
# classifier), "tokens" (a token classifier), "span" (question answering) or "encoder" (none).
_BERT_BODY = [
    ("embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
    ("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight"),
    ("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.weight"),
    ("embeddings.LayerNorm.{p}", "embeddings.norm.{p}"),
    ("encoder.layer.{i}.attention.self.query.{p}", "encoder.layers.{i}.attention.query.{p}"),
    ("encoder.layer.{i}.attention.self.key.{p}", "encoder.layers.{i}.attention.key.{p}"),
    ("encoder.layer.{i}.attention.self.value.{p}", "encoder.layers.{i}.attention.value.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "encoder.layers.{i}.attention.output.{p}"),
    ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "encoder.layers.{i}.attention_norm.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "encoder.layers.{i}.feed_forward.up.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "encoder.layers.{i}.feed_forward.down.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "encoder.layers.{i}.output_norm.{p}"),
]
# BERT's (and RoFormer's) MLM head: transformers keeps it under "cls.predictions.", bertmath under "mlm_head.".
_BERT_MLM_HEAD = [
    ("cls.predictions.transform.dense.{p}", "mlm_head.dense.{p}"),
    ("cls.predictions.transform.LayerNorm.{p}", "mlm_head.norm.{p}"),
    ("cls.predictions.decoder.weight", "mlm_head.decoder.weight"),
    ("cls.predictions.bias", "mlm_head.decoder.bias"),
]
_MODERNBERT_BODY = [
    ("embeddings.tok_embeddings.weight", "embeddings.word_embeddings.weight"),
    ("embeddings.norm.{p}", "embeddings.norm.{p}"),
    ("layers.{i}.attn_norm.{p}", "encoder.layers.{i}.attention_norm.{p}"),
    ("layers.{i}.attn.Wqkv.{p}", ("encoder.layers.{i}.attention.query.{p}", "encoder.layers.{i}.attention.key.{p}",
                                  "encoder.layers.{i}.attention.value.{p}")),
    ("layers.{i}.attn.Wo.{p}", "encoder.layers.{i}.attention.output.{p}"),
    ("layers.{i}.mlp_norm.{p}", "encoder.layers.{i}.output_norm.{p}"),
    ("layers.{i}.mlp.Wi.{p}", ("encoder.layers.{i}.feed_forward.up.{p}", "encoder.layers.{i}.feed_forward.gate.{p}")),
    ("layers.{i}.mlp.Wo.{p}", "encoder.layers.{i}.feed_forward.down.{p}"),
    ("final_norm.{p}", "encoder.final_norm.{p}"),
]


@dataclass(frozen=True)
class Layout:
    """One transformers architecture's names: the prefix of its encoder, the encoder's pairs, each head's pairs,
    the entries of its files that are no parameters of bertmath's models, and its class names."""

    model_type: str
    prefix: str  # of the encoder's names in a model with a head ("bert.", "roformer.", "model.")
    body: list
    heads: dict = field(default_factory=dict)  # "mlm" / "classifier" / "encoder" → pairs
    ignored: re.Pattern = re.compile(r"$^")
    classes: dict = field(default_factory=dict)  # head kind → transformers class name


_BERT_TOKEN_HEADS = {"tokens": [("classifier.{p}", "classifier.{p}")], "span": [("qa_outputs.{p}", "qa_outputs.{p}")]}
_MODERNBERT_TRANSFORM = [("head.dense.{p}", "head.dense.{p}"), ("head.norm.{p}", "head.norm.{p}")]


def _task_classes(twin: str) -> dict:
    return {"classifier": f"{twin}ForSequenceClassification", "tokens": f"{twin}ForTokenClassification",
            "span": f"{twin}ForQuestionAnswering"}


BERT = Layout(
    "bert", "bert.", _BERT_BODY + [("pooler.dense.{p}", "pooler.dense.{p}")],
    heads={"mlm": _BERT_MLM_HEAD, "classifier": [("classifier.{p}", "classifier.{p}")], "encoder": [],
           **_BERT_TOKEN_HEADS},
    # buffers, the next-sentence head, and the second name of the tied decoder bias
    ignored=re.compile(r"(^|\.)position_ids$|^cls\.seq_relationship\.|^cls\.predictions\.decoder\.bias$"),
    classes={"mlm": "BertForMaskedLM", "encoder": "BertModel", **_task_classes("Bert")})
ROFORMER = Layout(
    "roformer", "roformer.", _BERT_BODY,
    # RoFormerClassificationHead: dense (bertmath's ActPooler) and out_proj (the classifier)
    heads={"mlm": _BERT_MLM_HEAD, "encoder": [],
           "classifier": [("classifier.dense.{p}", "bert.pooler.dense.{p}"), ("classifier.out_proj.{p}", "classifier.{p}")],
           **_BERT_TOKEN_HEADS},
    # the sinusoidal table rotary positions are read from (a frozen buffer: functional.rotary computes it)
    ignored=re.compile(r"(^|\.)encoder\.embed_positions\.weight$|^cls\.predictions\.decoder\.bias$"),
    classes={"mlm": "RoFormerForMaskedLM", "encoder": "RoFormerModel", **_task_classes("RoFormer")})
MODERNBERT = Layout(
    "modernbert", "model.", _MODERNBERT_BODY,
    # ModernBERT calls both heads' dense + act + LN `head`: the MLM head's transform, or the classifier's pooler
    heads={"mlm": [("head.dense.{p}", "mlm_head.dense.{p}"), ("head.norm.{p}", "mlm_head.norm.{p}"),
                   ("decoder.weight", "mlm_head.decoder.weight"), ("decoder.bias", "mlm_head.decoder.bias")],
           "classifier": [("head.dense.{p}", "bert.pooler.dense.{p}"), ("head.norm.{p}", "bert.pooler.norm.{p}"),
                          ("classifier.{p}", "classifier.{p}")],
           # the token and span heads: the same `head` per token (bertmath's TokenTransform), then a classifier
           "tokens": _MODERNBERT_TRANSFORM + [("classifier.{p}", "classifier.{p}")],
           "span": _MODERNBERT_TRANSFORM + [("classifier.{p}", "qa_outputs.{p}")],
           "encoder": []},
    classes={"mlm": "ModernBertForMaskedLM", "encoder": "ModernBertModel", **_task_classes("ModernBert")})
LAYOUTS = {layout.model_type: layout for layout in (BERT, ROFORMER, MODERNBERT)}


def layout_of(hf_config: dict) -> Layout:
    """The layout of a transformers config.json: RoFormer's or ModernBERT's by model_type, else BERT's."""
    return LAYOUTS.get(hf_config.get("model_type"), BERT)


def _compile(pattern: str) -> re.Pattern:
    regex = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{regex}$")


def _rename(name: str, pairs: list, source: int):
    """The other side of the first pair whose `source` side matches `name`: a name, or a tuple of names for a
    stacked tensor; None if no pair matches. A name of a stack's part (source 1) gives the stack's name."""
    for pair in pairs:
        for pattern in (pair[source] if isinstance(pair[source], tuple) else (pair[source],)):
            match = _compile(pattern).match(name)
            if match:
                other = pair[1 - source]
                if isinstance(other, tuple):
                    return tuple(o.format(**match.groupdict()) for o in other)
                return other.format(**match.groupdict())
    return None


def head_kind(names, source: int, layout: "Layout" = None) -> str:
    """Which head a state dict's names hold (source 0: transformers', 1: bertmath's): "span", "tokens",
    "classifier", "mlm" or "encoder" (none). A sequence classifier has a pooler (bertmath's, BERT's) or a
    two-layer head (RoFormer's); a token classifier neither. ModernBERT's three task heads have the same names:
    its files say which in config.json's architectures (`kind_of_architectures`); by names alone, "classifier"."""
    names = list(names)
    if any(n.startswith("qa_outputs.") for n in names):
        return "span"
    if any(n.startswith("classifier.") for n in names):
        if source == 1:
            return "classifier" if any(n.startswith("bert.pooler.") for n in names) else "tokens"
        pooled = ("classifier.out_proj.", "head.", *(f"{l.prefix}pooler." for l in LAYOUTS.values()))
        return "classifier" if any(n.startswith(pooled) for n in names) else "tokens"
    mlm = ("cls.predictions.", "decoder.", "head.") if source == 0 else ("mlm_head.",)
    return "mlm" if any(n.startswith(mlm) for n in names) else "encoder"


def kind_of_architectures(hf_config: dict) -> str | None:
    """The head kind a transformers config.json's `architectures` names (e.g. BertForTokenClassification →
    "tokens"); None when it names none bertmath knows."""
    for architecture in hf_config.get("architectures") or []:
        for layout in LAYOUTS.values():
            for kind, name in layout.classes.items():
                if architecture == name:
                    return kind
    return None


def _head_pairs(layout: Layout, kind: str | None) -> list:
    """The pairs of the `kind` head; of every head (the MLM head's first) when kind is None."""
    return layout.heads[kind] if kind is not None else [pair for pairs in layout.heads.values() for pair in pairs]


def hf_to_bertmath_name(name: str, layout: Layout = BERT, kind: str | None = None):
    """transformers name → bertmath name, for a model with a `kind` head (prefix `layout.prefix` → "bert.") or the
    bare encoder (no prefix): a name, a tuple of names for a stacked tensor (ModernBERT's Wqkv, Wi), or None for
    entries that are not parameters of bertmath's models. kind None: any head's names (for ModernBERT, whose two
    heads share names, the MLM head's)."""
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if layout.ignored.search(name):
        return None
    mapped = _rename(name, _head_pairs(layout, kind), source=0)
    if mapped is not None:
        return mapped
    prefix = layout.prefix if name.startswith(layout.prefix) else ""
    mapped = _rename(name[len(prefix):], layout.body, source=0)
    if mapped is None:
        return None
    ours = "bert." if prefix else ""
    return tuple(ours + m for m in mapped) if isinstance(mapped, tuple) else ours + mapped


def bertmath_to_hf_name(name: str, layout: Layout = BERT, kind: str | None = None) -> str:
    """bertmath name → transformers name (the inverse of `hf_to_bertmath_name`; a part of a stacked tensor gives
    the stack's name)."""
    mapped = _rename(name, _head_pairs(layout, kind), source=1)
    if mapped is None:
        prefix = "bert." if name.startswith("bert.") else ""
        mapped = _rename(name[len(prefix):], layout.body, source=1)
        mapped = None if mapped is None else (layout.prefix if prefix else "") + mapped
    if mapped is None:
        raise KeyError(f"no transformers ({layout.model_type}) name for bertmath parameter '{name}'")
    return mapped


def state_dict_from_hf(hf_state: dict[str, Tensor], unknown: list[str] | None = None,
                       layout: Layout = BERT, kind: str | None = None) -> dict[str, Tensor]:
    """Rename a transformers state dict of `layout`'s architecture to bertmath names, splitting stacked tensors.
    Names with no counterpart are skipped, and appended to `unknown` when a list is given. kind: the head's
    (head_kind), told by config.json's architectures; None: from the names."""
    kind = kind or head_kind(hf_state, source=0)
    out = {}
    for name, tensor in hf_state.items():
        mapped = hf_to_bertmath_name(name, layout, kind)
        if mapped is None:
            if unknown is not None and not layout.ignored.search(name):
                unknown.append(name)
        elif isinstance(mapped, tuple):
            out.update(zip(mapped, tensor.chunk(len(mapped), dim=0)))
        else:
            out[mapped] = tensor
    # transformers' head adds `decoder.bias`; `cls.predictions.bias` is the same tensor only when the decoder
    # is tied (transformers 5 unties both with tie_word_embeddings=False, leaving `cls.predictions.bias`
    # unused). So the decoder's own bias wins when the file has it; old files have only `cls.predictions.bias`.
    if "cls.predictions.decoder.bias" in hf_state:
        out["mlm_head.decoder.bias"] = hf_state["cls.predictions.decoder.bias"]
    return out


def state_dict_to_hf(state: dict[str, Tensor], layout: Layout = BERT) -> dict[str, Tensor]:
    """Rename a bertmath state dict to `layout`'s transformers names, stacking what transformers keeps as one
    tensor (in the order its pair lists the parts). For BERT and RoFormer `cls.predictions.decoder.bias` is added
    as the second name of the decoder bias, as transformers writes it."""
    kind = head_kind(state, source=1)
    out, stacks = {}, {}
    for name, tensor in state.items():
        hf_name = bertmath_to_hf_name(name, layout, kind)
        parts = hf_to_bertmath_name(hf_name, layout, kind)
        if isinstance(parts, tuple):
            stacks.setdefault(hf_name, dict.fromkeys(parts))[name] = tensor
        else:
            out[hf_name] = tensor
    for hf_name, parts in stacks.items():
        missing = [part for part, tensor in parts.items() if tensor is None]
        if missing:
            raise KeyError(f"'{hf_name}' stacks {', '.join(parts)}; the state has no '{missing[0]}'")
        out[hf_name] = torch.cat(list(parts.values()), dim=0)
    if "cls.predictions.bias" in out:
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return out


# --- config translation -----------------------------------------------------------------------------------

_ACTIVATIONS_FROM_HF = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_ACTIVATIONS_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
ROFORMER_ROPE_BASE = 10000.0  # RoFormerSinusoidalPositionalEmbedding's, fixed


def _activation(hf: dict, key: str, default: str, where: str) -> str:
    activation = hf.get(key, default)
    if activation not in _ACTIVATIONS_FROM_HF:
        raise CheckpointError(f"{where}: {key} '{activation}' is not supported; "
                              f"supported: {', '.join(_ACTIVATIONS_FROM_HF)}")
    return _ACTIVATIONS_FROM_HF[activation]


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """transformers' BertConfig, RoFormerConfig or ModernBertConfig (as a dict from config.json) → ModelConfig;
    a setting bertmath's model cannot reproduce exactly is a CheckpointError naming the key."""
    model_type = hf.get("model_type", "bert")  # old BERT files name none
    if model_type not in LAYOUTS:
        raise CheckpointError(f"{where}: model_type {model_type!r} is not an encoder bertmath implements "
                              f"({', '.join(LAYOUTS)})")
    translate = {"roformer": _config_from_roformer, "modernbert": _config_from_modernbert}.get(
        model_type, _config_from_bert)
    try:
        return translate(hf, where)
    except KeyError as e:
        raise CheckpointError(f"{where}: missing key {e.args[0]!r}") from None


def _common_from_hf(hf: dict, where: str) -> dict:
    """The keys BERT's and RoFormer's configs share, as ModelConfig fields."""
    return dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        type_vocab_size=hf.get("type_vocab_size", 2), activation=_activation(hf, "hidden_act", "gelu", where),
        hidden_dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        pad_token_id=hf.get("pad_token_id", 0) or 0,
    )


def _config_from_bert(hf: dict, where: str) -> ModelConfig:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{where}: position_embedding_type '{hf['position_embedding_type']}' is not "
                              "supported (bertmath implements BERT's absolute positions)")
    return ModelConfig(**_common_from_hf(hf, where), max_position_embeddings=hf.get("max_position_embeddings", 512))


def _config_from_roformer(hf: dict, where: str) -> ModelConfig:
    """RoFormer is BERT with q and k turned by rotary positions in interleaved pairs (base 10000), no position
    table, and a classifier head act(W Drop(h_[CLS]) + b) (ActPooler)."""
    if hf.get("embedding_size") not in (None, hf["hidden_size"]):
        raise CheckpointError(f"{where}: embedding_size {hf['embedding_size']} differs from hidden_size "
                              f"{hf['hidden_size']}; bertmath has no projection between embeddings and encoder")
    for key in ("rotary_value", "is_decoder", "add_cross_attention"):
        if hf.get(key):
            raise CheckpointError(f"{where}: {key} is true; bertmath's RoFormer is the encoder with rotary "
                                  "q and k only")
    return ModelConfig(**_common_from_hf(hf, where), max_position_embeddings=hf.get("max_position_embeddings", 1536),
                       position_encoding="rope", rope_base=ROFORMER_ROPE_BASE, rope_style="interleaved",
                       pooler="act")


def _config_from_modernbert(hf: dict, where: str) -> ModelConfig:
    """ModernBERT: pre-LN with a final norm, GeGLU, rotary positions in halves with a base for the global and
    one for the local layers, local layers that see ±local_attention/2 tokens, no segment embeddings."""
    biases = {key: bool(hf.get(key, False)) for key in ("norm_bias", "attention_bias", "mlp_bias", "classifier_bias")}
    if len(set(biases.values())) > 1:
        raise CheckpointError(f"{where}: " + ", ".join(f"{k} {v}" for k, v in biases.items()) +
                              ": bertmath's model.bias switches all of them together")
    if not hf.get("decoder_bias", True):
        raise CheckpointError(f"{where}: decoder_bias is false; bertmath's MLM decoder has a bias")
    activation = _activation(hf, "hidden_activation", "gelu", where)
    if _activation(hf, "classifier_activation", "gelu", where) != activation:
        raise CheckpointError(f"{where}: classifier_activation '{hf.get('classifier_activation', 'gelu')}' differs "
                              f"from hidden_activation '{hf.get('hidden_activation', 'gelu')}'; bertmath's heads use "
                              "the model's activation")
    layers = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None:
        every = hf.get("global_attn_every_n_layers", 3)
        types = ["full_attention" if i % every == 0 else "sliding_attention" for i in range(layers)]
    global_every = _global_every(types, where)
    thetas = {}
    for kind, legacy, default in (("full_attention", "global_rope_theta", 160000.0),
                                  ("sliding_attention", "local_rope_theta", 10000.0)):
        rope = (hf.get("rope_parameters") or {}).get(kind) or {}
        if rope.get("rope_type", "default") != "default":
            raise CheckpointError(f"{where}: rope_parameters.{kind}.rope_type '{rope['rope_type']}' is not "
                                  "supported (bertmath's rotary positions are the default, unscaled ones)")
        thetas[kind] = float(rope.get("rope_theta", hf.get(legacy, default)))
    local = global_every is not None
    return ModelConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=layers,
        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 8192), type_vocab_size=0, activation=activation,
        hidden_dropout=float(hf.get("embedding_dropout", 0.0)), attention_dropout=float(hf.get("attention_dropout", 0.0)),
        layer_norm_eps=float(hf.get("norm_eps", 1e-5)), initializer_range=float(hf.get("initializer_range", 0.02)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)), pad_token_id=hf.get("pad_token_id", 0) or 0,
        position_encoding="rope", rope_base=thetas["full_attention"], rope_style="half", norm="pre", ffn="glu",
        bias=biases["norm_bias"], local_attention=hf.get("local_attention", 128) if local else None,
        global_every=global_every or 3,
        local_rope_base=thetas["sliding_attention"] if local and thetas["sliding_attention"] != thetas["full_attention"]
        else None,
        pooler="act_norm", pooling=hf.get("classifier_pooling", "cls"), init_scheme="modernbert")


def _global_every(types: list[str], where: str) -> int | None:
    """n such that layer i is global ("full_attention") exactly when i % n == 0; None when every layer is. When
    several n fit (one global layer among few), ModelConfig's default, 3, if it is one of them."""
    if all(t == "full_attention" for t in types):
        return None
    pattern = [t == "full_attention" for t in types]
    if pattern == [i % 3 == 0 for i in range(len(types))]:
        return 3
    every = pattern.index(True, 1) if True in pattern[1:] else len(types)
    if pattern != [i % every == 0 for i in range(len(types))]:
        raise CheckpointError(f"{where}: layer_types {types} is not a global layer every n layers from the first "
                              "(bertmath's model.global_every)")
    return every


def family(config: ModelConfig) -> Layout:
    """The transformers twin of a model: BERT (post-LN, learned positions), RoFormer (post-LN, rotary positions in
    interleaved pairs) or ModernBERT (pre-LN, rotary in halves). A CheckpointError naming the setting for a
    model none of them can hold."""
    c = config

    def refuse(key: str, why: str):
        raise CheckpointError(f"model.{key} is {getattr(c, key)!r}: {why}, so this checkpoint cannot be exported "
                              "to transformers' layout")

    if c.position_encoding == "alibi":
        refuse("position_encoding", "transformers has no ALiBi encoder (BERT has learned positions, RoFormer and "
               "ModernBERT rotary ones)")
    if c.norm == "pre":
        if c.position_encoding != "rope":
            refuse("position_encoding", "transformers' pre-LN encoder (ModernBERT, for model.norm 'pre') has only "
                   "rotary positions")
        for key, value, why in (("rope_style", "half", "ModernBERT rotates the halves of each head (rope_style: half)"),
                                ("ffn", "glu", "ModernBERT's feed-forward is gated (ffn: glu)"),
                                ("type_vocab_size", 0, "ModernBERT has no segment embeddings (type_vocab_size: 0)")):
            if getattr(c, key) != value:
                refuse(key, why)
        return MODERNBERT
    twin = "BERT" if c.position_encoding == "learned" else "RoFormer"
    for key, ok, why in (("ffn", c.ffn == "mlp", f"transformers' post-LN {twin} has a plain MLP feed-forward"),
                         ("bias", c.bias, f"transformers' {twin} has biases"),
                         ("local_attention", c.local_attention is None, f"transformers' {twin} has only global attention"),
                         ("type_vocab_size", c.type_vocab_size > 0, f"transformers' {twin} has segment embeddings")):
        if not ok:
            refuse(key, why)
    if c.position_encoding == "learned":
        return BERT
    if c.rope_style != "interleaved":
        refuse("rope_style", "transformers' post-LN rotary encoder (RoFormer) turns interleaved pairs")
    if c.rope_base != ROFORMER_ROPE_BASE:
        refuse("rope_base", "transformers' RoFormer turns by 10000^(-2i/d) only")
    return ROFORMER


# The pooler each twin's sequence classifier has (config.pooler).
_POOLERS = {"bert": "tanh", "roformer": "act", "modernbert": "act_norm"}


def check_head(config: ModelConfig, kind: str) -> None:
    """A CheckpointError naming model.pooler when the twin's `kind` head has another shape: a sequence
    classifier's pooler must be the twin's; the token and span heads start with ModernBERT's `head`
    (TokenTransform, model.pooler act_norm) exactly when the twin is ModernBERT."""
    layout = family(config)
    expected = _POOLERS[layout.model_type]
    if kind == "classifier" and config.pooler != expected:
        raise CheckpointError(f"model.pooler is '{config.pooler}', but {layout.classes['classifier']} pools with "
                              f"'{expected}', so this classifier cannot be exported to its layout")
    if kind == "classifier" and layout is not MODERNBERT and config.pooling != "cls":
        raise CheckpointError(f"model.pooling is '{config.pooling}': {layout.classes['classifier']} reads [CLS]")
    if kind in ("tokens", "span") and (config.pooler == "act_norm") != (layout is MODERNBERT):
        raise CheckpointError(f"model.pooler is '{config.pooler}', but {layout.classes[kind]} "
                              + ("starts with ModernBERT's head (pooler act_norm)" if layout is MODERNBERT else
                                 "reads the hidden states directly (no act_norm head)")
                              + ", so this model cannot be exported to its layout")


def config_to_hf(config: ModelConfig) -> dict:
    """ModelConfig → the config.json of its transformers twin (`family`), for the model with an MLM head."""
    layout = family(config)
    c = config
    if layout is MODERNBERT:
        types = ["sliding_attention" if c.is_local(i) else "full_attention" for i in range(c.num_layers)]
        return {
            "architectures": [layout.classes["mlm"]],
            "model_type": "modernbert",
            "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads, "intermediate_size": c.intermediate_size,
            "hidden_activation": _ACTIVATIONS_TO_HF[c.activation],
            "classifier_activation": _ACTIVATIONS_TO_HF[c.activation],
            "max_position_embeddings": c.max_position_embeddings,
            "initializer_range": c.initializer_range, "initializer_cutoff_factor": 2.0,
            "norm_eps": c.layer_norm_eps,
            "norm_bias": c.bias, "attention_bias": c.bias, "mlp_bias": c.bias, "classifier_bias": c.bias,
            "decoder_bias": True,
            # bertmath drops out the embeddings and each residual branch (hidden_dropout) and the attention weights;
            # ModernBERT the embeddings, inside the MLP, the attention weights and output. Inference is the same.
            "embedding_dropout": c.hidden_dropout, "mlp_dropout": c.hidden_dropout,
            "classifier_dropout": c.hidden_dropout, "attention_dropout": c.attention_dropout,
            "layer_types": types,
            "local_attention": c.local_attention if c.local_attention is not None else 128,
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": c.rope_base},
                "sliding_attention": {"rope_type": "default", "rope_theta": c.local_rope_base or c.rope_base}},
            "classifier_pooling": c.pooling,
            "pad_token_id": c.pad_token_id,
            "tie_word_embeddings": c.tie_word_embeddings,
        }
    hf = {
        "architectures": [layout.classes["mlm"]],
        "model_type": layout.model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "intermediate_size": c.intermediate_size,
        "hidden_act": _ACTIVATIONS_TO_HF[c.activation],
        "hidden_dropout_prob": c.hidden_dropout,
        "attention_probs_dropout_prob": c.attention_dropout,
        "max_position_embeddings": c.max_position_embeddings,
        "type_vocab_size": c.type_vocab_size,
        "initializer_range": c.initializer_range,
        "layer_norm_eps": c.layer_norm_eps,
        "pad_token_id": c.pad_token_id,
        "tie_word_embeddings": c.tie_word_embeddings,
    }
    if layout is BERT:
        hf["position_embedding_type"] = "absolute"
    else:
        hf.update(embedding_size=c.hidden_size, rotary_value=False)
    return hf


def roformer_position_table(config: ModelConfig) -> Tensor:
    """RoFormer's `encoder.embed_positions.weight`, (P, Dh): row t is [sin tθ_0..sin tθ_{d/2-1}, cos tθ_0..]
    (θ_i = 10000^(-2i/d)): the table transformers reads its rotations from. A frozen buffer, not a learned
    weight; written into exports so that transformers loads every tensor it expects. Float64, then float32,
    as transformers builds it."""
    angle = BF.rotary_angles(config.max_position_embeddings, config.head_size, ROFORMER_ROPE_BASE,
                             torch.empty(0, dtype=torch.float64))  # (P, Dh/2)
    return torch.cat([angle.sin(), angle.cos()], dim=-1).float()


# --- sentence-transformers' folders -----------------------------------------------------------------------
#
#   modules.json                      the pipeline: [{idx, name, path, type}] — Transformer ("" = this folder),
#                                     Pooling (1_Pooling/), Normalize (2_Normalize/, optional; may have no folder)
#   sentence_bert_config.json         {"max_seq_length": L, "do_lower_case": false} (sentence-transformers ≥ 3
#                                     may leave L out: then tokenizer_config.json's model_max_length)
#   1_Pooling/config.json             which pooling: "pooling_mode" (≥ 6) or one pooling_mode_*_tokens flag (< 6)
#   config_sentence_transformers.json versions, prompts, similarity_fn_name
# bertmath reads and writes the pipelines Transformer → Pooling (mean, cls or max) → Normalize?; a module of
# another kind (Dense, LayerNorm, ...) would change the vectors, and is refused by name.

ST_MODULE_KINDS = ("Transformer", "Pooling", "Normalize")
# The type names export writes: the short aliases every sentence-transformers since 2.0 resolves.
ST_MODULE_TYPES = {kind: f"sentence_transformers.models.{kind}" for kind in ST_MODULE_KINDS}
ST_MODULE_PATHS = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize"}
# sentence-transformers' < 6 flags, in the order Pooling concatenates them, and bertmath's names for them
_ST_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                     "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                     "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def st_module_kind(type_name: str, where: str) -> str:
    """"Transformer", "Pooling" or "Normalize" for a modules.json type (sentence_transformers.models.Pooling,
    sentence_transformers.sentence_transformer.modules.pooling.Pooling, ...); a CheckpointError naming any other
    module: its output is not bertmath's."""
    kind = type_name.rsplit(".", 1)[-1]
    if kind not in ST_MODULE_KINDS:
        raise CheckpointError(f"{where}: module {type_name!r} is not supported (bertmath embeds with "
                              f"{' → '.join(ST_MODULE_KINDS)} only)")
    return kind


def pooling_from_st(config: dict, where: str) -> str:
    """bertmath's sentence_pooling (functional.POOLING: mean, cls, max) from a 1_Pooling/config.json, either
    format; a CheckpointError naming a mode bertmath does not pool with, or several concatenated."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:
        modes = [name for flag, name in _ST_POOLING_FLAGS.items() if config.get(flag)] or ["mean"]
    if len(modes) != 1 or modes[0] not in BF.POOLING:
        raise CheckpointError(f"{where}: pooling mode {'+'.join(map(str, modes))} is not supported (bertmath pools "
                              f"with one of {', '.join(BF.POOLING)})")
    return modes[0]


def pooling_to_st(pooling: str, dimension: int) -> dict:
    """1_Pooling/config.json for `pooling` over D = `dimension`, in the format of sentence-transformers 2.0
    (the four flags it knows, as all-MiniLM-L6-v2's file), which every later version reads (6 converts it)."""
    flags = {flag: name == pooling for flag, name in list(_ST_POOLING_FLAGS.items())[:4]}
    return {"word_embedding_dimension": dimension, **flags}
