"""Small helpers every stage shares: atomic writes, file hashing, one-line error text.

Nothing here imports torch, numpy or faiss, so any module may use it.

Atomic writes: a file is written under a temporary name beside its target, flushed to disk,
then moved into place with ``os.replace``; a crash leaves either the old file or the new one,
never half of one. Temporary names are ``.<name>.<random>.tmp``, so a folder's leftovers can
be found (``STALE_GLOB``) and removed.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

STALE_GLOB = ".*.tmp"  # the names temporary_path gives
_BLOCK = 1 << 20


@contextlib.contextmanager
def temporary_path(path: Path | str) -> Iterator[Path]:
    """A temporary path beside ``path``; moved onto ``path`` when the block ends without error.

    The caller writes the file (any writer: ``open``, ``faiss.write_index``). On an
    exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path | str, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, creating its folder.

    The file gets ordinary permissions (``0o666`` less the umask), like any ``open()``.

    Raises:
        GanauditError: the disk (or quota) is full: a state of the machine the user can fix,
            not a crash; nothing is left behind.
        OSError: any other failure.
    """
    write_atomic_parts(path, [data.encode("utf-8") if isinstance(data, str) else data])


def write_atomic_parts(path: Path | str, parts: Iterable[bytes]) -> str:
    """``write_atomic`` for a file written piece by piece (``parts`` is consumed lazily, so a
    large file never has to be in memory at once); returns the file's SHA-256 hex digest.

    Raises:
        GanauditError: the disk (or quota) is full; nothing is left behind.
        OSError: any other failure.
    """
    path = Path(path)
    h = hashlib.sha256()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary_path(path) as tmp:
            with open(tmp, "xb") as f:
                for part in parts:
                    f.write(part)
                    h.update(part)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            from ganaudit.errors import GanauditError

            raise GanauditError(f"no space left on device while writing {path}: free some space "
                                "(or, for the embedding cache, pass --no-cache or another --cache-dir)") from None
        raise
    return h.hexdigest()


def hash_file_into(h, path: Path | str) -> None:
    """Feed a file's bytes to the hash object ``h``, one block at a time."""
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)


def file_sha256(path: Path | str) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    hash_file_into(h, path)
    return h.hexdigest()


def load_torchscript(path: Path | str, what: str):
    """``torch.jit.load`` on the CPU; a one-line GanauditError names ``what`` on failure.

    Args:
        path: the TorchScript archive.
        what: the flag or role of the file, for the message (``"--generator"``, ``"sscd"``).
    """
    import warnings

    import torch

    from ganaudit.errors import GanauditError

    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what people ship
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # a state_dict, a pickle, a truncated file
        raise GanauditError(f"{what} {path}: not a TorchScript file: {error_line(e)}") from None


def error_line(error: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (its type's name when the message is empty).

    ``with_type`` puts the type in front: ``"ValueError: bad thing"``.
    """
    lines = str(error).strip().splitlines()
    name = type(error).__name__
    if not lines:
        return name
    return f"{name}: {lines[0]}" if with_type else lines[0]
