"""`wsc check`: a legal mapping passes; each kind of violation in a hand-made placement.json is caught."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_gpt

from wsc.artifacts.check import Malformed, check_output, main
from wsc.artifacts.report import placement_json
from wsc.artifacts.routes_json import route_json
from wsc.pipeline import compile_model
from wsc.targets import load_target

# 8 x 8 mesh, dead PE at (7, 7); a (2x2 at 0,0) -> b (2x2 at 4,0): one lane per row, east along rows 0, 1.
GOOD: dict[str, Any] = {
    "schema": 1,
    "target": "hand",
    "mesh": {"rows": 8, "cols": 8, "dead_pes": [[7, 7], [5, 5]], "sram_bytes_per_pe": 1000, "routable_colors": 2},
    "layers": [{
        "index": 0,
        "name": "l",
        "kernels": [
            {"name": "a", "op": "matmul", "x": 0, "y": 0, "w": 2, "h": 2, "sram_bytes_per_pe": 900},
            {"name": "b", "op": "add", "x": 4, "y": 0, "w": 2, "h": 2, "sram_bytes_per_pe": 100},
            {"name": "c", "op": "add", "x": 4, "y": 4, "w": 2, "h": 2, "sram_bytes_per_pe": 100, "pes": 3},
        ],
        "edges": [
            {"src": "a", "dst": "b", "bytes": 8,
             "route": {"router": "xy", "color": 0, "lanes": 2, "hops": 3,
                       "paths": [[[0, 1], [0, 4]], [[1, 1], [1, 4]]]}},
            {"src": "b", "dst": "c", "bytes": 8,
             "route": {"router": "xy", "color": 0, "lanes": 1, "hops": 3, "paths": [[[1, 4], [4, 4]]]}},
        ],
    }],
}


def write(tmp_path: Path, doc: Any) -> Path:
    (tmp_path / "placement.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return tmp_path


def broken(edit) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    edit(doc)
    return doc


def test_legal_mapping_passes_with_a_summary(tmp_path: Path, capsys) -> None:
    out = write(tmp_path, GOOD)
    assert check_output(out) == []
    assert main([str(out)]) == 0
    line = capsys.readouterr().out
    assert line.startswith("legal:") and "1 layers, 3 kernels, 2 edges" in line and "(2 dead PEs)" in line


def k(doc: dict[str, Any], i: int) -> dict[str, Any]:
    return doc["layers"][0]["kernels"][i]


def e(doc: dict[str, Any], i: int) -> dict[str, Any]:
    return doc["layers"][0]["edges"][i]


VIOLATIONS = {
    "outside": (lambda d: k(d, 1).update(x=7), r"kernel b at x=7 y=0 size 2x2 is outside the 8 x 8 mesh"),
    "overlap": (lambda d: k(d, 1).update(x=1), r"kernels a and b overlap"),
    "dead covered": (lambda d: k(d, 1).update(x=6, y=6), r"kernel b covers 1 dead PEs but needs every PE"),
    "too few working": (lambda d: k(d, 2).update(pes=4), r"kernel c has 3 working PEs \(1 dead\) but its tiles need 4"),
    "sram": (lambda d: k(d, 0).update(sram_bytes_per_pe=1001), r"kernel a needs 1001 bytes .* the target has 1000"),
    "not routed": (lambda d: e(d, 0).pop("route"), r"edge a -> b is not routed"),
    "zero lanes": (lambda d: e(d, 0)["route"].update(lanes=0), r"edge a -> b is not routed"),
    "unknown kernel": (lambda d: e(d, 1).update(dst="z"), r"edge b -> z names a kernel the layer does not place"),
    "color over limit": (lambda d: e(d, 0)["route"].update(color=2), r"has color 2 \(routable colors: 0..1\)"),
    "path misses dst": (lambda d: e(d, 0)["route"].update(paths=[[[0, 1], [0, 3]], [[1, 1], [1, 4]]]),
                        r"lane 0: ends at \(0, 3\), outside the destination kernel"),
    "path starts outside": (lambda d: e(d, 0)["route"].update(paths=[[[2, 1], [2, 4], [1, 4]], [[1, 1], [1, 4]]]),
                            r"lane 0: starts at \(2, 1\), outside the source kernel"),
    "diagonal leg": (lambda d: e(d, 0)["route"].update(paths=[[[0, 1], [1, 4]], [[1, 1], [1, 4]]]),
                     r"leg \(0, 1\) -> \(1, 4\) is not straight"),
    "through dead": (lambda d: e(d, 1)["route"].update(paths=[[[1, 5], [5, 5], [5, 4]]]),
                     r"leg \(1, 5\) -> \(5, 5\) passes a dead PE"),
    "lane count": (lambda d: e(d, 0)["route"].update(lanes=3), r"lists 2 paths for 3 lanes"),
    "shared link same color": (
        lambda d: e(d, 1)["route"].update(paths=[[[1, 4], [1, 3], [1, 4], [4, 4]]]),
        r"edge b -> c shares a link with another edge of color 0",
    ),
}


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_each_violation_is_caught(tmp_path: Path, case: str, capsys) -> None:
    edit, message = VIOLATIONS[case]
    out = write(tmp_path, broken(edit))
    problems = check_output(out)
    assert any(__import__("re").search(message, p) for p in problems), problems
    assert main([str(out)]) == 1
    assert "violation" in capsys.readouterr().out


def test_same_link_with_different_colors_is_fine(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        e(d, 1)["route"].update(color=1, paths=[[[1, 4], [1, 3], [1, 4], [4, 4]]])

    assert check_output(write(tmp_path, broken(edit))) == []


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level must be an object"),
    (json.dumps({"mesh": {"rows": 8}}), "missing key 'cols'"),
    (json.dumps({**GOOD, "layers": "x"}), "key 'layers' must be list"),
])
def test_missing_or_malformed_file_exits_2_with_one_line(tmp_path: Path, capsys, content, message) -> None:
    if content is not None:
        write(tmp_path, content)
    with pytest.raises(Malformed, match=message):
        check_output(tmp_path)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_compiled_tiny_gpt_on_a_faulty_mesh_is_legal(tmp_path: Path) -> None:
    """The whole chain on mesh-64x64 (1% dead, a dead row and column), with the keys proposed for
    placement.json added the way report.py would add them."""
    target = load_target("mesh-64x64")
    model, inputs = tiny_gpt(layers=1, seq=8)
    program = compile_model(model, inputs, target, time_limit=0.5).program
    doc = placement_json(program)
    doc["mesh"].update(sram_bytes_per_pe=target.sram_bytes_per_pe, routable_colors=target.routable_colors)
    for layer, entry in zip(program.layers, doc["layers"], strict=True):
        for kernel in entry["kernels"]:
            kernel["pes"] = layer.kernels[kernel["name"]].pes
        for i, edge in enumerate(entry["edges"]):
            edge["route"] = route_json(layer.routes, i)
    out = write(tmp_path, doc)
    assert check_output(out) == []
    # Some kernel really does sit over dead PEs, holding its tiles on the working ones.
    dead = {tuple(p) for p in doc["mesh"]["dead_pes"]}
    assert any(
        any(k["y"] <= r < k["y"] + k["h"] and k["x"] <= c < k["x"] + k["w"] for r, c in dead)
        for entry in doc["layers"] for k in entry["kernels"]
    )
