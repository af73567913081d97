"""The pretraining corpus as pieces, read a piece at a time: no copy of the corpus ever sits in memory.

    data.source ──Corpus.plan (stat and metadata only)──▶ Piece, Piece, ... ──Corpus.read(piece)──▶ document batches

A piece is the unit of preparation: at most `piece_bytes` of one file (or a run of rows of one table), read,
split into documents and tokenised as one, and cached under its `key`: the file's identity (resolved path,
size, modification time in ns, as `datasets` keys its `data_files`), the piece's place in the file and the
options that shape its documents. Planning reads no text, so a second run over unchanged files knows its
cache keys in milliseconds whatever the corpus size; a changed, added or removed file changes only its keys.

Where a piece of a file starts and ends, for sources whose documents are byte ranges:
    paragraphs (text, documents: paragraph): piece k holds the documents that start in [a_k, a_{k+1}),
        a_0 = 0 and a_k = 1 + (start of the first blank-line separator \\n[ \\t\\r\\f\\v]*\\n at or after byte k·P),
        i.e. just after its first newline; cutting there splits the text exactly as splitting it whole does,
        since each side of the cut is blank at the cut and documents are stripped.
    lines (jsonl): a_k = 1 + (the first \\n at or after byte k·P − 1): piece k holds the lines that start in
        [a_k, a_{k+1}).
Whole files (text, documents: file) and the embedded corpus are one piece each; parquet files are split at
row-group boundaries, hub datasets (memory-mapped Arrow once downloaded) at row ranges.

A document is a stripped, non-blank text; `data.max_documents` keeps the first N of the whole corpus, in
source order. A document of more than PART_CHARS characters is read and handed on as consecutive parts
(`cut_document`): part j ends just past the last newline of the next PART_CHARS characters, else past their
last blank, else after all of them; the parts joined are the document, and each carries its document's
identity (`digest` of its first part, the whole document's when it is not cut) and its number j. Text files
are cut as they stream, so no document is ever held whole. Errors are `DataError`s naming the file and the
line or byte offset.
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
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISFIFO, S_ISSOCK
from typing import Iterable, Iterator, Sequence

import datasets
import numpy as np
import pyarrow as pa

from .config import DataConfig
from .errors import DataError
from .io import decode_utf8, parse_json_object

log = logging.getLogger(__name__)

EMBEDDED_CORPUS = "corpus/shakespeare.jsonl.gz"  # inside the bertmath package; see corpus/README.md
PIECE_BYTES = 64 * 2**20  # a piece's share of a file: small enough to spread over processes and to lose to a kill
READ_BYTES = 4 * 2**20  # bytes read at a time within a piece: memory per reader stays about this
# A document longer than this many characters is cut into parts of at most this many (`cut_document`): what
# is tokenised at a time stays bounded, as the tokenizer's output takes ~140 bytes a character, whatever the
# layout of the text (one sentence a line with no blank line, one long line). Above the longest embedded work
# (175,629 characters), so nothing embedded is cut.
PART_CHARS = 200_000
_SEPARATOR = r"\n[ \t\r\f\v]*\n"  # a blank line: what parts paragraphs
_PARAGRAPHS = re.compile(_SEPARATOR)
_PARAGRAPH_BYTES = re.compile(_SEPARATOR.encode())
_NEWLINE_BYTES = re.compile(rb"\n")


@dataclass(frozen=True)
class Piece:
    """One unit of preparation: piece `index` of the pieces of file (or table) number `file`, covering
    [begin, end) of it, nominally: bytes of text and jsonl files (aligned to documents when read), row groups
    of a parquet file, rows of a hub table."""

    name: str  # the file (or table) it comes from, for messages and progress
    file: int  # its file's place in Corpus.files
    index: int  # k, its place among its file's pieces
    begin: int
    end: int
    size: int  # bytes of text it covers, about (progress, the tokenizer's sample quota)
    key: str  # 32 hex digits; changes whenever the documents it reads could


@dataclass(frozen=True)
class _FileStat:
    path: Path
    size: int
    mtime_ns: int


def _fingerprint(*parts: bytes | str) -> str:
    """32 hex digits of blake2b over the parts, each length-prefixed so ("ab", "c") != ("a", "bc")."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        part = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def digest(text: str) -> bytes:
    """blake2b-128 of a document's UTF-8 text: its identity in the held-out rule and in cache keys (of its
    first part, for a document cut into parts)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


@dataclass
class TextBatch:
    """Consecutive texts of a piece, in source order: whole documents, and the parts of the documents longer
    than PART_CHARS. A document's parts are consecutive texts, numbered 0, 1, ...; a whole document is part 0."""

    texts: list[str]
    parts: list[int]  # each text's number among its document's parts
    digests: list[bytes]  # each text's document's identity: `digest` of its part 0

    @property
    def documents(self) -> int:
        """How many documents start in this batch."""
        return self.parts.count(0)

    def digest_matrix(self) -> np.ndarray:
        """The digests as a (len, 16) uint8 array."""
        return np.frombuffer(b"".join(self.digests), np.uint8).reshape(len(self.digests), 16)


