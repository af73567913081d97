"""Corpus pieces → WordPiece ids per piece (cached) → fixed held-out split → packed blocks of max_seq_len ids.

    Corpus.plan ─▶ get_tokenizer ─▶ tokenize_piece (each piece once, ─▶ pack_blocks ─▶ PretrainingData
    (corpus.py)    (load, reuse, or    cached by its key; pieces are     (split by content   (memory-mapped,
                    train on a sample)  shared out among processes)        hash, in order)     batch_indices())

Memory stays flat as the corpus grows: a piece is read, tokenised and written a few MB at a time, and every
later pass (the split rule, packing, training) reads memory-mapped Arrow files. The cache (data.cache_dir):
    pieces/<piece key>-<tokenizer key>.arrow   a piece's texts (documents, and parts of documents longer than
                                               corpus.PART_CHARS): their ids (no [CLS]/[SEP]), their documents'
                                               digests and their part numbers
    {train,eval}-blocks-<key>.arrow            the packed blocks; key: every piece's key, the tokenizer, the
                                               split, max_documents, max_seq_len and the special ids
Each file appears whole or not at all (written under a temporary name, then renamed): a killed preparation
leaves nothing a later run reads, and the later run tokenises only the pieces still missing. Each has its
size recorded beside it (<file>.size, written before the file is renamed into place) and is checked when a
run would use it (`cache_damage`: that size, and Arrow's framing): one damaged since (truncated, emptied,
overwritten) is named in a warning, removed and made again from its source, as a missing one is.

Packing (RoBERTa's FULL-SENTENCES, Liu+19 §4.2: blocks cross document boundaries, a separator between
documents): the split's documents, in corpus order, each closed by a [SEP], form the stream
    d_1 [SEP] d_2 [SEP] ... d_n [SEP]
(a document cut into parts is its parts' ids back to back, as tokenising it whole gives them), which is cut into chunks of C = T - 2 ids; block k is [CLS] + stream[kC : (k+1)C] + [SEP], exactly T = max_seq_len ids.
The last len(stream) mod C ids (fewer than C) are dropped.

Order: micro-batch m holds positions [mB, (m+1)B) of the stream π_0 ‖ π_1 ‖ ..., π_e a permutation of the
blocks seeded by (seed, e). `batch_indices` is a pure function of m, so resuming at step k is exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.arrow_writer import ArrowWriter
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from . import distributed
from .config import Config, DataConfig
from .corpus import PART_CHARS, READ_BYTES, Corpus, Piece, TextBatch, cut_document, digest, in_memory_dataset
from .distributed import DistInfo
from .errors import DataError
from .io import check_writable, stale_temporaries, written_atomically
from .tokenizer import SpecialTokens, load_tokenizer, save_tokenizer, special_tokens, train_tokenizer

log = logging.getLogger(__name__)

HASH_BUCKETS = 10_000  # held-out rule: bucket(text) < eval_fraction * HASH_BUCKETS
_CACHE_VERSION = "3"  # bump when the tokenised or packed layout changes, so old cache files are never read
_PIECE_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("digest", pa.binary(16)), ("part", pa.int32())])

Documents = Corpus | datasets.Dataset | Sequence[str]  # a planned corpus, or documents in memory


def as_corpus(documents: Documents | None, data: DataConfig) -> Corpus:
    """`documents` as a Corpus: None plans data's own corpus; a list or Dataset is one in-memory piece."""
    if documents is None:
        return Corpus.plan(data)
    return documents if isinstance(documents, Corpus) else Corpus.of_texts(documents, data)


# --- held-out split -------------------------------------------------------------------------------


def _buckets(digests: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 digests → (n,) buckets: the first 8 bytes as a big-endian integer, mod HASH_BUCKETS."""
    return (digests[:, :8].copy().view(">u8").ravel() % HASH_BUCKETS).astype(np.int64)


def is_eval_document(text: str, eval_fraction: float) -> bool:
    """The held-out rule: blake2b(text) mod 10000 < eval_fraction · 10000 (of its first part, for a document
    cut into parts). Depends on the text only, not on the seed or the document's position (identical
    documents fall on the same side, so none leaks)."""
    first = digest(cut_document(text)[0])
    return bool(_buckets(np.frombuffer(first, np.uint8)[None])[0] < round(eval_fraction * HASH_BUCKETS))


def _part_digests(digests: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 digests of n texts' documents and (n,) part numbers → (n, 16) uint8: the parts'
    identities, blake2b(document digest ‖ part number)."""
    return np.frombuffer(b"".join(hashlib.blake2b(d.tobytes() + int(j).to_bytes(8, "big"), digest_size=16).digest()
                                  for d, j in zip(digests, parts)), np.uint8).reshape(len(parts), 16)


