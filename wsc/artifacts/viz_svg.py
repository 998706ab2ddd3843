"""The three panels as one SVG: the placement map, the link-congestion heat map and the per-layer timeline.

Panels are drawn in PE units under a scale transform, so coordinates stay small integers whatever the mesh.
The heat map is an embedded PNG (a data: URI, no fetch): thousands of cells as <rect>s would make the file
large and slow to open, while an image of them is a few KB.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from wsc.artifacts import viz_data as vd

PANEL_W, PANEL_H, GAP = 560, 440, 40
TIMELINE_H = 260


def png_bytes(rgb: np.ndarray) -> bytes:
    """A minimal RGB PNG (8-bit, no filter): enough for a heat map, and no image library needed."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _attr(value: Any) -> str:
    return escape(str(value), {'"': "&quot;"})


def _num(x: float) -> str:
    return f"{x:.4g}"


def mesh_scale(rows: int, cols: int) -> float:
    return min(PANEL_W / cols, PANEL_H / rows)


def placement_panel(placement: dict[str, Any], layer: dict[str, Any],
                    highlight: vd.Highlight | None = None) -> list[str]:
    mesh = placement["mesh"]
    rows, cols = mesh["rows"], mesh["cols"]
    s = mesh_scale(rows, cols)
    out = [f'<g class="placement" transform="scale({_num(s)})">',
           f'<rect class="mesh" x="0" y="0" width="{cols}" height="{rows}" fill="#f4f4f4" stroke="#444" '
           f'stroke-width="{_num(1 / s)}"/>']
    runs = vd.dead_runs(mesh)
    if runs:
        d = "".join(f"M{c} {r}h{n}v1h-{n}z" for r, c, n in runs)
        out.append(f'<path class="dead" d="{d}" fill="#000"><title>{len(mesh["dead_pes"])} dead PEs</title></path>')
    for i, k in enumerate(layer["kernels"]):
        title = (f"{k['name']} ({k['op']}): {k['w']}x{k['h']} PEs at x={k['x']}, y={k['y']}; "
                 f"{k['pes']} working PEs, grid {k.get('grid')}, {k.get('sram_bytes_per_pe')} B SRAM per PE")
        out.append(f'<rect class="kernel" x="{k["x"]}" y="{k["y"]}" width="{k["w"]}" height="{k["h"]}" '
                   f'fill="{vd.kernel_colour(i)}" fill-opacity="0.85" stroke="#222" stroke-width="{_num(0.5 / s)}">'
                   f"<title>{_attr(title)}</title></rect>")
        # Fit the label to the rectangle (in screen pixels, between 5 and 14); a tall, narrow kernel (an
        # attention matmul) gets it along its length.
        upright = k["h"] > 2 * k["w"]
        long_side, short_side = (k["h"], k["w"]) if upright else (k["w"], k["h"])
        px = max(5.0, min(14.0, short_side * s * 0.7, long_side * s / max(len(k["op"]), 1) * 1.7))
        cx, cy = _num(k["x"] + k["w"] / 2), _num(k["y"] + k["h"] / 2)
        turn = f' transform="rotate(-90 {cx} {cy})"' if upright else ""
        out.append(f'<text class="label" x="{cx}" y="{cy}"{turn} font-size="{_num(px / s)}" text-anchor="middle" '
                   f'dominant-baseline="central" fill="#000">{_attr(k["op"])}</text>')
    if highlight is not None:
        out += highlight_marks(highlight, rows, cols, s)
    out.append("</g>")
    return out


