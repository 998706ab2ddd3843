"""`wsc check OUT`: prove from placement.json alone that a compiled mapping is legal.

Independent of the placer and router on purpose: it reads only the JSON and uses plain numpy slices over
the mesh (the dead-PE grid is `wsc.core.mesh.dead_grid`, geometry only, built once the JSON's pairs are
checked here), so a bug in `passes/place.py` or `passes/route.py` cannot hide itself. It checks, per layer:

- every kernel's rectangle lies inside the mesh and no two rectangles overlap;
- dead PEs (the defect model of `passes/place.py`): a kernel with `pes` (working PEs its tiles need) keeps
  at least that many working PEs in its rectangle; a kernel without it covers no dead PE at all;
- every kernel's SRAM per PE is at most the target's (`mesh.sram_bytes_per_pe`, else the packaged target
  named by `target`);
- tiles (a kernel's `tile_pes`, with its `grid`): every slot (block * k_splits + k_slice) sits on a working PE
  inside the kernel's rectangle and in the mesh's largest connected region of working PEs (dead rows and
  columns cut the rest off), no two slots of a layer share a PE, and the `moved` runs are what the rule,
  row-major over the working PEs, gives: a slot leaves its clean-mesh PE only because dead or cut-off PEs
  precede it in the rectangle. Files written before `tile_pes` existed are checked without it;
- every edge joins two kernels of its layer and is routed (`route` with at least one lane); when the route
  lists its lanes' `paths`, every leg is straight, inside the mesh and clear of dead PEs, each lane starts in
  the source rectangle and ends in the destination one, and no two edges of one color share a directed link;
  colors lie within `mesh.routable_colors` when that is given.

Exit codes of `main`: 0 legal (one-line summary), 1 violations (listed), 2 missing or malformed file.
"""

from __future__ import annotations

import bisect
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from wsc.core.mesh import dead_grid

# The newest placement.json schema this checker reads (wsc.artifacts.report.SCHEMA_VERSION, which it may not
# import: it shares nothing with the compiler). A file without `schema` predates the key and is read as 1.
SCHEMA = 1


class Malformed(Exception):
    """placement.json is missing or does not have the documented shape."""

    def __init__(self, message: str, fix: str = "compile again to rewrite it"):
        super().__init__(message)
        self.fix = fix


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
    tiles: list[tuple[str, list[_Tiles]]] = []
    for layer in _field(doc, "layers", list):
        if not isinstance(layer, dict):
            raise Malformed("every entry of layers must be an object")
        where = f"layer {layer.get('index', '?')} ({layer.get('name', '?')})"
        rects = _check_kernels(layer, where, dead, sram, problems)
        _check_edges(layer, where, rects, dead, colors, problems)
        tiles.append((where, _read_tiles(layer, where, rects, dead.shape, problems)))
    _check_tiles(tiles, dead, problems)
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
        print(f"error: {out / 'placement.json'}: {error}; {error.fix}", file=sys.stderr)
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
    if not path.parent.is_dir():
        what = f"{path.parent} is a file, not a folder" if path.parent.exists() else "no such folder"
        raise Malformed(what, "give the --out folder of a `wsc compile`")
    if not path.is_file():
        raise Malformed("no such file", "run `wsc compile` first or give the folder it wrote")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Malformed(f"not valid JSON ({error})") from None
    except OSError as error:
        raise Malformed(f"cannot be read ({error.strerror})", "give a folder you can read") from None
    if not isinstance(doc, dict):
        raise Malformed("the top level must be an object")
    schema = doc.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise Malformed(f"key 'schema' must be a version number of 1 or more, got {schema!r}")
    if schema > SCHEMA:
        raise Malformed(f"schema {schema} is newer than this wsc reads ({SCHEMA})",
                        "check it with the wsc that wrote it, or compile again with this one")
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


# ----------------------------------------------------------------------------------------------- tiles

TILE_RULE = "row-major over the working PEs"  # the one rule placement.json's tile_pes may name