def cut_document(text: str) -> list[str]:
    """The parts of a document (see the module docstring): [text] when len(text) <= PART_CHARS; "".join(parts)
    == text."""
    parts, start = _cut(text, 0, len(text), PART_CHARS)
    return parts + [text[start:]]


def _cut(text: str, start: int, stop: int, bound: int) -> tuple[list[str], int]:
    """Cut parts from text[start:] while more than `bound` characters remain before `stop`: (the parts, where
    the rest begins). Each cut is made within the next `bound` characters, so stop need not be the end yet."""
    parts = []
    while stop - start > bound:
        end = start + bound
        cut = text.rfind("\n", start, end) + 1  # a line boundary, else a blank, else the bound itself
        if cut <= start:
            cut = max(text.rfind(blank, start, end) for blank in " \t\r\f\v") + 1
        if cut <= start:
            cut = end
        parts.append(text[start:cut])
        start = cut
    return parts, start


class _Batcher:
    """Collects the parts of documents into TextBatches: each text's part number and its document's digest."""

    def __init__(self):
        self.texts, self.parts, self.digests = [], [], []
        self.part, self.digest = 0, b""  # the document in progress: its next part's number, its identity

    def add(self, parts: list[str], ends: bool) -> None:
        """The next parts of the document in progress; `ends`: its last one is among them."""
        for text in parts:
            if self.part == 0:
                self.digest = digest(text)
            self.texts.append(text)
            self.parts.append(self.part)
            self.digests.append(self.digest)
            self.part += 1
        if ends:
            self.part = 0

    def whole(self, documents: Iterable[str]) -> "TextBatch":
        """Whole documents (each cut by cut_document) as one batch."""
        for text in documents:
            self.add(cut_document(text), ends=True)
        return self.take()

    def take(self) -> TextBatch:
        batch = TextBatch(self.texts, self.parts, self.digests)
        self.texts, self.parts, self.digests = [], [], []
        return batch


