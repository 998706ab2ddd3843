"""On-disk cache of compiled kernels: object code keyed by everything that decides what it contains.

Generating and optimising a kernel costs far more than loading its object code, and a model compiles the
same kernels every time it is compiled, so a second compile of the same model (or of any model sharing
shapes with it) should skip code generation. The key hashes the kernel's LLVM IR (shapes and attributes
are baked into it), the host CPU name and feature string (the code uses whatever vector extensions the
host has, so it is valid only there), the llvmlite version (which pins the LLVM that produced it) and a
format version of this module.

Files are written atomically (a temp file in the same directory, then os.replace), so a concurrent reader
sees either nothing or a whole entry. Each entry carries a SHA-256 of its payload: a truncated or corrupted
file is detected before its bytes ever reach the object loader (which trusts its input and could crash the
process), counted, and rewritten by the recompile that follows.

    $WSC_CACHE_DIR   the cache directory (default ~/.cache/wsc/kernels); set to empty to disable
    WSC_NO_CACHE=1   disables the cache
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

import llvmlite

# Bumped whenever the entry layout or the code generation settings that the key does not cover change.
FORMAT = b"wsc-kernel-cache/1"
_MAGIC = b"WSCK1\n"
_DIGEST = 32

_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0, "stores": 0, "corrupt": 0, "errors": 0}


def cache_dir() -> Path | None:
    """The directory in force now (read from the environment on every call), or None when disabled."""
    if os.environ.get("WSC_NO_CACHE", "") not in ("", "0"):
        return None
    env = os.environ.get("WSC_CACHE_DIR")
    if env is not None:
        return Path(env).expanduser() if env.strip() else None
    return Path.home() / ".cache" / "wsc" / "kernels"


def cache_key(ir_text: str, cpu: str, features: str) -> str:
    h = hashlib.sha256()
    for part in (FORMAT, ir_text.encode(), cpu.encode(), features.encode(), llvmlite.__version__.encode()):
        # Length-prefixed so that moving bytes from one part to the next cannot give the same key.
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _path(directory: Path, key: str) -> Path:
    return directory / key[:2] / f"{key}.o"


def _count(name: str) -> None:
    with _lock:
        _stats[name] += 1


def load(key: str) -> bytes | None:
    """The object code stored under `key`, or None (a miss) when absent, unreadable or corrupted."""
    directory = cache_dir()
    if directory is None:
        return None
    try:
        blob = _path(directory, key).read_bytes()
    except FileNotFoundError:
        _count("misses")
        return None
    except OSError:
        _count("errors")
        _count("misses")
        return None
    head = len(_MAGIC) + _DIGEST
    payload = blob[head:]
    if blob[: len(_MAGIC)] != _MAGIC or blob[len(_MAGIC) : head] != hashlib.sha256(payload).digest():
        _count("corrupt")
        _count("misses")
        return None
    _count("hits")
    return payload


def store(key: str, payload: bytes) -> None:
    """Write an entry atomically; a cache that cannot be written only costs speed, never the compile."""
    directory = cache_dir()
    if directory is None:
        return
    path = _path(directory, key)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
        os.replace(tmp, path)
        tmp = None
        _count("stores")
    except OSError:
        _count("errors")
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def stats() -> dict[str, int]:
    """Counters since process start: hits, misses, stores, corrupt entries, I/O errors."""
    with _lock:
        return dict(_stats)
