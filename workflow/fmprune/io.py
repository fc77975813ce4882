"""Atomic writes, hashing, hash-checked downloads and guarded reads of untrusted files.

Finished work is never half-written; a damaged or hostile input file is a one-line error.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch

from . import FmpruneError

log = logging.getLogger("fmprune")

# Temporary files and staging folders carry their writer's host and pid, so that the next run
# can tell an interrupted writer's leftovers from a live concurrent writer's work in progress.
_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "localhost"


def writer_tag() -> str:
    """``<host>-<pid>`` of this process, as written into temporary names."""
    return f"{_HOST}-{os.getpid()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(folder: Path, prefix: str, suffix: str = "") -> None:
    """Remove ``<prefix><host>-<pid>[.<random>]<suffix>`` entries of ``folder`` left by dead writers.

    Only this host's entries are judged (a pid means nothing on another node of a shared file
    system); those of live processes, e.g. a concurrent job writing the same target, are kept.
    """
    pattern = re.compile(re.escape(prefix) + re.escape(_HOST) + r"-(\d+)(?:\.[A-Za-z0-9_]+)?" + re.escape(suffix))
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or _alive(int(match.group(1))):
            continue
        log.info("removing %s, left by an interrupted run", entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    Temporary files of earlier writers of ``path`` that were killed are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.name}.", ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent)
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


def cache_dir() -> Path:
    """fmprune's cache folder (unpacked datasets, decoded images, downloads): ``$FMPRUNE_CACHE``."""
    return Path(os.environ.get("FMPRUNE_CACHE") or "~/.cache/fmprune").expanduser()


def user_path(text: str | Path) -> Path:
    """A path from a config: ``~`` and environment variables expanded, where ``$FMPRUNE_CACHE``
    means :func:`cache_dir` also when the variable is unset."""
    text = str(text)
    for spelling in ("${FMPRUNE_CACHE}", "$FMPRUNE_CACHE"):
        text = text.replace(spelling, str(cache_dir()))
    return Path(os.path.expandvars(text)).expanduser()


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


def describe(exc: BaseException) -> str:
    """One short clause for an exception raised while parsing a file (libraries write paragraphs)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    text = text.split(". ")[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_torch(path: str | Path, what: str = "checkpoint", map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)``; a truncated, corrupt or hostile file is one line.

    A damaged file fails inside torch with any of RuntimeError (zip reader), EOFError, KeyError,
    UnpicklingError…, so every exception is caught here: the load only parses the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FmpruneError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        lines = [line.strip() for line in str(exc).splitlines()]
        hostile = next((line for line in lines if "GLOBAL " in line), None)  # a callable or class to import
        if hostile:
            name = hostile.split("GLOBAL ", 1)[1].split()[0]
            raise FmpruneError(f"{what} {path} refused: torch.load(weights_only=True) loads only tensors and plain "
                               f"containers, and the file asks to import {name}") from None
        detail = next((line for line in lines if line.startswith("Unsupported")), None) or describe(exc)
        raise FmpruneError(f"{what} {path} is truncated or not a PyTorch file ({detail})") from None


def read_json(path: str | Path, what: str = "file"):
    """Parse a JSON file written by an earlier step; missing or damaged is one line naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FmpruneError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FmpruneError(f"{what} {path} is truncated or not JSON ({describe(exc)})") from None
