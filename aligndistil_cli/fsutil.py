"""Atomic file and folder writes, hashing and fingerprints.

Everything aligndistil writes goes through these helpers: the bytes land under a temporary name
in the destination folder and are renamed into place, so a crash leaves either the previous
complete file or nothing under the final name, never a partial one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from aligndistil_cli.errors import AlignDistilError

TMP_PREFIX = ".tmp-"


def _disk_full(path: Path, exc: OSError) -> AlignDistilError:
    return AlignDistilError(
        f"no space left on the device while writing {path}",
        "free disk space or choose another --output; complete files already written are kept",
    )


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it to ``final`` if the block succeeds.

    Works for files and folders. On any exception the temporary is removed and ``final`` is left
    as it was (an existing folder is replaced only after the new one is complete).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        if final.is_dir() and tmp.is_dir():
            old = final.parent / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        _remove(tmp)
        if exc.errno == errno.ENOSPC:
            raise _disk_full(final, exc) from exc
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, obj: dict) -> None:
    """Append one JSON line and flush it (metrics logs are append-only, one object per line)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, default=float) + "\n")
        fh.flush()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def clean_stale_temporaries(folder: str | os.PathLike) -> None:
    """Remove temporaries a crashed run left in ``folder`` (never touches complete files)."""
    folder = Path(folder)
    if folder.is_dir():
        for child in folder.iterdir():
            if child.name.startswith(TMP_PREFIX):
                _remove(child)
