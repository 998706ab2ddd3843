"""Machine descriptions: YAML target files and the loader that validates them.

A target is data, not code, so that a new wafer (or a defect map of a particular one) needs no Python
change. The loader is strict: a typo in a target file would otherwise silently change every performance
number downstream, so every field is checked and unknown keys are rejected.

Defects: `defects: {dead_pes: [[row, col], ...], dead_rows: [row, ...], dead_cols: [col, ...], rate: 0.01,
seed: 0}`. All fields are optional. `rate` marks that fraction of the mesh's PEs dead at random, drawn with a
seeded numpy Generator so the same file always gives the same wafer; they are added to the listed ones (a PE
listed and drawn is counted once). What a dead PE means for placement is decided in `passes/place.py`.

SRAM ports: `pe: {sram_read_bytes_per_cycle: 16, sram_write_bytes_per_cycle: 8}`, the bytes one PE's SRAM
can read and write per cycle (what `passes/sram_traffic.py` charges a kernel's operand traffic against). Both
are optional and default to the CS-2's 2 x 64-bit reads and 1 x 64-bit write, so target files written before
these fields existed still load; when given, they are checked like every other number.

Calibration: `calibration: {compute_efficiency: 0.7, step_seconds: 0.1}`, the two constants the performance
model fits on measured runs (docs/calibration.md) rather than reads from a data sheet: the share of a PE's
peak FLOP rate its kernels sustain, and the fixed cost of a training step's boundary. Both are optional; a
target that leaves them out is an ideal machine (efficiency 1, no step cost).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from wsc.core.errors import WscError

DTYPES = ("fp16", "fp32")
# The most PEs a mesh may have: 2^24, about 18 CS-3 wafers (900,000 PEs each). The placer and the checker hold
# grids of the mesh in memory, so a mesh far larger (a typo's 100000 x 100000) would exhaust it; a bigger
# machine is several wafers (--systems), each a mesh of its own.
MAX_PES = 1 << 24
# Defaults for the optional pe.sram_*_bytes_per_cycle fields: the CS-2's SRAM ports (see the module docstring).
SRAM_READ_BYTES_PER_CYCLE = 16.0
SRAM_WRITE_BYTES_PER_CYCLE = 8.0


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
    # Colors the system software keeps for itself (the CS-2 SDK runtime takes about 6 of the 24): the
    # router may hand out only `colors - reserved_colors` to the program's flows.
    reserved_colors: int = 0
    # Bytes one PE's SRAM can read / write per cycle; the defaults are the CS-2's ports (2 x 64-bit reads
    # and 1 x 64-bit write, Hot Chips 34 summary), which a target file may leave out.
    sram_read_bytes_per_cycle: float = SRAM_READ_BYTES_PER_CYCLE
    sram_write_bytes_per_cycle: float = SRAM_WRITE_BYTES_PER_CYCLE
    # Fitted on measured runs (docs/calibration.md): the share of `flops_per_cycle_per_pe` a kernel's
    # arithmetic sustains, and the seconds a training step's boundary costs beyond its phases.
    compute_efficiency: float = 1.0
    step_overhead_seconds: float = 0.0

    @property
    def routable_colors(self) -> int:
        """Colors (virtual channels) the router may give to a layer's flows."""
        return self.colors - self.reserved_colors

    @property
    def usable_pes(self) -> int:
        """PEs a kernel may occupy: the mesh less its dead PEs."""
        return self.rows * self.cols - len(self.dead_pes)

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s of the usable PEs for `dtype` ("fp16" or "fp32"): what the estimate's compute bound and
        utilisation divide by."""
        if dtype not in self.flops_per_cycle_per_pe:
            raise WscError(
                f"target {self.name!r} has no peak rate for dtype {dtype!r}; use one of {', '.join(DTYPES)}"
            )
        return self.usable_pes * self.pe_flops(dtype)

    def pe_flops(self, dtype: str) -> float:
        """FLOP/s of one PE for `dtype`."""
        return self.flops_per_cycle_per_pe[dtype] * self.clock_hz


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
_OPTIONAL_TOP = {"defects": {"dead_pes", "dead_rows", "dead_cols", "rate", "seed"},
                 "calibration": {"compute_efficiency", "step_seconds"}}
# Optional keys per section; `_parse` fills in their defaults when a file leaves them out.
_OPTIONAL: dict[str, set[str]] = {
    "fabric": {"reserved_colors"},
    "pe": {"sram_read_bytes_per_cycle", "sram_write_bytes_per_cycle"},
}


class _Checker:
    """Field checks that all report the file and the dotted field name."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> WscError:
        if not field:  # the document itself
            return WscError(f"target file {self.source} {problem}")
        return WscError(f"target file {self.source}: field '{field}' {problem}")

    def mapping(self, value: Any, field: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            if not field:
                raise self.fail(field, f"must be a mapping of the target's fields ({', '.join(sorted(required))})")
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
    sec = {
        s: c.mapping(top[s], s, set(keys) | _OPTIONAL.get(s, set()), set(keys))
        for s, keys in _SCHEMA.items()
    }

    flops_raw = c.mapping(sec["pe"]["flops_per_cycle"], "pe.flops_per_cycle", set(DTYPES), set(DTYPES))
    flops = {d: c.positive_num(flops_raw[d], f"pe.flops_per_cycle.{d}") for d in DTYPES}
    rows = c.positive_int(sec["mesh"]["rows"], "mesh.rows")
    cols = c.positive_int(sec["mesh"]["cols"], "mesh.cols")
    if rows * cols > MAX_PES:
        raise c.fail("mesh", f"has {rows * cols:,} PEs, more than the {MAX_PES:,} wsc places; give one wafer's mesh")

    dead: set[tuple[int, int]] = set()
    if "defects" in top and top["defects"] is not None:
        dead = _defects(c, top["defects"], rows, cols)
    if len(dead) >= rows * cols:
        raise c.fail("defects", "marks every PE dead; at least one PE must be usable")
    efficiency, step_overhead = _calibration(c, top.get("calibration"))
    colors = c.positive_int(sec["fabric"]["colors"], "fabric.colors")
    reserved = sec["fabric"].get("reserved_colors", 0)
    if isinstance(reserved, bool) or not isinstance(reserved, int) or not 0 <= reserved < colors:
        raise c.fail(
            "fabric.reserved_colors", f"must be an integer from 0 to colors - 1 = {colors - 1}, got {reserved!r}"
        )

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
        colors=colors,
        io_bytes_per_second=c.positive_num(
            sec["io"]["stream_bytes_per_second"], "io.stream_bytes_per_second"
        ),
        dead_pes=frozenset(dead),
        reserved_colors=reserved,
        sram_read_bytes_per_cycle=c.positive_num(
            sec["pe"].get("sram_read_bytes_per_cycle", SRAM_READ_BYTES_PER_CYCLE), "pe.sram_read_bytes_per_cycle"
        ),
        sram_write_bytes_per_cycle=c.positive_num(
            sec["pe"].get("sram_write_bytes_per_cycle", SRAM_WRITE_BYTES_PER_CYCLE), "pe.sram_write_bytes_per_cycle"
        ),
        compute_efficiency=efficiency,
        step_overhead_seconds=step_overhead,
    )


