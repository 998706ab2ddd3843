"""Peak memory of wsc's weight-streaming run against eager PyTorch, on the same model and weights.

    .venv/bin/python benchmarks/memory.py [--size 1.3B] [--seq 128] [--workdir DIR]

Writes the model's weights (random, seeded) to a safetensors file once, then measures, each in a fresh
process so neither sees the other's memory:
- wsc: `wsc compile examples/cerebras_gpt.py --weights FILE`: the model is built without weights and the
  compiled program streams them from the file; its peak RSS is taken right after the run, before the eager
  reference of its verification loads the weights;
- eager: the same model loaded from the same file into PyTorch and run forward once.
Prints both peaks, their ratio, and the compiled run's max abs error against eager.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WRITE = """
import sys, importlib.util
spec = importlib.util.spec_from_file_location("gpt", sys.argv[1]); gpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpt)
from safetensors.torch import save_model
save_model(gpt.build_model(size=sys.argv[2], seq=int(sys.argv[3]), seed=5), sys.argv[4])
"""

EAGER = """
import sys, resource, importlib.util, torch
spec = importlib.util.spec_from_file_location("gpt", sys.argv[1]); gpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpt)
from safetensors.torch import load_file
from wsc.frontend.meta import empty_weights
with empty_weights():
    model = gpt.build_model(size=sys.argv[2], seq=int(sys.argv[3]))
state = load_file(sys.argv[4])  # the tied embedding is saved once, under one of its two names
tied = state.get("wte.weight", state.get("lm_head.weight"))
state.update({"wte.weight": tied, "lm_head.weight": tied})
model.load_state_dict(state, strict=True, assign=True)
with torch.no_grad():
    model(*gpt.example_inputs(size=sys.argv[2], seq=int(sys.argv[3])))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1.3B")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--workdir", help="where to keep the weights file (default: a temporary folder)")
    args = parser.parse_args()
    example = str(ROOT / "examples" / "cerebras_gpt.py")
    with tempfile.TemporaryDirectory(prefix="wsc-memory-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        weights = work / f"cerebras-gpt-{args.size}.safetensors"
        if not weights.exists():
            subprocess.run([sys.executable, "-c", WRITE, example, args.size, str(args.seq), str(weights)], check=True)
        out = work / "wsc_out"
        subprocess.run([sys.executable, "-m", "wsc.cli", "compile", example, "--target", "cs2-sim",
                        "--model-arg", f"size={args.size}", "--model-arg", f"seq={args.seq}",
                        "--weights", str(weights), "--out", str(out)], check=True, cwd=ROOT)
        report = json.loads((out / "report.json").read_text())
        eager = subprocess.run([sys.executable, "-c", EAGER, example, args.size, str(args.seq), str(weights)],
                               check=True, capture_output=True, text=True)
        eager_peak = int(eager.stdout.strip().splitlines()[-1])
    wsc_peak = report["memory"]["peak_rss_bytes"]
    v = report["verification"]
    print(f"\nCerebras-GPT {args.size}, seq {args.seq}, weights {weights.stat().st_size / 1e9:.2f} GB (fp32)")
    print(f"{'':24}{'peak RSS':>12}")
    print(f"{'wsc (weight streaming)':24}{wsc_peak / 1e9:>10.2f} GB")
    print(f"{'eager PyTorch':24}{eager_peak / 1e9:>10.2f} GB")
    print(f"wsc / eager = {wsc_peak / eager_peak:.3f}; verification {v['status']}, max abs error "
          f"{v['max_abs_err']:.2e}, {v['error_ratio']:.2g} of its bound (tolerance {v['tolerance']:g})")


if __name__ == "__main__":
    main()
