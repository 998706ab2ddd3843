"""The weight store: single files and sharded checkpoints, fp16 storage, prefetch, and resident accounting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from wsc.core.errors import WscError
from wsc.runtime.weight_store import INDEX_NAME, WeightStore, write_store

rng = np.random.default_rng(7)


def tensors() -> dict[str, np.ndarray]:
    return {
        "embed.weight": rng.standard_normal((11, 6)).astype(np.float32),
        "blocks.0.w": rng.standard_normal((6, 5)).astype(np.float32),
        "blocks.0.b": rng.standard_normal(5).astype(np.float32),
        "blocks.1.w": (rng.standard_normal((7, 3)) * 1e3).astype(np.float32),
        "head.scale": np.array([65504.0, 1e-8, -3.14159], np.float32),
        "positions": np.arange(4, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }


def test_single_file_is_valid_safetensors(tmp_path: Path):
    src = tensors()
    path = write_store(tmp_path / "w.safetensors", src)
    loaded = load_file(str(path))  # safetensors' own reader agrees with our writer
    assert set(loaded) == set(src)
    for k, v in src.items():
        np.testing.assert_array_equal(loaded[k], v)
        assert loaded[k].dtype == v.dtype
    store = WeightStore(path)
    got = store.stream_in("l", list(src))
    for k, v in src.items():
        np.testing.assert_array_equal(got[k], v.astype(np.float32))
        assert got[k].dtype == np.float32


def test_reads_files_written_by_safetensors(tmp_path: Path):
    src = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(5, dtype=np.float16)}
    save_file(src, str(tmp_path / "x.safetensors"))
    got = WeightStore(tmp_path / "x.safetensors").stream_in("l", ["a", "b"])
    np.testing.assert_array_equal(got["a"], src["a"])
    np.testing.assert_array_equal(got["b"], src["b"].astype(np.float32))


def test_bf16_checkpoint(tmp_path: Path):
    from safetensors.torch import save_file as save_torch

    w = torch.randn(4, 9).to(torch.bfloat16)
    save_torch({"w": w}, str(tmp_path / "bf.safetensors"))
    got = WeightStore(tmp_path / "bf.safetensors").stream_in("l", ["w"])["w"]
    np.testing.assert_array_equal(got, w.float().numpy())


@pytest.mark.parametrize("open_as", ["directory", "index"])
def test_sharded_checkpoint_round_trip(tmp_path: Path, open_as: str):
    src = tensors()
    ckpt = write_store(tmp_path / "ckpt", src, shard_bytes=200)
    index = json.loads((ckpt / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3, shards
    assert set(index["weight_map"]) == set(src)
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in src.values())
    store = WeightStore(ckpt if open_as == "directory" else ckpt / INDEX_NAME)
    assert sorted(store.keys()) == sorted(src)
    assert len(store.shards) == len(shards)
    got = store.stream_in("all", list(src))
    for k, v in src.items():
        np.testing.assert_array_equal(got[k], v.astype(np.float32))
        assert store.shape(k) == v.shape
    assert store.streamed_bytes == sum(v.nbytes for v in src.values())


def test_directory_of_shards_without_index(tmp_path: Path):
    write_store(tmp_path / "d" / "a.safetensors", {"x": np.ones(3, np.float32)})
    write_store(tmp_path / "d" / "b.safetensors", {"y": np.full(2, 2.0, np.float32)})
    store = WeightStore(tmp_path / "d")
    assert sorted(store.keys()) == ["x", "y"]
    write_store(tmp_path / "d" / "c.safetensors", {"y": np.zeros(2, np.float32)})
    with pytest.raises(WscError, match="weight y is in both"):
        WeightStore(tmp_path / "d")


def test_missing_shard_is_an_error_naming_it(tmp_path: Path):
    ckpt = write_store(tmp_path / "ckpt", tensors(), shard_bytes=200)
    victim = sorted(ckpt.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(WscError, match=victim.name):
        WeightStore(ckpt)
    with pytest.raises(WscError, match="no model.safetensors.index.json"):
        WeightStore(tmp_path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(WscError, match="cannot read weight index"):
        WeightStore(tmp_path / "bad.json")
    with pytest.raises(WscError, match="does not exist"):
        WeightStore(tmp_path / "nope.safetensors")


def test_truncated_file_is_an_error(tmp_path: Path):
    path = write_store(tmp_path / "w.safetensors", tensors())
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(WscError, match="truncated"):
        WeightStore(path)


def test_fp16_store_values_are_fp16_rounded(tmp_path: Path):
    src = tensors()
    path = write_store(tmp_path / "h.safetensors", src, dtype="fp16")
    store = WeightStore(path)
    floats = [k for k, v in src.items() if v.dtype == np.float32]
    assert all(store.dtype(k) == "F16" for k in floats) and store.dtype("positions") == "I64"
    got = store.stream_in("l", list(src))
    for k, v in src.items():
        want = v.astype(np.float16).astype(np.float32) if k in floats else v.astype(np.float32)
        np.testing.assert_array_equal(got[k], want)
        assert got[k].dtype == np.float32
    # half the bytes are read for the floats; resident memory is fp32, what the runtime computes in
    assert store.streamed_bytes == sum(v.nbytes // 2 if k in floats else v.nbytes for k, v in src.items())
    assert store.resident["l"] == sum(v.size * 4 for v in src.values())
    big = {"w": rng.standard_normal((64, 256)).astype(np.float32)}
    half = write_store(tmp_path / "big16.safetensors", big, dtype="fp16").stat().st_size
    full = write_store(tmp_path / "big32.safetensors", big).stat().st_size
    assert half < 0.51 * full
    with pytest.raises(WscError, match="weights dtype"):
        write_store(tmp_path / "x.safetensors", src, dtype="int8")


def test_prefetch_accounting_and_bound(tmp_path: Path):
    src = tensors()
    store = WeightStore(write_store(tmp_path / "w.safetensors", src))
    layers = {"l0": ["embed.weight"], "l1": ["blocks.0.w", "blocks.0.b"], "l2": ["blocks.1.w"]}
    size = {name: sum(src[k].size * 4 for k in keys) for name, keys in layers.items()}
    first = store.stream_in("l0", layers["l0"])
    assert store.prefetch("l1", layers["l1"])
    # counted from when its copy starts, not when it is used
    assert store.resident == {"l0": size["l0"], "l1": size["l1"]}
    assert not store.prefetch("l2", layers["l2"]), "a third resident layer must not be started"
    assert not store.prefetch("l1", layers["l1"])
    np.testing.assert_array_equal(first["embed.weight"], src["embed.weight"])
    store.release("l0")
    second = store.stream_in("l1", layers["l1"])
    np.testing.assert_array_equal(second["blocks.0.b"], src["blocks.0.b"])
    assert store.prefetch("l2", layers["l2"])
    store.release("l1")
    store.release("l2")  # released before it was used: the copy is dropped
    assert store.resident == {}
    assert store.peak_resident_layers == 2
    assert store.peak_resident_bytes == max(size["l0"] + size["l1"], size["l1"] + size["l2"])
    assert store.prefetched_layers == 2
    with pytest.raises(WscError, match="weight nope"):
        store.prefetch("l3", ["nope"])
    assert store.resident == {}
    store.close()


def test_float32_weights_stream_as_read_only_views_of_the_file(tmp_path: Path):
    src = tensors()
    path = write_store(tmp_path / "w.safetensors", src)
    store = WeightStore(path)
    got = store.stream_in("l", list(src))
    for key, value in src.items():
        np.testing.assert_array_equal(got[key], value)
    float_bytes = sum(v.nbytes for v in src.values() if v.dtype == np.float32)
    assert store.viewed_bytes == float_bytes and store.streamed_bytes == float_bytes + src["positions"].nbytes
    assert not got["blocks.0.w"].flags.writeable  # a kernel writing its input would raise, not edit the store
    copying = WeightStore(path, zero_copy=False)
    copied = copying.stream_in("l", list(src))
    assert copying.viewed_bytes == 0 and copied["blocks.0.w"].flags.writeable
    for key in src:
        np.testing.assert_array_equal(copied[key], got[key])


def test_a_misaligned_or_converted_tensor_is_copied(tmp_path: Path):
    # An odd number of fp16 values before it leaves the float32 tensor at an offset that is not a multiple of 4.
    src = {"odd": np.ones(3, np.float16), "after": rng.standard_normal(5).astype(np.float32)}
    header = {"odd": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]},
              "after": {"dtype": "F32", "shape": [5], "data_offsets": [6, 26]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "w.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + src["odd"].tobytes() + src["after"].tobytes())
    store = WeightStore(path)
    got = store.stream_in("l", list(src))
    assert store.viewed_bytes == 0
    np.testing.assert_array_equal(got["after"], src["after"])
    np.testing.assert_array_equal(got["odd"], np.ones(3, np.float32))


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident size from /proc")
def test_released_views_give_their_pages_back(tmp_path: Path):
    layer_bytes = 32 << 20
    layers = {f"blocks.{i}.w": np.full(layer_bytes // 4, i + 1, np.float32) for i in range(4)}
    path = write_store(tmp_path / "w.safetensors", layers)
    del layers
    store = WeightStore(path)
    before = _resident_bytes()
    for i in range(4):
        key = f"blocks.{i}.w"
        view = store.stream_in(key, [key])[key]
        assert float(view.sum(dtype=np.float64)) == (i + 1) * view.size  # every page of the layer touched
        del view
        store.release(key)
    # Kept mapped, the four layers' pages would stay resident (128 MB); released, at most about one layer does.
    assert _resident_bytes() - before < layer_bytes
    assert store.viewed_bytes == 4 * layer_bytes
