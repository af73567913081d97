"""Corpus → documents → fixed held-out split → WordPiece ids → packed blocks of max_seq_len ids (`datasets`).

    load_documents → split_documents → get_tokenizer → tokenize_documents → pack_blocks → PretrainingData
    ("text" column)  (content hash,    (load, reuse    (datasets.map,        ([CLS] chunk [SEP],  .batch(split,
                      no seed)          or train)       cached)               cached, mmapped)     batch_indices())

Packing (RoBERTa's FULL-SENTENCES, Liu+19 §4.2: blocks cross document boundaries, a separator between
documents): the split's documents are tokenised without the template, a [SEP] closes every document, and the
stream
    d_1 [SEP] d_2 [SEP] ... d_n [SEP]
is cut into chunks of C = T - 2 ids; block k is [CLS] + stream[kC : (k+1)C] + [SEP], exactly T = max_seq_len ids.
The last len(stream) mod C ids (fewer than C) are dropped.

Order: micro-batch m holds positions [mB, (m+1)B) of the stream π_0 ‖ π_1 ‖ ..., π_e a permutation of the
blocks seeded by (seed, e). `batch_indices` is a pure function of m, so resuming at step k is exact.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.resources
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.arrow_writer import ArrowWriter
from tokenizers import Tokenizer

from .config import Config, DataConfig
from .errors import DataError
from .io import decode_utf8, parse_json_object, read_text
from .tokenizer import SpecialTokens, load_tokenizer, save_tokenizer, special_tokens, train_tokenizer

log = logging.getLogger(__name__)

EMBEDDED_CORPUS = "corpus/shakespeare.jsonl.gz"  # inside the bertmath package; see corpus/README.md
HASH_BUCKETS = 10_000  # held-out rule: bucket(text) < eval_fraction * HASH_BUCKETS
PARALLEL_MIN_DOCUMENTS = 20_000  # below this one process: encode_batch already uses every core (Rayon threads)
# and workers cost a fork; Shakespeare paragraphs (38k documents, 2 cores): 1.9 s in one process, 1.4 s in two.
_CACHE_VERSION = "1"  # bump when the tokenised or packed layout changes, so old cache files are never read


# --- documents ------------------------------------------------------------------------------------


def load_documents(data: DataConfig) -> datasets.Dataset:
    """The corpus as a Dataset with one column "text", one row per document, in source order.

    embedded: the Shakespeare works shipped with bertmath; text: UTF-8 files; jsonl / parquet: column
    `data.text_column`; hub: `datasets.load_dataset(hub_dataset, hub_config, split=hub_split)`.
    For embedded and text, `data.documents` picks one document per work/file or per blank-line block
    (a speech). Local documents are stripped and whitespace-only ones skipped; `data.max_documents`
    keeps the first N. A DataError names the file and the problem."""
    if data.source == "hub":
        documents = _hub_documents(data)
    else:
        texts = list(islice(_local_documents(data), data.max_documents))
        if not texts:
            where = ", ".join(data.paths) if data.paths else "embedded corpus"
            raise DataError(f"{where}: the corpus has no text (every document is empty or whitespace)")
        documents = _text_dataset(texts)
    log.info("corpus: %d documents from %s", len(documents), data.source)
    return documents


def _local_documents(data: DataConfig) -> Iterator[str]:
    if data.source == "embedded":
        for text in _embedded_works():
            yield from _split_text(text, data.documents)
    elif data.source == "text":
        for path in expand_paths(data.paths):
            yield from _split_text(read_text(path), data.documents)
    elif data.source == "jsonl":
        for path in expand_paths(data.paths):
            yield from _nonblank(_read_jsonl(path, data.text_column))
    elif data.source == "parquet":
        for path in expand_paths(data.paths):
            yield from _nonblank(_read_parquet(path, data.text_column))
    else:
        raise AssertionError(f"unhandled data.source {data.source!r}")  # config.py validates the choices


def _embedded_works() -> list[str]:
    """The texts of the embedded works (37 plays, 5 poems), in file order."""
    resource = importlib.resources.files("bertmath").joinpath(EMBEDDED_CORPUS)
    try:
        with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]
    except (OSError, EOFError, ValueError, KeyError) as e:
        raise DataError(f"bertmath/{EMBEDDED_CORPUS}: embedded corpus missing or damaged ({e}); "
                        "reinstall bertmath") from None


def _split_text(text: str, documents: str) -> Iterator[str]:
    """documents="file": the whole text; "paragraph": each block between blank lines."""
    blocks = [text] if documents == "file" else re.split(r"\n[ \t\r\f\v]*\n", text.replace("\r\n", "\n"))
    return _nonblank(blocks)


def _nonblank(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        text = text.strip()
        if text:
            yield text


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Files named by `patterns` (paths or globs, `**` recursive), each glob sorted, duplicates dropped.
    DataError for a glob matching no file, a missing file, or a directory."""
    files: dict[Path, None] = {}  # insertion-ordered set
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"{pattern}: no file matches this pattern")
        else:
            path = Path(expanded)
            if path.is_dir():
                raise DataError(f"{pattern}: is a directory; name files or a glob such as {pattern}/*.txt")
            if not path.is_file():
                raise DataError(f"{pattern}: file not found")
            matches = [path]
        files.update(dict.fromkeys(matches))
    return list(files)


