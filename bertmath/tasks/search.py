"""Exact nearest-document search: the documents nearest a query by cosine similarity of their embeddings.

    score(q, d) = ê_q · ê_d = cos(e_q, e_d),  ê = e / ‖e‖₂;   the top k of the N documents, best first
    (N, D) · (D,) per query: 2·N·D flops, exact (no approximate index)

    searcher = Searcher.from_pretrained("all-MiniLM-L6-v2/", "docs.txt")   # embeds docs.txt once, or reuses it
    searcher(["who killed the king?"], top_k=3)                               # → [[Hit(score, line, text), ...]]

Documents are the non-blank lines of a UTF-8 text file. Their unit vectors are computed once and kept beside
the file, in numpy's .npy format (memory-mapped when read):

    FILE.bertmath-<key>.npy         (N, D) float32, row i = ê of document i
    FILE.bertmath-<key>.lines.npy   (N, 2) int64, row i = (line number from 1, byte offset of the line)

<key> = 8 hex digits of the embedder's identity (the checkpoint's path and files' sizes and times, its pooling and
L) and 8 of the file's (size, modification time): a changed file or checkpoint gets new vectors; a changed file's
old vectors for the same checkpoint are removed. Each file is written under a temporary name and renamed into
place (the lines first, the vectors last: vectors present = complete). A second query costs one embedding and one
pass over the memory-mapped vectors; memory stays flat in N: documents are embedded `chunk_size` at a time into
the memory-mapped file, and scored `SCORE_ROWS` at a time with a running top-k.

Under torchrun every process embeds its share of the file, whole chunks of contiguous lines (rank r the r-th
P-th of the chunks), into the one memory-mapped file; a chunk is batched the same way whoever embeds it, so 1 and
P processes write the same bytes (tests/test_tasks_search.py).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..distributed import DistInfo
from ..errors import ConfigError, DataError, InputError, OutputError
from ..io import atomic_save_npy, decode_utf8, fsync_dir, tmp_name
from .encode import BATCH_SIZE, Embedder

log = logging.getLogger(__name__)

CHUNK_SIZE = 4096  # documents embedded per step (and each process's unit of work): bounds memory, not results
SCORE_ROWS = 65536  # document vectors scored per matrix product
NUL = b"\0"  # in no text file


@dataclass(frozen=True)
class Hit:
    """One document found for a query."""

    score: float  # cos(e_q, e_d)
    line: int  # its line in the documents file, from 1
    text: str

    def to_dict(self) -> dict:
        return {"score": self.score, "line": self.line, "text": self.text}


# --- the documents file ------------------------------------------------------------------------------------


def scan_documents(path: Path) -> np.ndarray:
    """(N, 2) int64: (line number from 1, byte offset) of each non-blank line of a UTF-8 text file, read a line at
    a time. A DataError for a file that cannot be read, is not UTF-8 text (a NUL byte, or bytes UTF-8 cannot
    decode: named with their offset), or holds no document."""
    path = Path(path)
    rows: list[tuple[int, int]] = []
    try:
        with open(path, "rb") as f:
            offset = 0
            for number, raw in enumerate(f, 1):
                if NUL in raw:
                    raise DataError(f"{path}: binary, not text (a NUL byte at offset {offset + raw.index(NUL)})")
                if decode_utf8(raw, str(path), offset).strip():
                    rows.append((number, offset))
                offset += len(raw)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not rows:
        raise DataError(f"{path}: no documents (the file is empty or blank); give one document per line")
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def read_documents(path: Path, offsets) -> list[str]:
    """The lines starting at the byte `offsets`, without their line ends."""
    out = []
    with open(path, "rb") as f:
        for offset in offsets:
            f.seek(int(offset))
            out.append(decode_utf8(f.readline(), str(path), int(offset)).rstrip("\r\n").lstrip("\ufeff"))
    return out


# --- the document vectors beside it --------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def index_paths(docs: Path, identity: str) -> tuple[Path, Path]:
    """(vectors, lines) of `docs` embedded by the embedder of `identity`: FILE.bertmath-<key>.npy, .lines.npy."""
    docs = Path(docs)
    st = docs.stat()
    key = _digest(identity) + _digest(f"{st.st_size}:{st.st_mtime_ns}")
    stem = docs.with_name(f"{docs.name}.bertmath-{key}")
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".lines.npy")


def open_index(vectors_path: Path, lines_path: Path, dimension: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(vectors memory-mapped read-only, lines) when both files are there and agree; None otherwise."""
    if not (vectors_path.is_file() and lines_path.is_file()):
        return None
    try:
        vectors = np.load(vectors_path, mmap_mode="r")
        lines = np.load(lines_path)
    except (OSError, ValueError):
        return None
    if vectors.dtype != np.float32 or vectors.shape != (len(lines), dimension) or lines.shape[1:] != (2,):
        return None
    return vectors, lines