def highlight_marks(highlight: vd.Highlight, rows: int, cols: int, s: float) -> list[str]:
    """The highlighted kernel's thick outline and label, and its PE as a filled cell in a ring (one PE of a
    wafer is under a pixel wide), in PE units at scale s; drawn last, over the kernels."""
    k, colour = highlight.kernel, vd.HIGHLIGHT
    out = ['<g class="highlight">',
           f'<rect class="highlight" x="{k["x"]}" y="{k["y"]}" width="{k["w"]}" height="{k["h"]}" fill="none" '
           f'stroke="{colour}" stroke-width="{_num(3 / s)}"><title>{_attr(highlight.label)}</title></rect>']
    if highlight.pe is not None:
        x, y = highlight.pe
        out.append(f'<rect class="highlight-pe" x="{x}" y="{y}" width="1" height="1" fill="{colour}"/>')
        out.append(f'<circle class="highlight-pe" cx="{_num(x + 0.5)}" cy="{_num(y + 0.5)}" r="{_num(max(8 / s, 1))}" '
                   f'fill="none" stroke="{colour}" stroke-width="{_num(2 / s)}"/>')
    # Above the rectangle, or inside its top edge when it touches the mesh's top; a white halo keeps it
    # readable over other kernels.
    px = 12.0
    above = k["y"] * s >= px + 4
    ty = k["y"] - 3 / s if above else k["y"] + (px + 3) / s
    if not above and k["y"] + k["h"] >= rows:
        ty = min(ty, rows - 2 / s)
    tx, anchor = highlight.label_anchor(cols)
    out.append(f'<text class="highlight-label" x="{_num(tx)}" y="{_num(ty)}" font-size="{_num(px / s)}" '
               f'text-anchor="{anchor}" font-weight="bold" fill="{colour}" stroke="#fff" '
               f'stroke-width="{_num(3 / s)}" paint-order="stroke">{_attr(highlight.label)}</text>')
    out.append("</g>")
    return out


def heat_panel(placement: dict[str, Any], layer: dict[str, Any]) -> tuple[list[str], float]:
    """The heat map and the busiest cell's load (bytes through its PEs per step)."""
    mesh = placement["mesh"]
    rows, cols = mesh["rows"], mesh["cols"]
    s = mesh_scale(rows, cols)
    cell = vd.heat_cell(rows, cols)
    grid = vd.coarse(vd.link_load(layer, rows, cols), cell)
    png = base64.b64encode(png_bytes(vd.heat_rgb(grid))).decode()
    gh, gw = grid.shape
    out = [f'<g class="congestion" transform="scale({_num(s)})">',
           f'<image x="0" y="0" width="{gw * cell}" height="{gh * cell}" preserveAspectRatio="none" '
           f'style="image-rendering:pixelated" href="data:image/png;base64,{png}"/>',
           f'<rect x="0" y="0" width="{cols}" height="{rows}" fill="none" stroke="#444" '
           f'stroke-width="{_num(1 / s)}"/>']
    for k in layer["kernels"]:  # outlines only, so the heat shows where it sits relative to the kernels
        out.append(f'<rect x="{k["x"]}" y="{k["y"]}" width="{k["w"]}" height="{k["h"]}" fill="none" '
                   f'stroke="#555" stroke-width="{_num(0.5 / s)}"/>')
    out.append("</g>")
    return out, float(grid.max()) if grid.size else 0.0


