"""The on-disk kernel cache: a fresh process reuses object code, and a bad entry is never trusted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsc.runtime import kernel_cache

# Compiles three kernels in a fresh interpreter, runs one, and prints the cache counters and a result.
SCRIPT = """
import json
import numpy as np
from wsc.runtime.lowering import cache_stats, compile_kernel

kernels = [
    compile_kernel("matmul", (1, 5, 7), [(1, 5, 11), (1, 7, 11), (7,)], {"bias": True, "epilogue": "gelu"}),
    compile_kernel("layernorm", (3, 13), [(3, 13), (13,), (13,)], {"eps": 1e-5}),
    compile_kernel("softmax", (4, 4), [(4, 4)], {"causal": True, "group_rows": 4}),
]
rng = np.random.default_rng(0)
a, b, bias = (rng.standard_normal(s).astype(np.float32) for s in [(1, 5, 11), (1, 7, 11), (7,)])
out = np.empty((1, 5, 7), np.float32)
kernels[0](out, [a, b, bias], np.array([[0, 5, 0, 7]], np.int64))
print(json.dumps({"stats": cache_stats(), "from_cache": [k.from_cache for k in kernels], "out": out.tolist()}))
"""


def run_fresh(cache: Path | str, **extra_env: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WSC_CACHE_DIR", "WSC_NO_CACHE")}
    env.update(WSC_CACHE_DIR=str(cache), **extra_env)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.o"))


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> tuple[Path, dict]:
    """A cache the script filled from empty in a fresh process, and what that process printed. Each test below
    runs on a copy of it, so the first compile is paid once for all of them."""
    cache = tmp_path_factory.mktemp("filled")
    return cache, run_fresh(cache)


def copy_of(filled: tuple[Path, dict], tmp_path: Path) -> tuple[Path, dict]:
    cache, first = filled
    return shutil.copytree(cache, tmp_path / "cache"), first


def test_second_compile_in_a_fresh_process_hits(filled, tmp_path: Path):
    cache, first = filled
    assert first["stats"]["misses"] == 3 and first["stats"]["hits"] == 0 and first["stats"]["stores"] == 3
    assert first["from_cache"] == [False, False, False]
    assert len(entries(cache)) == 3
    assert not list(cache.rglob("*.tmp"))
    cache, _ = copy_of(filled, tmp_path)
    second = run_fresh(cache)
    assert second["stats"]["hits"] == 3 and second["stats"]["misses"] == 0 and second["stats"]["stores"] == 0
    assert second["from_cache"] == [True, True, True]
    np.testing.assert_array_equal(np.array(second["out"]), np.array(first["out"]))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_corrupted_entry_is_ignored_and_rewritten(filled, tmp_path: Path, damage: str):
    cache, first = copy_of(filled, tmp_path)
    victim = entries(cache)[0]
    good = victim.read_bytes()
    if damage == "flip":
        blob = bytearray(good)
        blob[len(blob) // 2] ^= 0xFF
        victim.write_bytes(bytes(blob))
    elif damage == "truncate":
        victim.write_bytes(good[: len(good) // 3])
    elif damage == "empty":
        victim.write_bytes(b"")
    else:
        victim.write_bytes(b"\x7fELF" + bytes(range(256)) * 8)
    second = run_fresh(cache)
    assert second["stats"]["corrupt"] == 1 and second["stats"]["hits"] == 2 and second["stats"]["stores"] == 1
    np.testing.assert_array_equal(np.array(second["out"]), np.array(first["out"]))
    assert victim.read_bytes() == good  # rewritten with the same object code
    assert run_fresh(cache)["stats"]["hits"] == 3


def test_disabled_cache_writes_nothing(tmp_path: Path):
    for disabled in (run_fresh("", HOME=str(tmp_path)), run_fresh(tmp_path, WSC_NO_CACHE="1")):
        assert disabled["stats"]["hits"] == disabled["stats"]["misses"] == disabled["stats"]["stores"] == 0
    assert not entries(tmp_path)


def test_unwritable_cache_dir_does_not_break_compiles(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_fresh(blocker / "kernels")
    assert result["stats"]["errors"] >= 1 and result["stats"]["stores"] == 0


def test_key_covers_ir_cpu_and_features():
    base = kernel_cache.cache_key("ir", "znver3", "+avx2")
    assert base == kernel_cache.cache_key("ir", "znver3", "+avx2")
    others = {kernel_cache.cache_key("ir2", "znver3", "+avx2"), kernel_cache.cache_key("ir", "skylake", "+avx2"),
              kernel_cache.cache_key("ir", "znver3", "+avx512f"), kernel_cache.cache_key("irz", "nver3", "+avx2")}
    assert base not in others and len(others) == 4


def test_cache_dir_from_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("WSC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("WSC_NO_CACHE", raising=False)
    assert kernel_cache.cache_dir() == tmp_path
    monkeypatch.setenv("WSC_CACHE_DIR", "")
    assert kernel_cache.cache_dir() is None
    monkeypatch.delenv("WSC_CACHE_DIR")
    assert kernel_cache.cache_dir() == Path.home() / ".cache" / "wsc" / "kernels"
    monkeypatch.setenv("WSC_NO_CACHE", "1")
    assert kernel_cache.cache_dir() is None
