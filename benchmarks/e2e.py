"""Wall time of one Cerebras-GPT forward through wsc's executor and through eager PyTorch, in one run.

    .venv/bin/python benchmarks/e2e.py [--size 111M] [--seq 128] [--reps 5] [--target cs2-sim]

The model is compiled once (placement time is not what is measured here); then, alternating so that both
see the same machine state, the executor runs the program (`executor.stats.seconds`: weights streamed from
the store, every kernel over the partitioner's tiles) and eager PyTorch runs the forward under no_grad.
Prints best and median of each and the ratio wsc / eager, plus the largest difference of the logits; the
`prefetch` row is the executor with the next layer's weights copied in the background (runtime only, the
pipeline's run_compiled does not prefetch).
Both sides use every core: torch its intra-op pool, wsc its kernel thread pool.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsc.frontend.capture import to_numpy
from wsc.pipeline import compile_model, run_compiled
from wsc.runtime import lowering
from wsc.runtime.executor import Executor
from wsc.runtime.weight_store import WeightStore, write_store
from wsc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent


def _load_example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cerebras_gpt", ROOT / "examples" / "cerebras_gpt.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="111M")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--target", default="cs2-sim")
    parser.add_argument("--time-limit", type=float, default=1.0)
    args = parser.parse_args()

    gpt = _load_example()
    model = gpt.build_model(size=args.size, seq=args.seq).eval()
    inputs = gpt.example_inputs(size=args.size, seq=args.seq)
    t0 = time.perf_counter()
    compiled = compile_model(model, inputs, load_target(args.target), time_limit=args.time_limit)
    print(f"compiled {args.size} seq={args.seq} in {time.perf_counter() - t0:.1f} s; "
          f"torch threads {torch.get_num_threads()}")

    wsc_times: list[float] = []
    prefetch_times: list[float] = []
    eager_times: list[float] = []
    err = 0.0
    tmp = tempfile.TemporaryDirectory(prefix="wsc-e2e-")
    store_path = write_store(Path(tmp.name) / "w.safetensors", {k: to_numpy(v) for k, v in compiled.weights.items()})
    np_inputs = [to_numpy(x) for x in inputs]
    for rep in range(args.reps + 1):  # the first round compiles kernels and warms caches: not counted
        result = run_compiled(compiled, inputs)
        prefetching = Executor(compiled.program, WeightStore(store_path), prefetch=True)
        prefetching.run(np_inputs)
        with torch.no_grad():
            t = time.perf_counter()
            expected = model(*inputs)
            eager = time.perf_counter() - t
        if rep == 0:
            err = float(np.max(np.abs(result.outputs[0] - to_numpy(expected))))
            print(f"kernel cache: {lowering.cache_stats()}")
            continue
        wsc_times.append(result.executor.stats.seconds)
        prefetch_times.append(prefetching.stats.seconds)
        eager_times.append(eager)

    best_w, best_e = min(wsc_times), min(eager_times)
    med_w, med_e = statistics.median(wsc_times), statistics.median(eager_times)
    print(f"{'':8}{'best s':>10}{'median s':>10}")
    print(f"{'wsc':8}{best_w:10.4f}{med_w:10.4f}")
    best_p, med_p = min(prefetch_times), statistics.median(prefetch_times)
    print(f"{'prefetch':8}{best_p:10.4f}{med_p:10.4f}   (wsc, next layer's weights copied during this one's compute)")
    print(f"{'eager':8}{best_e:10.4f}{med_e:10.4f}")
    print(f"{'ratio':8}{best_w / best_e:10.2f}{med_w / med_e:10.2f}   (wsc / eager; target <= 3)")
    print(f"{'ratio':8}{best_p / best_e:10.2f}{med_p / med_e:10.2f}   (wsc with prefetch / eager)")
    print(f"max abs difference of the logits: {err:.2e}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
