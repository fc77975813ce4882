"""Atomic writes, hashing and hash-checked downloads: finished work is never half-written."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch

from . import FmpruneError


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hash of a JSON-able object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def check_sha256(path: str | Path, expected: str) -> str:
    """Verify ``path`` against a full SHA-256 or a prefix of one (torch.hub's file names carry 8)."""
    actual = sha256_file(path)
    if not actual.startswith(expected.lower()):
        raise FmpruneError(f"{path}: SHA-256 {actual[:16]}… does not match the expected {expected}")
    return actual


def download(url: str, dest: str | Path, sha256: str) -> Path:
    """Fetch ``url`` to ``dest`` only if it is missing; the file lands only if its hash matches."""
    dest = Path(dest)
    if dest.exists():
        check_sha256(dest, sha256)
        return dest
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
        except OSError as exc:
            raise FmpruneError(f"download of {url} failed: {exc}") from None
        check_sha256(tmp, sha256)
    return dest
