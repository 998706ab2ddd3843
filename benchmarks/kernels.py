"""GFLOP/s of the wsc GEMM next to numpy's BLAS and torch, single-threaded and on every core, in one run.

    .venv/bin/python benchmarks/kernels.py [--quick] [--no-partitioner] [--unset-openblas-coretype]

Shapes (out = A[M, K] @ B[N, K]^T, the layout of a linear layer's weight): 512, 1024 and 2048 square, and
the matmuls of a Cerebras-GPT block and LM head at 128 tokens for 111M (d 768, ffn 3072) and 1.3B
(d 2048, ffn 8192), vocab 50257.

Columns: `wsc` runs the JIT kernel over one tile covering the output (on T threads: T column stripes, one
per thread, since a tile is the unit a thread takes); `wsc-part` runs it over the tile table the partitioner
gives that matmul when it maps the model on cs2-sim (many small tiles, as the executor runs them); then
numpy (its BLAS) and torch; then wsc / numpy and wsc / torch.

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
    out = [(f"square {n}", n, n, n) for n in ((512, 1024) if quick else (512, 1024, 2048))]
    for size, d, ffn in (("111M", 768, 3072), ("1.3B", 2048, 8192)):
        out += [
            (f"{size} qkv", TOKENS, 3 * d, d),
            (f"{size} attn-out", TOKENS, d, d),
            (f"{size} ffn-up", TOKENS, ffn, d),
            (f"{size} ffn-down", TOKENS, d, ffn),
        ]
        if not quick:
            out.append((f"{size} lm-head", TOKENS, VOCAB, d))
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


def best_seconds(fn, min_total: float = 0.4, min_reps: int = 3) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up: page faults, first-call set-up
    best, total, reps = float("inf"), 0.0, 0
    while reps < min_reps or total < min_total:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best


def measure(label: str, m: int, n: int, k: int, threads: int, part: np.ndarray | None) -> dict:
    import torch

    from wsc.runtime.lowering import compile_kernel

    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, m, k), dtype=np.float32)
    b = rng.standard_normal((1, n, k), dtype=np.float32)
    out = np.empty((1, m, n), np.float32)
    kernel = compile_kernel("matmul", (1, m, n), [a.shape, b.shape], {"bias": False})
    cuts = np.arange(threads + 1, dtype=np.int64) * n // threads
    stripes = np.array([[0, m, cuts[i], cuts[i + 1]] for i in range(threads)], dtype=np.int64)
    flop = 2.0 * m * n * k
    row: dict = {"label": label, "m": m, "n": n, "k": k}
    row["wsc"] = flop / best_seconds(lambda: kernel(out, [a, b], stripes, threads=threads)) / 1e9
    a2, bt = a[0], b[0].T  # numpy and torch see B transposed in place (no copy), as a linear layer does
    row["max_err"] = float(np.max(np.abs(out[0] - a2 @ bt)))
    if part is not None:
        row["wsc_part"] = flop / best_seconds(lambda: kernel(out, [a, b], part, threads=threads)) / 1e9
        row["part_tiles"] = int(part.shape[0])
    row["numpy"] = flop / best_seconds(lambda: a2 @ bt) / 1e9
    ta, tbt = torch.from_numpy(a2), torch.from_numpy(b[0]).t()
    with torch.no_grad():
        row["torch"] = flop / best_seconds(lambda: torch.matmul(ta, tbt)) / 1e9
    return row


def worker(threads: int, quick: bool, tiles_file: str | None) -> None:
    import torch

    torch.set_num_threads(threads)
    print(json.dumps({"blas": f"numpy: {openblas_info()}; torch: {torch.get_num_threads()} threads"}), flush=True)
    tables = dict(np.load(tiles_file)) if tiles_file else {}
    for label, m, n, k in shapes(quick):
        print(json.dumps(measure(label, m, n, k, threads, tables.get(label))), flush=True)


# ----------------------------------------------------------------------------------------------------------
# Parent: spawn one worker per thread count and print the table


def run_worker(threads: int, args: argparse.Namespace, tiles_file: str | None) -> tuple[list[dict], str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    if args.unset_openblas_coretype:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    cmd = [sys.executable, __file__, "--worker", str(threads)] + (["--quick"] if args.quick else [])
    if tiles_file:
        cmd += ["--tiles", tiles_file]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"worker with {threads} threads failed:\n{proc.stderr}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return lines[1:], lines[0]["blas"]


def fmt(x: float | None, width: int = 9, digits: int = 1) -> str:
    return f"{x:{width}.{digits}f}" if x is not None else f"{'-':>{width}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes (no 2048 square, no LM heads)")
    parser.add_argument("--no-partitioner", action="store_true", help="skip the partitioner's tile tables")
    parser.add_argument("--unset-openblas-coretype", action="store_true")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tiles", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.quick, args.tiles)
        return

    from wsc.runtime import jit

    cores = os.cpu_count() or 1
    print(f"host {jit.host_cpu()[0]}, {cores} cores, wsc vectors {jit.vector_width_bits()} bits")
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
            print(f"\n{threads} thread{'s' if threads > 1 else ''} ({info}); GFLOP/s, higher is better")
            print(f"{'shape':16}{'M':>6}{'N':>7}{'K':>6}{'wsc':>9}{'wsc-part':>9}{'tiles':>8}"
                  f"{'numpy':>9}{'torch':>9}{'wsc/np':>8}{'wsc/torch':>10}{'part/np':>8}")
            for r in rows:
                part = r.get("wsc_part")
                print(f"{r['label']:16}{r['m']:6d}{r['n']:7d}{r['k']:6d}{fmt(r['wsc'])}{fmt(part)}"
                      f"{r.get('part_tiles', '-'):>8}{fmt(r['numpy'])}{fmt(r['torch'])}"
                      f"{fmt(r['wsc'] / r['numpy'], 8, 2)}{fmt(r['wsc'] / r['torch'], 10, 2)}"
                      f"{fmt(part / r['numpy'] if part else None, 8, 2)}")
            at_1024 = [r for r in rows if r["label"] == "square 1024"]
            if threads == 1 and at_1024:
                ratio = at_1024[0]["wsc"] / at_1024[0]["numpy"]
                print(f"target: wsc >= 0.5 x numpy single-thread at 1024: {ratio:.2f} "
                      f"({'met' if ratio >= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
