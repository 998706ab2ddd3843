"""Partition: tile tables cover each output exactly once, fit SRAM, and balance work across kernels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import tiny_gpt

from wsc import ops
from wsc.core.errors import WscError
from wsc.core.program import Cut, KernelPlan, Program, tile_table
from wsc.frontend.capture import capture
from wsc.passes.group_layers import GroupLayers
from wsc.passes.legalize import Legalize
from wsc.passes.partition import Partition, grid_for_area
from wsc.targets import load_target


def partitioned(model, inputs, target="mesh-16x16", **options) -> Program:
    program = Program(capture(model, inputs).graph, load_target(target))
    for step in (Legalize(), GroupLayers(), Partition(**options)):
        program = step(program)
        program.verify()
    return program


def test_tile_table_covers_each_element_once():
    tiles = tile_table(7, 10, 3, 4)
    hits = np.zeros((7, 10), int)
    for r0, r1, c0, c1 in tiles:
        hits[r0:r1, c0:c1] += 1
    assert (hits == 1).all()
    assert tiles.shape == (12, 4)
    assert tiles[1 * 4 + 2].tolist() == [2, 4, 5, 7]  # PE (1, 2): rows 2..4, cols 5..7


def test_grid_respects_output_and_mesh_limits():
    assert grid_for_area(128, 3072, 10_000, 750, 994) == (20, 500)  # aspect of the output: h/w ~ 128/3072
    h, w = grid_for_area(4, 100_000, 10**9, 750, 994)
    assert (h, w) == (4, 994)


def test_gpt_layers_fit_sram_and_stay_in_budget():
    model, inputs = tiny_gpt(layers=2)
    program = partitioned(model, inputs)
    target = program.target
    assert [layer.name for layer in program.layers] == ["embed", "blocks.0", "blocks.1", "head"]
    for layer in program.layers:
        assert sum(p.pes for p in layer.kernels.values()) <= target.usable_pes * 0.5
        for plan in layer.kernels.values():
            assert plan.sram_bytes_per_pe <= target.sram_bytes_per_pe - 8192
            assert plan.h <= target.rows and plan.w <= target.cols


def test_identical_blocks_share_one_mapping():
    model, inputs = tiny_gpt(layers=3)
    program = partitioned(model, inputs)
    grids = [[(p.h, p.w) for p in layer.kernels.values()] for layer in program.layers[1:4]]
    assert grids[0] == grids[1] == grids[2]


def test_areas_follow_work_on_a_large_mesh():
    model, inputs = tiny_gpt(layers=1, d_model=256, d_ffn=1024, seq=128)
    program = partitioned(model, inputs, target="cs2-sim")
    block = program.layers[1]
    fc = block.kernels["linear_2"]  # MLP up-projection: the most work in the block
    ln = block.kernels["layer_norm"]
    # Work ratio 2*K = 512 FLOPs per output vs 8 per element: areas follow it within the caps.
    assert fc.pes > 30 * ln.pes
    assert fc.pes < fc.rows * fc.cols  # not saturated: the balance decided it


def test_layer_too_big_for_the_mesh_is_a_clear_error():
    model, inputs = tiny_gpt(layers=1, d_model=256, d_ffn=1024, seq=64)
    message = r"mesh-16x16 does not fit: its 49,152 bytes of SRAM a PE leave nothing beside the 49,152 kept"
    with pytest.raises(WscError, match=message):
        partitioned(model, inputs, reserved_bytes=48 * 1024)


def test_a_plan_is_its_cut_the_tiles_and_k_slices_follow_from_it():
    plan = KernelPlan("k", 7, 10, Cut(3, 4, 2), 6, 4, 0, k_dim=9)
    assert plan.tiles.tolist() == tile_table(7, 10, 3, 4).tolist()
    assert plan.k_bounds.tolist() == [0, 4, 9] and plan.k_slice == 5
    assert (plan.row_blocks, plan.col_blocks, plan.k_splits, plan.active_pes) == (3, 4, 2, 24)
    with pytest.raises(ValueError, match="read-only"):
        plan.tiles[0, 1] = 5  # a plan changes by being cut again, never by editing its tables
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.cut = Cut(1, 1)  # type: ignore[misc]
    recut = dataclasses.replace(plan, cut=Cut(7, 1))
    assert recut.tiles.tolist() == tile_table(7, 10, 7, 1).tolist() and recut.k_bounds.tolist() == [0, 9]


def test_partition_leaves_the_program_it_was_given_as_it_was():
    model, inputs = tiny_gpt(layers=1)
    program = Program(capture(model, inputs).graph, load_target("mesh-16x16"))
    for step in (Legalize(), GroupLayers()):
        program = step(program)
    partitioned_once = Partition()(program)
    assert all(not layer.kernels for layer in program.layers) and program.fill == 0.0
    assert all(layer.kernels for layer in partitioned_once.layers[1:]) and partitioned_once.fill == 0.5


def test_the_op_tables_check_catches_a_plan_over_the_wrong_reduction():
    model, inputs = tiny_gpt(layers=1)
    program = partitioned(model, inputs)
    ops.verify_plans(program)
    layer = program.layers[1]
    name, plan = next((n, p) for n, p in layer.kernels.items() if p.k_dim > 1)
    layer.kernels[name] = dataclasses.replace(plan, k_dim=plan.k_dim // 2)
    program.verify()  # the core sees slices that cover the plan's own K ...
    with pytest.raises(AssertionError, match=rf"kernel {name}: plan over rows, cols, K"):
        ops.verify_plans(program)  # ... the op table knows the node's
