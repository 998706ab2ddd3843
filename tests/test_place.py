"""Placement: every strategy is legal on random layers, cpsat is never worse, misfits raise WscError."""

from __future__ import annotations

import random
from functools import cache

import pytest

from wsc.errors import WscError
from wsc.passes.place import (
    STRATEGIES,
    Flow,
    KernelRect,
    Mesh,
    Placement,
    Rect,
    check_placement,
    place,
    wirelength,
)

SMALL = Mesh(16, 16, frozenset({(5, 5), (10, 2), (3, 12), (12, 12)}))
WAFER = Mesh(750, 994)
WAFER_DEFECTS = Mesh(750, 994, frozenset({(100, 200), (400, 500), (401, 500), (700, 50), (10, 900)}))


def random_layer(
    seed: int, mesh: Mesh, n: int, max_w: int, max_h: int
) -> tuple[list[KernelRect], list[Flow]]:
    """A chain of kernels (like a layer's dataflow) plus a few skip connections, sizes and bytes random."""
    rng = random.Random(seed)
    kernels = [KernelRect(f"k{i}", rng.randint(1, max_w), rng.randint(1, max_h)) for i in range(n)]
    flows = [Flow(f"k{i}", f"k{i + 1}", rng.randint(1_000, 1_000_000)) for i in range(n - 1)]
    for _ in range(n // 3):
        a, b = rng.sample(range(n), 2)
        flows.append(Flow(f"k{a}", f"k{b}", rng.randint(1_000, 1_000_000)))
    return kernels, flows


CASES = {
    "small-1": (SMALL, 1, 5, 4, 4),
    "small-2": (SMALL, 2, 8, 3, 3),
    "small-3": (SMALL, 3, 4, 6, 5),
    "wafer-1": (WAFER, 1, 12, 300, 250),
    "wafer-2": (WAFER, 2, 8, 300, 400),
    "wafer-defects": (WAFER_DEFECTS, 3, 10, 200, 200),
}


@cache
def solved(case: str, strategy: str) -> tuple[list[KernelRect], list[Flow], Mesh, Placement]:
    """Each (case, strategy) is placed once and shared by the tests below, to keep the suite fast."""
    mesh, seed, n, max_w, max_h = CASES[case]
    kernels, flows = random_layer(seed, mesh, n, max_w, max_h)
    return kernels, flows, mesh, place(kernels, flows, mesh, strategy, seed=0, workers=2, time_limit=1.0)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", list(CASES))
def test_every_strategy_is_legal(case: str, strategy: str) -> None:
    kernels, flows, mesh, p = solved(case, strategy)
    assert check_placement(p, kernels, mesh) == []
    assert p.strategy == strategy
    assert p.wirelength == wirelength(p.rects, flows)
    assert 0.0 <= p.gap <= 1.0 and p.best_bound <= p.objective + 1e-6


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", ["small-1", "small-2", "wafer-defects"])
def test_dead_pes_are_never_covered(case: str, strategy: str) -> None:
    _, _, mesh, p = solved(case, strategy)
    for r in p.rects.values():
        for row, col in mesh.dead:
            assert not (r.y <= row < r.y + r.h and r.x <= col < r.x + r.w), (r, (row, col))


@pytest.mark.parametrize("case", list(CASES))
def test_cpsat_is_never_worse_than_the_heuristics(case: str) -> None:
    best = solved(case, "cpsat")[3].wirelength
    assert best <= solved(case, "greedy")[3].wirelength
    assert best <= solved(case, "row-major")[3].wirelength


def test_small_problem_is_solved_to_optimality() -> None:
    # Two 2x2 kernels exchanging bytes: best is side by side, centres 2 hops apart.
    kernels = [KernelRect("a", 2, 2), KernelRect("b", 2, 2)]
    p = place(kernels, [Flow("a", "b", 10)], Mesh(4, 4), time_limit=2.0)
    assert p.status == "OPTIMAL"
    assert p.wirelength == 20 and p.gap == 0.0


def test_wirelength_uses_centre_distance() -> None:
    rects = {"a": Rect("a", 0, 0, 2, 2), "b": Rect("b", 5, 3, 1, 3)}
    # Centres (1, 1) and (5.5, 4.5): 4.5 + 3.5 = 8 hops.
    assert wirelength(rects, [Flow("a", "b", 3), Flow("b", "a", 1)]) == 32


def test_row_major_packs_in_order_on_a_shelf() -> None:
    kernels = [KernelRect("a", 3, 2), KernelRect("b", 4, 3), KernelRect("c", 5, 1)]
    p = place(kernels, [], Mesh(8, 8), "row-major")
    assert [(r.x, r.y) for r in p.rects.values()] == [(0, 0), (3, 0), (0, 3)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_kernel_wider_than_the_mesh_raises(strategy: str) -> None:
    with pytest.raises(WscError, match=r"kernel big is 17 cols x 2 rows but the mesh is 16 cols"):
        place([KernelRect("big", 17, 2)], [], SMALL, strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_too_much_area_raises_with_the_numbers(strategy: str) -> None:
    kernels = [KernelRect(f"k{i}", 8, 8) for i in range(4)]
    with pytest.raises(WscError, match=r"do not fit .* need 256 PEs, 252 are usable"):
        place(kernels, [], SMALL, strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_dead_pe_that_splits_the_mesh_raises(strategy: str) -> None:
    # Any 16-wide, 9-tall rectangle covers rows 7 and 8, so the dead PE at (8, 8) rules out every position.
    mesh = Mesh(16, 16, frozenset({(8, 8)}))
    with pytest.raises(WscError, match=r"do not fit .*1 dead PEs split the free space"):
        place([KernelRect("k", 16, 9)], [], mesh, strategy, time_limit=1.0)


def test_bad_inputs_raise() -> None:
    with pytest.raises(WscError, match="unknown placement strategy"):
        place([KernelRect("a", 1, 1)], [], SMALL, "annealing")
    with pytest.raises(WscError, match="unknown kernel 'z'"):
        place([KernelRect("a", 1, 1)], [Flow("a", "z", 1)], SMALL)
    with pytest.raises(WscError, match="appears twice"):
        place([KernelRect("a", 1, 1), KernelRect("a", 2, 2)], [], SMALL)


def test_check_placement_reports_every_kind_of_violation() -> None:
    kernels = [KernelRect("a", 2, 2), KernelRect("b", 2, 2), KernelRect("c", 3, 1)]
    mesh = Mesh(4, 4, frozenset({(3, 0)}))
    rects = {
        "a": Rect("a", 0, 0, 2, 2),
        "b": Rect("b", 1, 1, 2, 2),  # overlaps a
        "c": Rect("c", 0, 3, 2, 1),  # wrong size and covers the dead PE
    }
    problems = check_placement(Placement(rects, "x", "x", 0, 0, 0, 0, 0), kernels, mesh)
    assert "a overlaps b" in problems
    assert "c is 2x1 but 3x1 was requested" in problems
    assert "c covers dead PE (3, 0)" in problems
    outside = {"a": Rect("a", 3, 0, 2, 2)}
    assert any(
        "outside the mesh" in p
        for p in check_placement(Placement(outside, "", "", 0, 0, 0, 0, 0), kernels[:1], mesh)
    )


def test_cpsat_without_time_to_search_still_answers_with_the_hint() -> None:
    kernels, flows = random_layer(1, WAFER, 12, 300, 250)
    p = place(kernels, flows, WAFER, "cpsat", time_limit=1e-6)
    assert check_placement(p, kernels, WAFER) == []
    assert p.wirelength <= place(kernels, flows, WAFER, "greedy").wirelength
