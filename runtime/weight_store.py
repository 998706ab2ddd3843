"""The weight store: weights held off the wafer in one safetensors file, as MemoryX holds them.

The file is memory-mapped, never read whole. `stream_in` copies one layer's weights out (the transfer onto the
wafer) and `release` drops them after the layer ran; the store counts what is resident, so tests and the
report can show that only a layer's worth of weights is in memory at a time.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from wsc.errors import WscError

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "BOOL": np.bool_}


def write_store(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write atomically: a reader never sees a half-written store."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class WeightStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise WscError(f"cannot read weight store {self.path}: {error}; give a safetensors file") from None
        header.pop("__metadata__", None)
        self._entries = header
        self._data_start = 8 + header_len
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        self.resident: dict[str, int] = {}  # layer name -> bytes streamed in for it
        self.peak_resident_layers = 0
        self.peak_resident_bytes = 0
        self.streamed_bytes = 0

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def _view(self, key: str) -> np.ndarray:
        entry = self._entries.get(key)
        if entry is None:
            raise WscError(f"weight {key} is not in the store {self.path}; give weights for this model")
        begin, end = entry["data_offsets"]
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        raw = self._map[self._data_start + begin : self._data_start + end]
        return raw.view(dtype).reshape(entry["shape"])

    def stream_in(self, layer: str, keys: list[str]) -> dict[str, np.ndarray]:
        """Copy a layer's weights out of the store as float32 (the compute precision of the runtime)."""
        tensors = {key: np.array(self._view(key), dtype=np.float32) for key in keys}
        nbytes = sum(t.nbytes for t in tensors.values())
        self.resident[layer] = nbytes
        self.streamed_bytes += nbytes
        self.peak_resident_layers = max(self.peak_resident_layers, len(self.resident))
        self.peak_resident_bytes = max(self.peak_resident_bytes, sum(self.resident.values()))
        return tensors

    def release(self, layer: str) -> None:
        self.resident.pop(layer, None)
