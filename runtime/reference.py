"""Run an op's plain numpy reference (its `reference` in the op table) with the same calling contract as the
kernels: write op(inputs) into exactly the elements of `out` that `tiles` cover.

Tests hold the JIT kernels to this (and it to torch); it is never on the execution path. The references
compute in float64 and round once at the end, so they are the more accurate side of any comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsc import ops


def run_reference(
    op: str,
    out: np.ndarray,
    inputs: Sequence[np.ndarray],
    tiles: np.ndarray,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write op(inputs) into exactly the elements of `out` covered by `tiles` (see wsc.ops.codegen)."""
    full = ops.kernel(op).reference(inputs, dict(attrs or {}), out.shape).astype(np.float32)
    cols = out.shape[-1] if out.ndim else 1
    out2d = out.reshape(-1, cols)
    full2d = full.reshape(-1, cols)
    for r0, r1, c0, c1 in np.asarray(tiles, dtype=np.int64).reshape(-1, 4).tolist():
        out2d[r0:r1, c0:c1] = full2d[r0:r1, c0:c1]