@dataclass(frozen=True)
class SplitRule:
    """Which texts are held out. The units split are the documents (identified by `digest`; a document cut into
    parts goes whole to one side), or, when they are too few for the fraction and some are cut, the parts
    (`by_part`, identified by `_part_digests`); one document of one part: nothing can be held out, a
    DataError.

    A unit is held out when its bucket < threshold, unless that leaves a side empty: then only the unit(s)
    with the smallest (bucket, digest) go to eval (no eval unit otherwise), or all but those with the largest
    stay in eval (no train unit otherwise)."""

    threshold: int
    only_eval: bytes | None = None
    all_but: bytes | None = None
    by_part: bool = False
    note: str | None = None  # what the corpus made the rule do besides the buckets, for the log

    def is_eval(self, digests: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """(n, 16) uint8 digests and (n,) part numbers of n texts → (n,) bool."""
        units = _part_digests(digests, parts) if self.by_part else digests
        if self.only_eval is not None:
            return (units == np.frombuffer(self.only_eval, np.uint8)).all(axis=1)
        if self.all_but is not None:
            return ~(units == np.frombuffer(self.all_but, np.uint8)).all(axis=1)
        return _buckets(units) < self.threshold

    @classmethod
    def of(cls, texts: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], eval_fraction: float,
           sample: bool = False) -> "SplitRule":
        """The rule for a corpus, from its texts' (digests (n, 16) uint8, part numbers (n,)) in batches, as
        `texts()` gives them: read once, or, when the documents are too few for eval_fraction (the buckets
        leave a side empty) and some are cut into parts, three times, to split at the parts instead. For a
        `sample` of the corpus (the tokenizer's), one document of one part is held out of nothing rather than
        refused: the whole corpus may have more."""
        threshold = round(eval_fraction * HASH_BUCKETS)
        documents, most_parts = _UnitCounts(threshold), 0
        for digests, parts in texts():
            documents.add(digests[parts == 0])
            most_parts = max(most_parts, int(parts.max()) + 1 if len(parts) else 0)
        if eval_fraction == 0 or documents.total == 0:
            return cls(threshold)
        rule = documents.rule(by_part=False)
        if rule.only_eval is None and rule.all_but is None:
            return rule
        count = f"{documents.total:,} document" + ("s" if documents.total > 1 else "")
        if most_parts >= 2:  # too few documents, some of them cut: split at the parts
            parts = _UnitCounts(threshold)
            for digests, numbers in texts():
                parts.add(_part_digests(digests, numbers))
            rule = parts.rule(by_part=True)
            held_out = sum(int(rule.is_eval(digests, numbers).sum()) for digests, numbers in texts())
            return dataclasses.replace(rule, note=f"held-out split: {count}, too few for data.eval_fraction "
                                                  f"{eval_fraction}: split at their {parts.total:,} parts instead "
                                                  f"(documents longer than {PART_CHARS:,} characters are cut into "
                                                  f"parts), {held_out:,} of them held out")
        if documents.smallest != documents.largest:
            hashed = f"of the {documents.total:,} falls under data.eval_fraction {eval_fraction} by its hash"
            return dataclasses.replace(rule, note=f"held-out split: no document {hashed}: the one with the smallest "
                                                  "is held out" if rule.only_eval else f"held-out split: every "
                                                  f"document {hashed}: all but the one with the largest are held out")
        if sample:
            return cls(0)
        copies = "one document" if documents.total == 1 else f"{documents.total} copies of one document"
        raise DataError(f"held-out split: the corpus is {copies}, not longer than one part ({PART_CHARS:,} "
                        f"characters), so nothing can be held out for data.eval_fraction {eval_fraction}: give the "
                        "corpus more documents (text files: a blank line between paragraphs), or set "
                        "data.eval_fraction: 0 to train without a held-out measurement")


class _UnitCounts:
    """One pass over the units' digests: how many fall under the threshold, and the extreme (bucket, digest)."""

    def __init__(self, threshold: int):
        self.threshold, self.eval_count, self.total = threshold, 0, 0
        self.smallest = self.largest = None  # (bucket, digest)

    def add(self, digests: np.ndarray) -> None:
        if len(digests):
            buckets = _buckets(digests)
            self.eval_count += int((buckets < self.threshold).sum())
            self.total += len(digests)
            low, high = _extremes(buckets, digests)
            self.smallest = low if self.smallest is None else min(self.smallest, low)
            self.largest = high if self.largest is None else max(self.largest, high)

    def rule(self, by_part: bool) -> SplitRule:
        """The buckets' rule, or its fallback when a side would be empty (two distinct units at least)."""
        if self.eval_count == 0:
            return SplitRule(self.threshold, only_eval=self.smallest[1], by_part=by_part)
        if self.eval_count == self.total:
            return SplitRule(self.threshold, all_but=self.largest[1], by_part=by_part)
        return SplitRule(self.threshold, by_part=by_part)


def _extremes(buckets: np.ndarray, digests: np.ndarray) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """The smallest and largest (bucket, digest) of a batch: the extreme digests within the extreme buckets."""
    low = sorted(bytes(digests[i]) for i in np.flatnonzero(buckets == buckets.min()))[0]
    high = sorted(bytes(digests[i]) for i in np.flatnonzero(buckets == buckets.max()))[-1]
    return (int(buckets.min()), low), (int(buckets.max()), high)


