"""What the pictures show, computed once from placement.json and report.json for both the SVG and the PNG.

Everything here reads only the two artifacts (never the Program), so `wsc viz` works on any compile's output
folder, including one written by an older wsc or on another machine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsc.core.errors import WscError
from wsc.core.mesh import dead_grid, row_runs

# Distinct, colour-blind-friendly fills (Okabe-Ito, then Tableau): kernels of a layer are told apart by colour.
PALETTE = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#4e79a7",
           "#f28e2b", "#59a14f", "#b07aa1", "#9c755f", "#76b7b2", "#edc948", "#ff9da7", "#bab0ac"]
TERM_COLOURS = {"compute": "#0072b2", "fabric": "#e69f00", "stream": "#009e73"}
# `--highlight`'s outline, label and PE: magenta, which no kernel, term, heat-map or dead-PE colour is, so the
# highlighted kernel stands out on any layer.
HIGHLIGHT = "#ff00ff"
# The heat map's ramp, from an idle cell to the busiest one (light yellow through orange to dark red).
HEAT_STOPS = [(0.0, (255, 255, 204)), (0.25, (254, 217, 118)), (0.5, (253, 141, 60)), (0.75, (227, 26, 28)),
              (1.0, (128, 0, 38))]
# Heat-map cells stay coarse enough that a full wafer is a ~250 x 250 image: one cell per link would be a
# 750 x 994 image whose hot spots vanish when shrunk to a page.
HEAT_CELLS = 256


def kernel_colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def choose_layer(placement: dict[str, Any], index: int | None) -> dict[str, Any]:
    """The layer with that index, or by default the first with the most kernels (a transformer block, the
    layer the model repeats and so the one worth looking at)."""
    layers = placement["layers"]
    if not layers:
        raise WscError("placement.json has no layers to draw")
    if index is None:
        return max(layers, key=lambda layer: (len(layer["kernels"]), -layers.index(layer)))
    for layer in layers:
        if layer["index"] == index:
            return layer
    raise WscError(f"--layer {index} is not a layer of this compile; give one of 0..{len(layers) - 1}")


@dataclass(frozen=True)
class Highlight:
    """The kernel `wsc viz --highlight` marks (its placement.json entry, in the drawn layer) and optionally
    one PE of it, (x, y)."""

    layer: int
    kernel: dict[str, Any]
    pe: tuple[int, int] | None = None

    def label_anchor(self, cols: int) -> tuple[float, str]:
        """Where the label starts along x and how it aligns ("start", "middle" or "end"): a kernel in the
        left third of the mesh starts it at its left edge, one in the right third ends it at its right edge,
        and one in between centres it, so the label runs toward the middle and stays on the panel."""
        k = self.kernel
        centre = k["x"] + k["w"] / 2
        if centre < cols / 3:
            return float(k["x"]), "start"
        if centre > 2 * cols / 3:
            return float(k["x"] + k["w"]), "end"
        return centre, "middle"

    @property
    def label(self) -> str:
        pe = f" PE ({self.pe[0]}, {self.pe[1]})" if self.pe else ""
        return f"layer {self.layer} {self.kernel['name']} ({self.kernel['op']}){pe}"


SPEC = re.compile(r"(-?\d+):(.+?)(?:@(-?\d+),(-?\d+))?")


def highlight(placement: dict[str, Any], report: dict[str, Any], spec: str | None,
              layer_index: int | None) -> tuple[dict[str, Any], Highlight | None]:
    """The layer to draw and what to highlight on it. `spec` is `--highlight`'s value: None (not given), ""
    (given bare: report.json's `verification.located`, the kernel the verification found wrong) or
    LAYER:KERNEL[@X,Y]. The drawn layer is the highlighted one; `--layer`, when given too, must name it."""
    if spec is None:
        return choose_layer(placement, layer_index), None
    if spec == "":
        what = "report.json's verification.located"
        verification = report.get("verification")
        located = verification.get("located") if isinstance(verification, dict) else None
        if located is None:
            raise WscError("report.json's verification found no failing kernel to highlight (it has no "
                           "verification.located); give --highlight LAYER:KERNEL")
        kind = located.get("kind", "kernel") if isinstance(located, dict) else "kernel"
        if kind == "weight":  # a streamed weight, or a layout op (it only moves data), holds no PE of the map
            readers = located.get("read_by") or []
            hint = f", e.g. {located.get('layer_index')}:{readers[0]}, a kernel reading it" if readers else ""
            raise WscError(f"{what} is weight {located.get('key', located.get('kernel'))!r}, not a kernel on the "
                           f"mesh; give --highlight LAYER:KERNEL{hint}")
        if kind != "kernel":
            raise WscError(f"{what} is {kind} {located.get('kernel')!r}, which holds no PE of the mesh; give "
                           "--highlight LAYER:KERNEL")
        pe = located.get("pe") if isinstance(located, dict) else None
        if not (isinstance(located, dict) and type(located.get("layer_index")) is int
                and isinstance(located.get("kernel"), str)
                and (pe is None or (isinstance(pe, list) and len(pe) == 2 and all(type(v) is int for v in pe)))):
            raise WscError(f"{what} is not {{layer_index: int, kernel: str, pe: [x, y] or null}} ({located!r}); "
                           "give --highlight LAYER:KERNEL")
        index, name = located["layer_index"], located["kernel"]
        at = None if pe is None else (pe[0], pe[1])
    else:
        what = f"--highlight {spec}"
        match = SPEC.fullmatch(spec)
        if match is None:
            raise WscError(f"{what}: not LAYER:KERNEL[@X,Y]; give e.g. --highlight 1:linear or 1:linear@3,4")
        index, name = int(match[1]), match[2]
        at = None if match[3] is None else (int(match[3]), int(match[4]))
    layers = placement["layers"]
    layer = next((each for each in layers if each["index"] == index), None)
    if layer is None:
        raise WscError(f"{what}: layer {index} is not a layer of this compile; give one of 0..{len(layers) - 1}")
    if layer_index is not None and layer_index != index:
        raise WscError(f"--layer {layer_index} disagrees with {what} (layer {index}); drop --layer or give "
                       f"--layer {index}")
    kernel = next((k for k in layer["kernels"] if k["name"] == name), None)
    if kernel is None:
        names = [k["name"] for k in layer["kernels"]]
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise WscError(f"{what}: layer {index} ({layer['name']}) has no kernel {name!r}; its {len(names)} kernels "
                       f"are {shown}; give one of them")
    if at is not None:
        x, y, w, h = (kernel[key] for key in ("x", "y", "w", "h"))
        if not (x <= at[0] < x + w and y <= at[1] < y + h):
            raise WscError(f"{what}: PE ({at[0]}, {at[1]}) is not inside kernel {name}'s rectangle "
                           f"(x {x}..{x + w - 1}, y {y}..{y + h - 1}); give a PE inside it or leave @X,Y out")
    return layer, Highlight(index, kernel, at)


def dead_pe_grid(mesh: dict[str, Any]) -> np.ndarray:
    """Bool [rows, cols] of placement.json's `mesh`: True where a PE is dead (ValueError if one lies outside)."""
    return dead_grid(mesh["rows"], mesh["cols"], mesh.get("dead_pes", []))


def dead_runs(mesh: dict[str, Any]) -> list[tuple[int, int, int]]:
    """The dead PEs of placement.json's `mesh` as (row, first col, length) runs along each row: thousands of
    scattered defects become as few shapes as their layout allows."""
    return row_runs(dead_pe_grid(mesh))


def heat_cell(rows: int, cols: int) -> int:
    """PEs along each side of one heat-map cell."""
    return max(1, math.ceil(max(rows, cols) / HEAT_CELLS))


def link_load(layer: dict[str, Any], rows: int, cols: int) -> np.ndarray:
    """Bytes carried through each PE by the layer's routed lanes, [rows, cols]. A lane carries its edge's
    bytes / lanes along the straight segments between its corners; each PE of a segment is counted once
    (a corner belongs to the segment that reaches it)."""
    horizontal = np.zeros((rows, cols + 1))  # difference arrays: a segment is two updates, not a loop
    vertical = np.zeros((rows + 1, cols))
    for edge in layer["edges"]:
        route = edge.get("route")
        if not route or not route.get("paths"):
            continue
        lane = edge["bytes"] / max(route.get("lanes") or len(route["paths"]), 1)
        for path in route["paths"]:
            for i, ((r0, c0), (r1, c1)) in enumerate(zip(path, path[1:], strict=False)):
                first = i == 0
                if r0 == r1:
                    step = 1 if c1 >= c0 else -1
                    a, b = sorted((c0 if first else c0 + step, c1))
                    horizontal[r0, a] += lane
                    horizontal[r0, b + 1] -= lane
                else:
                    step = 1 if r1 >= r0 else -1
                    a, b = sorted((r0 if first else r0 + step, r1))
                    vertical[a, c0] += lane
                    vertical[b + 1, c0] -= lane
            if len(path) == 1:  # a lane within one PE still touches it
                horizontal[path[0][0], path[0][1]] += lane
                horizontal[path[0][0], path[0][1] + 1] -= lane
    return np.cumsum(horizontal, axis=1)[:, :cols] + np.cumsum(vertical, axis=0)[:rows, :]


def coarse(load: np.ndarray, cell: int) -> np.ndarray:
    """Sum the load over cell x cell blocks of PEs."""
    rows, cols = load.shape
    pad = np.zeros((math.ceil(rows / cell) * cell, math.ceil(cols / cell) * cell))
    pad[:rows, :cols] = load
    return pad.reshape(pad.shape[0] // cell, cell, pad.shape[1] // cell, cell).sum(axis=(1, 3))


def heat_rgb(grid: np.ndarray) -> np.ndarray:
    """[h, w, 3] uint8 colours of a load grid, idle cells white, the busiest the ramp's darkest."""
    top = grid.max() if grid.size else 0.0
    t = grid / top if top > 0 else np.zeros_like(grid)
    xs = [s for s, _ in HEAT_STOPS]
    rgb = np.stack([np.interp(t, xs, [c[k] for _, c in HEAT_STOPS]) for k in range(3)], axis=-1)
    rgb[grid <= 0] = 255
    return rgb.astype(np.uint8)


def seconds_text(s: float) -> str:
    """A time in the unit that keeps three significant digits readable."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def bytes_text(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"
