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
from wsc.ops.codegen import KernelBuilder, KernelIR, KernelSpec, f32, for_range, i64, load_at, store_at


@register
class Relu(KernelOp):
    name = "relu"
    flops_per_element = 1

    def lower(self, spec: KernelSpec) -> KernelIR:
        if len(spec.out_shape) != 2 or spec.in_shapes != (spec.out_shape,):
            raise ValueError(f"relu: expected out [R, C] and one input of the same shape; got {spec}")
        cols = spec.out_shape[1]
        kb = KernelBuilder(spec, ["f32"])
        b = kb.b
        (x_ptr,) = kb.inputs
        with kb.for_tiles() as (r0, r1, c0, c1):
            with for_range(b, r0, r1, "r") as r:
                base = b.mul(r, i64(cols))
                with for_range(b, c0, c1, "c") as c:
                    idx = b.add(base, c)
                    x = load_at(b, x_ptr, idx)
                    # The unordered compare is also true for NaN: x is kept then, as torch keeps it.
                    keep = b.fcmp_unordered(">", x, f32(0.0))
                    store_at(b, b.select(keep, x, f32(0.0)), kb.out, idx)
        return kb.finish()

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        x = inputs[0].astype(np.float64)
        return np.where(np.isnan(x) | (x > 0), x, 0.0)
