"""A throwaway op in one file: `negate_fixture`, what `torch.neg` computes, with its legalize rule.

Loaded by tests/test_op_table.py to show that an op defined in a single file, registered with the table,
legalizes, partitions, is placed, estimated and runs against its reference, with no other file touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsc.ops import KernelOp, register
from wsc.ops.codegen import KernelIR, KernelSpec, lower_unary
from wsc.passes.legalize import legalizes


@register
class NegateFixture(KernelOp):
    name = "negate_fixture"
    flops_per_element = 1

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_unary(spec, lambda kb, x: kb.b.fneg(x))

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: tuple[int, ...]):
        return -inputs[0].astype(np.float64)


@legalizes("aten.neg.default")
def _negate(rw, node):
    return rw.emit("negate_fixture", [rw.arg(node, 0, "self")], node.shape, final=True)
