"""Routing: turn placed flows into per-link byte loads on the mesh.

The fabric routes statically in dimension order, so each flow is modelled as `lanes` parallel XY paths
(first along a row, then along a column), bytes split evenly over the lanes:

- Rectangles side by side (no shared column): lanes = min(src.h, dst.h). Lane i leaves the source from its
  side facing the destination (right column if the destination lies east, else left column), on a row
  spread evenly over the source's rows, runs along that row to the destination's near column, then along
  that column to a row spread evenly over the destination's rows.
- Rectangles sharing columns (one above the other): a row-based lane would climb through its own
  rectangle, so the flow leaves through the facing bottom/top side instead, with lanes = min(src.w, dst.w)
  spread over the columns the same way.

A lane whose XY path crosses a dead PE is re-routed around it: each blocked stretch is replaced by a
shortest path between the last good PE before it and the first good PE after it, searched in a window
that grows until a path is found (so a single dead PE costs a small detour, not a whole-mesh search).
Loads are accumulated in difference arrays and summed once, so a straight 1700-hop lane costs O(1) numpy work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import networkx as nx
import numpy as np

from wsc.errors import WscError
from wsc.passes.place import Flow, Mesh, Placement, Rect


@dataclass
class Routes:
    """Link loads in bytes per direction and per-flow route summaries.

    `link_load["east"][r, c]` is the bytes sent from (r, c) to (r, c+1); "west" the reverse; both have shape
    [rows, cols-1]. `link_load["south"][r, c]` is from (r, c) to (r+1, c) (rows grow southward); "north"
    the reverse; both [rows-1, cols]. Each edge dict has src, dst, bytes, hops (longest lane), lanes and
    rerouted (lanes detoured around dead PEs).
    """

    max_link_load: int
    total_byte_hops: int
    longest_route_hops: int
    link_load: dict[str, np.ndarray]
    edges: list[dict]


def route_xy(placement: Placement, flows: list[Flow], mesh: Mesh) -> Routes:
    """Route every flow between placed rectangles with XY lanes, detouring around dead PEs."""
    dead = np.zeros((mesh.rows, mesh.cols), dtype=bool)
    for r, c in mesh.dead:
        if not (0 <= r < mesh.rows and 0 <= c < mesh.cols):
            raise WscError(
                f"dead PE ({r}, {c}) is outside the {mesh.rows} x {mesh.cols} mesh; fix the defect map"
            )
        dead[r, c] = True
    loads = _Loads(mesh.rows, mesh.cols)
    edges: list[dict] = []
    for f in flows:
        for end in (f.src, f.dst):
            if end not in placement.rects:
                raise WscError(f"flow {f.src} -> {f.dst} names {end!r}, which is not placed; place it first")
        edges.append(_route_flow(f, placement.rects[f.src], placement.rects[f.dst], mesh, dead, loads))
    link_load = loads.finish()
    return Routes(
        max_link_load=int(max((int(a.max()) for a in link_load.values() if a.size), default=0)),
        total_byte_hops=sum(e["byte_hops"] for e in edges),
        longest_route_hops=max((e["hops"] for e in edges), default=0),
        link_load=link_load,
        edges=[{k: v for k, v in e.items() if k != "byte_hops"} for e in edges],
    )


def lane_endpoints(src: Rect, dst: Rect) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(start rows, start cols, end rows, end cols) of each lane, as int64 arrays of equal length."""
    share_columns = src.x < dst.x + dst.w and dst.x < src.x + src.w
    if not share_columns:
        lanes = min(src.h, dst.h)
        i = np.arange(lanes, dtype=np.int64)
        east = dst.x >= src.x + src.w
        r0 = src.y + i * src.h // lanes
        r1 = dst.y + i * dst.h // lanes
        c0 = np.full(lanes, src.x + src.w - 1 if east else src.x, dtype=np.int64)
        c1 = np.full(lanes, dst.x if east else dst.x + dst.w - 1, dtype=np.int64)
    else:
        lanes = min(src.w, dst.w)
        i = np.arange(lanes, dtype=np.int64)
        south = dst.y + dst.h / 2 >= src.y + src.h / 2
        c0 = src.x + i * src.w // lanes
        c1 = dst.x + i * dst.w // lanes
        r0 = np.full(lanes, src.y + src.h - 1 if south else src.y, dtype=np.int64)
        r1 = np.full(lanes, dst.y if south else dst.y + dst.h - 1, dtype=np.int64)
    return r0, c0, r1, c1


