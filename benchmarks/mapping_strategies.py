"""Where placement matters, and by how much: every placement strategy x model x target x mode x seed.

    .venv/bin/python benchmarks/mapping_strategies.py --quick
    .venv/bin/python benchmarks/mapping_strategies.py [--models M,...] [--targets T,...]
        [--modes inference,training,pipelined] [--strategies S,...] [--seeds 0,1] [--time-limit SECONDS]
        [--all-pairs] [--jobs N | --ray [ADDRESS]] [--out DIR] [--outputs-only] [--list]

A cell is one `wsc.compile(..., verify=False)` of a model built on the meta device (shapes only) and one row of
OUT/cells.csv: its step and training step, the term binding them, the fabric's slack (how far below the binding
term the fabric is, at the tightest layer), what the placement costs (PEs, wirelength, worst link, longest
route), and the solver's time, status and gap; and the step over the best strategy's of its group (same model,
target, mode, batch, micro-batch and seed) and over the roofline bound. OUT/table.md has the relative steps,
strategies by groups, and one line per group on what binds; OUT/step_vs_size.png and
OUT/solve_time_vs_quality.png plot them.

Models (--list names them): `cerebras-gpt-SIZE` (examples/cerebras_gpt.py at sequence 2048, trained at the card's
batch), `hf-ARCH-SIZE` (the published sizes of examples/hf_models.py, at sequence 2048 or their limit),
`tiny-gpt` (tests/models/tiny_gpt.py); `NAME@SEQ` changes a model's sequence length. Targets: cs2-sim, cs3-sim,
`cs2-sim-defects` (cs2-sim with 1% of its PEs and row 375 dead), `mesh-64x64-thin-links` (mesh-64x64 with a
quarter of its link bandwidth and a 16x faster stream, so that the fabric binds a tiny model), or any packaged
target or target YAML. Modes: `inference` (weight streaming, batch 1), `training` (weight streaming at the
model's training batch, in passes of a micro-batch fixed per model so that the placement is the only thing that
varies), `pipelined` (every layer resident, batch 1). Tiny models run on meshes under 100,000 PEs and the others
on wafers, unless --all-pairs.

--quick: Cerebras-GPT 111M on cs2-sim (inference, and training at 120 sequences in passes of 15), 111M at 128
tokens pipelined (at 2048 a block does not fit its band), the tiny GPT on mesh-64x64-thin-links in all three
modes, and GPT-2 124M (Hugging Face, 1024 tokens) training at 8 sequences in passes of 4 on cs2-sim: every
strategy, seed 0, CP-SAT at the default 2 deterministic seconds per distinct layer (the preset needs no less).
About a minute and a half on two cores.

The cells run in a pool of --jobs processes (default: the CPU count; 1 runs them in this process), or as Ray
tasks: --ray starts a local Ray of --jobs CPUs, --ray ADDRESS joins a running cluster (its nodes need wsc
installed and this repository at the same path). cells.csv is the checkpoint: each row is appended as its cell
finishes, and a run with the same --out runs only the cells it has no row for. Ctrl-C keeps the finished rows.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

from mapping_sweep import grid, outputs, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    listed = lambda text: [item for item in text.split(",") if item]  # noqa: E731
    parser.add_argument("--out", type=Path, default=Path("wsc_out/mapping_strategies"))
    parser.add_argument("--quick", action="store_true", help="the preset of the docstring, in a few minutes")
    parser.add_argument("--models", type=listed, default=[], help="comma-separated; default: all (see --list)")
    parser.add_argument("--targets", type=listed, default=[], help="comma-separated; default: "
                        + ",".join(grid.DEFAULT_TARGETS))
    parser.add_argument("--modes", type=listed, default=[], help="some of " + ",".join(grid.MODES))
    parser.add_argument("--strategies", type=listed, default=[], help="comma-separated; default: all")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in listed(text)], default=[0])
    parser.add_argument("--time-limit", type=float, default=2.0,
                        help="CP-SAT's deterministic seconds per distinct layer (default 2)")
    parser.add_argument("--all-pairs", action="store_true", help="every model on every target, tiny or not")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run each cell as a Ray task: a local Ray, or the cluster at ADDRESS")
    parser.add_argument("--outputs-only", action="store_true", help="write the table and plots from cells.csv")
    parser.add_argument("--list", action="store_true", help="print the known models and targets")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("models: " + ", ".join(grid.models()))
        print("targets: " + ", ".join(grid.DEFAULT_TARGETS) + ", or any packaged target or target YAML")
        return 0
    if not args.outputs_only:
        cells = grid.plan_cells(quick=args.quick, model_names=args.models, target_names=args.targets,
                                modes=args.modes, strategies=args.strategies, seeds=args.seeds,
                                time_limit=args.time_limit, all_pairs=args.all_pairs)
        if not cells:
            print("error: no cells to run: tiny models run only on meshes under 100,000 PEs and the others only on "
                  "wafers; give --all-pairs to run every model on every target", file=sys.stderr)
            return 2
        if args.ray:
            runner = partial(run.run_on_ray, address=args.ray, jobs=args.jobs)
        elif args.jobs > 1:
            runner = partial(run.run_in_pool, jobs=args.jobs)
        else:
            runner = run.run_here
        try:
            run.sweep(cells, args.out, runner)
        except run.SweepInterrupted as stop:
            print(f"interrupted: {stop.done} of {stop.total} cells done, kept in {args.out / 'cells.csv'}; run the "
                  "same command again to run the rest", file=sys.stderr)
            return 130
    if not (args.out / "cells.csv").exists():
        print(f"error: {args.out / 'cells.csv'} does not exist; run the sweep first", file=sys.stderr)
        return 2
    outputs.write_outputs(args.out)
    print(f"wrote {args.out}: cells.csv, table.md, step_vs_size.png, solve_time_vs_quality.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