class Corpus:
    """The corpus a DataConfig names, planned as pieces (`plan`), or documents held in memory (`of_texts`)."""

    def __init__(self, data: DataConfig, pieces: list[Piece], files: list[str], stats: list[_FileStat | None],
                 table: datasets.Dataset | None = None, texts: Sequence[str] | None = None):
        self.data, self.pieces, self.files = data, pieces, files
        self._stats, self._table, self._texts = stats, table, texts

    # --- planning ---------------------------------------------------------------------------------

    @classmethod
    def plan(cls, data: DataConfig, piece_bytes: int = PIECE_BYTES) -> "Corpus":
        """The pieces of `data`'s corpus, from file sizes and metadata only (no text is read). DataError for a
        missing, empty or unreadable file, or a table without the text column."""
        if data.source == "hub":
            return cls._plan_hub(data, piece_bytes)
        if data.source == "embedded":
            path = Path(str(importlib.resources.files("bertmath").joinpath(EMBEDDED_CORPUS)))
            stat = _stat(path)
            ranges = [(0, stat.size, _gzip_text_size(path))]
            return cls(data, cls._pieces(data, stat, 0, ranges), [f"bertmath/{EMBEDDED_CORPUS}"], [stat])
        stats = [_stat(path) for path in expand_paths(data.paths)]
        pieces = []
        for number, stat in enumerate(stats):
            if stat.size == 0:
                raise DataError(f"{stat.path}: empty file (0 bytes); remove it from data.paths or give it text")
            if data.source == "parquet":
                ranges = _row_group_runs(stat.path, data.text_column, piece_bytes)
            elif data.source == "text" and data.documents == "file":
                ranges = [(0, stat.size, stat.size)]
            else:  # byte ranges of paragraphs or lines
                ranges = [(begin, min(begin + piece_bytes, stat.size), min(piece_bytes, stat.size - begin))
                          for begin in range(0, stat.size, piece_bytes)]
            pieces += cls._pieces(data, stat, number, ranges)
        return cls(data, pieces, [str(s.path) for s in stats], stats)

    @staticmethod
    def _pieces(data: DataConfig, stat: _FileStat, file: int, ranges: list[tuple[int, int, int]]) -> list[Piece]:
        options = (data.source, data.documents if data.source in ("text", "embedded") else "",
                   data.text_column if data.source in ("jsonl", "parquet") else "", str(data.max_documents))
        return [Piece(str(stat.path), file, index, begin, end, size,
                      _fingerprint("piece", str(stat.path.resolve()), str(stat.size), str(stat.mtime_ns),
                                   str(begin), str(end), *options))
                for index, (begin, end, size) in enumerate(ranges)]

    @classmethod
    def _plan_hub(cls, data: DataConfig, piece_bytes: int) -> "Corpus":
        name = f"{data.hub_dataset}" + (f"/{data.hub_config}" if data.hub_config else "")
        try:
            table = datasets.load_dataset(data.hub_dataset, data.hub_config, split=data.hub_split)
        except Exception as e:  # network, missing dataset/config/split: all user-fixable
            raise DataError(f"{name}: cannot load split '{data.hub_split}' ({str(e).splitlines()[0][:200]})") from None
        if data.text_column not in table.column_names:
            raise DataError(f"{name}: no column '{data.text_column}' (set data.text_column); "
                            f"columns: {', '.join(table.column_names)}")
        rows = len(table)
        bytes_per_row = max(1, table.data.column(data.text_column).nbytes) / max(rows, 1)
        per_piece = max(1, int(piece_bytes / bytes_per_row))
        pieces = [Piece(name, 0, k, begin, min(begin + per_piece, rows),
                        int(bytes_per_row * (min(begin + per_piece, rows) - begin)),
                        _fingerprint("hub piece", table._fingerprint, data.text_column, str(begin),
                                     str(min(begin + per_piece, rows)), str(data.max_documents)))
                  for k, begin in enumerate(range(0, max(rows, 1), per_piece))]
        return cls(data, pieces, [name], [None], table=table)

    @classmethod
    def of_texts(cls, texts: Sequence[str] | datasets.Dataset, data: DataConfig) -> "Corpus":
        """Documents already in memory (a list, or a Dataset with a "text" column): one piece, keyed by the
        texts themselves; stripped and blank ones dropped as for files."""
        if isinstance(texts, datasets.Dataset):
            texts = texts["text"]
        texts = list(_nonblank(texts))
        key = _fingerprint("texts", *(digest(t) for t in texts), str(data.max_documents))
        size = sum(len(t) for t in texts)
        return cls(data, [Piece("documents in memory", 0, 0, 0, len(texts), size, key)], ["documents in memory"],
                   [None], texts=texts)

    # --- reading ----------------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(piece.size for piece in self.pieces)

    def identity(self) -> str:
        """A key over every piece, in order: equal for two corpora that read the same documents."""
        return _fingerprint("corpus", *(piece.key for piece in self.pieces))

    def no_text(self) -> DataError:
        """The error for a corpus that holds no document."""
        where = ", ".join(self.data.paths) if self.data.paths else self.files[0]
        return DataError(f"{where}: the corpus has no text (every document is empty or whitespace)")

    def read(self, piece: Piece, max_bytes: int | None = None) -> Iterator[TextBatch]:
        """The documents of `piece` in batches, in source order; at most data.max_documents of them (no piece
        can give the corpus more), and with `max_bytes`, only about its first max_bytes bytes of text (then
        perhaps the first parts of a document only)."""
        batches = self._batches(piece)
        yield from _limited(batches, self.data.max_documents, max_bytes)
        batches.close()  # a reader stopped early closes its file now
        self._check_unchanged(piece)

    def batches(self, max_bytes_per_piece: dict[int, int] | None = None) -> Iterator[TextBatch]:
        """Every piece's batches in source order, the first data.max_documents documents in all; with
        `max_bytes_per_piece` ({piece number: bytes}), only about that many bytes of each piece."""
        batches = (batch for number, piece in enumerate(self.pieces)
                   for batch in self.read(piece, None if max_bytes_per_piece is None else max_bytes_per_piece[number]))
        return _limited(batches, self.data.max_documents, None)

    def documents(self) -> Iterator[str]:
        """Every document whole (its parts joined), in source order, the first data.max_documents of them: for a
        small corpus, or a look at one."""
        parts: list[str] = []
        for batch in self.batches():
            for text, part in zip(batch.texts, batch.parts):
                if part == 0 and parts:
                    yield "".join(parts)
                    parts = []
                parts.append(text)
        if parts:
            yield "".join(parts)

    def _batches(self, piece: Piece) -> Iterator[TextBatch]:
        data = self.data
        batcher = _Batcher()
        if self._texts is not None:
            yield from map(batcher.whole, _in_batches(self._texts))
        elif self._table is not None:
            yield from map(batcher.whole, self._hub_batches(piece))
        elif data.source == "embedded":
            for text in _embedded_works():
                yield batcher.whole(_split_text(text, data.documents))
        elif data.source == "parquet":
            yield from map(batcher.whole, _parquet_batches(Path(piece.name), data.text_column, piece.begin, piece.end))
        elif data.source == "text":
            yield from _text_batches(self._chunks(piece, _PARAGRAPH_BYTES, 0, whole_lines=False),
                                     paragraphs=data.documents == "paragraph")
        elif data.source == "jsonl":
            yield from map(batcher.whole, _jsonl_batches(self._chunks(piece, _NEWLINE_BYTES, -1), piece.name,
                                                         data.text_column))
        else:
            raise AssertionError(f"unhandled data.source {data.source!r}")  # config.py validates the choices

    def _chunks(self, piece: Piece, boundary: re.Pattern, shift: int, whole_lines: bool = True
                ) -> Iterator[tuple[int, str]]:
        """The text of `piece` as (file offset, decoded text) chunks of about READ_BYTES, each ending at a
        newline but the last (`whole_lines` false: or within a line longer than READ_BYTES): its byte range
        [a_k, a_{k+1}) as the module docstring defines."""
        stat = self._stats[piece.file]
        with _open(stat) as f:
            start = 0 if piece.begin == 0 else _boundary(f, piece.begin + shift, boundary)
            end = stat.size if piece.end == stat.size else _boundary(f, piece.end + shift, boundary)
            yield from _decoded_chunks(f, str(stat.path), start, end, whole_lines)

    def _hub_batches(self, piece: Piece) -> Iterator[list[str]]:
        column = self._table.data.column(self.data.text_column)
        for offset in range(piece.begin, piece.end, 10_000):
            values = column.slice(offset, min(10_000, piece.end - offset)).to_pylist()
            yield list(_nonblank(v for v in values if isinstance(v, str)))

    def _check_unchanged(self, piece: Piece) -> None:
        """A file changed while it was read gives documents from two versions: refuse them."""
        stat = self._stats[piece.file]
        if stat is not None and _stat(stat.path, planned=True) != stat:
            raise DataError(f"{stat.path}: changed while it was being prepared; run again (only its pieces are "
                            "prepared anew)")


