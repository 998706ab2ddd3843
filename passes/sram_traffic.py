"""sram_traffic: the bytes the busiest PE of a kernel reads from and writes to its SRAM in one step, and the
time its SRAM ports need for them.

A PE's SRAM serves `pe.sram_read_bytes_per_cycle` (CS-2: 2 x 64-bit = 16 B) and `pe.sram_write_bytes_per_cycle`
(1 x 64-bit = 8 B) per cycle, on separate ports, so reads and writes overlap and the slower side sets the time:

    sram(k) = max(read_bytes / sram_read_bytes_per_cycle, write_bytes / sram_write_bytes_per_cycle) / clock_hz

The busiest PE owns the largest tile: tr x tc outputs (tr = ceil(rows / row_blocks), tc = ceil(cols /
col_blocks)) and, for a matmul, a K slice of k = ceil(K / k_splits). What it reads and writes is each op's own
rule (`sram_traffic` in its file of wsc/ops/, documented there), in elements of the program's dtype (`size`
bytes; token ids are 8-byte integers). A split K's reduction is not here: the estimate charges it after the
kernel (its own term, `kernel_seconds`), links and adds together.
"""

from __future__ import annotations

from wsc import ops
from wsc.core.ir import Graph, Node
from wsc.core.program import KernelPlan
from wsc.targets import Target


def sram_traffic(graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
    """(bytes read, bytes written) by the SRAM of the kernel's busiest PE in one step; `size` is the dtype's
    bytes per element."""
    return ops.get(node.op).sram_traffic(graph, node, plan, size)


def sram_seconds(graph: Graph, node: Node, plan: KernelPlan, target: Target, size: int) -> float:
    """Seconds the busiest PE's SRAM ports need for its step's traffic (reads and writes overlap)."""
    reads, writes = sram_traffic(graph, node, plan, size)
    cycles = max(reads / target.sram_read_bytes_per_cycle, writes / target.sram_write_bytes_per_cycle)
    return cycles / target.clock_hz
