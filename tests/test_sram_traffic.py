"""SRAM traffic: each kernel's busiest PE moves the bytes the model's table says, and the CS-2's ports feed a
dense fp16 matmul exactly at the published rate while an elementwise add waits on them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import tiny_gpt

import wsc.targets
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node
from wsc.core.program import DTYPE_SIZE, Cut, KernelPlan, Program
from wsc.frontend.capture import capture
from wsc.passes.fold_constants import FoldConstants
from wsc.passes.fuse_epilogues import FuseEpilogues
from wsc.passes.group_layers import GroupLayers
from wsc.passes.legalize import Legalize, node_flops
from wsc.passes.partition import Partition
from wsc.passes.sram_traffic import sram_seconds, sram_traffic
from wsc.targets import load_target

CS2 = load_target("cs2-sim")
FP16, FP32 = DTYPE_SIZE["fp16"], DTYPE_SIZE["fp32"]


def graph_of(op: str, out: tuple[int, ...], *inputs: tuple[int, ...], **attrs) -> tuple[Graph, Node]:
    """One kernel reading fresh inputs, FLOPs counted as legalisation counts them."""
    graph = Graph()
    for i, shape in enumerate(inputs):
        graph.add(Node(f"x{i}", "input", (), shape, "int64" if op == "embedding" and i == 1 else "float32"))
    node = Node("k", op, tuple(f"x{i}" for i in range(len(inputs))), out, "float32", attrs)
    node.flops = node_flops(op, out, list(inputs), attrs)
    return graph, graph.add(node)


def plan_of(rows: int, cols: int, row_blocks: int, col_blocks: int, k_splits: int = 1, k_dim: int = 1) -> KernelPlan:
    return KernelPlan("k", rows, cols, Cut(row_blocks, col_blocks, k_splits), row_blocks * k_splits, col_blocks, 0,
                      k_dim)


def compute_seconds(node: Node, plan: KernelPlan, dtype: str) -> float:
    """The PE's arithmetic alone, at the target's rate: FLOPs per active PE over FLOP/cycle."""
    return node.flops / plan.active_pes / CS2.flops_per_cycle_per_pe[dtype] / CS2.clock_hz


# Cerebras-GPT-111M's d_model = 768, 128 tokens: one projection cut into a 16 x 16 grid of 8 x 48 tiles.
ROWS, D = 128, 768


def projection(**attrs) -> tuple[Graph, Node, KernelPlan]:
    inputs = [(1, ROWS, D), (1, D, D)] + [(D,)] * bool(attrs.get("bias")) + [(1, ROWS, D)] * bool(
        attrs.get("residual"))
    graph, node = graph_of("matmul", (1, ROWS, D), *inputs, **attrs)
    return graph, node, plan_of(ROWS, D, 16, 16, k_dim=D)


def test_fp16_matmul_without_epilogue_is_the_design_point() -> None:
    graph, node, plan = projection()
    tr, tc, k = 8, 48, 768
    # Per multiply-add: read one operand element and one partial sum, write the partial sum, 2 bytes each.
    assert sram_traffic(graph, node, plan, FP16) == (2 * tr * tc * k * 2, tr * tc * k * 2)
    # 1,179,648 B / 16 B = 589,824 B / 8 B = 73,728 cycles = 589,824 FLOPs per PE / 8 FLOP per cycle.
    cycles = 73_728
    assert node.flops / plan.active_pes / 8 == cycles
    assert sram_seconds(graph, node, plan, CS2, FP16) == compute_seconds(node, plan, "fp16") == cycles / 850e6


def test_fp16_matmul_epilogue_tips_it_onto_the_ports() -> None:
    graph, node, plan = projection(bias=True, residual=True, epilogue="gelu")
    block = 8 * 48
    reads, writes = sram_traffic(graph, node, plan, FP16)
    # One pass over the block: read the partial sum, the bias and the residual; write the result once.
    assert (reads, writes) == ((2 * block * 768 + 3 * block) * 2, (block * 768 + block) * 2)
    # The read port binds: 73,728 + 3 * 384 * 2 B / 16 = 73,872 cycles (writes: 73,728 + 384 * 2 B / 8 = 73,824).
    assert sram_seconds(graph, node, plan, CS2, FP16) == 73_872 / 850e6
    # GELU alone adds the pass (read partial sum, write result) but no operand.
    graph, node, plan = projection(epilogue="gelu")
    assert sram_traffic(graph, node, plan, FP16) == ((2 * block * 768 + block) * 2, (block * 768 + block) * 2)


def test_fp32_matmul_is_compute_bound_at_half_the_ports() -> None:
    graph, node, plan = projection()
    # One fp32 FMAC a cycle needs 8 B read + 4 B written: half of each port, so the ports are idle half the time.
    assert sram_traffic(graph, node, plan, FP32) == (2 * 8 * 48 * 768 * 4, 8 * 48 * 768 * 4)
    assert sram_seconds(graph, node, plan, CS2, FP32) == pytest.approx(compute_seconds(node, plan, "fp32") / 2)


def test_k_split_charges_only_its_slice_the_reduction_is_the_estimates() -> None:
    graph, node = graph_of("matmul", (1, 4, 6), (1, 4, 10), (1, 6, 10))
    block = 6  # tiles 2 x 3
    # K slices of ceil(10 / 4) = 3 and ceil(10 / 3) = 4; the tree's adds are kernel_seconds' reduction term.
    assert sram_traffic(graph, node, plan_of(4, 6, 2, 2, k_splits=4, k_dim=10), FP16) == (
        2 * block * 3 * 2, block * 3 * 2)
    assert sram_traffic(graph, node, plan_of(4, 6, 2, 2, k_splits=3, k_dim=10), FP16) == (
        2 * block * 4 * 2, block * 4 * 2)


def test_elementwise_add_is_sram_bound_at_twice_its_compute() -> None:
    graph, node = graph_of("add", (ROWS, D), (ROWS, D), (ROWS, D))
    plan = plan_of(ROWS, D, 16, 16)
    block = 8 * 48
    assert sram_traffic(graph, node, plan, FP16) == (2 * block * 2, block * 2)
    # 1 FLOP per element at 8 FLOP/cycle = 48 cycles; 1,536 B / 16 = 768 B / 8 = 96 cycles.
    assert compute_seconds(node, plan, "fp16") == 48 / 850e6
    assert sram_seconds(graph, node, plan, CS2, FP16) == 96 / 850e6


def test_elementwise_operands_are_read_as_the_kernels_index_them() -> None:
    plan = plan_of(ROWS, D, 16, 16)
    block, tr = 8 * 48, 8
    cases = {
        (D,): block,  # a bias row, re-read for every row of the tile
        (ROWS, 1): tr,  # one value per row
        (1,): 0,  # a scalar, held in a register
    }
    for shape, elements in cases.items():
        graph, node = graph_of("mul", (ROWS, D), (ROWS, D), shape)
        assert sram_traffic(graph, node, plan, FP16) == ((block + elements) * 2, block * 2), shape
    graph, node = graph_of("gelu", (ROWS, D), (ROWS, D))
    assert sram_traffic(graph, node, plan, FP16) == (block * 2, block * 2)


def test_softmax_and_layernorm_by_hand_on_uneven_tiles() -> None:
    # 5 x 7 in a 2 x 2 grid: the busiest PE has the 3 x 4 tile (12 elements).
    plan = plan_of(5, 7, 2, 2)
    graph, node = graph_of("softmax", (5, 7), (5, 7))
    assert sram_traffic(graph, node, plan, FP16) == (3 * 12 * 2, 2 * 12 * 2)  # (72, 48)
    # 72 B / 16 = 4.5 cycles of reads, 48 B / 8 = 6 cycles of writes: the write port binds.
    assert sram_seconds(graph, node, plan, CS2, FP16) == 6 / 850e6
    graph, node = graph_of("layernorm", (5, 7), (5, 7), (7,), (7,))
    assert sram_traffic(graph, node, plan, FP16) == ((3 * 12 + 2 * 4) * 2, 12 * 2)  # (88, 24)
    assert sram_seconds(graph, node, plan, CS2, FP16) == 5.5 / 850e6  # reads bind: 88 / 16 vs 24 / 8


def test_embedding_writes_the_rows_and_reads_the_ids() -> None:
    graph, node = graph_of("embedding", (1, 10, 16), (97, 16), (1, 10))
    plan = plan_of(10, 16, 2, 4)  # tiles of 5 tokens x 4 columns
    assert sram_traffic(graph, node, plan, FP16) == (5 * 8, 5 * 4 * 2)
    assert sram_traffic(graph, node, plan, FP32) == (5 * 8, 5 * 4 * 4)  # ids stay 8-byte integers


def test_layout_ops_read_and_write_once() -> None:
    graph, node = graph_of("permute", (6, 4), (4, 6), dims=[1, 0])
    assert sram_traffic(graph, node, plan_of(6, 4, 3, 1), FP16) == (2 * 4 * 2, 2 * 4 * 2)


def test_unknown_ops_are_refused() -> None:
    graph, node = graph_of("add", (4, 4), (4, 4), (4, 4))
    node.op = "conv2d"
    with pytest.raises(KeyError, match=r"op 'conv2d' is not in the op table \(wsc/ops/\)"):
        sram_traffic(graph, node, plan_of(4, 4, 1, 1), FP16)


def test_every_kernel_of_a_compiled_gpt_is_charged() -> None:
    model, inputs = tiny_gpt(layers=1)
    program = Program(capture(model, inputs).graph, load_target("mesh-16x16"))
    for step in (FoldConstants(), Legalize(), FuseEpilogues(), GroupLayers(), Partition()):
        program = step(program)
    seen = set()
    for layer in program.layers:
        for name, plan in layer.kernels.items():
            node = program.graph[name]
            reads, writes = sram_traffic(program.graph, node, plan, FP16)
            assert reads > 0 and writes > 0, name
            seen.add(node.op)
    assert {"matmul", "attention", "embedding", "layernorm"} <= seen


def test_fused_attention_by_hand() -> None:
    # 2 groups x 3 query rows, 5 keys, D = 4: a tile of 2 query rows and all 4 columns.
    graph, node = graph_of("attention", (2, 3, 4), (2, 3, 4), (2, 5, 4), (2, 5, 4))
    plan = plan_of(6, 4, 3, 1)
    pairs = 2 * 5
    assert sram_traffic(graph, node, plan, FP16) == (pairs * (4 + 4 + 3) * 2, pairs * (4 + 2) * 2)


# ------------------------------------------------------------------------------------------------ targets

SHIPPED = Path(wsc.targets.__file__).parent


def test_shipped_targets_carry_the_cs2_ports_and_the_cs3_twice_them() -> None:
    for name in wsc.targets.available_targets():
        t = load_target(name)
        ports = (32.0, 16.0) if name == "cs3-sim" else (16.0, 8.0)  # the CS-3's feed its 8 FMACs
        assert (t.sram_read_bytes_per_cycle, t.sram_write_bytes_per_cycle) == ports, name


def target_file(tmp_path: Path, **pe) -> str:
    doc = yaml.safe_load((SHIPPED / "mesh-16x16.yaml").read_text())
    for key in ("sram_read_bytes_per_cycle", "sram_write_bytes_per_cycle"):
        doc["pe"].pop(key)
    doc["pe"].update(pe)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_target_without_the_port_fields_gets_the_cs2_defaults(tmp_path: Path) -> None:
    t = load_target(target_file(tmp_path))
    assert (t.sram_read_bytes_per_cycle, t.sram_write_bytes_per_cycle) == (16.0, 8.0)


def test_wider_ports_halve_the_sram_time(tmp_path: Path) -> None:
    wide = load_target(target_file(tmp_path, sram_read_bytes_per_cycle=32, sram_write_bytes_per_cycle="16e0"))
    graph, node = graph_of("add", (ROWS, D), (ROWS, D), (ROWS, D))
    plan = plan_of(ROWS, D, 16, 16)
    assert sram_seconds(graph, node, plan, wide, FP16) == 48 / wide.clock_hz


@pytest.mark.parametrize(("value", "message"), [
    (-16, r"field 'pe.sram_read_bytes_per_cycle' must be a positive finite number, got -16"),
    (0, r"field 'pe.sram_read_bytes_per_cycle' must be a positive finite number, got 0"),
    ("wide", r"field 'pe.sram_read_bytes_per_cycle' must be a positive number, got 'wide'"),
    (True, r"field 'pe.sram_read_bytes_per_cycle' must be a positive number, got True"),
])
def test_bad_port_values_are_refused_on_one_line(tmp_path: Path, value, message: str) -> None:
    source = target_file(tmp_path, sram_read_bytes_per_cycle=value)
    with pytest.raises(WscError, match=message) as err:
        load_target(source)
    assert source in str(err.value) and "\n" not in str(err.value)


def test_unknown_pe_key_lists_the_port_fields(tmp_path: Path) -> None:
    with pytest.raises(WscError, match=r"field 'pe.sram_read_bytes' is not a known key; allowed here: flops_per_cycle, "
                                       r"sram_bytes, sram_read_bytes_per_cycle, sram_write_bytes_per_cycle"):
        load_target(target_file(tmp_path, sram_read_bytes=16))