def _calibration(c: _Checker, value: Any) -> tuple[float, float]:
    """(compute_efficiency, step_seconds) of the optional `calibration` section: an efficiency in (0, 1] and
    a step cost of zero or more seconds."""
    if value is None:
        return 1.0, 0.0
    fields = c.mapping(value, "calibration", _OPTIONAL_TOP["calibration"], set())
    efficiency = c.positive_num(fields.get("compute_efficiency", 1.0), "calibration.compute_efficiency")
    if efficiency > 1.0:
        raise c.fail("calibration.compute_efficiency", f"is a share of the peak rate, at most 1; got {efficiency}")
    step = fields.get("step_seconds", 0.0)
    if isinstance(step, str) and _NUMBER_RE.match(step.strip()):
        step = float(step)
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0.0 <= step < float("inf"):
        raise c.fail("calibration.step_seconds", f"must be zero or a positive number of seconds, got {step!r}")
    return efficiency, float(step)


def _defects(c: _Checker, value: Any, rows: int, cols: int) -> set[tuple[int, int]]:
    defects = c.mapping(value, "defects", _OPTIONAL_TOP["defects"], set())
    dead = _dead_pes(c, defects.get("dead_pes", []), rows, cols)
    for key, size, other in (("dead_rows", rows, cols), ("dead_cols", cols, rows)):
        lines = _indices(c, defects.get(key, []), f"defects.{key}", size)
        for line in lines:
            dead.update((line, j) if key == "dead_rows" else (j, line) for j in range(other))
    rate = defects.get("rate", 0.0)
    if isinstance(rate, str) and _NUMBER_RE.match(rate.strip()):
        rate = float(rate)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise c.fail("defects.rate", f"must be a fraction of PEs in [0, 1), got {rate!r}")
    seed = defects.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise c.fail("defects.seed", f"must be a non-negative integer, got {seed!r}")
    if rate > 0:
        # Draw exactly round(rate * PEs) distinct PEs: the count is what the file promises, the
        # positions are what the seed fixes.
        count = round(rate * rows * cols)
        flat = np.random.default_rng(seed).choice(rows * cols, size=count, replace=False)
        dead.update((int(i) // cols, int(i) % cols) for i in flat)
    return dead


def _indices(c: _Checker, value: Any, field: str, size: int) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise c.fail(field, "must be a list of integers")
    seen: list[int] = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int):
            raise c.fail(f"{field}[{i}]", f"must be an integer, got {v!r}")
        if not 0 <= v < size:
            raise c.fail(f"{field}[{i}]", f"= {v} is outside 0..{size - 1}")
        if v in seen:
            raise c.fail(f"{field}[{i}]", f"repeats {v}; list each once")
        seen.append(v)
    return seen


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
