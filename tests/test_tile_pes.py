"""Tiles to PEs: which working PE of a kernel's rectangle holds each slot (block * k_splits + k_slice), in the
compiler (`wsc.core.mesh.tile_pes`, `Program.tile_pe`), in placement.json (`tile_pes`: the rule and the moved
runs) and in `wsc check`, which re-derives it and catches a tile put where the rule does not put it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SMALL_PE_TARGET, tiny_gpt

from wsc.artifacts.check import Malformed, check_output, main
from wsc.artifacts.report import placement_json
from wsc.core.errors import WscError
from wsc.core.mesh import Mesh, Rect, mesh_of, tile_pes
from wsc.pipeline import compile_model
from wsc.targets import load_target


def row_major(rect: Rect, count: int, dead: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """The rule by plain loops: (x, y) of the first `count` PEs of the rectangle, row by row, that are not
    dead ((row, col) pairs)."""
    pes = [(x, y) for y in range(rect.y, rect.y + rect.h) for x in range(rect.x, rect.x + rect.w)
           if (y, x) not in dead]
    return pes[:count]


def decode(kernel: dict[str, Any]) -> list[tuple[int, int]]:
    """placement.json's tile_pes read back by plain loops: the clean rule, then each moved run."""
    x0, y0, w = kernel["x"], kernel["y"], kernel["w"]
    count = int(np.prod(kernel["grid"]))
    pes = [(x0 + p % w, y0 + p // w) for p in range(count)]
    for slot, x, y, n in kernel["tile_pes"]["moved"]:
        first = (y - y0) * w + (x - x0)
        for i in range(n):
            pes[slot + i] = (x0 + (first + i) % w, y0 + (first + i) // w)
    return pes


# ------------------------------------------------------------------------------------------ the function


def test_clean_rectangle_is_the_clean_rule() -> None:
    rect = Rect("k", x=3, y=2, w=4, h=3)
    pes = tile_pes(rect, 10, np.zeros((8, 9), dtype=bool))
    assert pes.shape == (10, 2) and pes.dtype == np.int64
    assert pes.tolist() == [[3 + p % 4, 2 + p // 4] for p in range(10)]
    assert tile_pes(rect, 10, Mesh(8, 9)).tolist() == pes.tolist()  # a Mesh works as the grid


def test_dead_pes_push_later_slots_along_row_major() -> None:
    # Dead (row, col) pairs: (2, 5) is x=5 on the rectangle's first row, (3, 3) its second row's first PE, and
    # (2, 0) lies outside the rectangle (it moves nothing).
    dead = {(2, 5), (3, 3), (2, 0)}
    mesh = Mesh(8, 9, frozenset(dead))
    rect = Rect("k", x=3, y=2, w=4, h=3)
    pes = tile_pes(rect, 10, mesh)
    assert [tuple(p) for p in pes.tolist()] == row_major(rect, 10, dead)
    assert pes[:3].tolist() == [[3, 2], [4, 2], [6, 2]]  # slot 2 skips the dead x=5
    assert pes[3].tolist() == [4, 3]  # slot 3 skips x=3 on the next row
    assert pes[-1].tolist() == [6, 4]  # two dead PEs before it: slot 9 on offset 11, the last PE


def test_too_few_working_pes_is_a_clear_error() -> None:
    mesh = Mesh(8, 9, frozenset({(2, 5), (3, 3)}))
    rect = Rect("mm", x=3, y=2, w=4, h=3)
    assert len(tile_pes(rect, 10, mesh)) == 10  # 12 PEs, 2 dead: 10 fit
    with pytest.raises(WscError, match=r"kernel mm's 4x3 rectangle at x=3, y=2 holds 10 working PEs, fewer than "
                                       r"the kernel's 11 tiles"):
        tile_pes(rect, 11, mesh)
    with pytest.raises(WscError, match="is not inside the 8 x 9 mesh"):
        tile_pes(Rect("mm", x=7, y=2, w=4, h=3), 1, mesh)


def test_a_wafer_sized_kernel_is_fast() -> None:
    """~380k tiles, as a cs2-sim layer has, on a wafer with 1% dead PEs: vectorised, well under a second."""
    import time

    rng = np.random.default_rng(0)
    grid = rng.random((750, 994)) < 0.01
    rect = Rect("big", x=0, y=0, w=994, h=400)
    start = time.perf_counter()
    pes = tile_pes(rect, 390_000, grid)
    assert time.perf_counter() - start < 1.0
    assert not grid[pes[:, 1], pes[:, 0]].any() and len(np.unique(pes[:, 1] * 994 + pes[:, 0])) == 390_000


# ------------------------------------------------------------------------------------- compiled programs


@pytest.fixture(scope="module")
def small_pe(tmp_path_factory) -> tuple[Path, Path]:
    """The small-PE target (which forces a K split) clean, and with 3% of its PEs dead and a dead column."""
    folder = tmp_path_factory.mktemp("targets")
    clean = folder / "small.yaml"
    clean.write_text(SMALL_PE_TARGET)
    faulty = folder / "small-faulty.yaml"
    faulty.write_text(SMALL_PE_TARGET.replace("name: small-pe", "name: small-pe-faulty")
                      + "defects: {rate: 0.03, seed: 1, dead_cols: [2]}\n")
    return clean, faulty


@pytest.fixture(scope="module")
def programs(small_pe):
    model, inputs = tiny_gpt(layers=1, d_model=32, d_ffn=1024, seq=8)
    return {name: compile_model(model, inputs, load_target(str(path)), time_limit=0.3).program
            for name, path in zip(("clean", "faulty"), small_pe, strict=True)}


def kernels(program):
    for layer in program.layers:
        for name, plan in layer.kernels.items():
            yield layer, name, plan, layer.placement.rects[name]


def test_clean_mesh_program_and_placement_json_follow_the_clean_rule(programs) -> None:
    program = programs["clean"]
    doc = placement_json(program)
    for (layer, name, plan, rect), entry in zip(kernels(program), [k for e in doc["layers"] for k in e["kernels"]],
                                               strict=True):
        p = np.arange(plan.active_pes)
        assert program.tile_pes(layer, name).tolist() == np.stack([rect.x + p % rect.w, rect.y + p // rect.w],
                                                                   axis=1).tolist()
        assert entry["tile_pes"] == {"rule": "row-major over the working PEs", "moved": []}


def test_k_splits_slots_are_block_times_k_splits_plus_slice(programs) -> None:
    for program in programs.values():
        split = [(layer, name, plan, rect) for layer, name, plan, rect in kernels(program) if plan.k_splits > 1]
        assert split, "the small PEs should force a K split"
        dead = mesh_of(program.target).dead
        for layer, name, plan, rect in split:
            rule = row_major(rect, plan.active_pes, dead)
            blocks = plan.row_blocks * plan.col_blocks
            for block in {0, 1, blocks // 2, blocks - 1}:
                for s in range(plan.k_splits):
                    assert program.tile_pe(layer, name, block, s) == rule[block * plan.k_splits + s]
                    assert program.tile_pe(layer.index, name, block, s) == rule[block * plan.k_splits + s]


def test_tile_pe_refuses_what_the_kernel_does_not_have(programs) -> None:
    program = programs["clean"]
    layer, name, plan, _ = next(e for e in kernels(program) if e[2].k_splits > 1)
    blocks = plan.row_blocks * plan.col_blocks
    with pytest.raises(WscError, match=rf"block {blocks} is not a block of kernel {name} .*0..{blocks - 1}"):
        program.tile_pe(layer, name, blocks, 0)
    with pytest.raises(WscError, match=rf"K slice {plan.k_splits} is not a slice .*0..{plan.k_splits - 1}"):
        program.tile_pe(layer, name, 0, plan.k_splits)
    with pytest.raises(WscError, match=r"has no kernel 'nope'; its \d+ kernels are"):
        program.tile_pe(layer, "nope", 0, 0)
    with pytest.raises(WscError, match=r"layer 99 is not a layer of this program"):
        program.tile_pe(99, name, 0, 0)


def test_faulty_mesh_tiles_skip_dead_and_cut_off_pes(programs, tmp_path) -> None:
    """On the faulty target every kernel's slots are the rule by plain loops (dead PEs and the columns the
    dead column 2 cuts off skipped), placement.json's runs decode to them, and `wsc check` agrees."""
    program = programs["faulty"]
    dead = mesh_of(program.target).dead
    assert {(r, c) for r in range(64) for c in (0, 1)} <= dead  # cut off by dead column 2
    doc = placement_json(program)
    entries = [k for e in doc["layers"] for k in e["kernels"]]
    moved = 0
    for (layer, name, plan, rect), entry in zip(kernels(program), entries, strict=True):
        rule = row_major(rect, plan.active_pes, dead)
        assert [tuple(p) for p in program.tile_pes(layer, name).tolist()] == rule
        assert decode(entry) == rule
        runs = entry["tile_pes"]["moved"]
        assert all(slot != (y - rect.y) * rect.w + x - rect.x for slot, x, y, _ in runs)  # only moved slots
        moved += sum(n for *_, n in runs)
    assert moved > 0
    (tmp_path / "placement.json").write_text(json.dumps(doc))
    assert check_output(tmp_path) == []


# ---------------------------------------------------------------------------------------- wsc check


@pytest.fixture(scope="module")
def faulty_doc(programs) -> dict[str, Any]:
    return placement_json(programs["faulty"])


def offset(kernel: dict[str, Any], pe: tuple[int, int]) -> int:
    return (pe[1] - kernel["y"]) * kernel["w"] + pe[0] - kernel["x"]


def at(kernel: dict[str, Any], off: int) -> tuple[int, int]:
    return kernel["x"] + off % kernel["w"], kernel["y"] + off // kernel["w"]


def runs(doc: dict[str, Any]):
    """Every moved run of the doc with its layer, kernel, index in `moved`, and the PEs the run jumps over
    (between the previous slot's PE and its first slot's)."""
    for layer in doc["layers"]:
        for k in layer["kernels"]:
            pes = decode(k)
            for i, (slot, x, y, _) in enumerate(k["tile_pes"]["moved"]):
                before = offset(k, pes[slot - 1]) if slot else -1
                yield layer, k, i, [at(k, o) for o in range(before + 1, offset(k, (x, y)))]


def where(layer: dict[str, Any], kernel: dict[str, Any]) -> str:
    return re.escape(f"layer {layer['index']} ({layer['name']}): kernel {kernel['name']}")


def one_violation(tmp_path: Path, doc: dict[str, Any], pattern: str, capsys) -> None:
    """`wsc check` finds the violation (one line matching `pattern`) and exits 1 printing it."""
    (tmp_path / "placement.json").write_text(json.dumps(doc))
    problems = check_output(tmp_path)
    assert any(re.fullmatch(pattern, p) for p in problems), problems
    assert main([str(tmp_path)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(pattern, line.strip()) for line in printed), printed


def test_a_tile_moved_onto_a_dead_pe_is_caught(faulty_doc, tmp_path, capsys) -> None:
    doc = copy.deepcopy(faulty_doc)
    dead = {(c, r) for r, c in doc["mesh"]["dead_pes"]}  # as (x, y)
    # A run whose first slot jumps over a dead PE: put that slot back on the dead PE.
    layer, k, i, pe = next((layer, k, i, pe) for layer, k, i, skipped in runs(doc) for pe in skipped if pe in dead)
    run = k["tile_pes"]["moved"][i]
    run[1:3] = pe
    one_violation(tmp_path, doc, rf"{where(layer, k)} slot {run[0]} is on dead PE \(x={pe[0]}, y={pe[1]}\)"
                                 r"( \(and \d+ more slots on dead or cut-off PEs\))?", capsys)


def test_a_tile_cut_off_by_the_dead_column_is_caught(faulty_doc, tmp_path, capsys) -> None:
    doc = copy.deepcopy(faulty_doc)
    dead = {(c, r) for r, c in doc["mesh"]["dead_pes"]}
    # Columns 0 and 1 are working PEs, but the dead column 2 cuts them off: a run may not land there.
    layer, k, i, pe = next((layer, k, i, pe) for layer, k, i, skipped in runs(doc) for pe in skipped
                           if pe not in dead and pe[0] < 2)
    run = k["tile_pes"]["moved"][i]
    run[1:3] = pe
    one_violation(tmp_path, doc, rf"{where(layer, k)} slot {run[0]} is on PE \(x={pe[0]}, y={pe[1]}\), which dead "
                                 r"PEs cut off from the mesh's largest region of working PEs( \(and \d+ more .*\))?",
                  capsys)


def test_a_tile_outside_its_rectangle_is_caught(faulty_doc, tmp_path, capsys) -> None:
    doc = copy.deepcopy(faulty_doc)
    layer, k, i, _ = next(runs(doc))
    run = k["tile_pes"]["moved"][i]
    run[1:3] = [k["x"] + k["w"], k["y"]]  # one column right of the rectangle
    one_violation(tmp_path, doc, rf"{where(layer, k)} slot {run[0]} is on PE \(x={k['x'] + k['w']}, y={k['y']}\), "
                                 rf"outside its rectangle \(x {k['x']}\.\.{k['x'] + k['w'] - 1}, y .*\)", capsys)
    doc = copy.deepcopy(faulty_doc)
    layer, k, i, _ = next(runs(doc))
    run = k["tile_pes"]["moved"][-1]
    run[3] += k["w"] * k["h"]  # the last run now runs past the rectangle's bottom ...
    k["grid"] = [1, 1, run[0] + run[3]]  # ... and the grid has slots for it
    one_violation(tmp_path, doc, rf"{where(layer, k)} slot \d+ is on PE \(x={k['x']}, y={k['y'] + k['h']}\), "
                                 r"outside its rectangle .*", capsys)


def test_a_tile_moved_without_a_dead_pe_before_it_is_caught(faulty_doc, tmp_path, capsys) -> None:
    # A kernel's last run moved one PE further on, onto a working PE of the main region the rule leaves idle.
    doc = copy.deepcopy(faulty_doc)
    dead = {(c, r) for r, c in doc["mesh"]["dead_pes"]}
    for layer in doc["layers"]:
        for k in layer["kernels"]:
            moved = k["tile_pes"]["moved"]
            if moved and offset(k, tuple(moved[-1][1:3])) + moved[-1][3] < k["w"] * k["h"]:
                end = at(k, offset(k, tuple(moved[-1][1:3])) + moved[-1][3])
                start = at(k, offset(k, tuple(moved[-1][1:3])) + 1)
                if end not in dead and end[0] >= 2 and start not in dead and start[0] >= 2:
                    break
        else:
            continue
        break
    else:
        raise AssertionError("no kernel with a working PE after its last run")
    run = moved[-1]
    rule = tuple(run[1:3])
    run[1:3] = start
    one_violation(tmp_path, doc, rf"{where(layer, k)} slot {run[0]} is on PE \(x={start[0]}, y={start[1]}\), but "
                                 rf"row-major over the working PEs puts it on \(x={rule[0]}, y={rule[1]}\): a slot "
                                 r"moves only past dead PEs before it", capsys)
    # Listing a slot that sits where the clean rule puts it is refused too: moved lists only moved slots.
    doc = copy.deepcopy(faulty_doc)
    layer, k, _, _ = next((layer, k, i, s) for layer, k, i, s in runs(doc) if k["tile_pes"]["moved"][0][0] > 0)
    k["tile_pes"]["moved"].insert(0, [0, k["x"], k["y"], 1])
    one_violation(tmp_path, doc, rf"{where(layer, k)}: tile_pes.moved lists slot 0, but \(x={k['x']}, y={k['y']}\) "
                                 r"is its clean-mesh PE: only moved slots are listed", capsys)


# A hand-made 6 x 8 mesh: dead column 5 cuts off columns 6 and 7; dead PE (row 1, col 2).
HAND: dict[str, Any] = {
    "schema": 1, "target": "hand",
    "mesh": {"rows": 6, "cols": 8, "dead_pes": [[1, 2]] + [[r, 5] for r in range(6)], "sram_bytes_per_pe": 1000},
    "layers": [{"index": 0, "name": "l", "edges": [], "kernels": [
        # 4 x 2 at (0, 0) over the dead (x=2, y=1); 6 slots (3 blocks, 2 K slices) end at (1, 1): none moves.
        {"name": "a", "op": "matmul", "x": 0, "y": 0, "w": 4, "h": 2, "pes": 7, "grid": [3, 1, 2],
         "tile_pes": {"rule": "row-major over the working PEs", "moved": []}},
        # 3 x 3 at (1, 2): (2, 1) is not in it; 7 slots, 2 idle PEs.
        {"name": "b", "op": "add", "x": 1, "y": 2, "w": 3, "h": 3, "pes": 9, "grid": [7, 1, 1],
         "tile_pes": {"rule": "row-major over the working PEs", "moved": []}},
        # 3 x 2 at (4, 4) covers the dead column 5 and the cut-off column 6: slots go to x=4 only.
        {"name": "c", "op": "add", "x": 4, "y": 4, "w": 3, "h": 2, "pes": 2, "grid": [2, 1, 1],
         "tile_pes": {"rule": "row-major over the working PEs", "moved": [[1, 4, 5, 1]]}},
    ]}],
}


def hand(edit=None) -> dict[str, Any]:
    doc = copy.deepcopy(HAND)
    if edit:
        edit(doc)
    return doc


def kernel(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(k for k in doc["layers"][0]["kernels"] if k["name"] == name)


HAND_VIOLATIONS = {
    "idle PE instead": (lambda d: kernel(d, "b")["tile_pes"]["moved"].append([6, 3, 4, 1]),
                        r"layer 0 \(l\): kernel b slot 6 is on PE \(x=3, y=4\), but row-major over the working PEs "
                        r"puts it on \(x=1, y=4\): a slot moves only past dead PEs before it"),
    "shared PE": (lambda d: kernel(d, "b")["tile_pes"]["moved"].append([1, 1, 2, 1]),
                  r"layer 0 \(l\): kernel b slot 0 and kernel b slot 1 are both on PE \(x=1, y=2\)"),
    "cut off": (lambda d: kernel(d, "c")["tile_pes"].update(moved=[[1, 6, 4, 1]]),
                r"layer 0 \(l\): kernel c slot 1 is on PE \(x=6, y=4\), which dead PEs cut off from the mesh's "
                r"largest region of working PEs"),
    "dead": (lambda d: kernel(d, "a")["tile_pes"]["moved"].append([4, 2, 1, 2]),
             r"layer 0 \(l\): kernel a slot 4 is on dead PE \(x=2, y=1\)"),
    "unknown rule": (lambda d: kernel(d, "a")["tile_pes"].update(rule="column-major"),
                     r"layer 0 \(l\): kernel a maps its tiles by rule 'column-major'; .*"),
    "runs out of order": (lambda d: kernel(d, "b")["tile_pes"].update(moved=[[5, 1, 4, 1], [4, 2, 4, 1]]),
                          r"layer 0 \(l\): kernel b: tile_pes.moved run \[4, 2, 4, 1\] names slots outside 0..6 or "
                          r"already listed \(runs go in slot order\)"),
}


def test_the_hand_made_mapping_is_legal(tmp_path) -> None:
    (tmp_path / "placement.json").write_text(json.dumps(HAND))
    assert check_output(tmp_path) == []
    # Without the cut-off run, slot 1 of c would be on the cut-off column 6.
    (tmp_path / "placement.json").write_text(json.dumps(hand(lambda d: kernel(d, "c")["tile_pes"].update(moved=[]))))
    assert any("slot 1 is on dead PE (x=5, y=4)" in p for p in check_output(tmp_path))


@pytest.mark.parametrize("case", list(HAND_VIOLATIONS))
def test_each_tile_violation_is_caught(tmp_path, case, capsys) -> None:
    edit, pattern = HAND_VIOLATIONS[case]
    one_violation(tmp_path, hand(edit), pattern, capsys)


def test_files_without_tile_pes_are_still_checked_and_bad_runs_are_malformed(faulty_doc, tmp_path, capsys) -> None:
    doc = copy.deepcopy(faulty_doc)
    for layer in doc["layers"]:
        for k in layer["kernels"]:
            del k["tile_pes"]
    (tmp_path / "placement.json").write_text(json.dumps(doc))
    assert check_output(tmp_path) == []
    doc = hand(lambda d: kernel(d, "c")["tile_pes"].update(moved=[[1, 4]]))
    (tmp_path / "placement.json").write_text(json.dumps(doc))
    with pytest.raises(Malformed, match=r"kernel c: tile_pes.moved holds \[1, 4\], not a run \[slot, x, y, n\]"):
        check_output(tmp_path)
    doc = hand(lambda d: kernel(d, "c").pop("grid"))
    (tmp_path / "placement.json").write_text(json.dumps(doc))
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kernel c has tile_pes but no grid" in err
