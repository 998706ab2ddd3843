"""Compare placement strategies on one model and target, side by side in one run.

    .venv/bin/python benchmarks/strategies.py [--size 111M] [--seq 128] [--target cs2-sim]

Prints, per strategy: total wirelength (bytes x hops over every layer), the worst link load, the simulated
step time, and each one's ratio to cpsat's. The model is captured once; only the mapping is redone.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from wsc.passes.place import STRATEGIES
from wsc.pipeline import compile_captured, compile_model
from wsc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="111M")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--target", default="cs2-sim")
    parser.add_argument("--time-limit", type=float, default=2.0)
    args = parser.parse_args()

    spec = importlib.util.spec_from_file_location("cerebras_gpt", ROOT / "examples" / "cerebras_gpt.py")
    gpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpt)
    model = gpt.build_model(size=args.size, seq=args.seq)
    inputs = gpt.example_inputs(size=args.size, seq=args.seq)
    target = load_target(args.target)

    first = compile_model(model, inputs, target, strategy="cpsat", time_limit=args.time_limit)
    rows = {}
    for strategy in STRATEGIES:
        compiled = first if strategy == "cpsat" else compile_captured(
            first.captured, first.program.tokens, target, strategy=strategy, time_limit=args.time_limit)
        program = compiled.program
        rows[strategy] = {
            "wirelength": sum(layer.placement.wirelength for layer in program.layers),
            "max_link_load": max(layer.routes.max_link_load for layer in program.layers),
            "step_seconds": program.estimate["step_seconds"],
            "fabric_seconds": sum(e["fabric_seconds"] for e in program.estimate["layers"]),
            "place_seconds": compiled.pass_seconds["place"],
        }
    base = rows["cpsat"]
    print(f"Cerebras-GPT {args.size}, seq {args.seq}, on {args.target}: mapping strategies side by side")
    print(f"{'strategy':<10} {'wirelength':>12} {'x cpsat':>8} {'max link B':>11} {'x cpsat':>8} "
          f"{'fabric ms':>10} {'step ms':>9} {'x cpsat':>8} {'place s':>8}")
    for strategy, r in rows.items():
        print(f"{strategy:<10} {r['wirelength']:>12.4g} {r['wirelength'] / base['wirelength']:>8.2f} "
              f"{r['max_link_load']:>11,} {r['max_link_load'] / base['max_link_load']:>8.2f} "
              f"{r['fabric_seconds'] * 1e3:>10.4f} {r['step_seconds'] * 1e3:>9.4f} "
              f"{r['step_seconds'] / base['step_seconds']:>8.3f} {r['place_seconds']:>8.2f}")


if __name__ == "__main__":
    main()
