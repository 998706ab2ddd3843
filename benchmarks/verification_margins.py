"""How far inside its verification bound a correct compile lands, model by model: the evidence for the rule's
SAFETY factor (docs/verification.md).

Each model is compiled for cs2-sim and verified with the per-layer diff on. Three numbers are printed for it,
each the worst error divided by its bound: the outputs (what decides pass or fail), any value inside the
program as run (errors carried from upstream), and any kernel run alone on golden inputs (its own error).
A ratio of 1 would be a failure, so 1 / ratio is the margin. The last line gives the worst of each.

    python benchmarks/verification_margins.py                 # every example and Hugging Face architecture
    python benchmarks/verification_margins.py llama resnet    # some of them
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import wsc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cases() -> dict[str, Callable[[], tuple]]:
    gpt, nano, hf, resnet = load("cerebras_gpt"), load("nanogpt"), load("hf_models"), load("resnet")
    found: dict[str, Callable[[], tuple]] = {
        "cerebras-gpt-111m": lambda: (gpt.build_model("111M", 128), gpt.example_inputs("111M", 128)),
        "nanogpt": lambda: (nano.build_model(), nano.example_inputs()),
        "resnet": lambda: (resnet.build_model(), resnet.example_inputs()),
    }
    for arch in hf.CLASSES:
        found[arch] = lambda arch=arch: (hf.build_model(arch), hf.example_inputs(arch))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="names to run (default: all)")
    args = parser.parse_args()
    available = cases()
    names = args.models or list(available)
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown model {unknown[0]}; choose from {', '.join(available)}")
    worst = {"outputs": 0.0, "in program": 0.0, "alone": 0.0}
    print(f"{'model':20s} {'status':6s} {'outputs':>8s} {'in program':>11s} {'alone':>8s}  worst kernel alone")
    for name in names:
        model, inputs = available[name]()
        v = wsc.compile(model, inputs, target="cs2-sim", verify_layers=True).report["verification"]
        layers = v["layers"]
        ratios = {"outputs": v["error_ratio"] or 0.0,
                  "in program": max(layer["error_ratio"] or 0.0 for layer in layers),
                  "alone": max(layer["alone_error_ratio"] or 0.0 for layer in layers)}
        kernel = max(layers, key=lambda layer: layer["alone_error_ratio"] or 0.0)["worst_alone"]
        for key, value in ratios.items():
            worst[key] = max(worst[key], value)
        print(f"{name:20s} {v['status']:6s} {ratios['outputs']:8.4f} {ratios['in program']:11.4f} "
              f"{ratios['alone']:8.4f}  {kernel}", flush=True)
    print(f"worst: outputs {worst['outputs']:.4f} of the bound (margin {1 / max(worst['outputs'], 1e-12):.0f}x), "
          f"in program {worst['in program']:.4f}, alone {worst['alone']:.4f}")


if __name__ == "__main__":
    main()
