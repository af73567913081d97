"""transformers' BERT layout: the one name mapping between bertmath's parameters and transformers',
and the config translation. Used by import, export and the parity tests; nothing else knows HF names.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from .config import ModelConfig
from .errors import CheckpointError, OutputError

log = logging.getLogger(__name__)

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
    """transformers name → bertmath name, for BertForMaskedLM (prefix "bert.") or BertModel (no prefix);
    None for entries that are not parameters of bertmath's models."""
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if _IGNORED.search(name):
        return None
    if name.startswith("cls."):
        return _rename(name, _HEAD_PAIRS, source=0)
    prefix = "bert." if name.startswith("bert.") else ""
    mapped = _rename(name[len(prefix):], _NAME_PAIRS, source=0)
    return None if mapped is None else prefix + mapped


def bertmath_to_hf_name(name: str) -> str:
    """bertmath name → transformers name (the inverse of `hf_to_bertmath_name`)."""
    if name.startswith("mlm_head."):
        mapped = _rename(name, _HEAD_PAIRS, source=1)
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


# --- reading and writing transformers' directory layout --------------------------------------------------
#
#   config.json                              BertConfig (config_to_hf / config_from_hf)
#   model.safetensors                        weights, transformers names; tied decoder weight not stored
#   (or model.safetensors.index.json + shards, or pytorch_model.bin: read only)
#   tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt

HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
HF_PICKLE_WEIGHTS_FILE = "pytorch_model.bin"


def read_hf_weights(directory: str | Path) -> dict[str, Tensor]:
    """The raw state dict (transformers names) of a transformers directory: model.safetensors, sharded
    safetensors (model.safetensors.index.json), or pytorch_model.bin read with `weights_only=True` (no
    arbitrary unpickling). A missing or unreadable file is a CheckpointError naming it."""
    from .checkpoint import read_json, read_safetensors

    directory = Path(directory)
    if (directory / HF_WEIGHTS_FILE).is_file():
        return read_safetensors(directory / HF_WEIGHTS_FILE)
    if (directory / HF_WEIGHTS_INDEX_FILE).is_file():
        index = read_json(directory / HF_WEIGHTS_INDEX_FILE)
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{directory / HF_WEIGHTS_INDEX_FILE}: no 'weight_map' entries")
        state = {}
        for shard in shards:
            state.update(read_safetensors(directory / shard))
        return state
    path = directory / HF_PICKLE_WEIGHTS_FILE
    if path.is_file():
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...: all mean "unreadable"
            first_line = (str(e).splitlines() or [e.__class__.__name__])[0][:160]
            raise CheckpointError(f"{path}: unreadable or corrupted weights file ({first_line})") from None
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
        return state
    raise CheckpointError(f"{directory}: no weights ({HF_WEIGHTS_FILE}, {HF_WEIGHTS_INDEX_FILE} "
                          f"or {HF_PICKLE_WEIGHTS_FILE})")


