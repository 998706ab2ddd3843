"""The weight store: weights held off the wafer in safetensors files, as MemoryX holds them.

A store is one safetensors file, or a sharded Hugging Face checkpoint: a directory of shards, or the
`model.safetensors.index.json` whose `weight_map` names the shard of every tensor. Every shard is
memory-mapped, never read whole. `stream_in` hands over one layer's weights as float32 (the transfer onto the
wafer; the runtime computes in fp32 whatever the stored precision) and `release` drops them after the layer ran. A
float32 tensor is handed over as a read-only view of the mapped file (no copy: for a 111M model the copies alone
took a third of eager PyTorch's forward), its file pages given back to the OS when its layer is released; any
other dtype is converted into a new float32 array, a chunk at a time. `prefetch` starts the next layer's copy on a
background thread, so it overlaps the current layer's compute as MemoryX streams the next layer while the wafer
computes; the copy runs in numpy, which releases the GIL, as do the ctypes kernel calls.

The store counts what is resident: a layer counts from the moment its copy starts (a prefetch included)
until it is released, so `peak_resident_layers` and `peak_resident_bytes` are honest upper bounds of the
weight memory the run held, and a prefetch that would make more than `max_resident_layers` resident is not
started (the layer is then copied when it is asked for).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from wsc.core.dtypes import BY_SHORT, DTYPES
from wsc.core.errors import WscError

# The safetensors codes a store may hold, as the numpy dtype that views their bytes: the IR's dtypes (the
# table is wsc/dtypes.py; bf16 is viewed as its raw uint16 bits), plus a few the store only converts from.
SAFETENSORS_DTYPES: dict[str, np.dtype] = {d.safetensors: d.numpy for d in DTYPES} | {
    "F64": np.dtype(np.float64), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
}
_NUMPY_TO_SAFETENSORS = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items() if k != "BF16"}
INDEX_NAME = "model.safetensors.index.json"
STORE_DTYPES = ("fp32", "fp16")  # short names in wsc/dtypes.py of floats numpy can write (not bf16)


# ---------------------------------------------------------------------------------------------------------------
# Writing


def _stored_dtype(source: np.dtype, dtype: str) -> np.dtype:
    if np.issubdtype(source, np.floating):
        return BY_SHORT[dtype].numpy
    if source not in _NUMPY_TO_SAFETENSORS:
        raise WscError(f"cannot store a tensor of dtype {source} in safetensors")
    return source


def _header_of(value: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a tensor to be written. A value that states both as numpy's (an array, or a tensor
    drawn only when it is written: wsc.runtime.random_weights) is not materialised for the header."""
    if isinstance(getattr(value, "dtype", None), np.dtype) and hasattr(value, "shape"):
        return tuple(value.shape), value.dtype
    src = np.asarray(value)  # no copy for CPU torch tensors
    return src.shape, src.dtype