def _read_jsonl(path: Path, column: str) -> Iterator[str]:
    """The `column` value of every JSON line; null values skipped (no text), other non-strings refused."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        offset = 0
        for number, raw in enumerate(f, start=1):
            line = decode_utf8(raw, str(path), offset)
            offset += len(raw)
            if not line.strip():
                continue
            record = parse_json_object(line, f"{path} line {number}")
            if column not in record:
                raise DataError(f"{path} line {number}: no column '{column}' (set data.text_column); "
                                f"columns: {', '.join(record) or 'none'}")
            yield from _text_value(record[column], f"{path} line {number}", column)


def _read_parquet(path: Path, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # pyarrow comes with datasets

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None
    names = parquet.schema_arrow.names
    if column not in names:
        raise DataError(f"{path}: no column '{column}' (set data.text_column); columns: {', '.join(names)}")
    if not pa.types.is_string(parquet.schema_arrow.field(column).type) and \
            not pa.types.is_large_string(parquet.schema_arrow.field(column).type):
        raise DataError(f"{path}: column '{column}' holds {parquet.schema_arrow.field(column).type}, not text")
    for batch in parquet.iter_batches(columns=[column], batch_size=10_000):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield value


def _text_value(value, where: str, column: str) -> Iterator[str]:
    if value is None:
        return
    if not isinstance(value, str):
        raise DataError(f"{where}: column '{column}' holds {type(value).__name__}, expected a string")
    yield value


def _hub_documents(data: DataConfig) -> datasets.Dataset:
    """A Hugging Face Hub dataset (needs internet), column `text_column` renamed "text", blank rows dropped."""
    name = f"{data.hub_dataset}" + (f"/{data.hub_config}" if data.hub_config else "")
    try:
        documents = datasets.load_dataset(data.hub_dataset, data.hub_config, split=data.hub_split)
    except Exception as e:  # network, missing dataset/config/split: all user-fixable
        raise DataError(f"{name}: cannot load split '{data.hub_split}' ({str(e).splitlines()[0][:200]})") from None
    if data.text_column not in documents.column_names:
        raise DataError(f"{name}: no column '{data.text_column}' (set data.text_column); "
                        f"columns: {', '.join(documents.column_names)}")
    documents = documents.select_columns([data.text_column])
    if data.text_column != "text":
        documents = documents.rename_column(data.text_column, "text")
    if data.max_documents is not None:
        documents = documents.select(range(min(data.max_documents, len(documents))))
    documents = documents.filter(_has_text, batched=True, input_columns="text", desc="dropping blank documents")
    if len(documents) == 0:
        raise DataError(f"{name}: the corpus has no text (every document is empty or whitespace)")
    return documents


def _has_text(texts: list) -> list[bool]:
    return [isinstance(t, str) and bool(t.strip()) for t in texts]


def _as_dataset(documents: datasets.Dataset | Sequence[str]) -> datasets.Dataset:
    return documents if isinstance(documents, datasets.Dataset) else _text_dataset(list(documents))


def _text_dataset(texts: list[str]) -> datasets.Dataset:
    """A "text" dataset held in memory, fingerprinted by our own hash of the texts. datasets.Dataset.from_dict
    would instead pickle the whole table with dill to fingerprint it: slow for a large corpus, and on some
    pyarrow installs a PicklingError (MonthDayNano, seen with pyarrow 26 beside another pyarrow's pandas)."""
    return _in_memory(pa.table({"text": pa.array(texts, type=pa.string())}),
                      _fingerprint("text dataset", *(_digest(t) for t in texts)))


def _in_memory(table: pa.Table, fingerprint: str, features: datasets.Features | None = None) -> datasets.Dataset:
    info = datasets.DatasetInfo(features=features) if features is not None else None
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=info, fingerprint=fingerprint)


