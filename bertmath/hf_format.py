"""transformers' BERT layout: the one name mapping between bertmath's parameters and transformers',
and the config translation. Used by import and export (pretrained.py) and the parity tests; nothing else knows
HF names. Reading and writing transformers' directories is pretrained.py's.
"""

from __future__ import annotations

import re

from torch import Tensor

from .config import ModelConfig
from .errors import CheckpointError

# (transformers name, bertmath name) — the part after an optional "bert." prefix for encoder weights.
# Read top to bottom; `{i}` is a layer index.
_NAME_PAIRS = [
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
    ("pooler.dense.{p}", "pooler.dense.{p}"),
]
# MLM head: transformers keeps it under "cls.predictions.", bertmath under "mlm_head.".
_HEAD_PAIRS = [
    ("cls.predictions.transform.dense.{p}", "mlm_head.dense.{p}"),
    ("cls.predictions.transform.LayerNorm.{p}", "mlm_head.norm.{p}"),
    ("cls.predictions.decoder.weight", "mlm_head.decoder.weight"),
    ("cls.predictions.bias", "mlm_head.decoder.bias"),
]
# The sequence-classification head: the same name on both sides (BertForSequenceClassification).
_CLASSIFIER_PAIRS = [("classifier.{p}", "classifier.{p}")]
# Present in transformers files, not parameters of an MLM encoder: buffers, the next-sentence head,
# and the second name of the tied decoder bias.
_IGNORED = re.compile(r"(^|\.)position_ids$|^cls\.seq_relationship\.|^cls\.predictions\.decoder\.bias$")


def _compile(pattern: str) -> re.Pattern:
    regex = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{regex}$")


def _rename(name: str, pairs: list[tuple[str, str]], source: int) -> str | None:
    for pair in pairs:
        match = _compile(pair[source]).match(name)
        if match:
            return pair[1 - source].format(**match.groupdict())
    return None


def hf_to_bertmath_name(name: str) -> str | None:
    """transformers name → bertmath name, for BertForMaskedLM and BertForSequenceClassification (prefix "bert.")
    or BertModel (no prefix);
    None for entries that are not parameters of bertmath's models."""
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if _IGNORED.search(name):
        return None
    if name.startswith("cls."):
        return _rename(name, _HEAD_PAIRS, source=0)
    if name.startswith("classifier."):
        return _rename(name, _CLASSIFIER_PAIRS, source=0)
    prefix = "bert." if name.startswith("bert.") else ""
    mapped = _rename(name[len(prefix):], _NAME_PAIRS, source=0)
    return None if mapped is None else prefix + mapped


def bertmath_to_hf_name(name: str) -> str:
    """bertmath name → transformers name (the inverse of `hf_to_bertmath_name`)."""
    if name.startswith("mlm_head."):
        mapped = _rename(name, _HEAD_PAIRS, source=1)
    elif name.startswith("classifier."):
        mapped = _rename(name, _CLASSIFIER_PAIRS, source=1)
    else:
        prefix = "bert." if name.startswith("bert.") else ""
        mapped = _rename(name[len(prefix):], _NAME_PAIRS, source=1)
        mapped = None if mapped is None else prefix + mapped
    if mapped is None:
        raise KeyError(f"no transformers name for bertmath parameter '{name}'")
    return mapped


def state_dict_from_hf(hf_state: dict[str, Tensor], unknown: list[str] | None = None) -> dict[str, Tensor]:
    """Rename a transformers BERT state dict to bertmath names. Names with no counterpart are skipped,
    and appended to `unknown` when a list is given."""
    out = {}
    for name, tensor in hf_state.items():
        mapped = hf_to_bertmath_name(name)
        if mapped is None:
            if unknown is not None and not _IGNORED.search(name):
                unknown.append(name)
            continue
        out[mapped] = tensor
    # transformers' head adds `decoder.bias`; `cls.predictions.bias` is the same tensor only when the decoder
    # is tied (transformers 5 unties both with tie_word_embeddings=False, leaving `cls.predictions.bias`
    # unused). So the decoder's own bias wins when the file has it; old files have only `cls.predictions.bias`.
    if "cls.predictions.decoder.bias" in hf_state:
        out["mlm_head.decoder.bias"] = hf_state["cls.predictions.decoder.bias"]
    return out


def state_dict_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a bertmath state dict to transformers names (`cls.predictions.decoder.bias` is added as the
    second name of the tied decoder bias, as transformers writes it)."""
    out = {bertmath_to_hf_name(name): tensor for name, tensor in state.items()}
    if "cls.predictions.bias" in out:
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return out


_ACTIVATIONS_FROM_HF = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_ACTIVATIONS_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """transformers' BertConfig (as a dict from config.json) → ModelConfig."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{where}: position_embedding_type '{hf['position_embedding_type']}' is not "
                              "supported (bertmath implements BERT's absolute positions)")
    activation = hf.get("hidden_act", "gelu")
    if activation not in _ACTIVATIONS_FROM_HF:
        raise CheckpointError(f"{where}: hidden_act '{activation}' is not supported; "
                              f"supported: {', '.join(_ACTIVATIONS_FROM_HF)}")
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2), activation=_ACTIVATIONS_FROM_HF[activation],
            hidden_dropout=float(hf.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            pad_token_id=hf.get("pad_token_id", 0) or 0,
        )
    except KeyError as e:
        raise CheckpointError(f"{where}: missing key {e.args[0]!r}") from None


def config_to_hf(config: ModelConfig) -> dict:
    """ModelConfig → transformers' BertConfig dict (config.json) for BertForMaskedLM. transformers' BERT has
    absolute positions only: a model with alibi or rope positions cannot be written in its layout."""
    if config.position_encoding != "learned":
        raise CheckpointError(f"model.position_encoding is '{config.position_encoding}': transformers' BERT has "
                              "only learned absolute positions, so this checkpoint cannot be exported to its layout")
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": _ACTIVATIONS_TO_HF[config.activation],
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": config.tie_word_embeddings,
    }
