"""Any checkpoint directory → (config, weights, tokenizer), and export: the one way in and out of bertmath's models.

A path is resolved (resolve_checkpoint) to a bertmath checkpoint (a run directory's latest step, or a step
directory: config.yaml + model.safetensors) or a transformers directory of BERT, RoFormer or ModernBERT
(config.json + weights), and read
from one whole step directory even while a run saves there (read_resolved). transformers' names and config
keys are translated by hf_format; a model is built and loaded by build_from_state. `export_checkpoint` writes
any of them in transformers' layout. Loading never unpickles (`torch.load(weights_only=True)` for
transformers' `pytorch_model.bin`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from tokenizers import Tokenizer
from torch import Tensor

from .checkpoint import CONFIG_FILE, MODEL_FILE, latest_checkpoint, load_state_into, model_state, read_config
from .config import ModelConfig
from .errors import BertmathError, CheckpointError, OutputError
from .hf_format import (BERT, LAYOUTS, MODERNBERT, ROFORMER, ST_MODULE_PATHS, ST_MODULE_TYPES, check_head,
                        config_from_hf, config_to_hf, family, head_kind, kind_of_architectures, layout_of,
                        pooling_from_st, pooling_to_st, roformer_position_table, st_module_kind, state_dict_from_hf,
                        state_dict_to_hf)
from .io import atomic_save_safetensors, atomic_write_text, check_output, read_json, read_safetensors
from .model import (BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
                    BertForTokenClassification, BertModel)
from .tokenizer import load_tokenizer, special_tokens

T = TypeVar("T")

log = logging.getLogger(__name__)


# --- bertmath and transformers checkpoint directories -----------------------------------------------------


def resolve_checkpoint(path: str | Path) -> tuple[str, Path]:
    """("bertmath", dir) for a run directory (its latest step) or a checkpoint directory;
    ("transformers", dir) for a directory with config.json. CheckpointError otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint directory, got a file")
    latest = latest_checkpoint(path)
    if latest is not None:
        return "bertmath", latest
    if (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file():
        return "bertmath", path
    if (path / "config.json").is_file():
        return "transformers", path
    raise CheckpointError(f"{path}: not a checkpoint (expected step-* directories, {CONFIG_FILE} + {MODEL_FILE}, "
                          "or a transformers config.json)")


def read_checkpoint(path: str | Path) -> tuple[Path, ModelConfig, dict[str, torch.Tensor]]:
    """(resolved directory, ModelConfig, state dict in bertmath names) of a bertmath run/checkpoint
    directory or a transformers BERT directory; no model is built."""
    def read(kind: str, directory: Path):
        if kind == "transformers":
            return directory, *load_hf_checkpoint(directory)
        return directory, read_config(directory).model, read_safetensors(directory / MODEL_FILE)

    return read_resolved(path, read)


READ_ATTEMPTS = 5


def read_resolved(path: str | Path, read: Callable[[str, Path], T]) -> T:
    """read(kind, directory) of the checkpoint `path` resolves to (resolve_checkpoint), from one whole step
    directory. A run that saves prunes old step directories and replaces a step saved again, so the directory
    a reader resolved can vanish or change between the files it opens: then `read` runs again on the newest
    one (READ_ATTEMPTS times at most). An error in a directory that stayed as it was is the checkpoint's own."""
    for _ in range(READ_ATTEMPTS):
        kind, directory = resolve_checkpoint(path)
        before = _identity(directory)
        try:
            result = read(kind, directory)
        except (BertmathError, OSError):
            if _still_newest(path, kind, directory, before):
                raise
            continue
        if _identity(directory) == before:
            return result
    raise CheckpointError(f"{path}: its newest checkpoint was replaced {READ_ATTEMPTS} times while being read "
                          "(a run saving very often?); try again")


def _still_newest(path: str | Path, kind: str, directory: Path, before: tuple[int, int, int] | None) -> bool:
    """Whether `directory` is still what `path` resolves to, as it was when resolved: not gone, not replaced,
    and not pruned. A pruned directory is never the newest; its ctime alone may not show it while the files
    are being deleted (a coarse clock tick)."""
    try:
        newest = resolve_checkpoint(path)
    except CheckpointError:
        return False
    return before is not None and newest == (kind, directory) and _identity(directory) == before


def _identity(directory: Path) -> tuple[int, int, int] | None:
    """What changes when a directory is deleted or another is renamed to its name; None if it is gone."""
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


# The model class of each kind of head (hf_format.head_kind), and the kind of each class.
HEAD_CLASSES = {"mlm": BertForMaskedLM, "classifier": BertForSequenceClassification,
                "tokens": BertForTokenClassification, "span": BertForQuestionAnswering, "encoder": BertModel}


def load_pretrained(cls, path: str | Path, device: str | torch.device = "cpu"):
    """Build `cls` (BertModel, BertForMaskedLM, or a task model: BertForSequenceClassification,
    BertForTokenClassification, BertForQuestionAnswering) from a bertmath or transformers checkpoint, in eval mode."""
    directory, config, state = read_checkpoint(path)
    return build_from_state(cls, config, state, str(directory)).to(device).eval()


def build_from_state(cls, config, state: dict[str, torch.Tensor], where: str, **head):
    """`cls(config, **head)` with `state` (bertmath names) loaded; a BertModel gets a pooler only if `state` has
    one, a sequence or token classifier as many labels as the state's classifier has rows; `head`: the other
    arguments of a model with no weights of its own (BertForSentenceEmbedding's pooling and normalize). A task
    model from a checkpoint with another task's head is a CheckpointError: its head would be new, untrained
    weights."""
    kind = next((k for k, c in HEAD_CLASSES.items() if c is cls), None)
    if kind in ("classifier", "tokens", "span") and head_kind(state, source=1) != kind:
        raise CheckpointError(f"{where}: not a fine-tuned {_TASK_NAMES[kind]} (it has {_HEAD_NAMES[head_kind(state, 1)]});"
                              f" fine-tune it first with `bertmath finetune` (task.kind: {_TASK_KINDS[kind]})")
    if cls is BertModel and not any(".pooler." in f".{k}" for k in state):
        model = BertModel(config, add_pooler=False)  # an MLM checkpoint has no pooler: do not invent one
    elif cls in (BertForSequenceClassification, BertForTokenClassification):
        model = cls(config, num_labels=classifier_labels_count(state, where))
    else:
        model = cls(config, **head)
    load_state_into(model, state, where)
    return model


_HEAD_NAMES = {"mlm": "an MLM head", "classifier": "a sequence classifier", "tokens": "a token classifier",
               "span": "a question-answering head", "encoder": "no task head"}
_TASK_KINDS = {"classifier": "sequence", "tokens": "tokens", "span": "span"}
_TASK_NAMES = {"classifier": "classifier", "tokens": "token classifier", "span": "question-answering model"}


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
    """(ModelConfig, state dict in bertmath names) from a transformers BERT, RoFormer or ModernBERT directory
    (config.json + weights). Tensors with no bertmath counterpart (other task heads) are logged and skipped."""
    directory = Path(directory)
    config_path = directory / HF_CONFIG_FILE
    hf_config = read_json(config_path)
    config = config_from_hf(hf_config, where=str(config_path))
    layout = layout_of(hf_config)
    hf_state = read_hf_weights(directory)
    unknown: list[str] = []
    state = state_dict_from_hf(hf_state, unknown, layout, kind_of_architectures(hf_config))
    if not state:
        raise CheckpointError(f"{directory}: no {layout.model_type} tensors in the weights file "
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
    directory = Path(directory)
    lowercase = True
    if not (directory / "tokenizer.json").is_file() and (directory / "tokenizer_config.json").is_file():
        lowercase = bool(read_json(directory / "tokenizer_config.json").get("do_lower_case", True))
    return load_tokenizer(directory, lowercase=lowercase)


def load_model_and_tokenizer(cls, path: str | Path, device: str | torch.device = "cpu", **config_changes) -> tuple:
    """(`cls` (BertModel, BertForMaskedLM or BertForSequenceClassification) with the checkpoint's weights, in eval
    mode; its tokenizer) from a bertmath run/step directory or a transformers directory. The tokenizer is read
    first: it is the quick check.
    config_changes: ModelConfig fields to set that do not change the math, e.g. fused=True for torch's kernels."""
    directory, config, state, tokenizer = read_with_tokenizer(path)
    config = dataclasses.replace(config, **config_changes)
    return build_from_state(cls, config, state, str(directory)).to(device).eval(), tokenizer


def read_with_tokenizer(path: str | Path) -> tuple[Path, ModelConfig, dict[str, Tensor], Tokenizer]:
    """read_checkpoint(path) and the tokenizer, all from one step directory whatever a run that
    saves there meanwhile does (read_resolved). The tokenizer is read first: it is the quick check."""
    def read(kind: str, directory: Path) -> tuple:
        tokenizer = load_checkpoint_tokenizer(directory)
        return (*read_checkpoint(directory), tokenizer)

    return read_resolved(path, read)


# --- sentence embeddings: how a checkpoint pools, and sentence-transformers' folders ---------------------------


@dataclass(frozen=True)
class SentenceEncoding:
    """How a checkpoint turns a text into one vector: its first L tokens ([CLS] and [SEP] included) through the
    encoder, e = pool(h), ê = e/‖e‖ when `normalize`. `source` says who said so: "sentence-transformers" (the
    folder's modules.json), "task" (a bertmath run fine-tuned with task.kind embedding), or "default" (nobody:
    sentence-transformers' own defaults for a plain encoder, mean pooling and no normalisation)."""

    pooling: str  # functional.POOLING: mean, cls, max
    normalize: bool
    max_seq_len: int  # L
    lowercase: bool = False  # sentence_bert_config.json's do_lower_case: lowercase before the tokenizer
    source: str = "default"


ST_MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "sentence_bert_config.json"
ST_META_FILE = "config_sentence_transformers.json"
ST_POOLING_FILE = f"{ST_MODULE_PATHS['Pooling']}/config.json"
ST_NORMALIZE_FILE = f"{ST_MODULE_PATHS['Normalize']}/config.json"
ST_FILES = (ST_MODULES_FILE, ST_CONFIG_FILE, ST_META_FILE, ST_POOLING_FILE, ST_NORMALIZE_FILE)


def sentence_encoding(directory: Path, config: ModelConfig) -> SentenceEncoding:
    """The SentenceEncoding a checkpoint directory records: a sentence-transformers folder's, a bertmath
    embedding run's (task.kind embedding: task.sentence_pooling, task.normalize, task.max_seq_len), else the
    default (source "default"). L never exceeds the model's positions."""
    directory = Path(directory)
    limit = config.max_position_embeddings
    if (directory / ST_MODULES_FILE).is_file():
        return read_sentence_transformers(directory, limit)
    if (directory / CONFIG_FILE).is_file():
        task = read_config(directory).task
        if task is not None and task.kind == "embedding":
            return SentenceEncoding(task.sentence_pooling, task.normalize, min(task.max_seq_len, limit), source="task")
    return SentenceEncoding("mean", False, min(_tokenizer_max_length(directory) or limit, limit))


def read_sentence_transformers(directory: Path, max_positions: int) -> SentenceEncoding:
    """The SentenceEncoding of a sentence-transformers folder: modules.json must be Transformer (in this folder)
    → Pooling → Normalize (optional); the pooling from its config.json (hf_format.pooling_from_st); L from
    sentence_bert_config.json's max_seq_length, else tokenizer_config.json's model_max_length (sentence-
    transformers ≥ 3 keeps it there), capped at the model's positions as sentence-transformers caps it.
    A CheckpointError naming the module or file otherwise."""
    where = str(directory / ST_MODULES_FILE)
    modules = read_json(directory / ST_MODULES_FILE)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{where}: expected a list of modules, got {type(modules).__name__}")
    modules = sorted(modules, key=lambda m: m.get("idx", 0))
    kinds = [st_module_kind(str(m.get("type", "")), where) for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise CheckpointError(f"{where}: modules {' → '.join(kinds)}; bertmath embeds with Transformer → Pooling "
                              "→ Normalize (optional)")
    paths = [str(m.get("path", "")) for m in modules]
    if paths[0] not in ("", "."):
        raise CheckpointError(f"{where}: the Transformer is in {paths[0]}/, not in the folder itself; bertmath "
                              "reads folders saved by sentence-transformers ≥ 2 (Transformer at the top)")
    pooling_file = directory / paths[1] / "config.json"
    pooling = pooling_from_st(read_json(pooling_file), str(pooling_file))
    if len(paths) == 3 and (directory / paths[2] / "config.json").is_file():
        normalized = read_json(directory / paths[2] / "config.json").get("module_input_name", "sentence_embedding")
        if normalized != "sentence_embedding":
            raise CheckpointError(f"{directory / paths[2] / 'config.json'}: Normalize of {normalized!r}; bertmath "
                                  "normalises the sentence embedding only")
    settings = read_json(directory / ST_CONFIG_FILE) if (directory / ST_CONFIG_FILE).is_file() else {}
    length = settings.get("max_seq_length") or _tokenizer_max_length(directory) or max_positions
    return SentenceEncoding(pooling, len(kinds) == 3, min(int(length), max_positions),
                            bool(settings.get("do_lower_case", False)), source="sentence-transformers")


def _tokenizer_max_length(directory: Path) -> int | None:
    """tokenizer_config.json's model_max_length, when the directory has one."""
    path = Path(directory) / "tokenizer_config.json"
    length = read_json(path).get("model_max_length") if path.is_file() else None
    return int(length) if isinstance(length, (int, float)) and length >= 1 else None


def sentence_transformers_files(encoding: SentenceEncoding, dimension: int) -> dict[str, str]:
    """The files that make an exported transformers directory a sentence-transformers folder too, by name:
    modules.json (Transformer → Pooling → Normalize when `encoding.normalize`), 1_Pooling/config.json,
    sentence_bert_config.json, config_sentence_transformers.json, 2_Normalize/config.json when normalising.
    Written in sentence-transformers 2.0's format (all-MiniLM-L6-v2's), which every later version reads."""
    kinds = ["Transformer", "Pooling"] + (["Normalize"] if encoding.normalize else [])
    modules = [{"idx": i, "name": str(i), "path": ST_MODULE_PATHS[kind], "type": ST_MODULE_TYPES[kind]}
               for i, kind in enumerate(kinds)]
    meta = {"__version__": {"bertmath": _bertmath_version(), "pytorch": torch.__version__},
            "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
            "similarity_fn_name": "cosine"}
    files = {ST_MODULES_FILE: modules, ST_POOLING_FILE: pooling_to_st(encoding.pooling, dimension),
             ST_CONFIG_FILE: {"max_seq_length": encoding.max_seq_len, "do_lower_case": encoding.lowercase},
             ST_META_FILE: meta}
    if encoding.normalize:
        files[ST_NORMALIZE_FILE] = {"module_input_name": "sentence_embedding",
                                    "module_output_name": "sentence_embedding"}
    return {name: json.dumps(value, indent=2) + "\n" for name, value in files.items()}


def _bertmath_version() -> str:
    try:
        return version("bertmath")
    except PackageNotFoundError:
        return "unknown"


def read_sentence_encoder(path: str | Path) -> tuple[Path, ModelConfig, dict[str, Tensor], Tokenizer, SentenceEncoding]:
    """read_with_tokenizer(path) and the checkpoint's SentenceEncoding, all from one step directory."""
    def read(kind: str, directory: Path) -> tuple:
        tokenizer = load_checkpoint_tokenizer(directory)
        directory, config, state = read_checkpoint(directory)
        return directory, config, state, tokenizer, sentence_encoding(directory, config)

    return read_resolved(path, read)


def checkpoint_identity(directory: Path) -> str:
    """A digest that changes when the checkpoint in `directory` does: its absolute path and each file's name,
    size and modification time (the weights, the configs, sentence-transformers' module files). Cheap: nothing
    is read. For keying what was computed from the checkpoint (search's document vectors)."""
    directory = Path(directory).resolve()
    files = [p for p in sorted(directory.iterdir()) if p.is_file()]
    files += [directory / name for name in (ST_POOLING_FILE, ST_NORMALIZE_FILE) if (directory / name).is_file()]
    h = hashlib.blake2b(str(directory).encode(), digest_size=16)
    for path in files:
        st = path.stat()
        h.update(f"\0{path.relative_to(directory)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


# --- fine-tuned classifiers ----------------------------------------------------------------------------------


def classifier_labels_count(state: dict[str, Tensor], where: str) -> int:
    """C, the labels of a fine-tuned classifier's weights (rows of classifier.weight; 1 = regression);
    a CheckpointError for weights without a classification head."""
    if "classifier.weight" not in state:
        raise CheckpointError(f"{where}: not a fine-tuned classifier (no classifier weights); fine-tune it first "
                              "with `bertmath finetune`")
    return state["classifier.weight"].shape[0]


def classifier_label_names(directory: Path, num_labels: int) -> list[str] | None:
    """The names a checkpoint directory gives a classifier's labels 0..C-1: a bertmath run's task.label_names,
    or a transformers config.json's id2label; None where it names none."""
    if (directory / CONFIG_FILE).is_file():
        task = read_config(directory).task
        return list(task.label_names) if task is not None and task.label_names else None
    id2label = read_json(directory / HF_CONFIG_FILE).get("id2label") if (directory / HF_CONFIG_FILE).is_file() else None
    return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(num_labels)] if id2label else None


def classifier_config(directory: Path, num_labels: int, regression_possible: bool = True) -> dict:
    """The config.json keys of a sequence or token classifier: its labels and, for a sequence classifier, the
    problem type (regression for one output, as transformers infers it from float labels); label names as the
    checkpoint gives them (classifier_label_names), else LABEL_i, transformers' default."""
    names = classifier_label_names(directory, num_labels) or [f"LABEL_{i}" for i in range(num_labels)]
    out = {"id2label": {str(i): name for i, name in enumerate(names)},
           "label2id": {name: i for i, name in enumerate(names)}}
    if regression_possible:
        out["problem_type"] = "regression" if num_labels == 1 else "single_label_classification"
    return out


# What makes a directory a previous export, which `export` may write over: a key of its config.json.
EXPORT_MARK = {"exported_by": "bertmath"}


def check_export_target(out_dir: str | Path) -> Path:
    """`out_dir` if `export` may write there: it does not exist yet (it is created), it is an empty directory,
    or it holds a previous export, i.e. a config.json with a "model_type" export writes (bert, roformer,
    modernbert) and "exported_by": "bertmath"
    and no "transformers_version" (transformers adds that key whenever it saves a model, e.g. one fine-tuned
    from the export, and then the directory is no longer ours to overwrite). An export replaces only the
    files it writes there (and a previous export's sentence-transformers files). OutputError otherwise: an
    existing file, another program's directory."""
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
    if (isinstance(config, dict) and config.get("model_type") in LAYOUTS and "transformers_version" not in config
            and all(config.get(k) == v for k, v in EXPORT_MARK.items())):
        return out_dir
    raise OutputError(f"{out_dir}: not empty and not a previous bertmath export (whose config.json says "
                      '"exported_by": "bertmath"); give a new or empty directory, or remove this one')


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path) -> Path:
    """Write any checkpoint (bertmath run or step directory, transformers directory) in the layout of its
    transformers twin (hf_format.family: BERT, RoFormer or ModernBERT): out_dir/config.json, model.safetensors
    (transformers names), tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt; each file
    written atomically. `transformers.AutoModelForMaskedLM/AutoTokenizer.from_pretrained(out_dir)` and
    `transformers.pipeline("fill-mask", model=out_dir)` load the result. `out_dir` must be new, empty or a previous
    export (check_export_target); it is checked, and the whole export prepared, before anything is written.
    A model no twin can hold (ALiBi positions, a pre-LN model with learned positions, ...) is a one-line
    CheckpointError naming the setting.

    A checkpoint with an MLM head is exported as <Twin>ForMaskedLM, a fine-tuned classifier as
    <Twin>ForSequenceClassification (with its label names; its pooler must be the twin's, model.pooler), a token
    classifier as <Twin>ForTokenClassification (with its tag names), a question-answering model as
    <Twin>ForQuestionAnswering, one with no head (a sentence encoder) as the bare <Twin>Model. A checkpoint that
    pools (a sentence-transformers folder, a bertmath run fine-tuned with task.kind embedding: its
    SentenceEncoding) also gets sentence-transformers' files (sentence_transformers_files), so that
    `SentenceTransformer(out_dir)` loads the same folder and gives bertmath's vectors; a previous export's such
    files that this one does not write are removed.
    The tied decoder weight is not stored (transformers re-ties it from the word embeddings; safetensors cannot
    store two names for one tensor); an untied one is. BERT's and RoFormer's decoder bias is stored under both
    its names, `cls.predictions.bias` and `cls.predictions.decoder.bias` (a copy): transformers 5 reads the latter
    when the decoder is untied. RoFormer's sinusoidal table (`encoder.embed_positions.weight`) is written too."""
    out_dir = check_export_target(out_dir)
    directory, config, state, tokenizer, encoding = read_sentence_encoder(checkpoint_path)
    layout = family(config)  # first: a model transformers cannot represent fails here
    hf_config = {**config_to_hf(config), **EXPORT_MARK}
    kind = head_kind(state, source=1)
    if kind in ("classifier", "tokens", "span"):  # a fine-tuned model: <Twin>For<Task> (classifiers: label names)
        check_head(config, kind)
    if kind in ("classifier", "tokens"):
        hf_config.update(classifier_config(directory, classifier_labels_count(state, str(directory)),
                                           regression_possible=kind == "classifier"))
    if kind == "encoder" and layout is not BERT and any(".pooler." in f".{name}" for name in state):
        raise CheckpointError(f"{directory}: an encoder with a pooler but no classifier; transformers' "
                              f"{layout.classes['encoder']} has no pooler, so it cannot be exported to its layout")
    hf_config["architectures"] = [layout.classes[kind]]
    model = build_from_state(HEAD_CLASSES[kind], config, state, str(directory))  # checks shapes
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(f"{directory}: tokenizer has {tokenizer.get_vocab_size()} tokens but the model's "
                              f"vocab_size is {config.vocab_size}")
    # model_state: the tied decoder weight once, as the embedding
    hf_state = state_dict_to_hf(model_state(model), layout)
    if "cls.predictions.decoder.bias" in hf_state:  # safetensors stores no shared storage: a copy under each name
        hf_state["cls.predictions.decoder.bias"] = hf_state["cls.predictions.decoder.bias"].clone()
    if layout is ROFORMER:
        prefix = "" if kind == "encoder" else layout.prefix
        hf_state[f"{prefix}encoder.embed_positions.weight"] = roformer_position_table(config)

    ids = special_tokens(tokenizer, where=str(directory))
    if layout is MODERNBERT:  # its config's defaults are ModernBERT's own vocabulary's ids
        hf_config.update(cls_token_id=ids.cls, sep_token_id=ids.sep, bos_token_id=ids.cls, eos_token_id=ids.sep)
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
    if encoding.source != "default":  # it pools: a sentence-transformers folder too
        texts.update(sentence_transformers_files(encoding, config.hidden_size))
    stale = [out_dir / name for name in ST_FILES if name not in texts and (out_dir / name).is_file()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / HF_CONFIG_FILE, texts.pop(HF_CONFIG_FILE))  # first: it marks the export
        atomic_save_safetensors(hf_state, out_dir / HF_WEIGHTS_FILE, metadata={"format": "pt"})
        for name, text in texts.items():
            (out_dir / name).parent.mkdir(exist_ok=True)
            atomic_write_text(out_dir / name, text)
        for path in stale:  # a previous export's sentence-transformers files this one does not have
            path.unlink()
    except OSError as e:  # no permission, a full disk: the user's to fix, said in one line
        raise OutputError(f"{out_dir}: cannot write the export ({e.strerror or e})") from None
    log.debug("exported %s to %s (%s)", directory, out_dir, hf_config["architectures"][0])
    return out_dir