@dataclass(frozen=True)
class DocumentSplit:
    """Train and held-out documents, each in corpus order (a document longer than PART_CHARS as its parts)."""

    train: list[str]
    eval: list[str]  # empty when eval_fraction == 0


def split_documents(documents: datasets.Dataset | Sequence[str], eval_fraction: float) -> DocumentSplit:
    """Documents held in memory, split by `SplitRule` (what packing does to a corpus, piece by piece)."""
    batches = list(Corpus.of_texts(documents, DataConfig()).batches())
    rule = SplitRule.of(lambda: ((b.digest_matrix(), np.array(b.parts)) for b in batches), eval_fraction)
    sides = {False: [], True: []}
    for batch in batches:
        for text, held_out in zip(batch.texts, rule.is_eval(batch.digest_matrix(), np.array(batch.parts))):
            sides[bool(held_out)].append(text)
    return DocumentSplit(train=sides[False], eval=sides[True])


# --- tokenizer ------------------------------------------------------------------------------------


def get_tokenizer(config: Config, out_dir: str | Path, documents: Documents | None = None) -> Tokenizer:
    """data.tokenizer if set; else out_dir/tokenizer.json if a previous run left one; else a WordPiece
    vocabulary of model.vocab_size trained on the TRAIN documents of a sample of the corpus (`documents`,
    default data's own; see `tokenizer_sample`), saved to out_dir/tokenizer.json. Its size must equal
    model.vocab_size (DataError otherwise)."""
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


class TokenizerSample:
    """The train documents of about data.tokenizer_sample_bytes of the corpus, in batches, iterable again and
    again (the tokenizer's trainer reads them twice) and read from the files each time, never held.

    The whole corpus when it is no larger; else the first share of every piece, in proportion to its size,
    so the sample spreads over the whole corpus (pieces are at most 64 MB) and costs the same at 1 GB and
    at 100 GB. Held out by the same rule as packing, over the sample's own digests."""

    PASSES = ("the held-out rule", "the alphabet", "word counts")  # what each reading of the sample is for

    def __init__(self, corpus: Corpus, sample_bytes: int, eval_fraction: float):
        self.corpus = corpus
        total = corpus.total_bytes
        self.quota = None if total <= sample_bytes else \
            {i: max(1, piece.size * sample_bytes // total) for i, piece in enumerate(corpus.pieces)}
        self.size = total if self.quota is None else sum(self.quota.values())
        self.passes = 0
        texts = [(batch.digest_matrix(), np.array(batch.parts)) for batch in self._batches()]  # 24 bytes a text
        if not sum(len(parts) for _, parts in texts):
            raise corpus.no_text()
        self.rule = SplitRule.of(lambda: texts, eval_fraction, sample=True)
        self.documents = 0

    def _batches(self) -> Iterator[TextBatch]:
        """The sample's texts in batches, with a progress bar of its bytes."""
        purpose = self.PASSES[min(self.passes, len(self.PASSES) - 1)]
        self.passes += 1
        with tqdm(total=self.size, unit="B", unit_scale=True, desc=f"tokenizer sample: {purpose}", leave=False,
                  dynamic_ncols=True) as progress:
            for batch in self.corpus.batches(self.quota):
                progress.update(sum(map(len, batch.texts)))
                yield batch

    def __iter__(self) -> Iterator[list[str]]:
        self.documents = 0
        for batch in self._batches():
            parts = np.array(batch.parts)
            is_eval = self.rule.is_eval(batch.digest_matrix(), parts)
            self.documents += int(((parts == 0) & ~is_eval).sum())
            yield [text for text, held_out in zip(batch.texts, is_eval) if not held_out]


def train_corpus_tokenizer(config: Config, documents: Documents | None = None) -> tuple[Tokenizer, int]:
    """(a WordPiece vocabulary of exactly model.vocab_size trained on the train documents of the corpus's
    sample (`TokenizerSample`), the number of those documents); DataError if the corpus gives another size."""
    corpus = as_corpus(documents, config.data)
    sample = TokenizerSample(corpus, config.data.tokenizer_sample_bytes, config.data.eval_fraction)
    tokenizer = train_tokenizer(sample, config.model.vocab_size, lowercase=config.data.lowercase,
                                show_progress=sample.size > 100_000_000)  # its merges take minutes there
    trained = tokenizer.get_vocab_size()
    if trained < config.model.vocab_size:
        if sample.quota is not None:  # the sample, not the corpus, is what is too small
            raise DataError(f"the tokenizer's sample (data.tokenizer_sample_bytes {config.data.tokenizer_sample_bytes:,} "
                            f"of the corpus's {corpus.total_bytes:,} bytes: {sample.documents} train documents) is too "
                            f"small for a {config.model.vocab_size}-token vocabulary: training made {trained}; raise "
                            f"data.tokenizer_sample_bytes or set model.vocab_size: {trained}")
        raise DataError(f"the corpus ({sample.documents} train documents) is too small for a {config.model.vocab_size}-"
                        f"token vocabulary: training made {trained}; set model.vocab_size: {trained} or add text")
    check_vocab_size(tokenizer, config.model.vocab_size, "trained tokenizer")  # more: alphabet > vocab_size
    return tokenizer, sample.documents


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


# --- tokenise a piece -----------------------------------------------------------------------------


def encode(tokenizer: Tokenizer, texts: list[str]) -> pa.ListArray:
    """Each text's WordPiece ids (no [CLS]/[SEP]) as one Arrow list<int32> array. encode_batch_fast: the
    tokenizer's threads (every core the process may use) without the character offsets packing never reads."""
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    offsets = np.zeros(len(encodings) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, encodings), np.int32, len(encodings)), out=offsets[1:])
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32, int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))


