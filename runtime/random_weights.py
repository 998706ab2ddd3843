"""Seeded random weights that any process can draw again from the seed and the tensors' names and shapes alone.

`wsc compile --random-weights SEED` runs and verifies a model on these weights instead of its own
initialisation, and `wsc run OUT --random-weights SEED` draws the same ones from the program's IR, without the
model's code: that is what lets a shared output folder be run again, and checked against the eager outputs the
compile recorded, by someone who has neither the model file nor its checkpoint.

Each tensor is drawn by its own generator, seeded by (seed, the first 8 bytes of sha256 of its name), so a
tensor's values do not depend on which other tensors exist or on their order:
- a tensor of two or more dimensions: normal with std 1 / sqrt(fan_in), fan_in the product of every dimension
  but the first (a linear layer's in-features, a convolution's channels times its window), which keeps
  activations near unit scale through any depth;
- a vector or scalar whose name ends in `bias` or names a running mean: normal with std 0.1;
- any other vector or scalar (a norm's weight, a running variance, a learned scale): uniform in [0.5, 1.5],
  positive and away from 1, so a norm's weight is never the identity it starts at;
- an integer tensor: zeros.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsc.runtime.weight_store import write_store


def _generator(seed: int, name: str) -> np.random.Generator:
    salt = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.Generator(np.random.PCG64([seed, salt]))


def draw(name: str, shape: tuple[int, ...], dtype: np.dtype | str, seed: int) -> np.ndarray:
    """The tensor `name` of `shape` and `dtype` for `seed` (the rules are the module's docstring)."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        return np.zeros(shape, dtype=dtype)
    rng = _generator(seed, name)
    if len(shape) >= 2:
        fan_in = max(1, math.prod(shape[1:]))
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(fan_in ** -0.5)
    elif name.endswith("bias") or "running_mean" in name:
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
    else:
        values = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return values.astype(dtype, copy=False)


@dataclass(frozen=True)
class _Drawn:
    """One float32 tensor not drawn yet: its shape and dtype, for a store's header, without the values."""

    name: str
    shape: tuple[int, ...]
    seed: int
    dtype: np.dtype = np.dtype(np.float32)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        values = draw(self.name, self.shape, self.dtype, self.seed)
        return values if dtype is None else values.astype(dtype)


class RandomWeights(Mapping):
    """The seeded float32 tensors of `shapes` (name -> shape), each drawn when it is read, never held."""

    def __init__(self, shapes: Mapping[str, Sequence[int]], seed: int):
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self.seed = seed

    def __getitem__(self, name: str) -> _Drawn:
        return _Drawn(name, self.shapes[name], self.seed)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def write_random_store(path: Path, shapes: Mapping[str, Sequence[int]], seed: int) -> Path:
    """A safetensors store at `path` of the seeded float32 tensors of `shapes` (name -> shape), drawn one at a
    time as they are written (a store holds its floats in fp32 or fp16 whatever the model's dtype)."""
    return write_store(path, RandomWeights(shapes, seed))
