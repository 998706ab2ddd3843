"""`wsc check OUT`: prove from placement.json alone that a compiled mapping is legal.

Independent of the placer and router on purpose: it reads only the JSON and uses plain numpy slices over
the mesh (the dead-PE grid is `wsc.core.mesh.dead_grid`, geometry only, built once the JSON's pairs are
checked here), so a bug in `passes/place.py` or `passes/route.py` cannot hide itself. It checks, per layer:

- every kernel's rectangle lies inside the mesh and no two rectangles overlap;
- dead PEs (the defect model of `passes/place.py`): a kernel with `pes` (working PEs its tiles need) keeps
  at least that many working PEs in its rectangle; a kernel without it covers no dead PE at all;
- every kernel's SRAM per PE is at most the target's (`mesh.sram_bytes_per_pe`, else the packaged target
  named by `target`);
- every edge joins two kernels of its layer and is routed (`route` with at least one lane); when the route
  lists its lanes' `paths`, every leg is straight, inside the mesh and clear of dead PEs, each lane starts in
  the source rectangle and ends in the destination one, and no two edges of one color share a directed link;
  colors lie within `mesh.routable_colors` when that is given.

Exit codes of `main`: 0 legal (one-line summary), 1 violations (listed), 2 missing or malformed file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from wsc.core.mesh import dead_grid


class Malformed(Exception):
    """placement.json is missing or does not have the documented shape."""


def check_output(out_dir: str | Path) -> list[str]:
    """Every rule the mapping in `out_dir/placement.json` breaks, as readable lines; empty when legal.

    Raises Malformed when the file is missing or not of the documented shape."""
    doc = _load(Path(out_dir) / "placement.json")
    mesh = _field(doc, "mesh", dict)
    rows, cols = _field(mesh, "rows", int), _field(mesh, "cols", int)
    dead_pes = _field(mesh, "dead_pes", list)
    for pe in dead_pes:
        if not (isinstance(pe, list) and len(pe) == 2 and all(isinstance(v, int) for v in pe)):
            raise Malformed(f"mesh.dead_pes holds {pe!r}, not a [row, col] pair")
        if not (0 <= pe[0] < rows and 0 <= pe[1] < cols):
            raise Malformed(f"mesh.dead_pes holds {pe}, outside the {rows} x {cols} mesh")
    dead = dead_grid(rows, cols, dead_pes)
    problems: list[str] = []
    sram = _target_sram(doc, mesh, problems)
    colors = mesh.get("routable_colors")
    for layer in _field(doc, "layers", list):
        if not isinstance(layer, dict):
            raise Malformed("every entry of layers must be an object")
        where = f"layer {layer.get('index', '?')} ({layer.get('name', '?')})"
        rects = _check_kernels(layer, where, dead, sram, problems)
        _check_edges(layer, where, rects, dead, colors, problems)
    return problems


def main(argv: list[str] | None = None) -> int:
    """`wsc check OUT`: 0 legal, 1 violations, 2 missing or malformed placement.json."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("error: usage: wsc check OUT (the folder holding placement.json)", file=sys.stderr)
        return 2
    out = Path(args[0])
    try:
        problems = check_output(out)
        doc = _load(out / "placement.json")
    except Malformed as error:
        print(f"error: {out / 'placement.json'}: {error}", file=sys.stderr)
        return 2
    if problems:
        print(f"{out / 'placement.json'}: {len(problems)} violation{'s' if len(problems) != 1 else ''}")
        for p in problems:
            print(f"  {p}")
        return 1
    layers = doc["layers"]
    kernels = sum(len(layer.get("kernels", [])) for layer in layers)
    edges = sum(len(layer.get("edges", [])) for layer in layers)
    mesh = doc["mesh"]
    print(f"legal: {out / 'placement.json'}: {len(layers)} layers, {kernels} kernels, {edges} edges routed on "
          f"the {mesh['rows']} x {mesh['cols']} mesh of {doc.get('target', '?')} ({len(mesh['dead_pes'])} dead PEs)")
    return 0


# ----------------------------------------------------------------------------------------------- reading


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise Malformed("no such file; run `wsc compile` first or give the folder it wrote")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Malformed(f"not valid JSON ({error})") from None
    if not isinstance(doc, dict):
        raise Malformed("the top level must be an object")
    return doc


