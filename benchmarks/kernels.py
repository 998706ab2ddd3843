"""GFLOP/s of the wsc GEMM next to numpy's BLAS and torch, single-threaded and on every core, in one run.

    .venv/bin/python benchmarks/kernels.py [--quick] [--reps N] [--no-partitioner] [--unset-openblas-coretype]

Shapes (out = A[M, K] @ B[N, K]^T, the layout of a linear layer's weight): 512, 1024, 2048 and 4096 square;
the matmuls of a Cerebras-GPT block and LM head at 128 tokens for 111M (d 768, ffn 3072) and 1.3B
(d 2048, ffn 8192), vocab 50257; and a Llama-3-8B-shaped layer at 128 tokens (d 4096, ffn 14336, 8 key-value
heads of 128: q and o 4096 x 4096, k and v 1024 x 4096, gate and up 14336 x 4096, down 4096 x 14336; the
pairs of one shape are measured once).

Columns: `wsc` runs the JIT kernel over one tile covering the output (on T threads: T column stripes, one
per thread, since a tile is the unit a thread takes); `wsc-part` runs it over the tile table the partitioner
gives that matmul when it maps the model on cs2-sim (many small tiles, as the executor runs them; the 8B layer
has no table: mapping a model of that width is not worth its capture time here); then numpy (its BLAS) and
torch; then the ratios of the best times: wsc / numpy, wsc / torch, wsc-part / numpy and wsc-part / torch.

Every contender is timed the same fixed number of times (--reps, after one warm-up call each), in
alternation, so a burst of other work on the machine hits them all alike; each column shows the best
GFLOP/s and, after the slash, the median. Ratios compare best with best.

Each thread count runs in its own subprocess whose environment is set before numpy is imported
(OMP/OPENBLAS/MKL_NUM_THREADS), with torch.set_num_threads too, so "1 thread" really is one thread for all
three. The BLAS numpy uses and the OpenBLAS core type it picked are printed: OPENBLAS_CORETYPE, where set,
forces an older kernel and slows numpy; `--unset-openblas-coretype` removes it (and OPENBLAS_L2_SIZE) from
the workers' environment.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 50257
TOKENS = 128


def shapes(quick: bool) -> list[tuple[str, int, int, int]]:
    """(label, M, N, K)."""
    out = [(f"square {n}", n, n, n) for n in ((512, 1024) if quick else (512, 1024, 2048, 4096))]
    for size, d, ffn in (("111M", 768, 3072), ("1.3B", 2048, 8192)):
        out += [
            (f"{size} qkv", TOKENS, 3 * d, d),
            (f"{size} attn-out", TOKENS, d, d),
            (f"{size} ffn-up", TOKENS, ffn, d),
            (f"{size} ffn-down", TOKENS, d, ffn),
        ]
        if not quick:
            out.append((f"{size} lm-head", TOKENS, VOCAB, d))
    if not quick:
        d, ffn, kv = 4096, 14336, 8 * 128
        out += [("8B q, o", TOKENS, d, d), ("8B k, v", TOKENS, kv, d), ("8B gate, up", TOKENS, ffn, d),
                ("8B down", TOKENS, d, ffn)]
    return out


# ----------------------------------------------------------------------------------------------------------
# Partitioner tile tables


def partitioner_tiles(quick: bool) -> dict[str, np.ndarray]:
    """The partitioner's tile table of every transformer matmul, from one-block models of each size.

    Each layer is partitioned on its own, so one block (plus embedding and head) gives the same tables as
    the full model at a fraction of the capture time.
    """
    import torch

    from wsc.pipeline import compile_model
    from wsc.runtime.executor import column_runs
    from wsc.targets import load_target

    spec = importlib.util.spec_from_file_location("cerebras_gpt", ROOT / "examples" / "cerebras_gpt.py")
    assert spec is not None and spec.loader is not None
    gpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpt)
    wanted = {(m, n, k): label for label, m, n, k in shapes(quick) if not label.startswith("square")}
    tables: dict[str, np.ndarray] = {}
    for d, ffn in ((768, 3072), (2048, 8192)):
        torch.manual_seed(0)
        model = gpt.CerebrasGPT(1, d, d // 64, ffn, vocab=VOCAB, max_positions=TOKENS).eval()
        ids = torch.zeros((1, TOKENS), dtype=torch.int64)
        compiled = compile_model(model, (ids,), load_target("cs2-sim"), time_limit=0.5)
        graph = compiled.program.graph
        for layer in compiled.program.layers:
            for name, plan in layer.kernels.items():
                node = graph[name]
                if node.op != "matmul":
                    continue
                a, b = graph[node.inputs[0]].shape, graph[node.inputs[1]].shape
                if len(b) != 2:
                    continue  # attention's batched matmuls are not in the table
                label = wanted.get((int(np.prod(a[:-1])), node.shape[-1], a[-1]))
                if label is not None:
                    tables[label] = column_runs(plan.tiles)  # in the order and grouping the executor uses
        del model, compiled
    return tables


# ----------------------------------------------------------------------------------------------------------
# Worker: one thread count, environment fixed before numpy was imported


def openblas_info() -> str:
    """The OpenBLAS core numpy runs on, read from the library numpy loaded."""
    libs = glob.glob(str(Path(np.__file__).parent.parent / "scipy_openblas*" / "lib" / "*.so*"))
    libs += glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
            fn = getattr(lib, prefix, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return f"OpenBLAS core {fn().decode()}"
    return "BLAS core unknown"


def timings(fns: dict, reps: int) -> dict[str, tuple[float, float]]:  # type: ignore[type-arg]
    """(best, median) seconds of each function over `reps` calls, the functions called in turn."""
    for fn in fns.values():
        fn()  # warm-up: page faults, first-call set-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: (min(ts), float(np.median(ts))) for name, ts in times.items()}


def measure(label: str, m: int, n: int, k: int, threads: int, part: np.ndarray | None, reps: int) -> dict:
    import torch

    from wsc.runtime.lowering import compile_kernel

    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, m, k), dtype=np.float32)
    b = rng.standard_normal((1, n, k), dtype=np.float32)
    out = np.empty((1, m, n), np.float32)
    kernel = compile_kernel("matmul", (1, m, n), [a.shape, b.shape], {"bias": False})
    cuts = np.arange(threads + 1, dtype=np.int64) * n // threads
    stripes = np.array([[0, m, cuts[i], cuts[i + 1]] for i in range(threads)], dtype=np.int64)
    a2, bt = a[0], b[0].T  # numpy and torch see B transposed in place (no copy), as a linear layer does
    ta, tbt = torch.from_numpy(a2), torch.from_numpy(b[0]).t()
    fns = {"wsc": lambda: kernel(out, [a, b], stripes, threads=threads)}
    if part is not None:
        part_out = np.empty_like(out)
        fns["wsc_part"] = lambda: kernel(part_out, [a, b], part, threads=threads)
    fns["numpy"] = lambda: a2 @ bt
    fns["torch"] = lambda: torch.matmul(ta, tbt)
    with torch.no_grad():
        times = timings(fns, reps)
    flop = 2.0 * m * n * k
    row: dict = {"label": label, "m": m, "n": n, "k": k}
    for name, (best, median) in times.items():
        row[name] = flop / best / 1e9
        row[f"{name}_median"] = flop / median / 1e9
    expected = a2.astype(np.float64) @ bt.astype(np.float64)
    row["max_err"] = float(np.max(np.abs(out[0] - expected)))
    if part is not None:
        row["part_tiles"] = int(part.shape[0])
        row["part_max_err"] = float(np.max(np.abs(part_out[0] - expected)))
    return row


def worker(threads: int, quick: bool, tiles_file: str | None, reps: int) -> None:
    import torch

    torch.set_num_threads(threads)
    print(json.dumps({"blas": f"numpy: {openblas_info()}; torch: {torch.get_num_threads()} threads"}), flush=True)
    tables = dict(np.load(tiles_file)) if tiles_file else {}
    for label, m, n, k in shapes(quick):
        print(json.dumps(measure(label, m, n, k, threads, tables.get(label), reps)), flush=True)


# ----------------------------------------------------------------------------------------------------------
# Parent: spawn one worker per thread count and print the table


def run_worker(threads: int, args: argparse.Namespace, tiles_file: str | None) -> tuple[list[dict], str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    if args.unset_openblas_coretype:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    cmd = [sys.executable, __file__, "--worker", str(threads), "--reps", str(args.reps)]
    cmd += ["--quick"] if args.quick else []
    if tiles_file:
        cmd += ["--tiles", tiles_file]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"worker with {threads} threads failed:\n{proc.stderr}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return lines[1:], lines[0]["blas"]


def fmt(x: float | None, width: int = 9, digits: int = 1) -> str:
    return f"{x:{width}.{digits}f}" if x is not None else f"{'-':>{width}}"


def rate(r: dict, name: str) -> str:
    """best/median GFLOP/s of one contender, or a dash."""
    if name not in r:
        return f"{'-':>12}"
    return f"{r[name]:6.1f}/{r[name + '_median']:<5.1f}"


def ratio(r: dict, num: str, den: str) -> float | None:
    return r[num] / r[den] if num in r else None


# Issue 17's bar for the one-call column, against torch, best against best: (threads, shape filter, ratio).
TARGETS = [
    ("single thread, 1024 and 2048 square", lambda t, label: t == 1 and label in ("square 1024", "square 2048"), 0.8),
    ("single thread, every transformer shape", lambda t, label: t == 1 and not label.startswith("square"), 0.7),
    ("all threads, 2048 square", lambda t, label: t > 1 and label == "square 2048", 0.7),
]


def print_table(threads: int, info: str, rows: list[dict]) -> None:
    print(f"\n{threads} thread{'s' if threads > 1 else ''} ({info}); GFLOP/s best/median, higher is better")
    print(f"{'shape':16}{'M':>6}{'N':>7}{'K':>7}{'wsc':>13}{'wsc-part':>13}{'tiles':>7}{'numpy':>13}"
          f"{'torch':>13}{'wsc/np':>8}{'wsc/torch':>10}{'part/np':>8}{'part/torch':>11}")
    for r in rows:
        print(f"{r['label']:16}{r['m']:6d}{r['n']:7d}{r['k']:7d} {rate(r, 'wsc')} {rate(r, 'wsc_part')}"
              f"{r.get('part_tiles', '-'):>7} {rate(r, 'numpy')} {rate(r, 'torch')}"
              f"{fmt(ratio(r, 'wsc', 'numpy'), 8, 2)}{fmt(ratio(r, 'wsc', 'torch'), 10, 2)}"
              f"{fmt(ratio(r, 'wsc_part', 'numpy'), 8, 2)}{fmt(ratio(r, 'wsc_part', 'torch'), 11, 2)}")
    for what, applies, bar in TARGETS:
        chosen = [r for r in rows if applies(threads, r["label"])]
        if chosen:
            worst = min(chosen, key=lambda r: r["wsc"] / r["torch"])
            value = worst["wsc"] / worst["torch"]
            print(f"target: wsc >= {bar} x torch, {what}: worst {value:.2f} ({worst['label']}) "
                  f"{'met' if value >= bar else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes: 512 and 1024 square, the GPT blocks")
    parser.add_argument("--reps", type=int, default=7, help="timed calls of each contender (after a warm-up)")
    parser.add_argument("--no-partitioner", action="store_true", help="skip the partitioner's tile tables")
    parser.add_argument("--unset-openblas-coretype", action="store_true")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tiles", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.quick, args.tiles, args.reps)
        return

    from wsc.runtime import jit

    cores = os.cpu_count() or 1
    caches = "/".join(f"{size // 1024}K" for _, size in sorted(jit.data_cache_bytes().items()))
    print(f"host {jit.host_cpu()[0]}, {cores} cores, wsc vectors {jit.vector_width_bits()} bits, "
          f"L1d/L2/L3 {caches}, {args.reps} timed calls each")
    coretype = {v: os.environ.get(v) for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    print(f"numpy {np.__version__}: OPENBLAS_CORETYPE={coretype['OPENBLAS_CORETYPE']}, "
          f"OPENBLAS_L2_SIZE={coretype['OPENBLAS_L2_SIZE']}"
          f"{' (unset for the workers)' if args.unset_openblas_coretype else ''}")
    with tempfile.TemporaryDirectory(prefix="wsc-bench-") as tmp:
        tiles_file = None
        if not args.no_partitioner:
            t = time.perf_counter()
            tables = partitioner_tiles(args.quick)
            tiles_file = str(Path(tmp) / "tiles.npz")
            np.savez(tiles_file, **tables)  # type: ignore[arg-type]
            print(f"partitioner tile tables for {len(tables)} shapes ({time.perf_counter() - t:.1f} s)")
        for threads in sorted({1, cores}):
            rows, info = run_worker(threads, args, tiles_file)
            print_table(threads, info, rows)


if __name__ == "__main__":
    main()
