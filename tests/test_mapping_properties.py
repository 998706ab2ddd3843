"""Property tests: on random layer graphs, mesh sizes and defect maps, every strategy's placement is legal
(and most examples do place), cpsat reaches the optimum an enumeration finds on tiny layers, and every
router's routes avoid dead PEs, conserve bytes and color within the limit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_place import brute_force_charged_optimum

from wsc.core.errors import WscError
from wsc.core.mesh import Flow, KernelRect, Mesh, mesh_of
from wsc.passes.place import STRATEGIES, check_placement, place
from wsc.passes.route import route

SETTINGS = settings(max_examples=12, deadline=4000, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    """A mesh with random defects (scattered PEs, maybe a dead row or column) and a layer: a chain of
    kernels plus skip flows, some kernels allowed spare PEs (the defect model's slack)."""
    rows, cols = draw(st.integers(6, 40)), draw(st.integers(6, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rate = draw(st.sampled_from([0.0, 0.01, 0.03]))
    dead = {(int(i) // cols, int(i) % cols) for i in rng.choice(rows * cols, int(rate * rows * cols), replace=False)}
    if draw(st.booleans()):
        line = draw(st.integers(0, rows - 1))
        dead |= {(line, c) for c in range(cols)}

    class Target:  # the fields mesh_of reads
        pass

    t = Target()
    t.rows, t.cols, t.dead_pes = rows, cols, frozenset(dead)  # type: ignore[attr-defined]
    mesh = mesh_of(t)
    n = draw(st.integers(1, 6))
    kernels = []
    for i in range(n):
        w, h = draw(st.integers(1, max(1, cols // 3))), draw(st.integers(1, max(1, rows // 3)))
        spare = draw(st.integers(0, w * h - 1)) if draw(st.booleans()) else None
        kernels.append(KernelRect(f"k{i}", w, h, None if spare is None else w * h - spare))
    flows = [Flow(f"k{i}", f"k{i + 1}", draw(st.integers(1, 10_000))) for i in range(n - 1)]
    for _ in range(draw(st.integers(0, n))):
        a, b = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        if a != b:
            flows.append(Flow(f"k{a}", f"k{b}", draw(st.integers(1, 10_000))))
    return mesh, kernels, flows


def test_every_strategy_is_legal_or_says_it_does_not_fit() -> None:
    """Most generated layers fit (each kernel at most a third of each side), so most examples must place: a
    placer that refused everything with "do not fit" would otherwise pass. The examples are counted across
    the run and at least half must have placed (today every one does)."""
    placed: list[bool] = []

    @SETTINGS
    @given(problems(), st.sampled_from(STRATEGIES), st.integers(0, 3))
    def legal_or_refused(problem, strategy, seed) -> None:
        mesh, kernels, flows = problem
        try:
            p = place(kernels, flows, mesh, strategy, seed=seed, time_limit=0.2)
        except WscError as error:
            assert "do not fit" in str(error)
            placed.append(False)
            return
        assert check_placement(p, kernels, mesh) == []
        placed.append(True)

    legal_or_refused()
    assert placed and sum(placed) >= len(placed) / 2, f"only {sum(placed)} of {len(placed)} examples placed"


@st.composite
def tiny_problems(draw):
    """Two or three kernels on a defect-free mesh of at most 4 x 4, small enough to enumerate every
    arrangement: a chain of flows, maybe one closing it, each a whole multiple (1 to 5) of the smallest so that
    CP-SAT's integer weights (bytes over the smallest pair's) are exact."""
    rows, cols = draw(st.integers(2, 4)), draw(st.integers(2, 4))
    n = draw(st.integers(2, 3))
    kernels = [KernelRect(f"k{i}", draw(st.integers(1, cols)), draw(st.integers(1, min(2, rows)))) for i in range(n)]
    pairs = [(i, i + 1) for i in range(n - 1)] + ([(0, n - 1)] if n == 3 and draw(st.booleans()) else [])
    unit = draw(st.integers(1, 1000))
    multiples = draw(st.permutations([1] + [draw(st.integers(1, 5)) for _ in pairs[1:]]))
    flows = [Flow(f"k{a}", f"k{b}", unit * m) for (a, b), m in zip(pairs, multiples, strict=True)]
    return Mesh(rows, cols), kernels, flows


@SETTINGS
@given(tiny_problems())
def test_cpsat_reaches_the_enumerated_optimum_or_proves_nothing_fits(problem) -> None:
    mesh, kernels, flows = problem
    optimum = brute_force_charged_optimum(kernels, flows, mesh)
    if optimum is None:
        with pytest.raises(WscError, match="do not fit"):
            place(kernels, flows, mesh, "cpsat", time_limit=1.0)
        return
    p = place(kernels, flows, mesh, "cpsat", time_limit=1.0)
    assert check_placement(p, kernels, mesh) == []
    assert p.status == "OPTIMAL" and (p.objective, p.wirelength) == (pytest.approx(optimum[0]), optimum[1])


@SETTINGS
@given(problems(), st.sampled_from(["xy", "congestion"]))
def test_routes_avoid_dead_pes_and_conserve_bytes(problem, router) -> None:
    mesh, kernels, flows = problem
    try:
        p = place(kernels, flows, mesh, "greedy")
    except WscError:
        return
    try:
        routes = route(p, flows, mesh, router, colors=24)
    except WscError as error:
        # Only a kernel with no working PE, or scattered dead PEs walling a lane end in, stop a route.
        assert "no route" in str(error) or "no working PE" in str(error)
        return
    assert sum(int(x.sum()) for x in routes.link_load.values()) == routes.total_byte_hops
    dead = mesh.dead
    for (src, dst), paths in routes.paths.items():
        assert routes.colors[src, dst] < 24
        a, b = p.rects[src], p.rects[dst]
        for path in paths:
            for (ra, ca), (rb, cb) in zip(path[:-1].tolist(), path[1:].tolist(), strict=True):
                assert ra == rb or ca == cb
                for r in range(min(ra, rb), max(ra, rb) + 1):
                    for c in range(min(ca, cb), max(ca, cb) + 1):
                        assert (r, c) not in dead
            (r0, c0), (r1, c1) = path[0].tolist(), path[-1].tolist()
            assert a.y <= r0 < a.y + a.h and a.x <= c0 < a.x + a.w
            assert b.y <= r1 < b.y + b.h and b.x <= c1 < b.x + b.w
