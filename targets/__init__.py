"""Machine descriptions: YAML target files and the loader that validates them.

A target is data, not code, so that a new wafer (or a defect map of a particular one) needs no Python
change. The loader is strict: a typo in a target file would otherwise silently change every performance
number downstream, so every field is checked and unknown keys are rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from wsc.errors import WscError

DTYPES = ("fp16", "fp32")


@dataclass(frozen=True)
class Target:
    """One wafer-scale machine as the compiler and the performance model see it."""

    name: str
    description: str
    rows: int
    cols: int
    sram_bytes_per_pe: int
    clock_hz: float
    flops_per_cycle_per_pe: dict[str, float]
    link_bytes_per_cycle: float
    hop_latency_cycles: float
    colors: int
    io_bytes_per_second: float
    dead_pes: frozenset[tuple[int, int]]  # (row, col)

    @property
    def usable_pes(self) -> int:
        """PEs a kernel may occupy: the mesh less its dead PEs."""
        return self.rows * self.cols - len(self.dead_pes)

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s of the usable PEs for `dtype` ("fp16" or "fp32")."""
        if dtype not in self.flops_per_cycle_per_pe:
            raise WscError(
                f"target {self.name!r} has no peak rate for dtype {dtype!r}; use one of {', '.join(DTYPES)}"
            )
        return self.usable_pes * self.flops_per_cycle_per_pe[dtype] * self.clock_hz


def available_targets() -> list[str]:
    """Names of the target files shipped with the package."""
    root = resources.files(__name__)
    return sorted(p.name.rsplit(".", 1)[0] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_target(name_or_path: str) -> Target:
    """Load a packaged target by name ("cs2-sim") or a target file by path (*.yaml, *.yml, or with a '/')."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or "\\" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise WscError(f"target file {name_or_path} does not exist; give the path of a YAML target file")
        return _parse(path.read_text(encoding="utf-8"), str(path))
    if name_or_path not in available_targets():
        raise WscError(
            f"unknown target {name_or_path!r}; available targets: {', '.join(available_targets())} "
            "(or give a path to a .yaml file)"
        )
    text = resources.files(__name__).joinpath(f"{name_or_path}.yaml").read_text(encoding="utf-8")
    return _parse(text, f"{name_or_path}.yaml")


# PyYAML follows YAML 1.1, which reads `850e6` (no dot, unsigned exponent) as a string. Accept such
# spellings so a target author is not punished for writing a number the obvious way.
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")

# Schema: section -> {key: kind}; kind "int" = positive integer, "num" = positive number, "str" = text.
_SCHEMA: dict[str, dict[str, str]] = {
    "mesh": {"rows": "int", "cols": "int"},
    "pe": {"sram_bytes": "int", "flops_per_cycle": "flops"},
    "fabric": {"link_bytes_per_cycle": "num", "hop_latency_cycles": "num", "colors": "int"},
    "io": {"stream_bytes_per_second": "num"},
}
_TOP = {"name": "str", "description": "str", "clock_hz": "num", **{k: "section" for k in _SCHEMA}}
_OPTIONAL_TOP = {"defects": {"dead_pes"}}


class _Checker:
    """Field checks that all report the file and the dotted field name."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> WscError:
        return WscError(f"target file {self.source}: field '{field}' {problem}")

    def mapping(self, value: Any, field: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be a mapping with keys {', '.join(sorted(allowed))}")
        for key in value:
            if key not in allowed:
                raise self.fail(
                    f"{field}.{key}" if field else str(key),
                    f"is not a known key; allowed here: {', '.join(sorted(allowed))}",
                )
        for key in sorted(required):
            if key not in value:
                raise self.fail(f"{field}.{key}" if field else key, "is missing; add it")
        return value

    def positive_int(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be a positive integer, got {value!r}")
        if value <= 0:
            raise self.fail(field, f"must be positive, got {value}")
        return value

    def positive_num(self, value: Any, field: str) -> float:
        if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"must be a positive number, got {value!r}")
        if not value > 0 or value == float("inf"):
            raise self.fail(field, f"must be a positive finite number, got {value}")
        return float(value)

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"must be a non-empty string, got {value!r}")
        return value.strip()


def _parse(text: str, source: str) -> Target:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise WscError(f"target file {source}: invalid YAML{at}; fix the syntax") from None
    c = _Checker(source)
    top = c.mapping(doc, "", set(_TOP) | set(_OPTIONAL_TOP), set(_TOP))
    sec = {s: c.mapping(top[s], s, set(keys), set(keys)) for s, keys in _SCHEMA.items()}

    flops_raw = c.mapping(sec["pe"]["flops_per_cycle"], "pe.flops_per_cycle", set(DTYPES), set(DTYPES))
    flops = {d: c.positive_num(flops_raw[d], f"pe.flops_per_cycle.{d}") for d in DTYPES}
    rows = c.positive_int(sec["mesh"]["rows"], "mesh.rows")
    cols = c.positive_int(sec["mesh"]["cols"], "mesh.cols")

    dead: set[tuple[int, int]] = set()
    if "defects" in top:
        defects = c.mapping(top["defects"], "defects", _OPTIONAL_TOP["defects"], set())
        dead = _dead_pes(c, defects.get("dead_pes", []), rows, cols)
    if len(dead) >= rows * cols:
        raise c.fail("defects.dead_pes", "marks every PE dead; at least one PE must be usable")

    return Target(
        name=c.text(top["name"], "name"),
        description=c.text(top["description"], "description"),
        rows=rows,
        cols=cols,
        sram_bytes_per_pe=c.positive_int(sec["pe"]["sram_bytes"], "pe.sram_bytes"),
        clock_hz=c.positive_num(top["clock_hz"], "clock_hz"),
        flops_per_cycle_per_pe=flops,
        link_bytes_per_cycle=c.positive_num(
            sec["fabric"]["link_bytes_per_cycle"], "fabric.link_bytes_per_cycle"
        ),
        hop_latency_cycles=c.positive_num(sec["fabric"]["hop_latency_cycles"], "fabric.hop_latency_cycles"),
        colors=c.positive_int(sec["fabric"]["colors"], "fabric.colors"),
        io_bytes_per_second=c.positive_num(
            sec["io"]["stream_bytes_per_second"], "io.stream_bytes_per_second"
        ),
        dead_pes=frozenset(dead),
    )


def _dead_pes(c: _Checker, value: Any, rows: int, cols: int) -> set[tuple[int, int]]:
    field = "defects.dead_pes"
    if value is None:
        return set()
    if not isinstance(value, list):
        raise c.fail(field, "must be a list of [row, col] pairs")
    dead: set[tuple[int, int]] = set()
    for i, pe in enumerate(value):
        ok = isinstance(pe, list) and len(pe) == 2
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in pe)
        if not ok:
            raise c.fail(f"{field}[{i}]", f"must be a [row, col] pair of integers, got {pe!r}")
        r, col = pe
        if not (0 <= r < rows and 0 <= col < cols):
            raise c.fail(
                f"{field}[{i}]",
                f"= [{r}, {col}] is outside the {rows} x {cols} mesh "
                f"(rows 0..{rows - 1}, cols 0..{cols - 1})",
            )
        if (r, col) in dead:
            raise c.fail(f"{field}[{i}]", f"repeats dead PE [{r}, {col}]; list each PE once")
        dead.add((r, col))
    return dead
