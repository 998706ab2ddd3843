"""sram_traffic: the bytes the busiest PE of a kernel reads from and writes to its SRAM in one step, and the
time its SRAM ports need for them.

A PE's SRAM serves `pe.sram_read_bytes_per_cycle` (CS-2: 2 x 64-bit = 16 B) and `pe.sram_write_bytes_per_cycle`
(1 x 64-bit = 8 B) per cycle, on separate ports, so reads and writes overlap and the slower side sets the time:

    sram(k) = max(read_bytes / sram_read_bytes_per_cycle, write_bytes / sram_write_bytes_per_cycle) / clock_hz

The busiest PE owns the largest tile: tr x tc outputs (tr = ceil(rows / row_blocks), tc = ceil(cols /
col_blocks)) and, for a matmul, a K slice of k = ceil(K / k_splits). Traffic in elements of the program's dtype
(`size` bytes; token ids are 8-byte integers):

| op | elements read | elements written |
|---|---|---|
| matmul, multiply-adds | 2*tr*tc*k: one operand element, one partial sum | tr*tc*k: the partial sum |
| matmul, epilogue (bias, gelu, residual) | tr*tc * (1 + [bias] + [residual]): partial sum, operands | tr*tc |
| attention, per query-key pair | D (query row) + tc (output partials) + 3 (max, exp, sum) | tc + 2 |
| embedding | tr token ids (8 bytes each) | tr*tc: the gathered rows |
| add, mul, gelu | tr*tc per input; tr for a per-row [R, 1] input; 0 for a scalar | tr*tc |
| softmax | 3*tr*tc: max, exp-sum, normalise | 2*tr*tc: exp, normalised |
| layernorm | 3*tr*tc (mean, variance, normalise) + 2*tc (scale, shift) | tr*tc |
| reshape, permute, slice | tr*tc | tr*tc |

Why a matmul reads only one operand per multiply-add: the other arrives over the fabric (the streamed weight,
or the neighbour's activation) and is used straight from the router, FMACH-style. Its partial sums stay at the
compute precision: 4 fp16 FMACs a cycle then read 4 x (2 + 2) = 16 B and write 4 x 2 = 8 B, exactly the CS-2's
ports, which is how the published dense rate is reachable; fp32 (one FMAC, 8 B read + 4 B written) stays under
them. (partition.py sizes fp32 accumulators when it checks SRAM capacity; moved at fp32, partial sums would
hold fp16 matmuls to half the published rate.)
Without an epilogue the last multiply-add's write is the result; a fused GELU is computed on the way through
the epilogue's pass and adds no traffic. A split K's reduction is not here: the estimate charges it after
the kernel (its own term, `kernel_seconds`), links and adds together.
"""

from __future__ import annotations

import math

from wsc.errors import WscError
from wsc.ir import LAYOUT_OPS, Graph, Node
from wsc.passes.partition import reduction_dim
from wsc.program import KernelPlan
from wsc.targets import Target

TOKEN_ID_BYTES = 8  # embedding ids are int64 whatever the compute dtype
ELEMENTWISE_OPS = ("add", "mul", "gelu")
MODELLED_OPS = ("matmul", "attention", "embedding", "softmax", "layernorm") + ELEMENTWISE_OPS + LAYOUT_OPS


def sram_traffic(graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
    """(bytes read, bytes written) by the SRAM of the kernel's busiest PE in one step; `size` is the dtype's
    bytes per element."""
    tr, tc = plan.largest_tile
    block = tr * tc
    if node.op == "matmul":
        k = math.ceil(reduction_dim(graph, node) / plan.k_splits)
        reads, writes = 2 * block * k, block * k
        bias, residual = bool(node.attrs.get("bias")), bool(node.attrs.get("residual"))
        if bias or residual or node.attrs.get("epilogue", "none") != "none":
            reads += block * (1 + bias + residual)
            writes += block
        return reads * size, writes * size
    if node.op == "attention":
        # Per query row and key: the score, a dot product of the query's D elements with the key arriving
        # over the fabric (its sum stays in a register); the weighted sum's tc multiply-adds into the output's
        # partials (the value arrives); the softmax's running max, exp and sum.
        keys, d = graph[node.inputs[1]].shape[-2], graph[node.inputs[0]].shape[-1]
        pairs = tr * keys
        return (pairs * (d + tc + 3)) * size, (pairs * (tc + 2)) * size
    if node.op == "embedding":
        return tr * TOKEN_ID_BYTES, block * size
    if node.op in ELEMENTWISE_OPS:
        return sum(_operand_elements(graph[i], tr, tc) for i in node.inputs) * size, block * size
    if node.op == "softmax":
        return 3 * block * size, 2 * block * size
    if node.op == "layernorm":
        return (3 * block + 2 * tc) * size, block * size
    if node.op in LAYOUT_OPS:
        return block * size, block * size
    # A new kernel op must get its row in the table above: charging it nothing would hide a bottleneck.
    raise WscError(
        f"no SRAM traffic model for op {node.op!r} (node {node.name}); the modelled ops are "
        f"{', '.join(MODELLED_OPS)}: add a row for it in passes/sram_traffic.py"
    )


def sram_seconds(graph: Graph, node: Node, plan: KernelPlan, target: Target, size: int) -> float:
    """Seconds the busiest PE's SRAM ports need for its step's traffic (reads and writes overlap)."""
    reads, writes = sram_traffic(graph, node, plan, size)
    cycles = max(reads / target.sram_read_bytes_per_cycle, writes / target.sram_write_bytes_per_cycle)
    return cycles / target.clock_hz


def _operand_elements(operand: Node, tr: int, tc: int) -> int:
    """Elements of one elementwise input read for a tr x tc output tile, as the kernels index it."""
    if operand.numel <= 1:
        return 0  # a scalar is loaded once into a register
    if operand.shape[-1] == 1:
        return tr  # one value per row, loaded once per row
    return tr * tc  # a full tile, or a row broadcast over the rows: re-read for every output element