def tokenize_piece(corpus: Corpus, piece: Piece, tokenizer: Tokenizer, path: Path, progress=None) -> int:
    """Write `piece`'s texts to `path` (Arrow: "input_ids" list<int32>, "digest" the 16-byte identity of the
    text's document, "part" its number among the document's parts), a batch at a time, atomically; the
    number of documents. The tokenizer gets at most about READ_BYTES characters at a time (its output takes
    ~140 bytes a character), however long the source's batches or documents."""
    count = read = 0
    try:
        with cache_file(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_stream(sink, _PIECE_SCHEMA) as writer:
            for batch in corpus.read(piece):
                for start, stop in _spans(batch.texts, READ_BYTES):
                    texts = batch.texts[start:stop]
                    digests = pa.FixedSizeBinaryArray.from_buffers(
                        pa.binary(16), len(texts), [None, pa.py_buffer(b"".join(batch.digests[start:stop]))])
                    parts = pa.array(batch.parts[start:stop], pa.int32())
                    writer.write_batch(pa.record_batch([encode(tokenizer, texts), digests, parts], schema=_PIECE_SCHEMA))
                    read += _advance(progress, sum(map(len, texts)))
                count += batch.documents
    except OSError as e:
        raise _write_error(e, path, "tokens") from None
    _advance(progress, piece.size - read)  # the bar counts characters, the plan bytes: end the piece exactly
    return count


def _spans(texts: list[str], max_chars: int) -> Iterator[tuple[int, int]]:
    """[start, stop) runs of consecutive texts of about max_chars characters in all (one text at least)."""
    start = size = 0
    for i, text in enumerate(texts):
        if size and size + len(text) > max_chars:
            yield start, i
            start, size = i, 0
        size += len(text)
    if start < len(texts):
        yield start, len(texts)


def _advance(progress, n: int) -> int:
    n = max(n, 0)
    if progress is not None and n:
        progress.update(n)
    return n


def _write_error(e: OSError, path: Path, what: str) -> DataError:
    if e.errno == errno.ENOSPC or "No space left" in str(e):  # pyarrow's OSErrors carry no errno
        return DataError(f"{path.parent}: no space left on the device while writing {what}; free space or set "
                         "data.cache_dir to a larger disk (the cache takes about twice the corpus's size); what "
                         "is already prepared is kept")
    return DataError(f"{path}: cannot write {what} ({e.strerror or e})")


def read_piece(path: Path) -> pa.Table:
    """A tokenised piece, memory-mapped (nothing read until used)."""
    return _read_stream(path)


def _read_stream(path: Path) -> pa.Table:
    """An Arrow IPC stream file (a piece, or blocks as datasets writes them), memory-mapped: reading it parses
    every message's framing (the headers), and no data."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


# --- the cache's own checks -----------------------------------------------------------------------


def _size_record(path: Path) -> Path:
    """Where the size of cache file `path` is recorded when it is written: `path`.size beside it."""
    return path.with_name(path.name + ".size")


@contextlib.contextmanager
def cache_file(path: Path):
    """`with cache_file(path) as tmp:` write cache file `path` at `tmp` (`io.written_atomically`); its size is
    recorded beside it (`_size_record`, written atomically too) before it is renamed into place, so a whole
    cache file always has its record, and one that lost bytes or was overwritten since is found out."""
    with written_atomically(path) as tmp:
        yield tmp
        with written_atomically(_size_record(path)) as record:
            record.write_text(f"{tmp.stat().st_size}\n")


def cache_damage(path: Path) -> str | None:
    """What is wrong with the cache file `path`, which exists: its size is not the one recorded when it was
    written (truncated, emptied, appended to) or none is recorded, or Arrow cannot read its framing (garbage);
    None when it is whole. Reads the headers only: no checksum of the data (that would read the whole cache
    at every start)."""
    try:
        recorded = int(_size_record(path).read_text())
    except (OSError, ValueError):
        return f"no record of its size in {_size_record(path).name}"
    size = path.stat().st_size
    if size != recorded:
        return f"{size:,} bytes where {recorded:,} were written"
    try:
        _read_stream(path)
    except (OSError, pa.ArrowException) as e:
        return f"not readable as Arrow ({str(e).splitlines()[0][:120]})"
    return None


def remove_damaged(paths: Iterable[Path]) -> dict[Path, str]:
    """Check each cache file of `paths` that exists (`cache_damage`); remove each damaged one with its record,
    named in a warning; {path: what was wrong} of those removed. A removed file is then made again, as a
    missing one is, from its source."""
    damaged = {}
    for path in paths:
        why = cache_damage(path) if path.is_file() else None
        if why is not None:
            log.warning("%s: damaged cache file (%s): removed; it is made again from its source", path, why)
            path.unlink(missing_ok=True)
            _size_record(path).unlink(missing_ok=True)
            damaged[path] = why
    return damaged


def _rebuild_error(damaged: dict[Path, str], e: DataError) -> DataError:
    """The error of a cache file that was damaged, and whose source cannot make it again: both named."""
    files = "; ".join(f"{path}: damaged ({why})" for path, why in damaged.items())
    return DataError(f"{files}, and removed; it cannot be made again: {e}")


# --- pack -----------------------------------------------------------------------------------------


def _close_documents(values: np.ndarray, lengths: np.ndarray, ends: np.ndarray, sep: int) -> np.ndarray:
    """Concatenate texts (flat `values`, per-text `lengths`) with a [SEP] after each that `ends` a document:
    d_1 S d_2 S ..., the parts of a document cut into parts back to back."""
    stops = np.cumsum(lengths + ends)  # one past each text (and its [SEP])
    stream = np.full(int(stops[-1]) if len(stops) else 0, sep, dtype=np.int32)
    is_text = np.ones(len(stream), dtype=bool)
    is_text[(stops - 1)[ends]] = False
    stream[is_text] = values
    return stream


def pack_blocks(documents: Iterable[tuple[pa.ListArray, np.ndarray]], specials: SpecialTokens, seq_len: int,
                path: Path, name: str = "train", progress=None, eval_fraction: float = 0.0) -> datasets.Dataset:
    """Tokenised documents (batches of (list<int32>, (n,) bool: whether each text ends its document, rather
    than being followed by the next part of it)) → Dataset of blocks [CLS] + C ids + [SEP] (C = seq_len - 2),
    column "input_ids" fixed-length int32, written atomically to `path` and memory-mapped (random access,
    nothing loaded). The stream's last len mod C ids are dropped. A split shorter than one chunk is a
    DataError, but for a held-out split with no document at all (none fell to it): that has no blocks.
    `eval_fraction`: the data.eval_fraction that made a held-out split, for that error."""
    chunk = seq_len - 2
    features = _block_features(seq_len)
    num_documents = num_stream = num_blocks = 0
    carry = np.empty(0, dtype=np.int32)  # the stream's ids not yet in a block
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with cache_file(path) as tmp:
            # record batches of up to 65,536 blocks (datasets' default is 1,000): opening the file reads one
            # header per batch, so fewer batches keep a warm start's reads small at any corpus size
            writer = ArrowWriter(features=features, path=str(tmp), writer_batch_size=1 << 16)
            try:
                for ids, ends in documents:
                    lengths = ids.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
                    stream = np.concatenate([carry, _close_documents(ids.flatten().to_numpy(), lengths, ends,
                                                                     specials.sep)])
                    full = len(stream) // chunk
                    blocks = np.empty((full, seq_len), dtype=np.int32)
                    blocks[:, 0], blocks[:, -1] = specials.cls, specials.sep
                    blocks[:, 1:-1] = stream[:full * chunk].reshape(full, chunk)
                    carry = stream[full * chunk:]
                    if full:
                        writer.write_table(pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(blocks.ravel(),
                                                                                                   seq_len)}))
                    num_documents += int(ends.sum())
                    num_stream += int(ends.sum() + lengths.sum())
                    num_blocks += full
                    if progress is not None:
                        progress.update(int(ends.sum() + lengths.sum()))
                if num_blocks == 0 and (num_documents or name != "eval"):
                    raise DataError(f"{name} split: {num_stream} tokens ({num_documents} documents and their [SEP]s), "
                                    f"but one sequence needs {chunk} (data.max_seq_len {seq_len} minus [CLS] and "
                                    "[SEP]); " + (f"raise data.eval_fraction (now {eval_fraction}: the share of the "
                                                  "documents held out)" if name == "eval" else "add text")
                                    + " or lower data.max_seq_len")
                writer.finalize()
            finally:
                writer.close()  # idempotent; on an error the file handle must not outlive the removed file
    except OSError as e:
        raise _write_error(e, path, f"the {name} blocks") from None
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

    def most_frequent_token(self, specials: SpecialTokens, max_blocks: int = 20_000, runs: int = 20) -> int:
        """argmax_v count(v) over the non-special ids of the train blocks: always predicting it is the accuracy
        baseline a trained model must beat. Over at most `max_blocks` blocks: all of them, or `runs` evenly
        spaced runs of consecutive blocks, so that it reads a few MB of the file whatever the corpus's size
        (single rows spread over the whole file would touch nearly every page of it)."""
        n = len(self.train)
        if n <= max_blocks:
            rows = torch.arange(n)
        else:
            run = max_blocks // runs
            starts = torch.linspace(0, n - run, runs).round().long()
            rows = (starts[:, None] + torch.arange(run)).reshape(-1)
        counts = torch.bincount(self.batch("train", rows).reshape(-1))
        counts[[i for i in specials.ids if i < len(counts)]] = 0
        return int(counts.argmax())


def _no_blocks(seq_len: int) -> datasets.Dataset:
    features = _block_features(seq_len)
    return in_memory_dataset(features.arrow_schema.empty_table(), _key("no blocks", str(seq_len)), features)


def _block_features(seq_len: int) -> datasets.Features:
    return datasets.Features({"input_ids": datasets.List(datasets.Value("int32"), length=seq_len)})


def _key(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part.encode("utf-8"))
    return h.hexdigest()


@dataclass(frozen=True)
class CachePaths:
    """Where a corpus prepared with one tokenizer and one data config lies in data.cache_dir."""

    root: Path
    pieces: list[Path]  # the tokens of each piece, in corpus order
    train: Path
    eval: Path

    @classmethod
    def of(cls, root: Path, corpus: Corpus, tokenizer: Tokenizer, data: DataConfig) -> "CachePaths":
        specials = special_tokens(tokenizer)
        tokenizer_key = _key(_CACHE_VERSION, tokenizer.to_str())
        pieces = [root / "pieces" / f"{piece.key}-{tokenizer_key}.arrow" for piece in corpus.pieces]
        blocks_key = _key(_CACHE_VERSION, corpus.identity(), tokenizer_key, str(data.eval_fraction),
                          str(data.max_documents), str(data.max_seq_len), str(specials.ids))
        return cls(root, pieces, root / f"train-blocks-{blocks_key}.arrow", root / f"eval-blocks-{blocks_key}.arrow")


def prepare_data(config: Config, tokenizer: Tokenizer, cache_dir: str | Path, documents: Documents | None = None,
                 dist: DistInfo = DistInfo()) -> PretrainingData:
    """The corpus (`documents`, default data's own) → tokenised pieces → held-out split → packed blocks, all
    cached in `cache_dir` (see the module docstring), so a second run over unchanged files reads no text.

    With several processes (a torchrun job, `dist`), each tokenises its share of the pieces (piece i goes to
    process i mod P), then process 0 packs: the blocks are the same, in the same order, as one process makes.
    cache_dir must then be one directory every process sees (shared storage). Delete it at any time."""
    data = config.data
    check_vocab_size(tokenizer, config.model.vocab_size, "tokenizer")
    corpus = as_corpus(documents, data)
    paths = CachePaths.of(Path(cache_dir), corpus, tokenizer, data)
    splits = {"train": paths.train} | ({"eval": paths.eval} if data.eval_fraction > 0 else {})
    damaged = remove_damaged(splits.values()) if dist.is_main else {}  # process 0 decides, and packs
    if distributed.broadcast_flag(dist.is_main and all(path.is_file() for path in splits.values()), dist):
        log.info("blocks: cached in %s", paths.root)
    else:
        try:
            _tokenize_share(corpus, _plain_copy(tokenizer), paths, dist)
            distributed.barrier(dist, slow=True)
            if dist.is_main:
                _pack(corpus, paths, special_tokens(tokenizer), data)
        except DataError as e:
            raise _rebuild_error(damaged, e) if damaged else e from None
        distributed.barrier(dist, slow=True)
    blocks = {name: _open_blocks(path) for name, path in splits.items()}
    return PretrainingData(train=blocks["train"], eval=blocks["eval"] if "eval" in blocks else _no_blocks(data.max_seq_len),
                           seq_len=data.max_seq_len)


def _open_blocks(path: Path) -> datasets.Dataset:
    if not path.is_file():
        raise DataError(f"{path}: not found, though process 0 packed it: data.cache_dir must be one directory that "
                        "every process sees (shared storage), or prepared on each machine")
    try:
        return datasets.Dataset.from_file(str(path))
    except (OSError, pa.ArrowException) as e:  # damaged since process 0 checked or wrote it
        raise DataError(f"{path}: damaged cache file ({str(e).splitlines()[0][:120]}); run again to make it "
                        "again") from None


def _tokenize_share(corpus: Corpus, tokenizer: Tokenizer, paths: CachePaths, dist: DistInfo) -> None:
    """Tokenise this process's pieces that are not cached yet. In one process with data.max_documents, only
    as many pieces as those documents need."""
    directory = paths.pieces[0].parent
    directory.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(directory) + stale_temporaries(paths.root):  # left by a killed preparation
        stale.unlink(missing_ok=True)
    mine = [i for i in range(len(corpus.pieces)) if i % dist.world_size == dist.rank]
    damaged = remove_damaged(paths.pieces[i] for i in mine)
    todo = [i for i in mine if not paths.pieces[i].is_file()]
    log.info("tokens: %d of %d pieces cached%s", len(mine) - len(todo), len(mine),
             f" (the share of process {dist.rank} of {dist.world_size})" if dist.enabled else "")
    if not todo:
        return
    limit = corpus.data.max_documents if dist.world_size == 1 else None
    started, documents, written = time.perf_counter(), 0, 0
    with tqdm(total=sum(corpus.pieces[i].size for i in todo), unit="B", unit_scale=True, desc="tokenising",
              dynamic_ncols=True, disable=not dist.is_main) as progress:
        for i in mine:
            if limit is not None and documents >= limit:
                break
            if paths.pieces[i].is_file():
                documents += _documents_in(read_piece(paths.pieces[i]))
                continue
            try:
                documents += tokenize_piece(corpus, corpus.pieces[i], tokenizer, paths.pieces[i], progress)
            except DataError as e:
                was = {paths.pieces[i]: damaged[paths.pieces[i]]} if paths.pieces[i] in damaged else {}
                raise _rebuild_error(was, e) if was else e from None
            written += paths.pieces[i].stat().st_size
        seconds = time.perf_counter() - started
        log.info("tokens: %.1f MB of text in %.1f s (%.2f MB/s) → %.1f MB of ids in %s", progress.n / 1e6,
                 seconds, progress.n / 1e6 / max(seconds, 1e-9), written / 1e6, directory)


def _pack(corpus: Corpus, paths: CachePaths, specials: SpecialTokens, data: DataConfig) -> None:
    """Pack the train and eval blocks from the tokenised pieces (every process's), in corpus order."""
    tables = _piece_tables(corpus, paths, data.max_documents)
    _check_each_file_has_text(corpus, tables)
    rule = SplitRule.of(lambda: ((_digest_matrix(table), _parts(table)) for _, table in tables), data.eval_fraction)
    if rule.note:
        log.info("%s", rule.note)
    tokens = sum(len(chunk.flatten()) + len(chunk) for _, table in tables for chunk in table.column(0).chunks)
    splits = [("train", paths.train)] + ([("eval", paths.eval)] if data.eval_fraction > 0 else [])
    with tqdm(total=tokens, unit="tok", unit_scale=True, desc="packing", dynamic_ncols=True) as progress:
        for name, path in splits:
            documents = (texts for _, table in tables for texts in _split_batches(table, rule, name == "eval"))
            pack_blocks(documents, specials, data.max_seq_len, path, name, progress, data.eval_fraction)


def _piece_tables(corpus: Corpus, paths: CachePaths, limit: int | None) -> list[tuple[int, pa.Table]]:
    """(piece number, its memory-mapped table) in corpus order, cut at `limit` documents in all."""
    tables, documents = [], 0
    for i, path in enumerate(paths.pieces):
        if limit is not None and documents >= limit:
            break
        if not path.is_file():
            raise DataError(f"{path}: the tokens of {corpus.pieces[i].name} (piece {corpus.pieces[i].index}) are "
                            "missing: data.cache_dir must be one directory that every process sees (shared "
                            "storage), or prepared on each machine")
        table = read_piece(path)
        if limit is not None:
            starts = np.flatnonzero(_parts(table) == 0)  # the rows where documents start
            if len(starts) > limit - documents:
                table = table.slice(0, int(starts[limit - documents]))
        documents += _documents_in(table)
        tables.append((i, table))
    return tables


def _parts(table: pa.Table) -> np.ndarray:
    """The "part" column: each text's number among its document's parts."""
    return table.column("part").to_numpy()


def _documents_in(table: pa.Table) -> int:
    return int((_parts(table) == 0).sum())


def _check_each_file_has_text(corpus: Corpus, tables: list[tuple[int, pa.Table]]) -> None:
    documents: dict[int, int] = {}
    for i, table in tables:
        documents[corpus.pieces[i].file] = documents.get(corpus.pieces[i].file, 0) + table.num_rows
    if not any(documents.values()):
        raise corpus.no_text()
    if corpus.data.max_documents is None:
        for file, count in documents.items():
            if count == 0:
                raise DataError(f"{corpus.files[file]}: has no text (every document is empty or whitespace); "
                                "remove it from data.paths")


def _digest_matrix(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """The "digest" column as (n, 16) uint8."""
    column = table.column("digest")
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.frombuffer(column.buffers()[1], np.uint8, 16 * len(column), 16 * column.offset).reshape(-1, 16)


def _split_batches(table: pa.Table, rule: SplitRule, held_out: bool) -> Iterator[tuple[pa.ListArray, np.ndarray]]:
    """The texts of one side of the split, a batch at a time, each with whether a [SEP] follows it: where its
    document ends, or where the next part of it fell to the other side (split at parts)."""
    parts = _parts(table)
    side = rule.is_eval(_digest_matrix(table), parts)
    ends = np.ones(len(parts), dtype=bool)  # a piece ends with the end of a document
    ends[:-1] = (parts[1:] == 0) | (side[1:] != side[:-1])
    offset = 0
    for batch in table.to_batches():
        mine = side[offset:offset + batch.num_rows] == held_out
        yield batch.column("input_ids").filter(pa.array(mine)), ends[offset:offset + batch.num_rows][mine]
        offset += batch.num_rows


# --- one preparation, many processes --------------------------------------------------------------


def default_cache_dir(config: Config) -> Path:
    """data.cache_dir, else train.out_dir/cache."""
    return Path(config.data.cache_dir) if config.data.cache_dir else Path(config.train.out_dir) / "cache"


@dataclass(frozen=True)
class Prepared:
    """What `prepare` made: the tokenizer, the blocks, and where they lie."""

    tokenizer: Tokenizer
    data: PretrainingData
    paths: CachePaths
    corpus: Corpus
    seconds: float

    def summary(self) -> list[str]:
        """What `bertmath prepare` prints: each thing written, its size, and the time."""
        pieces = [p for p in self.paths.pieces if p.is_file()]
        lines = [f"tokens: {len(pieces)} piece file(s), {sum(p.stat().st_size for p in pieces) / 1e6:,.1f} MB in "
                 f"{self.paths.root / 'pieces'}"]
        for name, blocks in (("train", self.data.train), ("eval", self.data.eval)):
            files = [Path(f["filename"]) for f in blocks.cache_files]
            where = f" ({sum(f.stat().st_size for f in files) / 1e6:,.1f} MB): {files[0]}" if files else ""
            lines.append(f"{name}: {len(blocks):,} blocks of {self.data.seq_len} tokens{where}")
        lines.append(f"prepared in {self.seconds:.1f} s; `bertmath pretrain` with this config starts from this cache")
        return lines


def prepare(config: Config, out_dir: str | Path | None = None, cache_dir: str | Path | None = None,
            dist: DistInfo = DistInfo(), corpus: Corpus | None = None) -> Prepared:
    """Everything before pretraining's first step: the tokenizer in out_dir (default train.out_dir; process 0
    trains or loads it first, the others then load what it saved) and the blocks in cache_dir (default
    `default_cache_dir`; `prepare_data`, the pieces shared out among processes), of `corpus` (default: data's
    own, planned here)."""
    started = time.perf_counter()
    out_dir = Path(config.train.out_dir if out_dir is None else out_dir)
    cache_dir = default_cache_dir(config) if cache_dir is None else Path(cache_dir)
    if dist.is_main:  # before any slow work, as train.out_dir is
        check_writable(cache_dir, "data.cache_dir")
    corpus = Corpus.plan(config.data) if corpus is None else corpus
    log.info("corpus: %d file(s), %.1f MB in %d piece(s) (data.source %s)", len(corpus.files),
             corpus.total_bytes / 1e6, len(corpus.pieces), config.data.source)
    tokenizer = None
    for turn in ("main", "others"):
        if (turn == "main") == dist.is_main:
            tokenizer = get_tokenizer(config, out_dir, corpus)
        distributed.barrier(dist, slow=True)
    data = prepare_data(config, tokenizer, cache_dir, corpus, dist)
    return Prepared(tokenizer, data, CachePaths.of(cache_dir, corpus, tokenizer, config.data), corpus,
                    time.perf_counter() - started)


# --- what a checkpoint was trained on -------------------------------------------------------------

FINGERPRINT_KEYS = ("max_seq_len", "eval_fraction", "mlm_probability", "mask_token_probability",
                    "random_token_probability", "whole_word_masking")  # the data.* settings that change the data


def data_fingerprint(data: DataConfig, corpus: Corpus) -> dict:
    """What a run trains on, for a checkpoint to record and a resume to compare: the corpus's identity (every
    piece's key: its files' paths, sizes and modification times, data.source, data.max_documents, ...) and
    the data.* settings that change the blocks or their masks."""
    return {"corpus": corpus.identity()} | {key: getattr(data, key) for key in FINGERPRINT_KEYS}


def data_changes(saved: dict, now: dict) -> list[str]:
    """What differs between two data_fingerprints, in words: [] when the same data."""
    changes = ["the corpus (its files: paths, sizes or modification times; or data.source, data.paths, "
               "data.max_documents)"] if saved.get("corpus") != now["corpus"] else []
    return changes + [f"data.{key}: {saved.get(key)} then, {now[key]} now" for key in FINGERPRINT_KEYS
                      if saved.get(key) != now[key]]


# --- order ----------------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from (seed, epoch): blake2b, so nearby seeds give unrelated permutations."""
    digest_ = hashlib.blake2b(f"bertmath-order:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest_, "big") >> 1


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