def timeline_panel(layers: list[dict[str, Any]], width: float, chosen: str) -> list[str]:
    """Per layer, three bars: compute, fabric and stream seconds (the layer's time is the largest of
    compute, fabric and the *next* layer's stream)."""
    top = max((max(e["compute_seconds"], e["fabric_seconds"], e["stream_seconds"]) for e in layers), default=0.0)
    left, plot_w, plot_h = 60.0, width - 70.0, TIMELINE_H - 70.0
    out = ['<g class="timeline" font-size="11">',
           f'<line x1="{left}" y1="{plot_h}" x2="{left + plot_w}" y2="{plot_h}" stroke="#444"/>',
           f'<line x1="{left}" y1="0" x2="{left}" y2="{plot_h}" stroke="#444"/>',
           f'<text x="{left - 4}" y="8" text-anchor="end">{_attr(vd.seconds_text(top))}</text>',
           f'<text x="{left - 4}" y="{plot_h}" text-anchor="end">0</text>']
    n = max(len(layers), 1)
    slot = plot_w / n
    bar = slot * 0.8 / 3
    every = max(1, round(n / 30))  # at most ~30 layer names along the axis
    for i, e in enumerate(layers):
        x0 = left + i * slot + slot * 0.1
        if e["layer"] == chosen:
            out.append(f'<rect x="{_num(left + i * slot)}" y="0" width="{_num(slot)}" height="{plot_h}" '
                       f'fill="#eee"/>')
        for j, term in enumerate(("compute", "fabric", "stream")):
            v = e[f"{term}_seconds"]
            h = plot_h * v / top if top > 0 else 0.0
            out.append(f'<rect class="bar {term}" x="{_num(x0 + j * bar)}" y="{_num(plot_h - h)}" '
                       f'width="{_num(bar)}" height="{_num(h)}" fill="{vd.TERM_COLOURS[term]}">'
                       f"<title>{_attr(e['layer'])} {term}: {_attr(vd.seconds_text(v))}</title></rect>")
        if i % every == 0:
            cx = left + (i + 0.5) * slot
            out.append(f'<text x="{_num(cx)}" y="{plot_h + 12}" text-anchor="end" '
                       f'transform="rotate(-35 {_num(cx)} {plot_h + 12})">{_attr(e["layer"])}</text>')
    for j, term in enumerate(("compute", "fabric", "stream")):
        x = left + j * 90
        out.append(f'<rect x="{x}" y="{TIMELINE_H - 14}" width="10" height="10" fill="{vd.TERM_COLOURS[term]}"/>'
                   f'<text x="{x + 14}" y="{TIMELINE_H - 5}">{term}</text>')
    out.append("</g>")
    return out


def render_svg(placement: dict[str, Any], report: dict[str, Any], layer: dict[str, Any],
               highlight: vd.Highlight | None = None) -> str:
    mesh = placement["mesh"]
    rows, cols = mesh["rows"], mesh["cols"]
    s = mesh_scale(rows, cols)
    map_w, map_h = cols * s, rows * s
    width = 2 * map_w + 3 * GAP
    height = map_h + TIMELINE_H + 3 * GAP + 20
    sim = report["simulation"]
    heat, peak = heat_panel(placement, layer)
    title = (f"{report['model']['name']} on {placement['target']} ({mesh['rows']}x{mesh['cols']} PEs): "
             f"layer {layer['index']} {layer['name']}" + (f"; highlighted {highlight.label}" if highlight else ""))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(width)}" height="{_num(height)}" '
             f'viewBox="0 0 {_num(width)} {_num(height)}" font-family="sans-serif">',
             f"<title>{_attr(title)}</title>",
             '<rect width="100%" height="100%" fill="#fff"/>',
             f'<text x="{GAP}" y="{GAP - 16}" font-size="14" font-weight="bold">{_attr(title)}</text>',
             f'<text x="{GAP}" y="{GAP - 2}" font-size="12">placement: {len(layer["kernels"])} kernels, '
             f'{len(mesh.get("dead_pes", []))} dead PEs (black)</text>',
             f'<text x="{2 * GAP + map_w}" y="{GAP - 2}" font-size="12">link load (bytes through each '
             f'{vd.heat_cell(rows, cols)}x{vd.heat_cell(rows, cols)}-PE cell per step; busiest '
             f'{_attr(vd.bytes_text(peak))})</text>',
             f'<g transform="translate({GAP},{GAP})">', *placement_panel(placement, layer, highlight), "</g>",
             f'<g transform="translate({_num(2 * GAP + map_w)},{GAP})">', *heat, "</g>",
             f'<text x="{GAP}" y="{_num(map_h + 2 * GAP + 4)}" font-size="12">per-layer time: step '
             f'{_attr(vd.seconds_text(sim["step_seconds"]))}, {_attr(sim["bottleneck"])}-bound</text>',
             f'<g transform="translate({GAP},{_num(map_h + 2 * GAP + 16)})">',
             *timeline_panel(sim.get("layers", []), width - 2 * GAP, layer["name"]), "</g>",
             "</svg>"]
    return "\n".join(parts) + "\n"