# --- files ----------------------------------------------------------------------------------------


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
            if path.exists() and not path.is_file():
                raise DataError(f"{pattern}: not a regular file but {_file_kind(path)}; name regular files in data.paths")
            if not path.is_file():
                raise DataError(f"{pattern}: file not found")
            matches = [path]
        files.update(dict.fromkeys(matches))
    return list(files)


def _file_kind(path: Path) -> str:
    """What a path that exists but is neither a regular file nor a directory is, in words (`path.exists()`
    follows links: a link to a FIFO is a FIFO)."""
    mode = os.stat(path).st_mode
    kinds = [(S_ISFIFO, "FIFO (named pipe)"), (S_ISCHR, "character device"), (S_ISBLK, "block device"),
             (S_ISSOCK, "socket")]
    kind = next((kind for test, kind in kinds if test(mode)), "special file")
    return f"a link to a {kind}" if path.is_symlink() else f"a {kind}"


def _stat(path: Path, planned: bool = False) -> _FileStat:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found" + (" (removed while the corpus was being prepared?)"
                                                     if planned else "")) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    return _FileStat(path, st.st_size, st.st_mtime_ns)


def _gzip_text_size(path: Path) -> int:
    """The uncompressed size a gzip file records in its last 4 bytes (mod 2^32: a small file's exact size)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _open(stat: _FileStat):
    try:
        return open(stat.path, "rb")
    except FileNotFoundError:
        raise DataError(f"{stat.path}: file not found (removed while the corpus was being prepared?)") from None
    except OSError as e:
        raise DataError(f"{stat.path}: cannot read ({e.strerror}); fix its permissions or remove it from "
                        "data.paths") from None


def _read(f, size: int, path) -> bytes:
    try:
        return f.read(size)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}) at byte {f.tell()}") from None


def _utf8(raw: bytes, path, offset: int) -> str:
    try:
        return decode_utf8(raw, str(path), offset)
    except DataError as e:
        raise DataError(f"{e}; convert the file to UTF-8 or remove it from data.paths") from None


def _boundary(f, offset: int, boundary: re.Pattern) -> int:
    """1 + the start of the first match of `boundary` at or after byte `offset`: just past that match's first
    newline (its first byte); the file's size if there is none. Holds about READ_BYTES of the file at a time,
    however far the match lies (a text with no blank line has none)."""
    base = max(offset, 0)
    f.seek(base)
    buffer = b""  # the file's bytes from `base`
    while True:
        block = _read(f, READ_BYTES, f.name)
        buffer += block
        match = boundary.search(buffer)
        if match:
            return base + match.start() + 1
        if not block:
            return base + len(buffer)
        # a match cut by the block's end lies in the trailing blank run: keep only that
        kept = len(buffer.rstrip(b" \t\r\f\v\n"))
        base, buffer = base + kept, buffer[kept:]


def _decoded_chunks(f, path: str, start: int, end: int, whole_lines: bool = True) -> Iterator[tuple[int, str]]:
    """[start, end) of the file as (offset, text) chunks ending at a newline (but the last); decoding never
    cuts a character, since a newline byte is never part of one. Without `whole_lines`, a read that holds no
    newline ends before its last character (and before a \r there, which may begin a \r\n): a line of any
    length is then read a READ_BYTES at a time."""
    f.seek(start)
    position, carry, carry_offset = start, b"", start
    while position < end:
        raw = _read(f, min(READ_BYTES, end - position), path)
        if not raw:
            raise DataError(f"{path}: shorter than when it was listed; it changed while being prepared: run again")
        position += len(raw)
        data = carry + raw
        cut = data.rfind(b"\n") + 1 if position < end else len(data)
        if not cut and not whole_lines:
            cut = len(data) - 1
            while cut > 0 and data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: 10xxxxxx
                cut -= 1
            cut -= cut > 0 and data[cut - 1] == 0x0D
        if cut:
            yield carry_offset, _utf8(data[:cut], path, carry_offset)
            carry, carry_offset = data[cut:], carry_offset + cut
        else:
            carry = data
    if carry:
        yield carry_offset, _utf8(carry, path, carry_offset)


def _text_batches(chunks: Iterable[tuple[int, str]], paragraphs: bool) -> Iterator[TextBatch]:
    """The documents of a text, a batch per chunk: with `paragraphs`, those between blank lines (\r\n read as
    \n), else the whole text as one; each cut as cut_document cuts it whole, while it streams.

    Splitting chunk by chunk, the last paragraph carried over, gives exactly the paragraphs of splitting the
    whole (a separator ends at its second newline; a chunk never ends between \r and \n). The carried text
    is cut as soon as more than PART_CHARS characters of it are known to belong to its document (its
    stripped length exceeds the bound): the same cuts as on the whole document, each made within the next
    PART_CHARS characters, so that the carry stays under PART_CHARS + READ_BYTES characters."""
    batcher = _Batcher()
    carry = ""  # the document in progress, from the start of its next part (not lstripped while at part 0)
    for _, text in chunks:
        if paragraphs:
            documents = _PARAGRAPHS.split(carry + text.replace("\r\n", "\n"))
            carry = documents.pop()
        else:
            documents, carry = [], carry + text
        for document in documents:
            _end_document(batcher, document)
        if len(carry) > PART_CHARS:
            if batcher.part == 0:
                carry = carry.lstrip()
            parts, start = _cut(carry, 0, len(carry.rstrip()), PART_CHARS)
            if parts:
                batcher.add(parts, ends=False)
                carry = carry[start:]
        yield batcher.take()
    _end_document(batcher, carry)
    yield batcher.take()


def _end_document(batcher: _Batcher, rest: str) -> None:
    """The rest of the document in progress (all of it, unstripped, if no part is given yet)."""
    rest = rest.rstrip() if batcher.part else rest.strip()
    if rest:
        batcher.add(cut_document(rest), ends=True)
    batcher.part = 0


def _jsonl_batches(chunks: Iterable[tuple[int, str]], path: str, column: str) -> Iterator[list[str]]:
    """The `column` string of every JSON line; null values skipped (no text), other non-strings refused."""
    for offset, text in chunks:
        batch = []
        lines = text.split("\n")
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                value = json.loads(line)[column]
            except (ValueError, KeyError, TypeError):
                value = _jsonl_problem(path, offset, text, number, line, column)
            if isinstance(value, str):
                if value.strip():
                    batch.append(value.strip())
            elif value is not None:
                value = _jsonl_problem(path, offset, text, number, line, column)
        yield batch


def _jsonl_problem(path: str, offset: int, text: str, number: int, line: str, column: str):
    """Raise the DataError for a bad line, naming it by number (counted from the file's start: slow, once)."""
    where = f"{path} line {_line_number(path, offset) + number}"
    fix = "; fix the line or remove the file from data.paths"
    try:
        record = parse_json_object(line, where)
    except DataError as e:
        raise DataError(f"{e}{fix}") from None
    if column not in record:
        raise DataError(f"{where}: no column '{column}' (set data.text_column); columns: {', '.join(record) or 'none'}")
    raise DataError(f"{where}: column '{column}' holds {type(record[column]).__name__}, expected a string{fix}")


def _line_number(path: str, offset: int) -> int:
    """The number of the line that starts at byte `offset` (1-based)."""
    newlines = 0
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(READ_BYTES, offset))
            if not block:
                break
            newlines += block.count(b"\n")
            offset -= len(block)
    return newlines + 1


