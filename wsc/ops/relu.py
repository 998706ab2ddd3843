"""ReLU: out = max(x, 0), as torch.relu computes it (NaN stays NaN).

One FLOP an element (a compare-select). SRAM: the input and output tiles; traffic: the input tile read once, the
output tile written once. These are the defaults of a KernelOp, so only the lowering and the reference are
written here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsc.ops.base import KernelOp, Shape, register
from wsc.ops.codegen import KernelIR, KernelSpec, f32, lower_unary


@register
class Relu(KernelOp):
    name = "relu"
    flops_per_element = 1

    def lower(self, spec: KernelSpec) -> KernelIR:
        # The unordered compare is also true for NaN: x is kept then, as torch keeps it.
        return lower_unary(spec, lambda kb, x: kb.b.select(kb.b.fcmp_unordered(">", x, f32(0.0)), x, f32(0.0)))

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        x = inputs[0].astype(np.float64)
        return np.where(np.isnan(x) | (x > 0), x, 0.0)