def load_hf_checkpoint(directory: str | Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(ModelConfig, state dict in bertmath names) from a transformers BERT directory (config.json +
    weights). Tensors with no bertmath counterpart (other task heads) are logged and skipped."""
    from .checkpoint import read_json

    directory = Path(directory)
    config_path = directory / HF_CONFIG_FILE
    config = config_from_hf(read_json(config_path), where=str(config_path))
    hf_state = read_hf_weights(directory)
    unknown: list[str] = []
    state = state_dict_from_hf(hf_state, unknown)
    if not state:
        raise CheckpointError(f"{directory}: no BERT tensors in the weights file "
                              f"(found e.g. {next(iter(hf_state), 'nothing')!r})")
    if unknown:
        log.info("%s: skipping %d tensors bertmath does not use, e.g. %s", directory, len(unknown), unknown[0])
    return config, state


def lowercases(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer's normaliser lowercases (BertNormalizer(lowercase=True) or a Lowercase step)."""
    normalizer = json.loads(tokenizer.to_str()).get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    return any(s.get("type") == "Lowercase" or (s.get("type") == "BertNormalizer" and s.get("lowercase"))
               for s in steps)


def load_checkpoint_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint directory (bertmath or transformers): tokenizer.json, else vocab.txt
    lowercased as tokenizer_config.json's `do_lower_case` says (default True, as BERT's)."""
    from .checkpoint import read_json
    from .tokenizer import load_tokenizer

    directory = Path(directory)
    lowercase = True
    if not (directory / "tokenizer.json").is_file() and (directory / "tokenizer_config.json").is_file():
        lowercase = bool(read_json(directory / "tokenizer_config.json").get("do_lower_case", True))
    return load_tokenizer(directory, lowercase=lowercase)


def load_model_and_tokenizer(cls, path: str | Path, device: str | torch.device = "cpu") -> tuple:
    """(`cls` (BertModel or BertForMaskedLM) with the checkpoint's weights, in eval mode; its tokenizer) from a
    bertmath run/step directory or a transformers directory. The tokenizer is read first: it is the quick check."""
    from .checkpoint import build_from_state

    directory, config, state, tokenizer = read_with_tokenizer(path)
    return build_from_state(cls, config, state, str(directory)).to(device).eval(), tokenizer


def read_with_tokenizer(path: str | Path) -> tuple[Path, ModelConfig, dict[str, Tensor], Tokenizer]:
    """checkpoint.read_checkpoint(path) and the tokenizer, all from one step directory whatever a run that
    saves there meanwhile does (checkpoint.read_resolved). The tokenizer is read first: it is the quick check."""
    from .checkpoint import read_checkpoint, read_resolved

    def read(kind: str, directory: Path) -> tuple:
        tokenizer = load_checkpoint_tokenizer(directory)
        return (*read_checkpoint(directory), tokenizer)

    return read_resolved(path, read)


# What makes a directory a previous export, which `export` may write over: a key of its config.json.
EXPORT_MARK = {"exported_by": "bertmath"}


def check_export_target(out_dir: str | Path) -> Path:
    """`out_dir` if `export` may write there: it does not exist yet (it is created), it is an empty directory,
    or it holds a previous export, i.e. a config.json with "model_type": "bert" and "exported_by": "bertmath"
    and no "transformers_version" (transformers adds that key whenever it saves a model, e.g. one fine-tuned
    from the export, and then the directory is no longer ours to overwrite). An export replaces only the six
    files it writes there. OutputError otherwise: an existing file, another program's directory."""
    from .checkpoint import check_output, read_json

    out_dir = check_output(out_dir, directory=True)
    try:
        if not out_dir.exists() or not any(out_dir.iterdir()):
            return out_dir
    except OSError as e:
        raise OutputError(f"{out_dir}: cannot list this directory ({e.strerror or e})") from None
    try:
        config = read_json(out_dir / HF_CONFIG_FILE)
    except CheckpointError:  # none, or not JSON: not an export
        config = None
    if (isinstance(config, dict) and config.get("model_type") == "bert" and "transformers_version" not in config
            and all(config.get(k) == v for k, v in EXPORT_MARK.items())):
        return out_dir
    raise OutputError(f"{out_dir}: not empty and not a previous bertmath export (whose config.json says "
                      '"exported_by": "bertmath"); give a new or empty directory, or remove this one')


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path) -> Path:
    """Write any checkpoint (bertmath run or step directory, transformers directory) in transformers'
    layout: out_dir/config.json, model.safetensors (transformers names), tokenizer.json,
    tokenizer_config.json, special_tokens_map.json, vocab.txt; each file written atomically.
    `transformers.AutoModelForMaskedLM/AutoTokenizer.from_pretrained(out_dir)` load the result.
    `out_dir` must be new, empty or a previous export (check_export_target); it is checked, and the whole
    export prepared, before anything is written.

    A checkpoint with an MLM head is exported as BertForMaskedLM, one without (a sentence encoder) as
    BertModel. The tied decoder weight is not stored (transformers re-ties it from
    `bert.embeddings.word_embeddings.weight`; safetensors cannot store two names for one tensor); an
    untied one is. The decoder bias is stored under both its names, `cls.predictions.bias` and
    `cls.predictions.decoder.bias` (a copy): transformers 5 reads the latter when the decoder is untied."""
    from .checkpoint import atomic_save_safetensors, atomic_write_text, build_from_state, model_state
    from .model import BertForMaskedLM, BertModel
    from .tokenizer import special_tokens

    out_dir = check_export_target(out_dir)
    directory, config, state, tokenizer = read_with_tokenizer(checkpoint_path)
    hf_config = {**config_to_hf(config), **EXPORT_MARK}  # first: a model transformers cannot represent fails here
    has_head = any(name.startswith("mlm_head.") for name in state)
    model = build_from_state(BertForMaskedLM if has_head else BertModel, config, state, str(directory))  # checks shapes
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(f"{directory}: tokenizer has {tokenizer.get_vocab_size()} tokens but the model's "
                              f"vocab_size is {config.vocab_size}")
    hf_state = state_dict_to_hf(model_state(model))  # model_state: the tied decoder weight once, as the embedding
    if "cls.predictions.decoder.bias" in hf_state:  # safetensors stores no shared storage: a copy under each name
        hf_state["cls.predictions.decoder.bias"] = hf_state["cls.predictions.decoder.bias"].clone()
    if not has_head:
        hf_config["architectures"] = ["BertModel"]

    ids = special_tokens(tokenizer, where=str(directory))
    names = {k: tokenizer.id_to_token(getattr(ids, k)) for k in ("unk", "sep", "pad", "cls", "mask")}
    special_map = {f"{k}_token": v for k, v in names.items()}
    tokenizer_config = {
        "tokenizer_class": "BertTokenizerFast",
        "do_lower_case": lowercases(tokenizer),
        "model_max_length": config.max_position_embeddings,
        **special_map,
        "clean_up_tokenization_spaces": True,
    }
    vocab = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise CheckpointError(f"{directory}: tokenizer ids are not 0..{len(vocab) - 1}; cannot write vocab.txt")
    texts = {
        HF_CONFIG_FILE: json.dumps(hf_config, indent=2) + "\n",
        "tokenizer.json": tokenizer.to_str(),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2) + "\n",
        "vocab.txt": "".join(f"{token}\n" for token, _ in vocab),
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / HF_CONFIG_FILE, texts.pop(HF_CONFIG_FILE))  # first: it marks the export
        atomic_save_safetensors(hf_state, out_dir / HF_WEIGHTS_FILE, metadata={"format": "pt"})
        for name, text in texts.items():
            atomic_write_text(out_dir / name, text)
    except OSError as e:  # no permission, a full disk: the user's to fix, said in one line
        raise OutputError(f"{out_dir}: cannot write the export ({e.strerror or e})") from None
    log.debug("exported %s to %s (%s)", directory, out_dir, hf_config["architectures"][0])
    return out_dir