def _field(obj: dict[str, Any], key: str, kind: type) -> Any:
    if key not in obj:
        raise Malformed(f"missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Malformed(f"key {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _target_sram(doc: dict[str, Any], mesh: dict[str, Any], problems: list[str]) -> int | None:
    if isinstance(mesh.get("sram_bytes_per_pe"), int):
        return int(mesh["sram_bytes_per_pe"])
    from wsc.core.errors import WscError
    from wsc.targets import load_target

    try:
        return load_target(str(doc.get("target", ""))).sram_bytes_per_pe
    except WscError:
        problems.append(
            f"cannot check SRAM: placement.json gives no mesh.sram_bytes_per_pe and {doc.get('target')!r} is "
            "not a packaged target"
        )
        return None


# ----------------------------------------------------------------------------------------------- kernels


def _check_kernels(
    layer: dict[str, Any], where: str, dead: np.ndarray, sram: int | None, problems: list[str]
) -> dict[str, tuple[int, int, int, int]]:
    rows, cols = dead.shape
    rects: dict[str, tuple[int, int, int, int]] = {}
    for k in _field(layer, "kernels", list):
        if not isinstance(k, dict):
            raise Malformed(f"{where}: every kernel must be an object")
        name = _field(k, "name", str)
        x, y, w, h = (_field(k, key, int) for key in ("x", "y", "w", "h"))
        if name in rects:
            problems.append(f"{where}: kernel {name} is listed twice")
        rects[name] = (x, y, w, h)
        if w <= 0 or h <= 0:
            problems.append(f"{where}: kernel {name} has size {w}x{h}")
            continue
        if x < 0 or y < 0 or x + w > cols or y + h > rows:
            problems.append(f"{where}: kernel {name} at x={x} y={y} size {w}x{h} is outside the {rows} x {cols} mesh")
            continue
        covered = int(dead[y : y + h, x : x + w].sum())
        pes = k.get("pes")
        if pes is None and covered:
            problems.append(f"{where}: kernel {name} covers {covered} dead PEs but needs every PE of its rectangle")
        elif pes is not None and w * h - covered < pes:
            problems.append(
                f"{where}: kernel {name} has {w * h - covered} working PEs ({covered} dead) but its tiles need {pes}"
            )
        used = k.get("sram_bytes_per_pe")
        if sram is not None and isinstance(used, int) and used > sram:
            problems.append(f"{where}: kernel {name} needs {used} bytes of SRAM per PE, the target has {sram}")
    placed = sorted(rects.items())
    for i, (a, (ax, ay, aw, ah)) in enumerate(placed):
        for b, (bx, by, bw, bh) in placed[i + 1 :]:
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                problems.append(f"{where}: kernels {a} and {b} overlap")
    return rects


# ----------------------------------------------------------------------------------------------- edges


def _check_edges(
    layer: dict[str, Any],
    where: str,
    rects: dict[str, tuple[int, int, int, int]],
    dead: np.ndarray,
    colors: Any,
    problems: list[str],
) -> None:
    rows, cols = dead.shape
    # Per color, the directed links already claimed (east, west, south, north by the link's first PE) and
    # by which edge.
    claimed: dict[int, np.ndarray] = {}
    for e in _field(layer, "edges", list):
        if not isinstance(e, dict):
            raise Malformed(f"{where}: every edge must be an object")
        src, dst = _field(e, "src", str), _field(e, "dst", str)
        name = f"{where}: edge {src} -> {dst}"
        if src not in rects or dst not in rects:
            problems.append(f"{name} names a kernel the layer does not place")
            continue
        if src == dst:
            continue  # stays inside one kernel: no fabric route
        route = e.get("route")
        if not isinstance(route, dict) or not isinstance(route.get("lanes"), int) or route["lanes"] < 1:
            problems.append(f"{name} is not routed")
            continue
        color = route.get("color")
        if not isinstance(color, int) or color < 0 or (isinstance(colors, int) and color >= colors):
            limit = f" (routable colors: 0..{colors - 1})" if isinstance(colors, int) else ""
            problems.append(f"{name} has color {color!r}{limit}")
            color = None
        paths = route.get("paths")
        if paths is None:
            continue
        if not isinstance(paths, list) or len(paths) != route["lanes"]:
            listed = len(paths) if isinstance(paths, list) else 0
            problems.append(f"{name} lists {listed} paths for {route['lanes']} lanes")
            continue
        links = np.zeros((4, rows, cols), dtype=bool)
        for i, path in enumerate(paths):
            problem = _draw(path, rects[src], rects[dst], dead, links)
            if problem:
                problems.append(f"{name} lane {i}: {problem}")
                break
        if color is not None:
            if color in claimed and (claimed[color] & links).any():
                problems.append(f"{name} shares a link with another edge of color {color}")
            claimed[color] = claimed.get(color, np.zeros_like(links)) | links


def _draw(path: Any, src: tuple[int, int, int, int], dst: tuple[int, int, int, int], dead: np.ndarray,
          links: np.ndarray) -> str:
    """Mark the lane's directed links in `links`; the first rule it breaks, or ''."""
    rows, cols = dead.shape
    ok = isinstance(path, list) and len(path) >= 1 and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p) for p in path
    )
    if not ok:
        return "its path is not a list of [row, col] points"
    for r, c in path:
        if not (0 <= r < rows and 0 <= c < cols):
            return f"point ({r}, {c}) is outside the mesh"

    def inside(p: list[int], rect: tuple[int, int, int, int]) -> bool:
        x, y, w, h = rect
        return y <= p[0] < y + h and x <= p[1] < x + w

    if not inside(path[0], src):
        return f"starts at ({path[0][0]}, {path[0][1]}), outside the source kernel"
    if not inside(path[-1], dst):
        return f"ends at ({path[-1][0]}, {path[-1][1]}), outside the destination kernel"
    for (ra, ca), (rb, cb) in zip(path[:-1], path[1:], strict=True):
        if ra != rb and ca != cb:
            return f"leg ({ra}, {ca}) -> ({rb}, {cb}) is not straight"
        r_lo, r_hi, c_lo, c_hi = min(ra, rb), max(ra, rb), min(ca, cb), max(ca, cb)
        if dead[r_lo : r_hi + 1, c_lo : c_hi + 1].any():
            return f"leg ({ra}, {ca}) -> ({rb}, {cb}) passes a dead PE"
        if ra == rb:
            links[0 if cb > ca else 1, ra, c_lo:c_hi] = True
        else:
            links[2 if rb > ra else 3, r_lo:r_hi, ca] = True
    return ""


if __name__ == "__main__":
    sys.exit(main())