def _row_group_runs(path: Path, column: str, piece_bytes: int) -> list[tuple[int, int, int]]:
    """[(first row group, stop, bytes)]: runs of row groups of about piece_bytes (uncompressed) each.
    DataError for a file that is no readable Parquet or lacks a text column."""
    import pyarrow.parquet as pq  # pyarrow comes with datasets

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None
    schema = parquet.schema_arrow
    if column not in schema.names:
        raise DataError(f"{path}: no column '{column}' (set data.text_column); columns: {', '.join(schema.names)}")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column '{column}' holds {kind}, not text")
    runs, start, size = [], 0, 0
    metadata = parquet.metadata
    for group in range(metadata.num_row_groups):
        size += metadata.row_group(group).total_byte_size
        if size >= piece_bytes:
            runs.append((start, group + 1, size))
            start, size = group + 1, 0
    if start < metadata.num_row_groups or not runs:
        runs.append((start, metadata.num_row_groups, size))
    return runs


def _parquet_batches(path: Path, column: str, start: int, stop: int) -> Iterator[list[str]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(columns=[column], batch_size=10_000, row_groups=range(start, stop)):
        yield list(_nonblank(v for v in batch.column(0).to_pylist() if v is not None))


# --- documents ------------------------------------------------------------------------------------


def _embedded_works() -> list[str]:
    """The texts of the embedded works (37 plays, 5 poems), in file order."""
    resource = importlib.resources.files("bertmath").joinpath(EMBEDDED_CORPUS)
    try:
        with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]
    except (OSError, EOFError, ValueError, KeyError) as e:
        raise DataError(f"bertmath/{EMBEDDED_CORPUS}: embedded corpus missing or damaged ({e}); "
                        "reinstall bertmath") from None


