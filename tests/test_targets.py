"""Target files: the shipped ones load with the public numbers; malformed ones name the bad field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

import wsc.targets
from wsc.core.errors import WscError
from wsc.targets import Target, available_targets, load_target

SHIPPED = Path(wsc.targets.__file__).parent


def test_cs2_sim_has_the_public_numbers() -> None:
    t = load_target("cs2-sim")
    assert isinstance(t, Target)
    assert (t.rows, t.cols) == (750, 994)
    assert t.clock_hz == 850e6
    assert t.sram_bytes_per_pe == 49152
    assert t.flops_per_cycle_per_pe == {"fp16": 8.0, "fp32": 2.0}
    assert (t.link_bytes_per_cycle, t.hop_latency_cycles, t.colors) == (4.0, 1.0, 24)
    assert t.io_bytes_per_second == 150e9
    assert (t.sram_read_bytes_per_cycle, t.sram_write_bytes_per_cycle) == (16.0, 8.0)
    assert t.dead_pes == frozenset()
    assert t.usable_pes == 750 * 994
    assert t.peak_flops("fp16") == pytest.approx(750 * 994 * 8 * 850e6)


def test_every_shipped_target_loads_by_name_and_by_path() -> None:
    assert {"cs2-sim", "cs3-sim", "mesh-16x16", "mesh-64x64"} <= set(available_targets())
    for name in available_targets():
        assert load_target(name) == load_target(str(SHIPPED / f"{name}.yaml"))
    small = load_target("mesh-16x16")
    assert (small.rows, small.cols) == (16, 16)


def test_unknown_name_lists_the_available_targets() -> None:
    listed = "cs2-sim, cs3-sim, mesh-16x16, mesh-64x64"
    with pytest.raises(WscError, match=rf"unknown target 'cs9'; available targets: {listed}"):
        load_target("cs9")


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(WscError, match="does not exist"):
        load_target(str(tmp_path / "nope.yaml"))


def test_unknown_dtype_in_peak_flops_raises() -> None:
    with pytest.raises(WscError, match="no peak rate for dtype 'int4'"):
        load_target("mesh-16x16").peak_flops("int4")


def base() -> dict[str, Any]:
    return yaml.safe_load((SHIPPED / "mesh-16x16.yaml").read_text())


def write(tmp_path: Path, doc: Any) -> str:
    path = tmp_path / "t.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


def test_defects_load_as_row_col_pairs(tmp_path: Path) -> None:
    doc = base()
    doc["defects"] = {"dead_pes": [[0, 15], [3, 4]]}
    t = load_target(write(tmp_path, doc))
    assert t.dead_pes == frozenset({(0, 15), (3, 4)})
    assert t.usable_pes == 254


def test_numbers_yaml_reads_as_strings_are_accepted(tmp_path: Path) -> None:
    # YAML 1.1 reads 850e6 as a string; the loader accepts it as the number it obviously is.
    text = (SHIPPED / "mesh-16x16.yaml").read_text().replace("clock_hz: 1.0e+9", "clock_hz: 850e6")
    assert load_target(write(tmp_path, text)).clock_hz == 850e6


def edit(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base())
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


DELETE = object()

MALFORMED = {
    "missing section": (("fabric",), DELETE, r"field 'fabric' is missing"),
    "missing field": (("fabric", "colors"), DELETE, r"field 'fabric.colors' is missing"),
    "missing dtype": (
        ("pe", "flops_per_cycle", "fp32"),
        DELETE,
        r"field 'pe.flops_per_cycle.fp32' is missing",
    ),
    "negative rows": (("mesh", "rows"), -3, r"field 'mesh.rows' must be positive, got -3"),
    "zero clock": (("clock_hz",), 0, r"field 'clock_hz' must be a positive finite number"),
    "negative io": (
        ("io", "stream_bytes_per_second"),
        -1.5e9,
        r"field 'io.stream_bytes_per_second' must be a positive",
    ),
    "float rows": (("mesh", "cols"), 16.5, r"field 'mesh.cols' must be a positive integer, got 16.5"),
    "text number": (("clock_hz",), "fast", r"field 'clock_hz' must be a positive number, got 'fast'"),
    "bool colors": (("fabric", "colors"), True, r"field 'fabric.colors' must be a positive integer"),
    "unknown key": (("mesh", "depth"), 3, r"field 'mesh.depth' is not a known key; allowed here: cols, rows"),
    "unknown top key": (("frequency",), 1, r"field 'frequency' is not a known key"),
    "dead pe outside": (
        ("defects",),
        {"dead_pes": [[1, 1], [16, 0]]},
        r"'defects.dead_pes\[1\]' = \[16, 0\] is out",
    ),
    "dead pe not a pair": (
        ("defects",),
        {"dead_pes": [[1, 2, 3]]},
        r"'defects.dead_pes\[0\]' must be a \[row, col\]",
    ),
    "section not a mapping": (("pe",), [1, 2], r"field 'pe' must be a mapping"),
    "empty name": (("name",), "", r"field 'name' must be a non-empty string"),
    "unknown defect key": (("defects",), {"dead": [1]}, r"field 'defects.dead' is not a known key"),
    "dead row outside": (("defects",), {"dead_rows": [3, 16]}, r"'defects.dead_rows\[1\]' = 16 is outside 0..15"),
    "dead col not int": (("defects",), {"dead_cols": ["x"]}, r"'defects.dead_cols\[0\]' must be an integer"),
    "dead rows not list": (("defects",), {"dead_rows": 3}, r"'defects.dead_rows' must be a list"),
    "rate too big": (("defects",), {"rate": 1.5}, r"'defects.rate' must be a fraction of PEs in \[0, 1\)"),
    "rate negative": (("defects",), {"rate": -0.1}, r"'defects.rate' must be a fraction"),
    "rate text": (("defects",), {"rate": "lots"}, r"'defects.rate' must be a fraction"),
    "seed negative": (("defects",), {"rate": 0.1, "seed": -1}, r"'defects.seed' must be a non-negative integer"),
    "seed float": (("defects",), {"seed": 1.5}, r"'defects.seed' must be a non-negative integer"),
    "everything dead": (("defects",), {"rate": 0.999}, r"field 'defects' marks every PE dead"),
    "reserved colors too many": (
        ("fabric", "reserved_colors"), 8, r"'fabric.reserved_colors' must be an integer from 0 to colors - 1 = 7"
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_target_names_the_field(tmp_path: Path, case: str) -> None:
    path, value, message = MALFORMED[case]
    source = write(tmp_path, edit(path, value))
    with pytest.raises(WscError, match=message) as err:
        load_target(source)
    assert source in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    source = write(tmp_path, "name: x\nmesh: {rows: 4, cols: [\n")
    with pytest.raises(WscError, match=r"t\.yaml: invalid YAML at line \d+"):
        load_target(source)


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(WscError, match="must be a mapping"):
        load_target(write(tmp_path, "- 1\n- 2\n"))


def test_cs3_sim_has_the_public_numbers() -> None:
    t = load_target("cs3-sim")
    # Newer SDK fabric 762 x 1172 less the CS-2's 7-row, 2-col runtime border.
    assert (t.rows, t.cols) == (755, 1170)
    assert t.sram_bytes_per_pe == 48 * 1024
    assert t.flops_per_cycle_per_pe == {"fp16": 16.0, "fp32": 4.0}
    assert t.io_bytes_per_second == pytest.approx(150e9 * 1.3)
    assert (t.colors, t.reserved_colors, t.routable_colors) == (24, 6, 18)
    assert t.dead_pes == frozenset()


def test_cs3_sim_differs_from_cs2_sim_only_where_a_difference_is_published() -> None:
    # docs/hardware.md#cs3-sim: twice the fp16 rate and the SRAM ports that feed it, 30% more I/O, a larger
    # mesh; every other figure without a published CS-3 value is the CS-2's.
    cs2, cs3 = load_target("cs2-sim"), load_target("cs3-sim")
    assert cs3.flops_per_cycle_per_pe["fp16"] == 2 * cs2.flops_per_cycle_per_pe["fp16"]
    assert (cs3.sram_read_bytes_per_cycle, cs3.sram_write_bytes_per_cycle) == (32.0, 16.0)
    assert cs3.io_bytes_per_second == pytest.approx(1.3 * cs2.io_bytes_per_second)
    # The CS-2's runtime border (757 x 996 fabric -> 750 x 994) taken off the 762 x 1172 CS-3 fabric.
    assert (cs3.rows, cs3.cols) == (762 - (757 - cs2.rows), 1172 - (996 - cs2.cols))
    kept = (
        "sram_bytes_per_pe",
        "clock_hz",
        "link_bytes_per_cycle",
        "hop_latency_cycles",
        "colors",
        "reserved_colors",
    )
    assert {k: getattr(cs3, k) for k in kept} == {k: getattr(cs2, k) for k in kept}


@pytest.mark.parametrize("name", ["mesh-16x16", "mesh-64x64"])
def test_test_meshes_have_the_cs2_per_pe_numbers(name: str) -> None:
    cs2, mesh = load_target("cs2-sim"), load_target(name)
    per_pe = ("sram_bytes_per_pe", "flops_per_cycle_per_pe", "sram_read_bytes_per_cycle", "sram_write_bytes_per_cycle")
    assert {k: getattr(mesh, k) for k in per_pe} == {k: getattr(cs2, k) for k in per_pe}
    assert mesh.link_bytes_per_cycle == cs2.link_bytes_per_cycle


def test_cs2_sim_keeps_six_colors_for_the_runtime() -> None:
    assert load_target("cs2-sim").routable_colors == 18


def defective(tmp_path: Path, defects: dict[str, Any], name: str = "t.yaml") -> Target:
    doc = base()
    doc["defects"] = defects
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return load_target(str(path))


def test_dead_rows_and_cols_mark_whole_lines(tmp_path: Path) -> None:
    t = defective(tmp_path, {"dead_rows": [2], "dead_cols": [5], "dead_pes": [[2, 5], [9, 9]]})
    assert t.dead_pes == {(2, c) for c in range(16)} | {(r, 5) for r in range(16)} | {(9, 9)}
    assert t.usable_pes == 256 - (16 + 16 - 1 + 1)


def test_defect_rate_is_reproducible_with_its_seed(tmp_path: Path) -> None:
    a = defective(tmp_path, {"rate": 0.05, "seed": 7}, "a.yaml")
    b = defective(tmp_path, {"rate": 0.05, "seed": 7}, "b.yaml")
    c = defective(tmp_path, {"rate": 0.05, "seed": 8}, "c.yaml")
    assert a.dead_pes == b.dead_pes
    assert len(a.dead_pes) == round(0.05 * 256) == len(c.dead_pes)
    assert a.dead_pes != c.dead_pes
    # Listed PEs are added to the drawn ones; a PE both listed and drawn counts once.
    listed = sorted(a.dead_pes)[0]
    d = defective(tmp_path, {"rate": 0.05, "seed": 7, "dead_pes": [list(listed), [15, 15]]}, "d.yaml")
    assert d.dead_pes == a.dead_pes | {(15, 15)}


def test_mesh_64x64_is_a_faulty_test_wafer() -> None:
    t = load_target("mesh-64x64")
    assert {(56, c) for c in range(64)} <= t.dead_pes and {(r, 4) for r in range(64)} <= t.dead_pes
    assert len(t.dead_pes) > 64 + 63