class _Tiles:
    """One kernel's slots as placement.json gives them: `offsets[p]` is slot p's PE as y * w + x from the
    rectangle's top-left corner (decoded from the rule and the `moved` runs)."""

    def __init__(self, name: str, rect: tuple[int, int, int, int], offsets: np.ndarray):
        self.name, self.rect, self.offsets = name, rect, offsets

    def pe(self, slot: int) -> tuple[int, int]:
        """(x, y) of a slot's PE (possibly outside the rectangle, when an edit put it there)."""
        x, y, w, _ = self.rect
        return x + int(self.offsets[slot]) % w, y + int(self.offsets[slot]) // w

    def flat(self, cols: int) -> np.ndarray:
        x, y, w, _ = self.rect
        return (y + self.offsets // w) * cols + x + self.offsets % w


def _read_tiles(layer: dict[str, Any], where: str, rects: dict[str, tuple[int, int, int, int]],
                shape: tuple[int, int], problems: list[str]) -> list[_Tiles]:
    """Each kernel's slots decoded from its tile_pes: the clean-mesh rule (slot p on offset p), then each
    moved run [slot, x, y, n] (a bare [slot, x, y] is one slot) putting slots slot .. slot+n-1 on the n
    offsets from (x, y)'s on. Kernels whose rectangle is already wrong, or without tile_pes, are left out."""
    rows, cols = shape
    found = []
    for k in layer["kernels"]:
        name = k["name"]
        if "tile_pes" not in k or rects.get(name) is None:
            continue
        x, y, w, h = rects[name]
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > cols or y + h > rows:
            continue  # reported with the rectangle
        here = f"{where}: kernel {name}"
        spec, grid = k["tile_pes"], k.get("grid")
        if not (isinstance(grid, list) and len(grid) == 3 and all(isinstance(g, int) and g > 0 for g in grid)):
            raise Malformed(f"{here} has tile_pes but no grid [row_blocks, col_blocks, k_splits] of positive ints")
        if not isinstance(spec, dict) or not isinstance(spec.get("moved"), list):
            raise Malformed(f"{here}: tile_pes must be an object with a list 'moved'")
        if spec.get("rule") != TILE_RULE:
            problems.append(f"{here} maps its tiles by rule {spec.get('rule')!r}; this checker knows only "
                            f"{TILE_RULE!r}")
            continue
        count = grid[0] * grid[1] * grid[2]
        offsets = np.arange(count, dtype=np.int64)
        end = 0  # runs must come in slot order, without overlapping
        for run in spec["moved"]:
            if not (isinstance(run, list) and len(run) in (3, 4) and all(isinstance(v, int) for v in run)
                    and (len(run) == 3 or run[3] >= 1)):
                raise Malformed(f"{here}: tile_pes.moved holds {run!r}, not a run [slot, x, y, n] (n >= 1)")
            slot, px, py, n = (*run, 1) if len(run) == 3 else run
            if slot < end or slot + n > count:
                problems.append(f"{here}: tile_pes.moved run {run} names slots outside 0..{count - 1} or "
                                "already listed (runs go in slot order)")
                break
            end = slot + n
            if not (x <= px < x + w and y <= py < y + h):
                problems.append(f"{here} slot {slot} is on PE (x={px}, y={py}), outside its rectangle "
                                f"(x {x}..{x + w - 1}, y {y}..{y + h - 1})")
                break
            first = (py - y) * w + (px - x)
            if first == slot:  # harmless to decode, so the slots are still checked below
                problems.append(f"{here}: tile_pes.moved lists slot {slot}, but (x={px}, y={py}) is its "
                                "clean-mesh PE: only moved slots are listed")
            offsets[slot : slot + n] = first + np.arange(n)
            if first + n > w * h:
                out = slot + w * h - first
                tiles = _Tiles(name, (x, y, w, h), offsets)
                ox, oy = tiles.pe(out)
                problems.append(f"{here} slot {out} is on PE (x={ox}, y={oy}), outside its rectangle "
                                f"(x {x}..{x + w - 1}, y {y}..{y + h - 1})")
                break
        else:
            found.append(_Tiles(name, (x, y, w, h), offsets))
    return found


def _check_tiles(layers: list[tuple[str, list[_Tiles]]], dead: np.ndarray, problems: list[str]) -> None:
    """Every slot on a working PE of the main region, none shared within a layer, and each kernel's slots
    where the rule puts them (checked only for a kernel whose slots broke none of the rules before)."""
    rows, cols = dead.shape
    everything = [t for _, kernels in layers for t in kernels]
    if not everything:
        return
    usable = _main_region(~dead, np.concatenate([t.flat(cols) for t in everything]))
    flat_dead, flat_usable = dead.ravel(), usable.ravel()
    for where, kernels in layers:
        for t in kernels:
            here = f"{where}: kernel {t.name}"
            flat = t.flat(cols)
            bad = np.flatnonzero(~flat_usable[flat])  # on a dead PE, or on one cut off from the main region
            if bad.size:
                slot = int(bad[0])
                x, y = t.pe(slot)
                more = f" (and {bad.size - 1} more slots on dead or cut-off PEs)" if bad.size > 1 else ""
                if flat_dead[flat[slot]]:
                    problems.append(f"{here} slot {slot} is on dead PE (x={x}, y={y}){more}")
                else:
                    problems.append(f"{here} slot {slot} is on PE (x={x}, y={y}), which dead PEs cut off from the "
                                    f"mesh's largest region of working PEs{more}")
                continue
            x0, y0, w, h = t.rect
            rule = np.flatnonzero(usable[y0 : y0 + h, x0 : x0 + w].ravel())[: len(t.offsets)]
            if len(rule) < len(t.offsets):
                problems.append(f"{here} has {len(rule)} working PEs in the main region for its "
                                f"{len(t.offsets)} tiles")
                continue
            wrong = np.flatnonzero(rule != t.offsets)
            if wrong.size:
                slot = int(wrong[0])
                x, y = t.pe(slot)
                rx, ry = x0 + int(rule[slot]) % w, y0 + int(rule[slot]) // w
                problems.append(f"{here} slot {slot} is on PE (x={x}, y={y}), but {TILE_RULE} puts it on "
                                f"(x={rx}, y={ry}): a slot moves only past dead PEs before it")
        if not kernels:
            continue
        flat = np.concatenate([t.flat(cols) for t in kernels])
        owner = np.repeat(np.arange(len(kernels)), [len(t.offsets) for t in kernels])
        order = np.argsort(flat, kind="stable")
        twice = np.flatnonzero(flat[order][1:] == flat[order][:-1])
        if twice.size:
            a, b = order[twice[0]], order[twice[0] + 1]
            ka, kb = kernels[owner[a]], kernels[owner[b]]
            sa, sb = a - int(np.searchsorted(owner, owner[a])), b - int(np.searchsorted(owner, owner[b]))
            x, y = int(flat[a]) % cols, int(flat[a]) // cols
            problems.append(f"{where}: kernel {ka.name} slot {sa} and kernel {kb.name} slot {sb} are both on "
                            f"PE (x={x}, y={y})")


def _main_region(working: np.ndarray, tiles: np.ndarray) -> np.ndarray:
    """Bool [rows, cols]: the largest 4-connected region of working PEs (of equal largest ones, the one
    holding most of `tiles`, flat indices). Routes never cross a dead PE, so a PE outside it can send nothing
    to the rest. Labelled by a search over the runs of working PEs along each row."""
    rows, cols = working.shape
    if working.all():
        return working
    padded = np.zeros((rows, cols + 2), dtype=np.int8)
    padded[:, 1:-1] = working
    step = np.diff(padded, axis=1)
    row_of, start = (v.tolist() for v in np.nonzero(step == 1))  # run i: row row_of[i], cols start[i]..stop[i]-1
    stop = np.nonzero(step == -1)[1].tolist()
    bounds = np.searchsorted(np.asarray(row_of, dtype=np.int64), np.arange(rows + 1)).tolist()
    label = [-1] * len(row_of)
    sizes: list[int] = []
    for seed in range(len(row_of)):
        if label[seed] >= 0:
            continue
        label[seed], todo, size = len(sizes), [seed], 0
        while todo:
            i = todo.pop()
            size += stop[i] - start[i]
            for r in (row_of[i] - 1, row_of[i] + 1):
                if not 0 <= r < rows:
                    continue
                j = bisect.bisect_right(stop, start[i], bounds[r], bounds[r + 1])  # first run ending past it
                while j < bounds[r + 1] and start[j] < stop[i]:  # runs of row r touching run i's columns
                    if stop[j] > start[i] and label[j] < 0:
                        label[j] = label[seed]
                        todo.append(j)
                    j += 1
        sizes.append(size)
    grid = np.full((rows, cols), -1, dtype=np.int64)
    for i, (r, a, b) in enumerate(zip(row_of, start, stop, strict=True)):
        grid[r, a:b] = label[i]
    if not sizes:
        return np.zeros_like(working)
    held = np.bincount(grid.ravel()[tiles][grid.ravel()[tiles] >= 0], minlength=len(sizes))
    main = max(range(len(sizes)), key=lambda k: (sizes[k], held[k], -k))
    return grid == main


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