def embedded_sentences(min_words: int = 6, max_words: int = 60) -> list[str]:
    """The sentences of the embedded works (split after . ! ?, whitespace collapsed) of min_words to max_words
    words, in corpus order: real text of natural length, for benchmarks and tests to sample from."""
    text = " ".join(_embedded_works())
    pieces = (" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text))
    return [s for s in pieces if min_words <= len(s.split()) <= max_words]


def _split_text(text: str, documents: str) -> Iterator[str]:
    """documents="file": the whole text; "paragraph": each block between blank lines."""
    blocks = [text] if documents == "file" else _PARAGRAPHS.split(text.replace("\r\n", "\n"))
    return _nonblank(blocks)


def _limited(batches: Iterable[TextBatch], max_documents: int | None, max_bytes: int | None) -> Iterator[TextBatch]:
    """`batches` up to the first `max_documents` documents (with all their parts) and, with `max_bytes`, up to
    the text that makes about that many bytes (each text counted with 2 more bytes, as of a separator)."""
    if max_documents is None and max_bytes is None:
        yield from batches
        return
    remaining, budget = max_documents, max_bytes
    for batch in batches:
        taken, done = 0, False
        for taken, part in enumerate(batch.parts):
            if (part == 0 and remaining == 0) or (budget is not None and budget <= 0):
                done = True
                break
            remaining = remaining - (part == 0) if remaining is not None else None
            budget = budget - len(batch.texts[taken]) - 2 if budget is not None else None
        else:
            taken = len(batch.parts)
        if taken:
            yield TextBatch(batch.texts[:taken], batch.parts[:taken], batch.digests[:taken])
        if done:
            return


def _nonblank(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        text = text.strip()
        if text:
            yield text


def _in_batches(texts: Sequence[str], size: int = 10_000) -> Iterator[list[str]]:
    for start in range(0, len(texts), size):
        yield list(texts[start:start + size])


def load_documents(data: DataConfig) -> datasets.Dataset:
    """The corpus's documents as an in-memory Dataset with one column "text", in source order: for a small
    corpus, or a look at one. Pretraining never calls it: it reads the corpus a piece at a time."""
    corpus = Corpus.plan(data)
    texts = list(corpus.documents())
    if not texts:
        raise corpus.no_text()
    log.info("corpus: %d documents from %s", len(texts), data.source)
    return in_memory_dataset(pa.table({"text": pa.array(texts, type=pa.string())}),
                             _fingerprint("text dataset", *(digest(t) for t in texts)))


def in_memory_dataset(table: pa.Table, fingerprint: str, features: datasets.Features | None = None) -> datasets.Dataset:
    """A Dataset around `table`, with our own fingerprint: without one, datasets pickles the whole table with
    dill to make one (slow for a large table, and on some pyarrow installs a PicklingError: MonthDayNano, seen
    with pyarrow 26 beside another pyarrow's pandas)."""
    info = datasets.DatasetInfo(features=features) if features is not None else None
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=info, fingerprint=fingerprint)
