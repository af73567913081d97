"""The floor every writer and reader of files stands on: atomic writes, and reading JSON (files and JSON-lines
lines) and safetensors with one-line errors, and UTF-8 text. Imports nothing of bertmath but its errors.

A file is written under a temporary name beside its final one, fsync'ed and renamed into place, so that a
reader (or a run resumed after a kill) sees the old file or the new one, never a part of it.
Loading never unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, DataError, OutputError


def decode_utf8(raw: bytes, where: str, offset: int = 0, error: type[DataError] = DataError) -> str:
    """UTF-8 (a leading BOM dropped: `raw` read from file offset `offset`, and a BOM is a mark only at 0), or
    `error` naming the first bad byte and its file offset. Every reader of users' text files decodes here, so
    that a BOM an editor wrote never becomes data (the first word, the first column's name, a JSON error)."""
    try:
        return raw.decode("utf-8-sig" if offset == 0 else "utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {offset + e.start})") from None


def read_text(path: Path, error: type[DataError] = DataError) -> str:
    """A UTF-8 text file (decode_utf8), or `error` naming the file and what is wrong with it."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    return decode_utf8(raw, str(path), error=error)


def parse_json_object(line: str, where: str, error: type[DataError] = DataError) -> dict:
    """One JSON-lines line as a dict; else `error` naming `where` (the file and line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_name(path: Path, host: bool = False) -> Path:
    """A temporary name beside `path`, unique to this process; with `host`, also to this machine (a directory
    several machines write into)."""
    owner = f"{socket.gethostname()}-{os.getpid()}" if host else str(os.getpid())
    return path.with_name(f".{path.name}.tmp-{owner}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees either the old file or the new one, never a part."""
    path = Path(path)
    with _replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    path = Path(path)
    with _replacing(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


def atomic_save_npy(array: np.ndarray, path: Path) -> None:
    """`array` as a .npy file at `path` (numpy's format, readable by np.load with mmap_mode), written atomically."""
    path = Path(path)
    with _replacing(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def _replacing(path: Path, host: bool = False):
    """Yield a temporary name beside `path` to write; then rename it onto `path`. If the write or the rename
    fails (e.g. `path` is a directory, the disk is full), the temporary file is removed and `path` is as it was."""
    tmp = tmp_name(path, host)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def written_atomically(path: Path):
    """`with written_atomically(path) as tmp:` write a file at `tmp`; when the block ends, it is fsync'ed and
    renamed onto `path` (which appears whole or not at all); on an error, or a kill, `path` is as it was.
    The temporary name holds the host and pid (`tmp_name(path, host=True)`): several machines may write one
    shared directory."""
    with _replacing(Path(path), host=True) as tmp:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


def stale_temporaries(directory: Path) -> list[Path]:
    """The files `written_atomically` left in `directory` from processes of this host that no longer run
    (killed while writing): nobody will rename them, so they may go."""
    prefix = f".tmp-{socket.gethostname()}-"
    stale = []
    for path in Path(directory).glob(".*.tmp-*"):
        owner = path.name.rpartition(prefix)[2] if prefix in path.name else ""
        if owner.isdigit() and not _running(int(owner)):
            stale.append(path)
    return stale


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_writable(directory: Path, key: str = "train.out_dir") -> None:
    """Fail before any slow work if `directory` (the value of config key `key`: train.out_dir, data.cache_dir)
    cannot hold what a run writes there (created if missing): it or a parent of it is a file (check_output),
    or it cannot be created or written (permissions, a read-only filesystem)."""
    directory = Path(directory)
    try:
        check_output(directory, directory=True)
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OutputError as e:
        raise OutputError(f"{key}: {e}") from None
    except OSError as e:
        raise OutputError(f"{key}: {directory} is not writable ({e.strerror or e})") from None


def check_output(path: str | Path, directory: bool = False) -> Path:
    """`path` as a file to write (or, with `directory`, a directory to create or write into), checked before
    any slow work: an OutputError if it exists as the other kind, or if a parent of it is a file."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        raise OutputError(f"{path}: is a directory; give a file name" if path.is_dir() else
                          f"{path}: is a file; give a directory (a new one is created)")
    existing = next(p for p in path.parents if p.exists())  # "/" or "." at the latest
    if not existing.is_dir():
        raise OutputError(f"{path}: cannot be created: {existing} is a file")
    return path


def read_safetensors(path: Path, header_only: bool = False) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupted file is a CheckpointError naming it.
    `header_only`: read just the header, which a truncated or garbage file fails too (it names more bytes
    than the file has), and return {} (the tensor bytes themselves carry no checksum)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if header_only:
            with safe_open(str(path), "pt"):
                return {}
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable or corrupted safetensors file ({str(e).splitlines()[0][:160]})") from None


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e.__class__.__name__})") from None
