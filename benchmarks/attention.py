"""Fused against unfused attention on the wafer, side by side: the micro-batch each lets a training batch
use, and the predicted training step.

    .venv/bin/python benchmarks/attention.py [--size 1.3B] [--batch 528] [--seq 2048]

Unfused, attention is the scores matmul, a causal softmax and the weighted sum, with the heads x seq x seq
scores held in SRAM and moved over the fabric between them; fused, one kernel keeps the queries while keys
and values stream past (docs/performance-model.md, "Attention"). Both programs are compiled from the same
model, built without weights, with the micro-batch wsc chooses for each.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from wsc.frontend.meta import empty_weights
from wsc.pipeline import compile_model
from wsc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1.3B")
    parser.add_argument("--batch", type=int, default=528)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--target", default="cs2-sim")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("cerebras_gpt", ROOT / "examples" / "cerebras_gpt.py")
    gpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpt)
    with empty_weights():
        model = gpt.build_model(size=args.size, seq=args.seq, batch=args.batch)
    inputs = gpt.example_inputs(size=args.size, seq=args.seq, batch=args.batch)
    target = load_target(args.target)
    steps = {}
    print(f"{args.size}, batch {args.batch} x {args.seq} tokens on {target.name}")
    for fused in (False, True):
        start = time.perf_counter()
        estimate = compile_model(model, inputs, target, fused_attention=fused).program.estimate
        training = estimate["training"]
        steps[fused] = training["step_seconds"]
        print(f"  {'fused  ' if fused else 'unfused'}  micro-batch {estimate['micro_batch_tokens'] // args.seq:4d} "
              f"sequences x {estimate['micro_batches']:4d} passes   training step {training['step_seconds']:9.3f} s   "
              f"{training['compute_utilization']:6.1%} of peak, {training['bottleneck']}-bound   "
              f"(compiled in {time.perf_counter() - start:.0f} s)")
    print(f"  training step, unfused / fused: {steps[False] / steps[True]:.2f}x")


if __name__ == "__main__":
    main()