class _Loads:
    """Four direction difference arrays: a straight run adds +v at its first link and -v after its last."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        # Row runs: diff along axis 1; column runs: diff along axis 0. One spare slot for the -v end.
        self.diff = {
            "east": np.zeros((rows, cols), dtype=np.int64),
            "west": np.zeros((rows, cols), dtype=np.int64),
            "south": np.zeros((rows, cols), dtype=np.int64),
            "north": np.zeros((rows, cols), dtype=np.int64),
        }

    def row_runs(self, row: np.ndarray, c_from: np.ndarray, c_to: np.ndarray, val: np.ndarray) -> None:
        """Add `val` to every link of each run along `row` from column c_from to c_to (either direction)."""
        east = c_to > c_from
        west = c_to < c_from
        # Eastward links c_from..c_to-1; westward links (stored at the lower column) c_to..c_from-1.
        np.add.at(self.diff["east"], (row[east], c_from[east]), val[east])
        np.add.at(self.diff["east"], (row[east], c_to[east]), -val[east])
        np.add.at(self.diff["west"], (row[west], c_to[west]), val[west])
        np.add.at(self.diff["west"], (row[west], c_from[west]), -val[west])

    def col_runs(self, col: np.ndarray, r_from: np.ndarray, r_to: np.ndarray, val: np.ndarray) -> None:
        """Add `val` to every link of each run along `col` from row r_from to r_to (either direction)."""
        south = r_to > r_from
        north = r_to < r_from
        np.add.at(self.diff["south"], (r_from[south], col[south]), val[south])
        np.add.at(self.diff["south"], (r_to[south], col[south]), -val[south])
        np.add.at(self.diff["north"], (r_to[north], col[north]), val[north])
        np.add.at(self.diff["north"], (r_from[north], col[north]), -val[north])

    def path(self, nodes: np.ndarray, val: int) -> None:
        """Add `val` along an arbitrary PE path ([n, 2] array of (row, col)), split into straight runs."""
        steps = np.diff(nodes, axis=0)
        if not len(steps):
            return
        # A run ends where the step direction changes.
        ends = np.flatnonzero(np.any(steps[1:] != steps[:-1], axis=1)) + 1
        starts = np.concatenate([[0], ends])
        stops = np.concatenate([ends, [len(steps)]])
        a, b = nodes[starts], nodes[stops]
        v = np.full(len(starts), val, dtype=np.int64)
        horizontal = a[:, 0] == b[:, 0]
        self.row_runs(a[horizontal, 0], a[horizontal, 1], b[horizontal, 1], v[horizontal])
        self.col_runs(a[~horizontal, 1], a[~horizontal, 0], b[~horizontal, 0], v[~horizontal])

    def finish(self) -> dict[str, np.ndarray]:
        return {
            "east": self.diff["east"].cumsum(axis=1)[:, : self.cols - 1],
            "west": self.diff["west"].cumsum(axis=1)[:, : self.cols - 1],
            "south": self.diff["south"].cumsum(axis=0)[: self.rows - 1, :],
            "north": self.diff["north"].cumsum(axis=0)[: self.rows - 1, :],
        }


def _route_flow(f: Flow, src: Rect, dst: Rect, mesh: Mesh, dead: np.ndarray, loads: _Loads) -> dict:
    base = {"src": f.src, "dst": f.dst, "bytes": f.bytes}
    if f.src == f.dst:
        return {**base, "hops": 0, "lanes": 0, "rerouted": 0, "byte_hops": 0}
    r0, c0, r1, c1 = lane_endpoints(src, dst)
    lanes = r0.size
    # Integer split: the first bytes % lanes lanes carry one byte more, so loads add up exactly.
    val = np.full(lanes, f.bytes // lanes, dtype=np.int64)
    val[: f.bytes % lanes] += 1

    blocked = _xy_hits_dead(r0, c0, r1, c1, dead)
    ok = ~blocked
    loads.row_runs(r0[ok], c0[ok], c1[ok], val[ok])
    loads.col_runs(c1[ok], r0[ok], r1[ok], val[ok])
    hops = np.abs(c1 - c0) + np.abs(r1 - r0)
    for i in np.flatnonzero(blocked):
        nodes = _detour(_xy_nodes(int(r0[i]), int(c0[i]), int(r1[i]), int(c1[i])), dead, f)
        loads.path(nodes, int(val[i]))
        hops[i] = len(nodes) - 1
    return {
        **base,
        "hops": int(hops.max()),
        "lanes": lanes,
        "rerouted": int(blocked.sum()),
        "byte_hops": int((hops * val).sum()),
    }


def _xy_hits_dead(
    r0: np.ndarray, c0: np.ndarray, r1: np.ndarray, c1: np.ndarray, dead: np.ndarray
) -> np.ndarray:
    """Per lane: does its XY path (row r0 from c0 to c1, then column c1 from r0 to r1) touch a dead PE?"""
    if not dead.any():
        return np.zeros(r0.size, dtype=bool)
    # Prefix counts of dead PEs along each row and each column make every segment test O(1).
    along_row = np.concatenate([np.zeros((dead.shape[0], 1), np.int64), dead.cumsum(axis=1)], axis=1)
    along_col = np.concatenate([np.zeros((1, dead.shape[1]), np.int64), dead.cumsum(axis=0)], axis=0)
    lo_c, hi_c = np.minimum(c0, c1), np.maximum(c0, c1)
    lo_r, hi_r = np.minimum(r0, r1), np.maximum(r0, r1)
    in_row = along_row[r0, hi_c + 1] - along_row[r0, lo_c]
    in_col = along_col[hi_r + 1, c1] - along_col[lo_r, c1]
    return (in_row + in_col) > 0


def _xy_nodes(r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    """Every PE of the XY path as an [n, 2] array of (row, col)."""
    step_c = 1 if c1 >= c0 else -1
    step_r = 1 if r1 >= r0 else -1
    cs = np.arange(c0, c1 + step_c, step_c)
    rs = np.arange(r0 + step_r, r1 + step_r, step_r)
    row_part = np.stack([np.full(cs.size, r0), cs], axis=1)
    col_part = np.stack([rs, np.full(rs.size, c1)], axis=1)
    return np.concatenate([row_part, col_part]).astype(np.int64)


def _detour(nodes: np.ndarray, dead: np.ndarray, f: Flow) -> np.ndarray:
    """Replace each stretch of `nodes` through dead PEs by a shortest live path around it."""
    is_dead = dead[nodes[:, 0], nodes[:, 1]]
    if is_dead[0] or is_dead[-1]:
        raise WscError(
            f"flow {f.src} -> {f.dst} starts or ends on a dead PE; re-run placement with the defect map"
        )
    # Stretches of consecutive dead PEs: [first dead, first live after).
    edges = np.flatnonzero(np.diff(is_dead.astype(np.int8)))
    firsts, afters = edges[0::2] + 1, edges[1::2] + 1
    pieces: list[np.ndarray] = []
    k = 0
    for first, after in zip(firsts.tolist(), afters.tolist(), strict=True):
        pieces.append(nodes[k : first - 1])
        around = _shortest_live_path(tuple(nodes[first - 1]), tuple(nodes[after]), dead, f)
        pieces.append(np.array(around[:-1], dtype=np.int64))
        k = after
    pieces.append(nodes[k:])
    return _erase_loops(np.concatenate(pieces))


def _erase_loops(nodes: np.ndarray) -> np.ndarray:
    """Drop any cycle a detour made by running back over the path: a route visits each PE once."""
    out: list[tuple[int, int]] = []
    where: dict[tuple[int, int], int] = {}
    for node in map(tuple, nodes.tolist()):
        if node in where:
            for gone in out[where[node] + 1 :]:
                del where[gone]
            del out[where[node] + 1 :]
        else:
            where[node] = len(out)
            out.append(node)
    return np.array(out, dtype=np.int64)


def _shortest_live_path(
    a: tuple[int, int], b: tuple[int, int], dead: np.ndarray, f: Flow
) -> list[tuple[int, int]]:
    rows, cols = dead.shape
    margin = 1
    while True:
        r_lo, r_hi = max(0, min(a[0], b[0]) - margin), min(rows - 1, max(a[0], b[0]) + margin)
        c_lo, c_hi = max(0, min(a[1], b[1]) - margin), min(cols - 1, max(a[1], b[1]) + margin)
        g = nx.grid_2d_graph(range(r_lo, r_hi + 1), range(c_lo, c_hi + 1))
        window = dead[r_lo : r_hi + 1, c_lo : c_hi + 1]
        g.remove_nodes_from((int(r) + r_lo, int(c) + c_lo) for r, c in np.argwhere(window))
        try:
            return [(int(r), int(c)) for r, c in nx.shortest_path(g, a, b)]
        except nx.NetworkXNoPath:
            if r_lo == 0 and c_lo == 0 and r_hi == rows - 1 and c_hi == cols - 1:
                raise WscError(
                    f"flow {f.src} -> {f.dst} has no route: dead PEs cut ({a[0]}, {a[1]}) off from "
                    f"({b[0]}, {b[1]}); move the kernels or check the defect map"
                ) from None
            margin *= 2


@dataclass(frozen=True)
class Route:
    """route: every flow of every layer over dimension-ordered lanes; identical layers share their routes."""

    name: ClassVar[str] = "route"

    def __call__(self, program):
        from wsc.passes.place import mesh_of

        mesh = mesh_of(program.target)
        routed: dict[str, Routes] = {}
        for layer in program.layers:
            key = layer.signature(program.graph)
            if key not in routed:
                routed[key] = route_xy(layer.placement, layer.flows, mesh)
            layer.routes = routed[key]
        return program
