"""The estimate's load-bearing terms, each pinned on a tiny hand-built layer with its number worked by hand.

Every expected value below is a literal derived from the target's parameters in the comment beside it, never
recomputed with the estimate's own helpers: dropping a term (the load imbalance of an uneven cut, a split K's
reduction, the SRAM ports, the pipeline's fill, the routes' link load) changes the number and fails the test.

The target (`HAND`): clock 1 GHz; fp32 2 FLOP/cycle (2e9 FLOP/s per PE), fp16 8 FLOP/cycle; SRAM ports 16 B
read and 8 B written per cycle; links 4 B/cycle with 1 cycle per hop; no weights streamed (every operand is an
`input`), so no stream term hides anything.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from wsc.core.ir import Graph, Node
from wsc.core.mesh import Flow, Placement, Rect
from wsc.core.program import Cut, KernelPlan, Layer, Program
from wsc.passes.estimate import Estimate
from wsc.passes.legalize import node_flops
from wsc.passes.route import Route
from wsc.targets import Target

HAND = Target(
    name="hand", description="8 x 8 mesh with round numbers, for hand arithmetic", rows=8, cols=8,
    sram_bytes_per_pe=49152, clock_hz=1e9, flops_per_cycle_per_pe={"fp16": 8.0, "fp32": 2.0},
    link_bytes_per_cycle=4.0, hop_latency_cycles=1.0, colors=8, io_bytes_per_second=1e9, dead_pes=frozenset(),
    sram_read_bytes_per_cycle=16.0, sram_write_bytes_per_cycle=8.0,
)


def exactly(seconds: float):
    """Equal up to float rounding (no absolute slack: these are nanoseconds)."""
    return pytest.approx(seconds, rel=1e-12, abs=0)


def matmul(graph: Graph, name: str, m: int, n: int, k: int) -> Node:
    """[1, m, k] @ [1, n, k]^T -> [1, m, n], both operands fresh inputs (no streamed weight)."""
    graph.add(Node(f"{name}_a", "input", (), (1, m, k), "float32"))
    graph.add(Node(f"{name}_b", "input", (), (1, n, k), "float32"))
    node = Node(name, "matmul", (f"{name}_a", f"{name}_b"), (1, m, n), "float32")
    node.flops = 2 * m * n * k
    assert node.flops == node_flops("matmul", node.shape, [(1, m, k), (1, n, k)], {})  # 2*M*N*K, as legalised
    return graph.add(node)


def add(graph: Graph, name: str, rows: int, cols: int) -> Node:
    """An elementwise add of two fresh [rows, cols] inputs: 1 FLOP per element."""
    graph.add(Node(f"{name}_x", "input", (), (rows, cols), "float32"))
    graph.add(Node(f"{name}_y", "input", (), (rows, cols), "float32"))
    node = Node(name, "add", (f"{name}_x", f"{name}_y"), (rows, cols), "float32")
    node.flops = rows * cols
    assert node.flops == node_flops("add", node.shape, [(rows, cols), (rows, cols)], {})
    return graph.add(node)


def plan(name: str, rows: int, cols: int, row_blocks: int, col_blocks: int, k_splits: int = 1,
         k_dim: int = 1) -> KernelPlan:
    """The cut as given, on a rectangle of exactly its PEs (row_blocks * k_splits high, col_blocks wide)."""
    return KernelPlan(name, rows, cols, Cut(row_blocks, col_blocks, k_splits), row_blocks * k_splits, col_blocks,
                      HAND.sram_bytes_per_pe, k_dim)


def estimate(graph: Graph, plans: list[KernelPlan], dtype: str, target: Target = HAND, **layer) -> dict:
    """The estimate of a one-layer program holding `plans`."""
    kernels = {p.node: p for p in plans}
    weights = layer.pop("weights", [])
    program = Program(graph, target, layers=[Layer(0, "L0", list(kernels), weights, kernels, **layer)],
                      dtype=dtype, tokens=8)
    if layer.get("placement") is not None:
        program = Route(router="xy")(program)
    return Estimate()(program).estimate


def test_an_uneven_cut_runs_at_its_largest_tile() -> None:
    """A 100-row matmul (N = 8, K = 16, fp32) cut into 3 row blocks: tiles of 33, 33 and 34 rows, and the
    kernel is done when the 34-row tile is. That PE does 2 * 34 * 8 * 16 = 8,704 FLOPs at 2 FLOP/cycle =
    4,352 cycles = 4.352 us at 1 GHz. (The average PE's share, 25,600 / 3 FLOPs, would be 4.2667 us.)
    Its SRAM: 2 * 272 * 16 * 4 B = 34,816 B read at 16 B/cycle = 2,176 cycles, under the arithmetic."""
    graph = Graph()
    matmul(graph, "mm", 100, 8, 16)
    e = estimate(graph, [plan("mm", 100, 8, 3, 1, k_dim=16)], "fp32")
    layer = e["layers"][0]
    assert layer["kernel_seconds"]["mm"] == exactly(4.352e-6)
    assert layer["compute_seconds"] == exactly(4.352e-6)  # one kernel: no fill
    assert e["step_seconds"] == exactly(4.352e-6) and e["bottleneck"] == "compute"


def test_an_uneven_cut_in_both_dimensions() -> None:
    """100 x 10 outputs (K = 16, fp32) in 3 x 4 blocks: the largest tile is 34 x 3 = 102 outputs, 2 * 102 * 16
    = 3,264 FLOPs at 2 FLOP/cycle = 1,632 cycles = 1.632 us (the average, 32,000 / 12 FLOPs, is 1.3333 us)."""
    graph = Graph()
    matmul(graph, "mm", 100, 10, 16)
    e = estimate(graph, [plan("mm", 100, 10, 3, 4, k_dim=16)], "fp32")
    assert e["layers"][0]["kernel_seconds"]["mm"] == exactly(1.632e-6)


def test_a_split_k_pays_a_tree_of_partial_sums() -> None:
    """An 8 x 8 matmul with K = 96 split into 3 slices of 32 (fp32), on 3 PEs. Each PE: 2 * 64 * 32 = 4,096
    FLOPs at 2 FLOP/cycle = 2,048 cycles = 2.048 us (SRAM: 2 * 64 * 32 * 4 B = 16,384 B at 16 B/cycle =
    1,024 cycles, under it). Reduction: ceil(log2 3) = 2 levels, each sending the 64-element fp32 block
    (256 B at 4 B/cycle = 64 cycles) plus 1 hop = 65 ns, then adding it (64 FLOPs at 2 FLOP/cycle = 32 ns):
    2 * 97 ns = 0.194 us. Kernel: 2.048 + 0.194 = 2.242 us."""
    graph = Graph()
    matmul(graph, "mm", 8, 8, 96)
    e = estimate(graph, [plan("mm", 8, 8, 1, 1, k_splits=3, k_dim=96)], "fp32")
    assert e["layers"][0]["kernel_seconds"]["mm"] == exactly(2.242e-6)
    # The same K on one PE has no reduction: 2 * 64 * 96 = 12,288 FLOPs = 6,144 cycles = 6.144 us.
    e = estimate(graph, [plan("mm", 8, 8, 1, 1, k_dim=96)], "fp32")
    assert e["layers"][0]["kernel_seconds"]["mm"] == exactly(6.144e-6)


def test_an_elementwise_add_waits_on_the_sram_ports() -> None:
    """An fp16 add of two 16 x 32 tensors in 2 x 2 blocks: each PE has an 8 x 16 = 128-element tile.
    Arithmetic: 128 FLOPs at 8 FLOP/cycle = 16 cycles. SRAM: it reads both inputs, 2 * 128 * 2 B = 512 B at
    16 B/cycle = 32 cycles, and writes 128 * 2 B = 256 B at 8 B/cycle = 32 cycles: 32 ns, twice the
    arithmetic."""
    graph = Graph()
    add(graph, "sum", 16, 32)
    plans = [plan("sum", 16, 32, 2, 2)]
    assert estimate(graph, plans, "fp16")["layers"][0]["kernel_seconds"]["sum"] == exactly(32e-9)
    # The ports are separate, the slower sets the time: a read port of 8 B/cycle takes 512 / 8 = 64 cycles
    # (writes still 32); a write port of 2 B/cycle takes 256 / 2 = 128 cycles (reads still 32).
    narrow_read = replace(HAND, sram_read_bytes_per_cycle=8.0)
    narrow_write = replace(HAND, sram_write_bytes_per_cycle=2.0)
    assert estimate(graph, plans, "fp16", narrow_read)["layers"][0]["kernel_seconds"]["sum"] == exactly(64e-9)
    assert estimate(graph, plans, "fp16", narrow_write)["layers"][0]["kernel_seconds"]["sum"] == exactly(128e-9)


def test_fill_is_the_other_kernels_first_wave() -> None:
    """Two kernels in one layer: the 100-row matmul of the first test (4.352 us, the slowest) and an fp32 add
    of two 100 x 8 tensors in 4 row blocks (25 x 8 = 200-element tiles: 200 FLOPs at 2 FLOP/cycle = 100
    cycles; SRAM 1,600 B read at 16 B/cycle and 800 B written at 8 B/cycle, 100 cycles each: 0.1 us).
    The add passes the matmul its first wave, one token row per row block, 4 of its 100 rows:
    fill = 0.1 us * 4 / 100 = 4 ns, and the layer's compute is 4.352 + 0.004 = 4.356 us."""
    graph = Graph()
    matmul(graph, "mm", 100, 8, 16)
    add(graph, "sum", 100, 8)
    e = estimate(graph, [plan("mm", 100, 8, 3, 1, k_dim=16), plan("sum", 100, 8, 4, 1)], "fp32")
    layer = e["layers"][0]
    assert layer["kernel_seconds"]["sum"] == exactly(0.1e-6)
    assert layer["fill_seconds"] == exactly(4e-9)
    assert layer["compute_seconds"] == exactly(4.356e-6)
    # Backward: twice the FLOPs and twice the SRAM time, so 8.704 us for the matmul, plus twice the fill.
    assert layer["backward_compute_seconds"] == exactly(8.712e-6)


def test_the_fabric_term_is_the_busiest_link_plus_the_longest_route() -> None:
    """Two 2 x 2 kernels on the 8 x 8 mesh, a at columns 0-1 and b at columns 5-6 (rows 0-1), a sending 4,000 B
    to b. The flow takes 2 lanes of 2,000 B, one per row: row 0 from (0, 1) east to (0, 5), 4 hops, and row 1
    from (1, 1) east to b's diagonal (1, 6), 5 hops; no link carries both. Fabric: the busiest link's 2,000 B
    at 4 B/cycle = 500 cycles, plus the longest lane's 5 hops at 1 cycle: 505 cycles = 505 ns at 1 GHz.
    Each kernel is a 2 x 2 fp32 add in 1 x 1 tiles, 0.5 ns (1 FLOP at 2 FLOP/cycle; 8 B read at 16 B/cycle,
    4 B written at 8 B/cycle), plus 0.5 ns * 2 / 2 rows of fill and the first wave's 5 hops from a to b
    (5 cycles): 6 ns of compute, so the fabric sets the layer, 499 ns above it (the slack is -499 ns): the
    step is 505 ns. A training step runs it twice (the output gradients retrace the flows): 1,010 ns."""
    graph = Graph()
    add(graph, "a", 2, 2)
    add(graph, "b", 2, 2)
    rects = {"a": Rect("a", 0, 0, 2, 2), "b": Rect("b", 5, 0, 2, 2)}
    placement = Placement(rects, "hand", "HAND", 0.0, 0.0, 0.0, 0, 0.0)
    e = estimate(graph, [plan("a", 2, 2, 2, 2), plan("b", 2, 2, 2, 2)], "fp32", placement=placement,
                 flows=[Flow("a", "b", 4000)])
    layer = e["layers"][0]
    assert layer["compute_seconds"] == exactly(6e-9)
    assert layer["fabric_seconds"] == exactly(505e-9)
    assert layer["fabric_slack_seconds"] == exactly(-499e-9)
    assert e["step_seconds"] == exactly(505e-9)
    assert e["bottleneck"] == "fabric" and layer["bound"] == "fabric"
    assert e["training"]["step_seconds"] == exactly(1010e-9)


def weighted_add(graph: Graph, name: str, rows: int, cols: int) -> Node:
    """An elementwise add of a fresh [rows, cols] input and a streamed weight of the same shape."""
    graph.add(Node(f"{name}_x", "input", (), (rows, cols), "float32"))
    graph.add(Node(f"{name}_w", "param", (), (rows, cols), "float32", {"key": f"{name}.w"}))
    node = Node(name, "add", (f"{name}_x", f"{name}_w"), (rows, cols), "float32")
    node.flops = rows * cols
    return graph.add(node)


def test_weights_cross_the_wafer_from_its_west_edge_one_lane_per_row() -> None:
    """Two 2 x 2 kernels side by side in rows 0-1 (a at columns 2-3, b at columns 5-6), each reading a
    2 x 2 fp32 weight of 16 B, and the I/O at 1 GB/s. Each kernel's 16 B arrive on its 2 rows, 8 B a lane;
    rows 0 and 1 carry both kernels' lanes west of a: 16 B on the busiest link, 4 cycles at 4 B/cycle, plus
    the farthest lane's 6 hops (to b's last column): 10 ns. The I/O takes the layer's 32 B in 32 ns, so it
    still sets the stream term. Stacked instead (b in rows 4-5 at the same columns), no link carries more
    than 8 B: 2 cycles, plus 6 hops, 8 ns."""
    graph = Graph()
    weighted_add(graph, "a", 2, 2)
    weighted_add(graph, "b", 2, 2)
    plans = [plan("a", 2, 2, 2, 2), plan("b", 2, 2, 2, 2)]
    side_by_side = Placement({"a": Rect("a", 2, 0, 2, 2), "b": Rect("b", 5, 0, 2, 2)}, "hand", "HAND", 0, 0, 0, 0, 0)
    layer = estimate(graph, plans, "fp32", placement=side_by_side, weights=["a_w", "b_w"])["layers"][0]
    assert (layer["weight_link_load"], layer["weight_hops"]) == (16, 6)
    assert layer["weight_delivery_seconds"] == exactly(10e-9)
    assert layer["stream_seconds"] == exactly(32e-9)
    stacked = Placement({"a": Rect("a", 2, 0, 2, 2), "b": Rect("b", 5, 4, 2, 2)}, "hand", "HAND", 0, 0, 0, 0, 0)
    layer = estimate(graph, plans, "fp32", placement=stacked, weights=["a_w", "b_w"])["layers"][0]
    assert (layer["weight_link_load"], layer["weight_delivery_seconds"]) == (8, exactly(8e-9))


def test_weight_delivery_binds_the_stream_when_the_io_is_faster_than_one_row() -> None:
    """The same side-by-side layer with the I/O at 1 TB/s (32 B in 0.032 ns): the delivery across the
    wafer, 10 ns, is the stream term now."""
    graph = Graph()
    weighted_add(graph, "a", 2, 2)
    weighted_add(graph, "b", 2, 2)
    side_by_side = Placement({"a": Rect("a", 2, 0, 2, 2), "b": Rect("b", 5, 0, 2, 2)}, "hand", "HAND", 0, 0, 0, 0, 0)
    fast_io = replace(HAND, io_bytes_per_second=1e12)
    layer = estimate(graph, [plan("a", 2, 2, 2, 2), plan("b", 2, 2, 2, 2)], "fp32", target=fast_io,
                     placement=side_by_side, weights=["a_w", "b_w"])["layers"][0]
    assert layer["stream_seconds"] == exactly(10e-9)


def test_pipelined_layers_hand_their_activations_over_the_fabric() -> None:
    """Two pipelined layers on the 8 x 8 mesh: L0's kernel a (2 x 2 at rows 0-1, columns 0-1) feeds L1's
    kernel b (2 x 2 at rows 6-7, columns 0-1) with its [2, 2] fp32 output, 16 B. Stacked, the flow leaves a's
    bottom side on 2 lanes of 8 B and goes south to b's diagonal: lane 0 from (1, 0) to (6, 0), 5 hops, lane 1
    from (1, 1) to (7, 1), 6 hops. 8 B at 4 B/cycle = 2 cycles, plus the longest lane's 6 hops: 8 ns a pass.
    Each layer is one kernel of 0.5 ns (no other kernel to fill behind), so the handoff is the slowest stage
    and the fabric binds: the step (8 tokens, 1 pass) is 8 ns for the pace, plus the fill (0.5 + 0.5 + 8) / 8
    tokens = 1.125 ns: 9.125 ns."""
    graph = Graph()
    add(graph, "a", 2, 2)
    graph.add(Node("b_y", "input", (), (2, 2), "float32"))
    b = Node("b", "add", ("a", "b_y"), (2, 2), "float32")
    b.flops = 4
    graph.add(b)
    layers = [Layer(0, "L0", ["a"], [], {"a": plan("a", 2, 2, 2, 2)},
                    placement=Placement({"a": Rect("a", 0, 0, 2, 2)}, "hand", "HAND", 0, 0, 0, 0, 0)),
              Layer(1, "L1", ["b"], [], {"b": plan("b", 2, 2, 2, 2)},
                    placement=Placement({"b": Rect("b", 0, 6, 2, 2)}, "hand", "HAND", 0, 0, 0, 0, 0))]
    program = Program(graph, HAND, layers=layers, dtype="fp32", tokens=8, mode="pipelined")
    e = Estimate()(Route(router="xy")(program)).estimate
    assert e["handoff_fabric_seconds"] == exactly(8e-9)
    assert [layer["compute_seconds"] for layer in e["layers"]] == [exactly(0.5e-9), exactly(0.5e-9)]
    assert e["step_seconds"] == exactly(9.125e-9) and e["bottleneck"] == "fabric"


def test_a_layers_charged_time_counts_the_stream_its_predecessor_cannot_hide() -> None:
    """What cpsat's routed choice charges a placement of layer L1 (passes/place.py): L0 is a 2 x 2 fp32 add of
    0.5 ns; L1's kernel b reads a 16 B weight. b at column 3, 2 rows: its weights arrive 8 B a lane, 2 cycles,
    plus 4 hops: 6 ns of delivery, under the 16 ns the 1 GB/s I/O takes, so L1 is charged its stream, 16 ns,
    plus the 15.5 ns of it that L0's 0.5 ns of compute cannot hide: 31.5 cycles. With the I/O at 1 TB/s the
    delivery sets the stream: 6 + 5.5 = 11.5 cycles."""
    from wsc.passes.place import before_seconds, charged_layer_cycles

    graph = Graph()
    add(graph, "a", 2, 2)
    weighted_add(graph, "b", 2, 2)
    rects = {"b": Rect("b", 3, 0, 2, 2)}
    for target, charged in ((HAND, 31.5), (replace(HAND, io_bytes_per_second=1e12), 11.5)):
        layers = [Layer(0, "L0", ["a"], [], {"a": plan("a", 2, 2, 2, 2)}),
                  Layer(1, "L1", ["b"], ["b_w"], {"b": plan("b", 2, 2, 2, 2)})]
        program = Program(graph, target, layers=layers, dtype="fp32", tokens=8)
        cycles = charged_layer_cycles(program, layers[1], before_seconds(program, layers[1]))
        assert cycles(rects, None) == exactly(charged)