class _TextBatches:
    """The documents' texts in batches of lists; iterable again and again (train_tokenizer reads them twice)."""

    def __init__(self, documents: datasets.Dataset, batch_size: int = 10_000):
        self.documents, self.batch_size = documents, batch_size

    def __iter__(self) -> Iterator[list[str]]:
        for batch in self.documents.iter(batch_size=self.batch_size):
            yield batch["text"]


# --- held-out split -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentSplit:
    """Train and held-out documents; the fingerprints hash each split's texts in order (cache keys)."""

    train: datasets.Dataset
    eval: datasets.Dataset  # no rows when eval_fraction == 0
    train_fingerprint: str
    eval_fingerprint: str


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _bucket(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big") % HASH_BUCKETS


def is_eval_document(text: str, eval_fraction: float) -> bool:
    """The held-out rule: blake2b(text) mod 10000 < eval_fraction · 10000. Depends on the text only, not on
    the seed or the document's position (identical documents fall on the same side, so none leaks)."""
    return _bucket(_digest(text)) < round(eval_fraction * HASH_BUCKETS)


def split_documents(documents: datasets.Dataset | Sequence[str], eval_fraction: float) -> DocumentSplit:
    """Split by `is_eval_document`. When eval_fraction > 0 and there are >= 2 distinct documents, each split
    gets at least one: the text with the smallest hash moves to eval (or the largest to train)."""
    documents = _as_dataset(documents)
    digests = [_digest(text) for batch in _TextBatches(documents) for text in batch]
    threshold = round(eval_fraction * HASH_BUCKETS)
    is_eval = np.array([_bucket(d) < threshold for d in digests], dtype=bool)
    if eval_fraction > 0 and len(set(digests)) >= 2:
        order = [(_bucket(d), d) for d in digests]
        if not is_eval.any():
            first = min(order)[1]
            is_eval = np.array([d == first for d in digests], dtype=bool)
        elif is_eval.all():
            last = max(order)[1]
            is_eval = np.array([d != last for d in digests], dtype=bool)
    train_rows, eval_rows = np.flatnonzero(~is_eval), np.flatnonzero(is_eval)
    return DocumentSplit(
        train=documents.select(train_rows), eval=documents.select(eval_rows),
        train_fingerprint=_fingerprint(*(digests[i] for i in train_rows)),
        eval_fingerprint=_fingerprint(*(digests[i] for i in eval_rows)))


def _fingerprint(*parts: bytes | str) -> str:
    """32 hex digits of blake2b over the parts, each length-prefixed so ("ab", "c") != ("a", "bc")."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        part = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


# --- tokenizer ------------------------------------------------------------------------------------


def get_tokenizer(config: Config, out_dir: str | Path, documents: datasets.Dataset | Sequence[str] | None = None,
                  ) -> Tokenizer:
    """data.tokenizer if set; else out_dir/tokenizer.json if a previous run left one; else a WordPiece
    vocabulary of model.vocab_size trained on the TRAIN split of `documents` (default: load_documents)
    and saved to out_dir/tokenizer.json. Its size must equal model.vocab_size (DataError otherwise)."""
    out_dir = Path(out_dir)
    saved = out_dir / "tokenizer.json"
    if config.data.tokenizer or saved.is_file():
        where = config.data.tokenizer or str(saved)
        tokenizer = load_tokenizer(where, lowercase=config.data.lowercase)  # lowercase: for vocab.txt only
        check_vocab_size(tokenizer, config.model.vocab_size, where)
        log.info("tokenizer: %s", where)
        return tokenizer
    tokenizer, train_documents = train_corpus_tokenizer(config, documents)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, saved)  # later runs in out_dir (resume) reuse exactly this vocabulary
    log.info("tokenizer: trained %d WordPieces on %d documents, saved to %s", tokenizer.get_vocab_size(),
             train_documents, saved)
    return tokenizer


def train_corpus_tokenizer(config: Config, documents: datasets.Dataset | Sequence[str] | None = None,
                           ) -> tuple[Tokenizer, int]:
    """(a WordPiece vocabulary of exactly model.vocab_size trained on the TRAIN split of `documents` (default:
    load_documents), the number of train documents); DataError if the corpus gives another size."""
    documents = load_documents(config.data) if documents is None else _as_dataset(documents)
    train = split_documents(documents, config.data.eval_fraction).train
    tokenizer = train_tokenizer(_TextBatches(train), config.model.vocab_size, lowercase=config.data.lowercase)
    trained = tokenizer.get_vocab_size()
    if trained < config.model.vocab_size:
        raise DataError(f"the corpus ({len(train)} train documents) is too small for a {config.model.vocab_size}-"
                        f"token vocabulary: training made {trained}; set model.vocab_size: {trained} or add text")
    check_vocab_size(tokenizer, config.model.vocab_size, "trained tokenizer")  # more: alphabet > vocab_size
    return tokenizer, len(train)


def check_vocab_size(tokenizer: Tokenizer, vocab_size: int, where: str) -> None:
    size = tokenizer.get_vocab_size()
    if size != vocab_size:
        raise DataError(f"tokenizer vocab size {size} ({where}) differs from model.vocab_size {vocab_size}; "
                        f"set model.vocab_size: {size}")


def _plain_copy(tokenizer: Tokenizer) -> Tokenizer:
    """A copy without padding or truncation: packing needs every id of every document (and the caller's
    object is left as it was)."""
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


# --- tokenise and pack ----------------------------------------------------------------------------


def auto_num_proc(data: DataConfig, num_documents: int) -> int:
    """data.num_proc, else min(cores, 4) for corpora over PARALLEL_MIN_DOCUMENTS documents, else 1."""
    if data.num_proc is not None:
        return max(1, min(data.num_proc, num_documents))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, 4) if num_documents > PARALLEL_MIN_DOCUMENTS else 1


def _encode_batch(texts: list[str], tokenizer: Tokenizer) -> dict:
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return {"input_ids": [np.asarray(e.ids, dtype=np.int32) for e in encodings]}


def tokenize_documents(documents: datasets.Dataset, tokenizer: Tokenizer, cache_file: Path, fingerprint: str,
                       num_proc: int = 1, desc: str = "tokenising") -> datasets.Dataset:
    """documents ("text") → one row of WordPiece ids per document ("input_ids", int32), no [CLS]/[SEP].
    `datasets.map` writes `cache_file` (or its _0000i_of_0000n shards) and later calls load it instead."""
    return documents.map(
        _encode_batch, batched=True, batch_size=1000, input_columns="text", remove_columns=documents.column_names,
        fn_kwargs={"tokenizer": tokenizer}, num_proc=num_proc if num_proc > 1 else None,
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
        cache_file_name=str(cache_file), new_fingerprint=fingerprint, load_from_cache_file=True, desc=desc)


def _close_documents(values: np.ndarray, lengths: np.ndarray, sep: int) -> np.ndarray:
    """Concatenate documents (flat `values`, per-document `lengths`) with a [SEP] after each: d_1 S d_2 S ..."""
    ends = np.cumsum(lengths + 1)  # one past each document's [SEP]
    stream = np.full(int(ends[-1]) if len(ends) else 0, sep, dtype=np.int32)
    is_text = np.ones(len(stream), dtype=bool)
    is_text[ends - 1] = False
    stream[is_text] = values
    return stream


def pack_blocks(tokens: datasets.Dataset, specials: SpecialTokens, seq_len: int, path: Path,
                name: str = "train") -> datasets.Dataset:
    """Tokenised documents → Dataset of blocks [CLS] + C ids + [SEP] (C = seq_len - 2), column "input_ids"
    fixed-length int32, written atomically to `path` and memory-mapped (random access, nothing loaded).
    The stream's last len mod C ids are dropped; a split shorter than one chunk is a DataError."""
    chunk = seq_len - 2
    features = _block_features(seq_len)
    num_documents = num_stream = num_blocks = 0
    carry = np.empty(0, dtype=np.int32)  # the stream's ids not yet in a block
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")  # rename when complete
    os.close(fd)
    writer = ArrowWriter(features=features, path=tmp)
    try:
        for batch in tokens.with_format("arrow").iter(batch_size=10_000):
            ids = batch.column("input_ids").combine_chunks()
            lengths = ids.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
            stream = np.concatenate([carry, _close_documents(ids.flatten().to_numpy(), lengths, specials.sep)])
            full = len(stream) // chunk
            blocks = np.empty((full, seq_len), dtype=np.int32)
            blocks[:, 0], blocks[:, -1] = specials.cls, specials.sep
            blocks[:, 1:-1] = stream[:full * chunk].reshape(full, chunk)
            carry = stream[full * chunk:]
            if full:
                writer.write_table(pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(blocks.ravel(), seq_len)}))
            num_documents += len(lengths)
            num_stream += len(lengths) + int(lengths.sum())
            num_blocks += full
        if num_blocks == 0:
            raise DataError(f"{name} split: {num_stream} tokens ({num_documents} documents and their [SEP]s), but one "
                            f"sequence needs {chunk} (data.max_seq_len {seq_len} minus [CLS] and [SEP]); add text"
                            + (", raise data.eval_fraction" if name == "eval" else "")
                            + " or lower data.max_seq_len")
        writer.finalize()
        os.replace(tmp, path)
    finally:
        writer.close()  # idempotent; on an error the file handle must not outlive the removed file
        if os.path.exists(tmp):
            os.remove(tmp)
    log.info("%s: %d documents, %d tokens with [SEP]s → %d blocks of %d; last %d tokens dropped",
             name, num_documents, num_stream, num_blocks, seq_len, len(carry))
    return datasets.Dataset.from_file(str(path))


