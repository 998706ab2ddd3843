"""The SVG's three panels as a PNG, through matplotlib's Agg backend (no display needed).

The figure is a fixed PNG_SIZE in pixels (saved without tight bounding boxes, which would change it), so a
picture's size never depends on the model.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from wsc.artifacts import viz_data as vd

PNG_SIZE = (1800, 1000)  # width, height in pixels
DPI = 100


def render_png(placement: dict[str, Any], report: dict[str, Any], layer: dict[str, Any],
               highlight: vd.Highlight | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    mesh = placement["mesh"]
    rows, cols = mesh["rows"], mesh["cols"]
    fig = Figure(figsize=(PNG_SIZE[0] / DPI, PNG_SIZE[1] / DPI), dpi=DPI)
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2], left=0.05, right=0.97, top=0.93, bottom=0.1,
                            hspace=0.3, wspace=0.35)
    fig.suptitle(f"{report['model']['name']} on {placement['target']} ({rows}x{cols} PEs): "
                 f"layer {layer['index']} {layer['name']}"
                 + (f"; highlighted {highlight.label}" if highlight else ""), fontsize=14)

    ax = fig.add_subplot(grid[0, 0])
    dead = vd.dead_pe_grid(mesh).astype(float)
    ax.imshow(dead, cmap="Greys", vmin=0, vmax=1, extent=(0, cols, rows, 0), interpolation="nearest")
    for i, k in enumerate(layer["kernels"]):
        ax.add_patch(Rectangle((k["x"], k["y"]), k["w"], k["h"], facecolor=vd.kernel_colour(i), alpha=0.85,
                               edgecolor="#222", linewidth=0.6))
        # A tall, narrow kernel (an attention matmul) gets its label along its length.
        upright = k["h"] > 2 * k["w"]
        long_side, short_side = (k["h"], k["w"]) if upright else (k["w"], k["h"])
        size = min(10.0, short_side / rows * 90, long_side / cols * 600 / max(len(k["op"]), 1))
        if size >= 4:  # smaller would be unreadable: the legend names every kernel anyway
            ax.text(k["x"] + k["w"] / 2, k["y"] + k["h"] / 2, k["op"], ha="center", va="center",
                    fontsize=size, rotation=90 if upright else 0, clip_on=True)
    handles = [Patch(facecolor=vd.kernel_colour(i), label=f"{k['name']} ({k['op']})")
               for i, k in enumerate(layer["kernels"][:24])]
    if highlight is not None:  # a thick outline over the kernels, its label, and the PE ringed
        k = highlight.kernel
        ax.add_patch(Rectangle((k["x"], k["y"]), k["w"], k["h"], fill=False, edgecolor=vd.HIGHLIGHT, linewidth=3,
                               zorder=5))
        tx, anchor = highlight.label_anchor(cols)
        ax.text(tx, k["y"], highlight.label, color=vd.HIGHLIGHT, fontsize=9, fontweight="bold",
                ha={"start": "left", "middle": "center", "end": "right"}[anchor],
                va="bottom" if k["y"] > rows * 0.04 else "top",
                zorder=6, clip_on=True, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
        if highlight.pe is not None:
            px, py = highlight.pe
            ax.add_patch(Rectangle((px, py), 1, 1, facecolor=vd.HIGHLIGHT, edgecolor="none", zorder=6))
            ax.plot([px + 0.5], [py + 0.5], marker="o", markersize=14, markerfacecolor="none",
                    markeredgecolor=vd.HIGHLIGHT, markeredgewidth=2, zorder=6)
        handles.insert(0, Patch(facecolor="none", edgecolor=vd.HIGHLIGHT, linewidth=3,
                                label=f"highlighted: {highlight.kernel['name']}"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_title(f"placement: {len(layer['kernels'])} kernels, {len(mesh.get('dead_pes', []))} dead PEs (black)",
                 fontsize=11)

    ax = fig.add_subplot(grid[0, 1])
    cell = vd.heat_cell(rows, cols)
    load = vd.coarse(vd.link_load(layer, rows, cols), cell)
    gh, gw = load.shape
    shown = np.ma.masked_where(load <= 0, load)
    image = ax.imshow(shown, cmap="YlOrRd", extent=(0, gw * cell, gh * cell, 0), interpolation="nearest")
    for k in layer["kernels"]:
        ax.add_patch(Rectangle((k["x"], k["y"]), k["w"], k["h"], fill=False, edgecolor="#555", linewidth=0.5))
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_title(f"link load: bytes through each {cell}x{cell}-PE cell per step", fontsize=11)
    fig.colorbar(image, ax=ax, fraction=0.04)

    ax = fig.add_subplot(grid[1, :])
    layers = report["simulation"].get("layers", [])
    x = np.arange(len(layers))
    for j, term in enumerate(("compute", "fabric", "stream")):
        ax.bar(x + (j - 1) * 0.27, [e[f"{term}_seconds"] * 1e3 for e in layers], 0.27, label=term,
               color=vd.TERM_COLOURS[term])
    every = max(1, round(len(layers) / 30))
    ax.set_xticks(x[::every], [e["layer"] for e in layers][::every], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("ms")
    sim = report["simulation"]
    ax.set_title(f"per-layer time: step {vd.seconds_text(sim['step_seconds'])}, {sim['bottleneck']}-bound",
                 fontsize=11)
    ax.legend(loc="upper center", ncol=3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
