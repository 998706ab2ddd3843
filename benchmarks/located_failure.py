"""What a located verification failure looks like: Cerebras-GPT (the demo's 111M by default) compiled for
cs2-sim, with a bug injected into the compiled program only (its fused GELUs computing the tanh approximation
instead of erf), verified as `wsc compile` verifies, and written out like a compile.

It prints the summary's verification lines and writes OUT (report.json with verification.located and
verification.layers, placement.json, ...), so that `wsc viz OUT --highlight -o wrong.svg` draws the kernel
named (docs/verification.md shows both).

    python benchmarks/located_failure.py --out /tmp/located
    wsc viz /tmp/located --highlight -o /tmp/located/wrong.svg
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from wsc import api, cli, pipeline
from wsc.artifacts.report import build_report
from wsc.options import CompileOptions
from wsc.targets import load_target

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cerebras_gpt.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="111M")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("cerebras_gpt", EXAMPLE)
    gpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpt)
    model, inputs = gpt.build_model(args.size, args.seq), gpt.example_inputs(args.size, args.seq)
    start = time.perf_counter()
    compiled = pipeline.compile_model(model, inputs, load_target("cs2-sim"), model_name="cerebras_gpt")
    for node in compiled.program.graph:
        if node.attrs.get("epilogue") == "gelu":  # the bug: every fused GELU with the wrong formula
            node.attrs["approximate"] = "tanh"
    verification, memory, seconds = api.verify_compiled(compiled, model, inputs, CompileOptions())
    report = build_report(compiled, verification=verification, memory=memory, run_seconds=seconds,
                          total_seconds=time.perf_counter() - start, model_info={"size": args.size})
    api.CompiledModel(compiled, report).save(args.out)
    for line in cli.verification_lines(verification, args.out):
        print(line)


if __name__ == "__main__":
    main()
