"""A throwaway op in one file: `negate_fixture`, what `torch.neg` computes, with its legalize rule.

Loaded by tests/test_op_table.py to show that an op defined in a single file, registered with the table,
legalizes, partitions, is placed, estimated and runs against its reference, with no other file touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsc.ops import KernelOp, register
from wsc.ops.codegen import KernelBuilder, KernelIR, KernelSpec, for_range, i64, load_at, store_at
from wsc.passes.legalize import legalizes


@register
class NegateFixture(KernelOp):
    name = "negate_fixture"
    flops_per_element = 1

    def lower(self, spec: KernelSpec) -> KernelIR:
        cols = spec.out_shape[1]
        kb = KernelBuilder(spec, ["f32"])
        b = kb.b
        with kb.for_tiles() as (r0, r1, c0, c1):
            with for_range(b, r0, r1, "r") as r:
                with for_range(b, c0, c1, "c") as c:
                    idx = b.add(b.mul(r, i64(cols)), c)
                    store_at(b, b.fneg(load_at(b, kb.inputs[0], idx)), kb.out, idx)
        return kb.finish()

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: tuple[int, ...]):
        return -inputs[0].astype(np.float64)


@legalizes("aten.neg.default")
def _negate(rw, node):
    return rw.emit("negate_fixture", [rw.arg(node, 0, "self")], node.shape, final=True)