def chunk_share(count: int, chunk_size: int, info: DistInfo) -> list[tuple[int, int]]:
    """[start, end) of the chunks of `chunk_size` documents process `info.rank` of P embeds: the r-th P-th of them,
    contiguous. The chunks are the same whatever P, and so is each one's batching."""
    chunks = [(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]
    return chunks[info.rank * len(chunks) // info.world_size:(info.rank + 1) * len(chunks) // info.world_size]


def build_index(embedder: Embedder, docs: Path, info: DistInfo = DistInfo(), chunk_size: int = CHUNK_SIZE,
                batch_size: int = BATCH_SIZE, lines: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The memory-mapped vectors and the lines of `docs` (see the module docstring): read when there, else computed
    (by every process of `info`, each its chunk_share) and written. Every process calls it and gets the index.
    lines: scan_documents(docs), when the caller has it."""
    if chunk_size < 1:
        raise ConfigError(f"chunk_size: must be at least 1, got {chunk_size}")
    docs = Path(docs)
    lines = scan_documents(docs) if lines is None else lines
    vectors_path, lines_path = index_paths(docs, embedder.identity)
    index = open_index(vectors_path, lines_path, embedder.dimension)
    if index is not None:
        log.info("%d documents: vectors from %s", len(lines), vectors_path)
        return index
    distributed.barrier(info)  # every process has seen that there is none before rank 0 writes one
    tmp = distributed.gather_objects(str(tmp_name(vectors_path, host=True)) if info.is_main else None, info)[0]
    if info.is_main:
        try:
            atomic_save_npy(lines, lines_path)
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(lines), embedder.dimension)).flush()
        except OSError as e:
            raise OutputError(f"{vectors_path}: cannot write the document vectors beside {docs.name} "
                              f"({e.strerror or e})") from None
    distributed.barrier(info)
    log.info("%d documents: embedding them into %s%s", len(lines), vectors_path,
             f" ({info.world_size} processes)" if info.world_size > 1 else "")
    vectors = np.lib.format.open_memmap(tmp, mode="r+")
    truncated = 0
    for start, end in chunk_share(len(lines), chunk_size, info):
        encoded = embedder.tokenize(read_documents(docs, lines[start:end, 1]))
        truncated += encoded.truncated
        vectors[start:end] = embedder.embed(encoded, batch_size, normalize=True).numpy()
    vectors.flush()
    del vectors
    truncated = int(distributed.total(torch.tensor(truncated), info))
    distributed.barrier(info)
    if info.is_main:
        embedder.warn_truncated(truncated, len(lines))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, vectors_path)
        fsync_dir(vectors_path.parent)
        _remove_stale(docs, vectors_path, lines_path)
    distributed.barrier(info)
    return np.load(vectors_path, mmap_mode="r"), lines


def _remove_stale(docs: Path, vectors_path: Path, lines_path: Path) -> None:
    """Vectors of the same checkpoint for an earlier version of `docs` (same first half of the key)."""
    prefix = vectors_path.name[:len(f"{docs.name}.bertmath-") + 8]
    for path in docs.parent.glob(f"{glob.escape(prefix)}*.npy"):
        if path not in (vectors_path, lines_path):
            path.unlink(missing_ok=True)


# --- scoring ----------------------------------------------------------------------------------------------


def nearest(vectors: np.ndarray, queries: np.ndarray, k: int,
            rows: int = SCORE_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k'), indices (Q, k')), k' = min(k, N): for each query q the k rows d of `vectors` with the largest
    d · q, best first (ties: the lower index). `rows` vectors at a time, each block's candidates merged into a
    running top-k: memory O(rows·D + Q·k), whatever N."""
    k = min(k, len(vectors))
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    best = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), rows):
        block = np.asarray(vectors[start:start + rows])  # (R, D), read from the memory map
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)  # (Q, k + R)
        here = np.broadcast_to(np.arange(start, start + len(block)), (len(queries), len(block)))
        indices = np.concatenate([best, here], axis=1)
        if scores.shape[1] > k:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, indices = np.take_along_axis(scores, keep, 1), np.take_along_axis(indices, keep, 1)
        best_scores, best = scores, indices
    order = np.lexsort((best, -best_scores), axis=1)  # by score descending, then index
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best, order, 1)


class Searcher:
    """An Embedder and the vectors of one documents file: `searcher(queries, top_k)` gives each query's nearest
    documents by cosine similarity."""

    def __init__(self, embedder: Embedder, docs: Path, vectors: np.ndarray, lines: np.ndarray):
        self.embedder, self.docs, self.vectors, self.lines = embedder, Path(docs), vectors, lines

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, docs: str | Path, device: str | torch.device = "cpu",
                        batch_size: int = BATCH_SIZE, chunk_size: int = CHUNK_SIZE, info: DistInfo = DistInfo(),
                        precision: str = "fp32") -> "Searcher":
        """The embedder of `checkpoint` (Embedder.from_pretrained) and the vectors of `docs`: reused from beside it,
        else computed (under torchrun by every process of `info`, each its share) and kept there."""
        docs = Path(docs)
        if not docs.exists():
            raise DataError(f"{docs}: documents file not found")
        lines = scan_documents(docs)  # a bad file fails before the (slow) load
        embedder = Embedder.from_pretrained(checkpoint, device=device, precision=precision)
        return cls(embedder, docs, *build_index(embedder, docs, info, chunk_size, batch_size, lines))

    def __call__(self, queries: list[str] | str, top_k: int = 5) -> list[list[Hit]]:
        """The top_k documents of each query, best first."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        if not queries:
            raise InputError("no query")
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}")
        q = self.embedder.encode(queries, normalize=True).numpy()  # (Q, D)
        scores, indices = nearest(self.vectors, q, top_k)
        out = []
        for row_scores, row_indices in zip(scores, indices):
            texts = read_documents(self.docs, self.lines[row_indices, 1])
            out.append([Hit(float(s), int(self.lines[i, 0]), t) for s, i, t in zip(row_scores, row_indices, texts)])
        return out


def search(checkpoint: str | Path, docs: str | Path, queries: list[str] | str, top_k: int = 5,
           device: str | torch.device = "cpu") -> list[list[Hit]]:
    """Searcher.from_pretrained(checkpoint, docs)(queries, top_k): what `bertmath search` runs."""
    return Searcher.from_pretrained(checkpoint, docs, device=device)(queries, top_k)
