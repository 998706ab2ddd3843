"""Placement strategies and routers side by side on Cerebras-GPT, in one run.

    .venv/bin/python benchmarks/mapping.py [--size 111M] [--seq 128] [--target cs2-sim|PATH.yaml]

The model is captured once (`compile_model`); every other strategy re-maps the same capture
(`compile_captured`). Per strategy it prints the wirelength (bytes x hops over every layer), the worst link
load with the XY router and with the congestion-aware router, the simulated step time with each, the
placement time, and the ratios to cpsat. A router is only worth being the default if its worst link is no
worse than XY's on every strategy: the last line says whether that holds.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from wsc.core.errors import DoesNotPlace
from wsc.core.mesh import mesh_of
from wsc.core.program import Program
from wsc.frontend.meta import empty_weights
from wsc.passes.estimate import Estimate
from wsc.passes.placers import STRATEGIES
from wsc.passes.route import route
from wsc.passes.routers import Routes
from wsc.pipeline import compile_captured, compile_model
from wsc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent


def reroute(program: Program, router: str) -> tuple[int, float, float]:
    """Route every distinct layer of `program` with `router`: (worst link load, step seconds, route seconds)."""
    mesh = mesh_of(program.target)
    start = time.perf_counter()
    routed: dict[str, Routes] = {}
    for layer in program.layers:
        key = layer.signature(program.graph)
        if key not in routed:
            routed[key] = route(layer.placement, layer.flows, mesh, router, program.target.routable_colors)
        layer.routes = routed[key]
    seconds = time.perf_counter() - start
    program = Estimate()(program)
    return max(layer.routes.max_link_load for layer in program.layers), program.estimate["step_seconds"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="111M")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--target", default="cs2-sim")
    parser.add_argument("--time-limit", type=float, default=2.0)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args()

    spec = importlib.util.spec_from_file_location("cerebras_gpt", ROOT / "examples" / "cerebras_gpt.py")
    assert spec is not None and spec.loader is not None
    gpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpt)
    with empty_weights():  # mapping needs shapes only: no memory for the weights, at any size
        model = gpt.build_model(size=args.size, seq=args.seq)
    inputs = gpt.example_inputs(size=args.size, seq=args.seq)
    target = load_target(args.target)

    first = compile_model(model, inputs, target, strategy="cpsat", time_limit=args.time_limit)
    rows: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for strategy in args.strategies.split(","):
        # Every strategy places the same kernel rectangles: CP-SAT's share of the mesh (placement.fill).
        try:
            compiled = first if strategy == "cpsat" else compile_captured(
                first.captured, first.program.tokens, target, strategy=strategy, time_limit=args.time_limit,
                fill=first.program.fill)
        except DoesNotPlace as refusal:
            failed[strategy] = str(refusal).split(";")[0]
            continue
        program = compiled.program
        xy_load, xy_step, xy_s = reroute(program, "xy")
        cg_load, cg_step, cg_s = reroute(program, "congestion")
        worst_gap = max(layer.placement.gap for layer in program.layers)
        rows[strategy] = {
            "wirelength": sum(layer.placement.wirelength for layer in program.layers),
            "xy_load": xy_load, "cg_load": cg_load, "xy_step": xy_step, "cg_step": cg_step,
            "place_s": compiled.pass_seconds["place"], "xy_s": xy_s, "cg_s": cg_s, "gap": worst_gap,
        }
    base = rows.get("cpsat") or next(iter(rows.values()))
    dead = f", {len(target.dead_pes):,} dead PEs" if target.dead_pes else ""
    print(f"Cerebras-GPT {args.size}, seq {args.seq}, on {target.name}{dead}: strategies x routers "
          f"(kernels on {first.program.fill:.0%} of the mesh)")
    print(f"{'strategy':<10} {'wirelength':>11} {'x cpsat':>7} {'XY max B':>10} {'cong max B':>10} "
          f"{'x cpsat':>7} {'XY step ms':>10} {'cong step ms':>12} {'x cpsat':>7} {'place s':>7} "
          f"{'route s xy/cong':>15} {'gap':>6}")
    for strategy, r in rows.items():
        print(f"{strategy:<10} {r['wirelength']:>11.4g} {r['wirelength'] / base['wirelength']:>7.2f} "
              f"{r['xy_load']:>10,} {r['cg_load']:>10,} {r['cg_load'] / base['cg_load']:>7.2f} "
              f"{r['xy_step'] * 1e3:>10.4f} {r['cg_step'] * 1e3:>12.4f} {r['cg_step'] / base['cg_step']:>7.3f} "
              f"{r['place_s']:>7.2f} {r['xy_s']:>7.2f}/{r['cg_s']:<7.2f} {r['gap']:>6.3f}")
    for strategy, why in failed.items():
        print(f"{strategy:<10} could not place the layers: {why}")
    never_worse = all(r["cg_load"] <= r["xy_load"] for r in rows.values())
    print(f"congestion router's worst link <= XY's on every strategy: {'yes' if never_worse else 'NO'}")


if __name__ == "__main__":
    main()