def _write_safetensors(path: Path, tensors: Mapping[str, Any], dtype: str) -> int:
    """Write one safetensors file tensor by tensor, atomically; returns the bytes of tensor data written.

    Written here rather than with safetensors' save_file, which builds the whole file in memory first: a
    store of a 1.3B model would then need its size again in RAM, which is what streaming is meant to avoid.
    Only one tensor at a time is converted to the stored precision.
    """
    header: dict[str, Any] = {}
    offset = 0
    for key, value in tensors.items():
        shape, source = _header_of(value)
        dt = _stored_dtype(source, dtype)
        nbytes = math.prod(shape) * dt.itemsize
        header[key] = {"dtype": _NUMPY_TO_SAFETENSORS[dt], "shape": list(shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", "wsc_dtype": dtype}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors' own writer does
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for key, value in tensors.items():
                src = np.asarray(value)
                # reshaped back: ascontiguousarray makes a 0-d tensor (a BatchNorm's num_batches_tracked) 1-d
                arr = np.ascontiguousarray(src, dtype=_stored_dtype(src.dtype, dtype)).reshape(src.shape)
                if list(arr.shape) != header[key]["shape"]:
                    raise WscError(f"tensor {key} changed shape while the store was written")
                f.write(arr.reshape(-1).view(np.uint8).data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return offset


def write_store(
    path: Path | str, tensors: Mapping[str, Any], dtype: str = "fp32", shard_bytes: int | None = None
) -> Path:
    """Write `tensors` as a store, atomically (a reader never sees a half-written file); returns the path to open.

    dtype "fp16" stores floating tensors in half precision (half the bytes to hold and stream); the runtime
    still computes in fp32, so the run sees the weights rounded to fp16. Integer tensors are kept as they are.
    With `shard_bytes`, `path` is a directory that receives a sharded Hugging Face checkpoint: shards
    `model-0000i-of-0000n.safetensors` of about that many bytes each, and the index naming every tensor's shard.
    """
    if dtype not in STORE_DTYPES:
        raise WscError(f"weights dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    path = Path(path)
    if shard_bytes is None:
        _write_safetensors(path, tensors, dtype)
        return path
    itemsize = BY_SHORT[dtype].bytes
    groups: list[list[str]] = [[]]
    size = 0
    for key in tensors:
        nbytes = math.prod(np.shape(tensors[key])) * itemsize
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    weight_map: dict[str, str] = {}
    total = 0
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        total += _write_safetensors(path / name, {k: tensors[k] for k in keys}, dtype)
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    fd, tmp = tempfile.mkstemp(dir=path, prefix=INDEX_NAME, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(index, f, indent=2)
    os.replace(tmp, path / INDEX_NAME)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Reading


COPY_CHUNK_BYTES = 8 << 20  # pages of the store resident at once while a tensor is copied


class _Shard:
    """One memory-mapped safetensors file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                start = f.read(8)
                if len(start) < 8:
                    raise ValueError("it is too short for a safetensors header")
                (header_len,) = struct.unpack("<Q", start)
                if header_len > 100_000_000:
                    raise ValueError(f"its header would be {header_len} bytes, so it is not a safetensors file")
                header = json.loads(f.read(header_len))
            if not isinstance(header, dict):
                raise ValueError("its header is not a JSON object")
        except FileNotFoundError:
            raise WscError(f"weight file {path} does not exist") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WscError(f"cannot read weight store {path}: its header is not JSON; give a safetensors file",
                           details=traceback.format_exc()) from None
        except (OSError, ValueError, struct.error) as error:
            raise WscError(f"cannot read weight store {path}: {error}; give a safetensors file") from None
        header.pop("__metadata__", None)
        self.entries: dict[str, dict] = header
        self.data_start = 8 + header_len
        size = path.stat().st_size
        for key, entry in header.items():
            if not _well_formed(entry):
                raise WscError(f"weight {key} in {path} has a malformed header entry (dtype, shape and data_offsets "
                               "are needed); give a safetensors file")
            if entry.get("dtype") not in SAFETENSORS_DTYPES:
                raise WscError(f"weight {key} in {path} has unsupported dtype {entry.get('dtype')}")
            if self.data_start + entry["data_offsets"][1] > size:
                raise WscError(f"weight store {path} is truncated: {key} ends past the end of the file; give the whole "
                               "file (copy it again)")
        # An empty data section cannot be mapped; nothing would be read from it anyway.
        self.map = np.memmap(path, dtype=np.uint8, mode="r") if size > self.data_start else np.zeros(0, np.uint8)

    def copy(self, key: str) -> np.ndarray:
        """`key` as a new float32 array, copied a chunk at a time, each chunk's file pages given back to the
        OS as soon as it is copied. A streamed weight is read once per step: left mapped, every page read
        would stay in the process's resident memory (growing to the whole store over a run), and even one
        large tensor would briefly count twice (its pages and its copy)."""
        entry = self.entries[key]
        flat = self.view(key).reshape(-1)
        out = np.empty(flat.shape, dtype=np.float32)
        step = max(1, COPY_CHUNK_BYTES // max(flat.itemsize, 1))
        base = self.data_start + entry["data_offsets"][0]
        for first in range(0, flat.size, step):
            last = min(flat.size, first + step)
            out[first:last] = _to_f32(key, entry, flat[first:last])
            self._drop(base + first * flat.itemsize, base + last * flat.itemsize)
        return out.reshape(entry["shape"])

    def zero_copy(self, key: str) -> bool:
        """Whether `key` can be handed out as a view of the mapped file: float32 in the host's byte order, aligned
        as a float32 array must be."""
        entry = self.entries[key]
        aligned = (self.data_start + entry["data_offsets"][0]) % np.dtype(np.float32).alignment == 0
        return entry["dtype"] == "F32" and aligned and sys.byteorder == "little" and self.map.size > 0

    def drop(self, key: str) -> None:
        """Give the file pages of `key` back to the OS: a view handed out stays valid (its pages are read from
        the file again if it is touched), but no longer counts in the process's resident memory."""
        begin, end = self.entries[key]["data_offsets"]
        self._drop(self.data_start + begin, self.data_start + end)

    def _drop(self, start: int, stop: int) -> None:
        mapping = getattr(self.map, "_mmap", None)
        if mapping is None or not hasattr(mapping, "madvise"):
            return
        start = start // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > start:
            mapping.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def view(self, key: str) -> np.ndarray:
        entry = self.entries[key]
        begin, end = entry["data_offsets"]
        raw = self.map[self.data_start + begin : self.data_start + end]
        return raw.view(SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def _well_formed(entry: Any) -> bool:
    """Whether a safetensors header entry has what reading its tensor needs: a dtype, a shape of sizes and data
    offsets [begin, end] that hold as many bytes as the shape has elements (when the dtype is known)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    if not (isinstance(shape, list) and all(whole(n) for n in shape)):
        return False
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(whole(n) for n in offsets)):
        return False
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    return offsets[0] <= offsets[1] and (dtype is None or offsets[1] - offsets[0] == math.prod(shape) * dtype.itemsize)


def _to_f32(key: str, entry: dict, view: np.ndarray) -> np.ndarray:
    if entry["dtype"] == "BF16":  # bf16 is the top half of an fp32
        return (view.astype(np.uint32) << 16).view(np.float32)
    return np.array(view, dtype=np.float32)


def _shard_paths(path: Path) -> tuple[dict[str, Path] | None, list[Path]]:
    """(weight_map or None, shard files) of a store path: a file, an index, or a directory holding either."""
    index = None
    if path.is_dir():
        if (path / INDEX_NAME).exists():
            index = path / INDEX_NAME
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise WscError(f"weight directory {path} has no {INDEX_NAME} and no .safetensors files")
            return None, files
    elif path.name.endswith(".json"):
        index = path
    if index is None:
        return None, [path]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except FileNotFoundError:
        raise WscError(f"weight index {index} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WscError(f"cannot read weight index {index}: {error}; give a Hugging Face index") from None
    mapping = {str(k): index.parent / str(v) for k, v in weight_map.items()}
    shards = sorted(set(mapping.values()))
    missing = [p for p in shards if not p.exists()]
    if missing:
        raise WscError(f"shard {missing[0]} named in {index} does not exist")
    return mapping, shards


class WeightStore:
    """A store opened for streaming; `zero_copy` hands float32 weights to the run as read-only views of the
    mapped file instead of copies (other dtypes are converted, so they are always copied)."""

    def __init__(self, path: Path | str, max_resident_layers: int = 2, zero_copy: bool = True):
        self.path = Path(path)
        self.max_resident_layers = max_resident_layers
        self.zero_copy = zero_copy
        weight_map, files = _shard_paths(self.path)
        self.shards = [_Shard(p) for p in files]
        self._where: dict[str, _Shard] = {}
        for shard in self.shards:
            for key in shard.entries:
                if weight_map is not None and weight_map.get(key) != shard.path:
                    continue  # the index is authoritative; a shard may carry stray tensors
                if key in self._where:
                    raise WscError(f"weight {key} is in both {self._where[key].path} and {shard.path}")
                self._where[key] = shard
        for key, shard_path in (weight_map or {}).items():
            if key not in self._where:
                raise WscError(f"weight {key} is not in {shard_path}, the shard the index names for it")
        self._lock = threading.Lock()
        self._pending: dict[str, Future[dict[str, np.ndarray]]] = {}
        self._worker: ThreadPoolExecutor | None = None
        self.resident: dict[str, int] = {}  # layer name -> fp32 bytes streamed in for it (or being copied)
        self.peak_resident_layers = 0
        self.peak_resident_bytes = 0
        self.streamed_bytes = 0  # bytes read out of the store, in the stored precision
        self.viewed_bytes = 0  # of those, the bytes handed over as views of the file rather than copied
        self.prefetched_layers = 0
        self._viewed: dict[str, list[str]] = {}  # layer name -> keys handed out as views, whose pages it holds

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entry(key)["shape"])

    def dtype(self, key: str) -> str:
        """The stored safetensors dtype of a weight, e.g. F32 or F16."""
        return str(self._entry(key)["dtype"])

    def _entry(self, key: str) -> dict:
        shard = self._where.get(key)
        if shard is None:
            raise WscError(f"weight {key} is not in the store {self.path}; give weights for this model")
        return shard.entries[key]

    def layer_bytes(self, keys: Sequence[str]) -> int:
        """fp32 bytes a layer of these weights occupies once streamed in."""
        return sum(4 * math.prod(self.shape(k)) for k in keys)

    def _admit(self, layer: str, keys: Sequence[str]) -> None:
        nbytes = self.layer_bytes(keys)  # also raises for a missing key before anything is counted
        with self._lock:
            self.resident[layer] = nbytes
            self.peak_resident_layers = max(self.peak_resident_layers, len(self.resident))
            self.peak_resident_bytes = max(self.peak_resident_bytes, sum(self.resident.values()))

    def _copy(self, keys: Sequence[str], streamed: bool = True, layer: str | None = None) -> dict[str, np.ndarray]:
        """The tensors as float32; for a layer's stream with zero_copy, the float32 ones as views of the file."""
        out = {}
        read = viewed = 0
        views: list[str] = []
        for key in keys:
            shard = self._where[key]
            begin, end = shard.entries[key]["data_offsets"]
            if layer is not None and self.zero_copy and shard.zero_copy(key):
                # Read-only: a kernel that wrote into its input would raise instead of changing the store.
                out[key] = np.asarray(shard.view(key))
                views.append(key)
                viewed += end - begin
            else:
                out[key] = shard.copy(key)
            read += end - begin
        if streamed:
            with self._lock:
                self.streamed_bytes += read
                self.viewed_bytes += viewed
                if layer is not None:
                    self._viewed.setdefault(layer, []).extend(views)
        return out

    def prefetch(self, layer: str, keys: Sequence[str]) -> bool:
        """Start copying a layer's weights in the background; False (nothing started) when that would make
        more than `max_resident_layers` layers resident, or the layer is already resident."""
        with self._lock:
            if layer in self.resident or len(self.resident) >= self.max_resident_layers:
                return False
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsc-prefetch")
        self._admit(layer, keys)
        keys = list(keys)
        self._pending[layer] = self._worker.submit(self._copy, keys, True, layer)
        self.prefetched_layers += 1
        return True

    def stream_in(self, layer: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """A layer's weights as float32: the prefetched copy if one was started (waiting for it), else a copy now."""
        pending = self._pending.pop(layer, None)
        if pending is not None:
            tensors = pending.result()
            if set(tensors) == set(keys):
                return tensors
            del tensors  # prefetched for other keys: fall through and copy what was asked for
        self._admit(layer, keys)
        return self._copy(keys, layer=layer)

    def release(self, layer: str) -> None:
        pending = self._pending.pop(layer, None)
        if pending is not None:
            if not pending.cancel():
                pending.result()  # a copy under way must finish before its memory stops being counted
        with self._lock:
            self.resident.pop(layer, None)
            viewed = self._viewed.pop(layer, [])
        # The pages the views touched would otherwise stay resident, growing to the whole store over a run.
        for key in viewed:
            self._where[key].drop(key)

    def read(self, key: str) -> np.ndarray:
        """One tensor as float32, outside any layer's accounting and not counted as streamed (for converting a
        store, or taking its digest)."""
        return self._copy([key], streamed=False)[key]

    def close(self) -> None:
        """Drop any prefetch in flight and stop the prefetch thread."""
        for layer in list(self._pending):
            self.release(layer)
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None


def values_digest(store: WeightStore, keys: Sequence[str]) -> str:
    """sha256 over the values of `keys` (in that order) as the store streams them: each tensor's shape and its
    float32 bytes, names left out, so the same weights under a checkpoint's other names give the same digest.
    What a run and the compile that recorded its reference compare to know they streamed the same weights."""
    digest = hashlib.sha256()
    for key in keys:
        values = np.ascontiguousarray(store.read(key), dtype=np.float32)
        digest.update(json.dumps(list(values.shape)).encode())
        digest.update(values.astype("<f4", copy=False).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()