# --- the prepared data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainingData:
    """Packed blocks (memory-mapped `datasets.Dataset`s, column "input_ids", each row max_seq_len int32 ids)."""

    train: datasets.Dataset
    eval: datasets.Dataset  # no rows when data.eval_fraction == 0
    seq_len: int

    def batch(self, split: str, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Blocks `indices` of `split` ("train" or "eval") as a LongTensor (len(indices), max_seq_len); reads
        only those rows."""
        blocks = {"train": self.train, "eval": self.eval}[split]
        rows = torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()
        array = blocks.with_format("numpy")[rows]["input_ids"] if rows else np.empty(0)  # (len, T) int32
        return torch.from_numpy(np.asarray(array, dtype=np.int64).reshape(len(rows), self.seq_len))

    def most_frequent_token(self, specials: SpecialTokens, max_blocks: int = 20_000) -> int:
        """argmax_v count(v) over the non-special ids of the train blocks (at most `max_blocks` of them, evenly
        spaced): always predicting it is the accuracy baseline a trained model must beat."""
        rows = torch.linspace(0, len(self.train) - 1, min(len(self.train), max_blocks)).round().long().unique()
        counts = torch.bincount(self.batch("train", rows).reshape(-1))
        counts[[i for i in specials.ids if i < len(counts)]] = 0
        return int(counts.argmax())


def _no_blocks(seq_len: int) -> datasets.Dataset:
    features = _block_features(seq_len)
    return _in_memory(features.arrow_schema.empty_table(), _fingerprint("no blocks", str(seq_len)), features)


def _block_features(seq_len: int) -> datasets.Features:
    return datasets.Features({"input_ids": datasets.List(datasets.Value("int32"), length=seq_len)})


def prepare_data(config: Config, tokenizer: Tokenizer, cache_dir: str | Path,
                 documents: datasets.Dataset | Sequence[str] | None = None) -> PretrainingData:
    """Documents (given, or load_documents(config.data)) → fixed split → tokenised → packed blocks, both
    cached in `cache_dir`: token ids keyed by (documents, tokenizer JSON), blocks also by max_seq_len and the
    special ids, so another tokenizer or length never reads a stale file and a new max_seq_len re-packs
    without re-tokenising. Delete `cache_dir` at any time to free space."""
    data = config.data
    check_vocab_size(tokenizer, config.model.vocab_size, "tokenizer")
    specials = special_tokens(tokenizer)
    tokenizer = _plain_copy(tokenizer)
    documents = load_documents(data) if documents is None else _as_dataset(documents)
    split = split_documents(documents, data.eval_fraction)
    log.info("documents: %d train, %d eval (eval_fraction %g)", len(split.train), len(split.eval), data.eval_fraction)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_json = tokenizer.to_str()

    def blocks(name: str, docs: datasets.Dataset, docs_fingerprint: str) -> datasets.Dataset:
        tokens_key = _fingerprint(_CACHE_VERSION, docs_fingerprint, tokenizer_json)
        blocks_key = _fingerprint(_CACHE_VERSION, tokens_key, str(data.max_seq_len), str(specials.ids))
        path = cache_dir / f"{name}-blocks-{blocks_key}.arrow"
        if path.is_file():
            log.info("%s: cached blocks %s", name, path)
            return datasets.Dataset.from_file(str(path))
        tokens = tokenize_documents(docs, tokenizer, cache_dir / f"{name}-tokens-{tokens_key}.arrow", tokens_key,
                                    auto_num_proc(data, len(docs)), desc=f"tokenising {name}")
        return pack_blocks(tokens, specials, data.max_seq_len, path, name)

    train = blocks("train", split.train, split.train_fingerprint)
    held_out = blocks("eval", split.eval, split.eval_fingerprint) if len(split.eval) else _no_blocks(
        data.max_seq_len)
    return PretrainingData(train=train, eval=held_out, seq_len=data.max_seq_len)


# --- order ----------------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from (seed, epoch): blake2b, so nearby seeds give unrelated permutations."""
    digest = hashlib.blake2b(f"bertmath-order:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@lru_cache(maxsize=4)  # a batch touches one epoch, at most two; randperm of a large corpus is not free
def _epoch_permutation(num_blocks: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(num_blocks, generator=generator)


def batch_indices(num_blocks: int, batch_size: int, micro_step: int, seed: int) -> torch.Tensor:
    """Block indices of global micro-batch m = `micro_step`: positions p in [mB, (m+1)B) of the stream
    π_0 ‖ π_1 ‖ ..., index = π_{p // N}[p mod N], π_e = randperm(N) seeded by epoch_seed(seed, e).
    Pure: the same arguments give the same (B,) LongTensor; a batch may span an epoch boundary."""
    if num_blocks <= 0 or batch_size <= 0 or micro_step < 0:
        raise ValueError(f"need num_blocks > 0, batch_size > 0, micro_step >= 0; got {num_blocks}, {batch_size}, "
                         f"{micro_step}")
    positions = torch.arange(micro_step * batch_size, (micro_step + 1) * batch_size)
    epochs, offsets = positions // num_blocks, positions % num_blocks
    indices = torch.empty(batch_size, dtype=torch.long)
    for epoch in torch.unique(epochs).tolist():
        here = epochs == epoch
        indices[here] = _epoch_permutation(num_blocks, seed, epoch)[offsets[here]]
    return indices
