"""The performance model held against measured Cerebras training runs: two constants fitted, the rest predicted.

    .venv/bin/python benchmarks/calibration.py [--rows gptj,gpt2,bert,cs3,cerebras-gpt] [--out docs/calibration.md]
                                               [--no-doc] [--time-limit SECONDS] [--write-target]

The measurements, each with its source, are data: benchmarks/calibration_runs.yaml. Every workload is built
without weights (on the meta device), compiled once with the model's defaults (CP-SAT placement, the fastest
micro-batch that fits) on a target whose calibration constants are those of an ideal machine
(compute_efficiency 1, step_seconds 0), and kept. The fit then re-runs only the estimate pass on the compiled
programs, with the target's constants replaced:

- `compute_efficiency` (e, in (0, 1]): the share of a PE's peak FLOP rate its kernels sustain;
- `step_overhead_seconds` (c, 0 or more; `calibration.step_seconds` in a target file): the fixed cost of a
  training step's boundary.

(e, c) minimise the sum over the CS-2 rows of log(predicted / measured)^2, by a bounded grid and compass search.
Each CS-2 row is also predicted from a fit on the other two (leave-one-out), the CS-3 row from the full fit,
and the fit is repeated at a 1.1 GHz clock (the compiled mapping held fixed). Writes docs/calibration.md unless
--no-doc, or when only some rows were run and no --out was given. --write-target prints the `calibration:`
section for the target files.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
RUNS_FILE = ROOT / "benchmarks" / "calibration_runs.yaml"
DEFAULT_OUT = ROOT / "docs" / "calibration.md"
ROW_GROUPS = ("gptj", "gpt2", "bert", "cs3", "cerebras-gpt")
CS2_ROWS = ("gptj", "gpt2", "bert")

# The project's done criterion: every row within this factor of its measurement, and the median within MEDIAN_FACTOR.
ROW_FACTOR = 1.5
MEDIAN_FACTOR = 1.25
# The fit's box: e in [E_MIN, 1], c in [0, the slowest measured step of the rows fitted].
E_MIN = 0.02
FAST_CLOCK_HZ = 1.1e9  # the compute engine's maximum clock (docs/hardware.md), against the targets' 850 MHz
SEQ_GPT = 2048  # Cerebras-GPT's sequence in its configs

# docs/calibration.md links each term of the model to the section stating it and the numbers behind it.
PERFORMANCE_MODEL = "performance-model.md"
HARDWARE = "hardware.md"
TERMS: tuple[tuple[str, str, str, str], ...] = (
    ("arithmetic", "a kernel's FLOPs over its computing PEs at `flops_per_cycle x clock_hz x compute_efficiency`, the "
     "busiest PE's tile, plus a split K's reduction tree",
     "per-kernel-compute-kernel_seconds", "cs2-sim"),
    ("SRAM ports", "the busiest PE's operand reads and writes over 16 and 8 bytes a cycle, when slower than its "
     "arithmetic", "per-kernel-sram-bandwidth-each-ops-sram_traffic-wscops", "cs2-sim"),
    ("pipeline fill", "the other kernels' share of the first wave of tokens, and its hops", "per-layer-and-pass",
     "modelling-choices"),
    ("fabric", "the busiest link's bytes at 4 bytes a cycle, plus the longest route's hops", "per-layer-and-pass",
     "cs2-sim"),
    ("weight stream", "a layer's weights at the 150 GB/s system I/O (195 GB/s on the CS-3), or their delivery across "
     "the wafer from its west edge if slower", "per-layer-and-pass", "cs2-sim"),
    ("micro-batches", "a step's batch as passes of whole sequences, the weights streamed again every pass",
     "micro-batches-wscmicro_batchpy", "cs2-sim"),
    ("schedule", "each layer's weights streamed during the layer before; backward phases in reverse, gradients out on "
     "the other direction of the link", "per-step-passesschedulepy", "cs2-sim"),
    ("several systems", "SwarmX's reduction tree: the last layer's gradients stored and forwarded once per level",
     "several-systems---systems-n", "modelling-choices"),
    ("step boundary", "`step_seconds`, added once to every training step: the weights updated off the wafer before "
     "the next step's first layer can stream; fitted here, no published figure", "per-step-passesschedulepy",
     "modelling-choices"),
)


# --- the measurements ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One measured training run, and how to build its workload."""

    id: str
    workload: str
    target: str
    systems: int
    batch: int
    seq: int
    release: str
    samples_per_second: float
    fit: bool
    source: dict[str, Any]
    example: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def measured_step_seconds(self) -> float:
        return self.batch / self.samples_per_second

    @property
    def system(self) -> str:
        kind = {"cs2-sim": "CS-2", "cs3-sim": "CS-3"}.get(self.target, self.target)
        return f"{self.systems} x {kind}"


@dataclass(frozen=True)
class Runs:
    release: str
    runs: list[Run]
    reference: dict[str, Any]
    release_spread: dict[str, Any]
    configurations: dict[str, Any]

    def by_id(self, run_id: str) -> Run:
        return next(r for r in self.runs if r.id == run_id)


def load_runs(path: Path = RUNS_FILE) -> Runs:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    runs = []
    for entry in doc["runs"]:
        model = entry.get("model", {})
        runs.append(Run(
            id=entry["id"], workload=entry["workload"], target=entry["target"], systems=int(entry["systems"]),
            batch=int(entry["batch"]), seq=int(entry["seq"]), release=str(entry["release"]),
            samples_per_second=float(entry["samples_per_second"]), fit=bool(entry["fit"]),
            source=dict(entry["source"]), example=model.get("example", ""), args=dict(model.get("args", {})),
            notes=" ".join(str(entry.get("notes", "")).split()),
        ))
    return Runs(release=str(doc["release"]), runs=runs, reference=doc["reference"],
                release_spread=doc["release_spread"], configurations=doc["configurations"])


# --- the fit (no compiles: `predict` is any callable) ----------------------------------------------------------------

Predict = Callable[[Sequence[Any], float, float], list[float]]


@dataclass(frozen=True)
class Fit:
    efficiency: float
    step_seconds: float
    loss: float  # sum over the rows of log(predicted / measured)^2
    rows: tuple[str, ...]  # the ids of the rows fitted on
    evaluations: int


def log_errors(rows: Sequence[Any], predicted: Sequence[float]) -> list[float]:
    return [math.log(p / r.samples_per_second) if p > 0 else math.inf for r, p in zip(rows, predicted, strict=True)]


def fit(rows: Sequence[Any], predict: Predict, *, c_max: float | None = None, tol: float = 1e-6) -> Fit:
    """The (e, c) in [E_MIN, 1] x [0, c_max] with the least sum of squared log errors over `rows` (each with
    `samples_per_second` and `batch`; `predict(rows, e, c)` gives their predicted samples/s). `c_max` defaults to
    the slowest measured step of the rows.

    A profile search: for each efficiency the best step cost (a grid over c from 0 up, then golden sections in the
    best grid cell), and over log e the same (a grid from e = 1 down, then golden sections). A point replaces the
    best only when strictly better, so where the loss is flat the ideal machine's values (e = 1, c = 0) are kept."""
    rows = list(rows)
    if not rows:
        raise ValueError("fit needs at least one row")
    if c_max is None:
        c_max = max(r.batch / r.samples_per_second for r in rows)
    evaluations = 0

    def loss(e: float, c: float) -> float:
        nonlocal evaluations
        evaluations += 1
        return sum(x * x for x in log_errors(rows, predict(rows, e, c)))

    def best_c(e: float) -> tuple[float, float]:
        # c from 0, then geometrically up to c_max: step costs from a millisecond to seconds are all plausible.
        cs = [0.0, *(c_max * np.geomspace(1e-4, 1.0, 25))]
        return minimise_1d(lambda c: loss(e, c), [float(c) for c in cs], tol / 10 * c_max)

    def profile(u: float) -> float:
        return best_c(math.exp(u))[1]

    us = [float(u) for u in np.linspace(0.0, math.log(E_MIN), 17)]
    u, _ = minimise_1d(profile, us, tol)
    e = math.exp(u)
    c, value = best_c(e)
    return Fit(e, c, value, tuple(r.id for r in rows), evaluations)


def better(new: float, old: float) -> bool:
    """Strictly lower, beyond rounding."""
    return new < old - 1e-12 * (1.0 + abs(old)) if math.isfinite(old) else new < old


def minimise_1d(f: Callable[[float], float], grid: Sequence[float], tol: float) -> tuple[float, float]:
    """The least f over `grid` (the first of equals), then golden sections in the cells either side of it, kept
    only where strictly better. Returns (x, f(x))."""
    values = [f(x) for x in grid]
    best = 0
    for i, value in enumerate(values):
        if better(value, values[best]):
            best = i
    x_best, f_best = grid[best], values[best]
    for lo, hi in ((best - 1, best), (best, best + 1)):
        if lo < 0 or hi >= len(grid):
            continue
        x, value = golden(f, grid[lo], grid[hi], tol)
        if better(value, f_best):
            x_best, f_best = x, value
    return x_best, f_best


def golden(f: Callable[[float], float], a: float, b: float, tol: float) -> tuple[float, float]:
    """Golden-section search for the least f on [a, b] (either order) to within `tol`."""
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    while abs(b - a) > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (c, fc) if fc <= fd else (d, fd)


@dataclass(frozen=True)
class LeftOut:
    row: str
    fit: Fit  # on the other rows
    predicted: float
    ratio: float  # predicted / measured


def leave_one_out(rows: Sequence[Any], predict: Predict, *, c_max: float | None = None) -> list[LeftOut]:
    """For each row, the fit on the others (in the same box as the fit on all) and its prediction of the row."""
    rows = list(rows)
    if c_max is None:
        c_max = max(r.batch / r.samples_per_second for r in rows)
    out = []
    for i, row in enumerate(rows):
        others = rows[:i] + rows[i + 1:]
        if not others:
            continue
        fitted = fit(others, predict, c_max=c_max)
        predicted = predict([row], fitted.efficiency, fitted.step_seconds)[0]
        out.append(LeftOut(row.id, fitted, predicted, predicted / row.samples_per_second))
    return out


def factor(ratio: float) -> float:
    """How far a ratio is from 1, either way: max(r, 1/r)."""
    return max(ratio, 1.0 / ratio) if ratio > 0 else math.inf


def verdict(ratios: Sequence[float]) -> tuple[bool, float, float]:
    """(meets the done criterion, median ratio, worst factor): every row within ROW_FACTOR and the median within
    MEDIAN_FACTOR."""
    if not ratios:
        return False, math.nan, math.nan
    median = statistics.median(ratios)
    worst = max(factor(r) for r in ratios)
    return worst <= ROW_FACTOR and factor(median) <= MEDIAN_FACTOR, median, worst


def calibration_yaml(efficiency: float, step_seconds: float, note: str = "") -> str:
    """The `calibration:` section of a target file (targets/__init__.py reads it)."""
    lines = ["calibration:"]
    if note:
        lines.append(f"  # {note}")
    lines += [f"  compute_efficiency: {efficiency:.4f}", f"  step_seconds: {step_seconds:.4f}"]
    return "\n".join(lines) + "\n"


# --- the workloads (compiles) ----------------------------------------------------------------------------------------

def load_example(relative: str):
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"calibration_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def ideal(target_name: str):
    """The packaged target with the calibration constants of an ideal machine: the fit supplies its own."""
    from wsc.targets import load_target

    return replace(load_target(target_name), compute_efficiency=1.0, step_overhead_seconds=0.0)


@dataclass
class Compiled:
    name: str
    program: Any
    seconds: float  # the compile's wall time
    batch: int
    seq: int


def compile_workload(name: str, module, build_args: dict, inputs: tuple, target_name: str, systems: int,
                     batch: int, seq: int, time_limit: float | None) -> Compiled:
    from wsc.frontend.meta import empty_weights
    from wsc.pipeline import compile_model

    start = time.perf_counter()
    with empty_weights():
        model = module.build_model(**build_args)
    options = {"time_limit": time_limit} if time_limit is not None else {}
    compiled = compile_model(model, inputs, ideal(target_name), model_name=name, systems=systems, **options)
    return Compiled(name, compiled.program, time.perf_counter() - start, batch, seq)


def compile_run(run: Run, systems: int | None = None, time_limit: float | None = None, name: str = "") -> Compiled:
    module = load_example(run.example)
    build = {**run.args, "seq": run.seq, "batch": run.batch}
    return compile_workload(name or run.id, module, build, module.example_inputs(**build), run.target,
                            systems or run.systems, run.batch, run.seq, time_limit)


def compile_cerebras_gpt(size: str, batch: int, systems: int, time_limit: float | None) -> Compiled:
    gpt = load_example("examples/cerebras_gpt.py")
    inputs = gpt.example_inputs(size=size, seq=SEQ_GPT, batch=batch)
    return compile_workload(size, gpt, {"size": size, "seq": SEQ_GPT, "batch": batch}, inputs, "cs2-sim", systems,
                            batch, SEQ_GPT, time_limit)


def estimate_at(program, efficiency: float, step_seconds: float, clock_hz: float | None = None) -> dict:
    """The estimate of a compiled program on its target with other calibration constants (and clock), the mapping
    unchanged."""
    from wsc.passes.estimate import Estimate

    target = replace(program.target, compute_efficiency=efficiency, step_overhead_seconds=step_seconds,
                     **({"clock_hz": clock_hz} if clock_hz is not None else {}))
    return Estimate()(replace(program, target=target)).estimate


def samples_per_second(estimate: dict, seq: int) -> float:
    """Training samples (sequences) per second over every system: the estimate's tokens of the whole batch per
    second of a step (each system's share of it running at once), over the tokens per sequence."""
    return estimate["training"]["tokens_per_second"] / seq


class Predictor:
    """predict(rows, e, c): each row's compiled program re-estimated at (e, c), memoised.

    The estimate adds the step cost once to every training step, so a program's step at (e, c) is its step at
    (e, 0) plus c: the estimate is run once per efficiency, and that rule is checked on each program (at two
    efficiencies) before it is relied on. A program that breaks it is re-estimated at every (e, c) instead."""

    def __init__(self, compiled: dict[str, Compiled], clock_hz: float | None = None):
        self.compiled = compiled
        self.clock_hz = clock_hz
        self.steps: dict[tuple, float] = {}
        self.additive: dict[str, bool] = {}

    def estimated_step(self, name: str, e: float, c: float) -> float:
        key = (name, e, c)
        if key not in self.steps:
            estimate = estimate_at(self.compiled[name].program, e, c, self.clock_hz)
            self.steps[key] = estimate["training"]["step_seconds"]
        return self.steps[key]

    def step(self, name: str, e: float, c: float) -> float:
        if name not in self.additive:
            probe = 0.25
            self.additive[name] = all(
                math.isclose(self.estimated_step(name, x, probe), self.estimated_step(name, x, 0.0) + probe,
                             rel_tol=1e-9, abs_tol=1e-12) for x in (1.0, 0.5))
            if not self.additive[name]:
                print(f"note: {name}'s step does not grow by exactly the step cost; re-estimating at every point "
                      "(slow)", flush=True)
        if self.additive[name]:
            return self.estimated_step(name, e, 0.0) + c
        return self.estimated_step(name, e, c)

    def one(self, name: str, e: float, c: float) -> float:
        entry = self.compiled[name]
        return entry.program.tokens / entry.seq / self.step(name, e, c)

    def __call__(self, rows: Sequence[Any], e: float, c: float) -> list[float]:
        return [self.one(r.id, e, c) for r in rows]


# --- the report ------------------------------------------------------------------------------------------------------

@dataclass
class ClockFit:
    clock_hz: float
    fit: Fit | None
    ratios: dict[str, float]  # run id -> predicted / measured at the fit
    loo: list[LeftOut]
    cs3_ratio: float | None  # predicted CS-3 / CS-2 samples/s, GPT-J batch 120 on one system each


def fit_at_clock(rows: list[Run], runs: Runs, compiled: dict[str, Compiled], clock_hz: float | None) -> ClockFit:
    predict = Predictor(compiled, clock_hz)
    fitted = fit(rows, predict) if rows else None
    e, c = (fitted.efficiency, fitted.step_seconds) if fitted else (1.0, 0.0)
    ratios = {r.id: predict.one(r.id, e, c) / r.samples_per_second for r in runs.runs if r.id in compiled}
    loo = leave_one_out(rows, predict) if len(rows) > 1 else []
    cs3 = None
    if "cs3" in compiled and "gptj-1cs2" in compiled:
        cs3 = predict.one("cs3", e, c) / predict.one("gptj-1cs2", e, c)
    clock = clock_hz if clock_hz is not None else next(iter(compiled.values())).program.target.clock_hz
    return ClockFit(clock, fitted, ratios, loo, cs3)


def mlm_head_share(compiled: Compiled, run: Run) -> float:
    """The FLOPs a BERT masked-LM head would add, over the forward FLOPs wsc counted: per token a d x d transform
    and the d x vocab decoder, against the compiled program's forward FLOPs per token."""
    module = load_example(run.example)
    shape = module.SIZES[run.args["arch"]][run.args["size"]]
    d, vocab = shape["hidden_size"], shape["vocab_size"]
    estimate = compiled.program.estimate
    per_token = sum(layer["flops"] for layer in estimate["layers"]) / estimate["micro_batch_tokens"]
    return (2 * d * d + 2 * d * vocab) / per_token


def fmt(x: float | None) -> str:
    """A rate or time as the tables show it: thousands whole, tens to one decimal, smaller to three figures."""
    if x is None or math.isnan(x):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def row_table(runs: Runs, compiled: dict[str, Compiled], clock: ClockFit, loo: dict[str, float]) -> list[str]:
    e, c = (clock.fit.efficiency, clock.fit.step_seconds) if clock.fit else (1.0, 0.0)
    lines = ["| workload | system | batch | seq | measured samples/s | predicted | ratio (pred/meas) | uncalibrated "
             "| leave-one-out ratio | micro-batch | bottleneck | fitted on |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs.runs:
        if run.id not in compiled:
            continue
        entry = compiled[run.id]
        predicted = clock.ratios[run.id] * run.samples_per_second
        uncalibrated = samples_per_second(entry.program.estimate, run.seq)
        at_fit = estimate_at(entry.program, e, c)
        micro = f"{at_fit['micro_batch_tokens'] // run.seq} x {at_fit['passes_per_system']}"
        lines.append(
            f"| {run.workload} | {run.system} | {run.batch} | {run.seq} | {fmt(run.samples_per_second)} | "
            f"{fmt(predicted)} | {clock.ratios[run.id]:.2f} | {fmt(uncalibrated)} | "
            f"{f'{loo[run.id]:.2f}' if run.id in loo else '-'} | {micro} | {at_fit['training']['bottleneck']} | "
            f"{'yes' if run.fit else 'no'} |")
    return lines


def print_table(runs: Runs, clock: ClockFit) -> None:
    header = ("workload", "system", "batch", "seq", "measured samples/s", "predicted", "ratio (pred/meas)")
    rows = [header]
    for run in runs.runs:
        if run.id in clock.ratios:
            ratio = clock.ratios[run.id]
            rows.append((run.workload + ("" if run.fit else " (not fitted)"), run.system, str(run.batch),
                         str(run.seq), fmt(run.samples_per_second), fmt(ratio * run.samples_per_second),
                         f"{ratio:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


def summary_lines(runs: Runs, clock: ClockFit) -> list[str]:
    lines = []
    fitted = [r for r in runs.runs if r.fit and r.id in clock.ratios]
    if clock.fit:
        lines.append(f"fit at {clock_name(clock.clock_hz)} on {', '.join(clock.fit.rows)}: compute_efficiency "
                     f"{clock.fit.efficiency:.4f}, step_seconds {clock.fit.step_seconds:.4f} s "
                     f"(loss {clock.fit.loss:.4g}, {clock.fit.evaluations} evaluations)")
    ok, median, worst = verdict([clock.ratios[r.id] for r in fitted])
    lines.append(f"CS-2 rows: median ratio {median:.3f}, max factor {worst:.3f} -> "
                 f"{'PASS' if ok else 'FAIL'} (every row within {ROW_FACTOR}x, median within {MEDIAN_FACTOR}x)")
    every = [r for r in runs.runs if r.id in clock.ratios]
    if len(every) > len(fitted):
        ok_all, median_all, worst_all = verdict([clock.ratios[r.id] for r in every])
        lines.append(f"all rows with the CS-3: median ratio {median_all:.3f}, max factor {worst_all:.3f} -> "
                     f"{'PASS' if ok_all else 'FAIL'}")
    if clock.loo:
        ok_loo, median_loo, worst_loo = verdict([x.ratio for x in clock.loo])
        lines.append("leave-one-out: " + ", ".join(
            f"{x.row} {x.ratio:.2f} (e {x.fit.efficiency:.3f}, c {x.fit.step_seconds:.3f} s)" for x in clock.loo)
            + f"; median {median_loo:.3f}, max factor {worst_loo:.3f} -> {'PASS' if ok_loo else 'FAIL'}")
    if clock.cs3_ratio is not None:
        lines.append(f"CS-3 / CS-2 (GPT-J, batch 120, one system each): predicted {clock.cs3_ratio:.2f}x")
    return lines


def anchor(text: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def headings(path: Path) -> set[str]:
    return {anchor(line.lstrip("#")) for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


def render_doc(runs: Runs, compiled: dict[str, Compiled], clocks: list[ClockFit], gpt_rows: list[dict],
               mlm_share: float | None, elapsed: float, time_limit: float | None = None) -> str:
    placer = ("CP-SAT at wsc's default time limit" if time_limit is None
              else f"CP-SAT at a time limit of {time_limit:g} deterministic seconds per distinct layer, every row")
    base = clocks[0]
    loo = {x.row: x.ratio for x in base.loo}
    fitted = [r for r in runs.runs if r.fit and r.id in base.ratios]
    ok, median, worst = verdict([base.ratios[r.id] for r in fitted])
    e, c = (base.fit.efficiency, base.fit.step_seconds) if base.fit else (1.0, 0.0)
    measured_ratio = runs.by_id("cs3").samples_per_second / float(runs.reference["samples_per_second"])
    spread = runs.release_spread["runs"]
    rates = [float(s["samples_per_second"]) for s in spread]
    out = [
        "# Calibration: the performance model against measured Cerebras runs",
        "",
        "Generated by `benchmarks/calibration.py` from the measurements in `benchmarks/calibration_runs.yaml`; do not",
        "edit by hand. Each workload is built without weights, compiled once with wsc's defaults (CP-SAT placement,",
        "the fastest micro-batch that fits) and predicted by the performance model",
        f"([{PERFORMANCE_MODEL}]({PERFORMANCE_MODEL})). Two constants that no data sheet gives are fitted on the",
        f"CS-2 rows; everything else is the targets' public numbers ([{HARDWARE}]({HARDWARE})).",
        "",
        "The CS-2 measurements are training throughput (samples, i.e. sequences, per second) of runs in PyTorch",
        f"with weight streaming, at Cerebras release {runs.release} (GPT-2's release is not printed by its log: see",
        "*Caveats*). Releases move these numbers by 25% or more on the same hardware (see *Error bars*), so the model",
        "is held against one release at a time.",
        "",
        "## Measured against predicted",
        "",
        *row_table(runs, compiled, base, loo),
        "",
        f"*Predicted* is at the fitted constants: `compute_efficiency` = {e:.3f}, `step_seconds` = {c:.3f} s. "
        f"*Uncalibrated* is",
        "the ideal machine (efficiency 1, no step cost). *Micro-batch* is the sequences per pass x passes per system",
        "wsc chose. *Leave-one-out* predicts the row from a fit on the other CS-2 rows only.",
        "",
        f"CS-2 rows: median ratio {median:.2f}, the worst row {worst:.2f}x off. The project's criterion (every row",
        f"within {ROW_FACTOR}x, the median within {MEDIAN_FACTOR}x): **{'pass' if ok else 'fail'}**.",
        "",
        "## The terms of the model and their sources",
        "",
        "| term | what it charges | stated in | numbers from |",
        "|---|---|---|---|",
        *[f"| {name} | {what} | [{PERFORMANCE_MODEL}]({PERFORMANCE_MODEL}#{model_anchor}) | "
          f"[{HARDWARE}]({HARDWARE}#{hardware_anchor}) |" for name, what, model_anchor, hardware_anchor in TERMS],
        "",
        "## What is fitted",
        "",
        f"Two constants, on the {len(fitted)} CS-2 rows ({', '.join(f'{r.workload} on {r.system}' for r in fitted)}):",
        "",
        "- `compute_efficiency`, in (0, 1]: the share of the peak FLOP rate a kernel's arithmetic sustains. It",
        "  scales the arithmetic term only; SRAM ports, fabric and streaming keep their rates, and the roofline bound",
        "  keeps the peak.",
        "- `step_seconds`, 0 or more: a fixed cost added once to every training step, the wait at the step's boundary",
        "  while the weights are updated off the wafer before the next step's first layer can stream.",
        "",
        "They minimise the sum over the rows of log(predicted / measured)^2, over efficiencies from "
        f"{E_MIN} to 1 and step",
        "costs from 0 to the slowest measured step (for each efficiency the best step cost, each by a grid and golden",
        "sections). The compiled programs are only re-estimated at each point, never recompiled, so each keeps the",
        "micro-batch wsc chose for the ideal machine. The CS-3 row is predicted with the same constants and never",
        "fitted on. A target file takes them as",
        "",
        "```yaml",
        calibration_yaml(e, c).rstrip(),
        "```",
        "",
        "### Leave-one-out",
        "",
        "| row left out | fit on the others: efficiency | step_seconds (s) | ratio of the row left out |",
        "|---|---|---|---|",
        *[f"| {runs.by_id(x.row).workload} | {x.fit.efficiency:.3f} | {x.fit.step_seconds:.3f} | {x.ratio:.2f} |"
          for x in base.loo],
        "",
        "## The clock",
        "",
        "The targets run at 850 MHz, the rate Cerebras' SDK benchmark scripts turn cycles into seconds with; the dense",
        "fp16 figure (7.5 PFLOP/s over 850,000 cores) implies 1.1 GHz. The fit repeated at 1.1 GHz (every rate that",
        "counts cycles: arithmetic, SRAM ports, links, hops; the compiled mapping held fixed):",
        "",
        "| clock | efficiency | step_seconds (s) | CS-2 median ratio | worst CS-2 row | worst leave-one-out "
        "| CS-3 ratio | CS-3 / CS-2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for clock in clocks:
        _, med, wst = verdict([clock.ratios[r.id] for r in fitted])
        loo_worst = max((factor(x.ratio) for x in clock.loo), default=math.nan)
        fit_e = f"{clock.fit.efficiency:.3f}" if clock.fit else "-"
        fit_c = f"{clock.fit.step_seconds:.3f}" if clock.fit else "-"
        cs3 = clock.ratios.get("cs3")
        out.append(f"| {clock_name(clock.clock_hz)} | {fit_e} | {fit_c} | {med:.2f} | {wst:.2f}x | "
                   f"{loo_worst:.2f}x | {f'{cs3:.2f}' if cs3 is not None else '-'} | "
                   f"{f'{clock.cs3_ratio:.2f}x' if clock.cs3_ratio is not None else '-'} |")
    if len(clocks) > 1 and clocks[0].fit and clocks[1].fit:
        a, b = clocks[0], clocks[1]
        out += ["", clock_sentence(a, b, fitted)]
    out += [
        "",
        "## CS-3 against CS-2",
        "",
        f"One CS-3 ran GPT-J 6B at {fmt(runs.by_id('cs3').samples_per_second)} samples/s (release "
        f"{runs.by_id('cs3').release}); one CS-2 ran it at",
        f"{fmt(float(runs.reference['samples_per_second']))} samples/s (batch {runs.reference['batch']}, release "
        f"{runs.reference['release']}): {measured_ratio:.2f}x.",
        "wsc predicts, at the fitted constants and batch 120 on one system each, "
        + (f"{base.cs3_ratio:.2f}x." if base.cs3_ratio is not None else "(not run)."),
        "The releases and batches differ, so this compares the machines only roughly.",
        "",
        "## Cerebras-GPT: sequences per pass",
        "",
        "Configurations, not measurements: the Cerebras-GPT config files train each system's whole share of the",
        "batch in one pass. wsc's choice for the same batches and systems:",
        "",
        "| size | batch | systems | config: sequences per system per pass | wsc: sequences per pass "
        "| passes per system | one pass | predicted samples/s (fitted) | bottleneck |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {g['size']} | {g['batch']} | {g['systems']} | {g['per_pass']} | {g['wsc_per_pass']} | "
          f"{g['passes']} | {'yes' if g['passes'] == 1 else 'no'} | {fmt(g['samples'])} | {g['bottleneck']} |"
          for g in gpt_rows],
        "",
        "## Error bars",
        "",
    ]
    if base.loo:
        loo_factors = sorted(factor(x.ratio) for x in base.loo)
        out += ["- Leave-one-out, the fair test of a prediction for a workload not fitted on: the rows left out "
                "come out",
                f"  {', '.join(f'{x.ratio:.2f}' for x in base.loo)} of their measurements (worst "
                f"{loo_factors[-1]:.2f}x). Read a CS-2 prediction at release {runs.release} as good to",
                "  about that factor, not to the fitted rows' closeness."]
    out += [
        f"- Releases: GPT-J 6B on the same two CS-2s ran {' -> '.join(fmt(r) for r in rates)} samples/s across",
        f"  releases {', '.join(str(s['release']) for s in spread)} ({rates[-1] / rates[0]:.2f}x in all, "
        f"{rates[-1] / rates[-2]:.2f}x for the last step). A prediction",
        "  calibrated on one release says nothing closer than that about another; recalibrate on the release in use.",
        f"- {len(fitted)} rows fit 2 constants, leaving {max(len(fitted) - 2, 0)} degree"
        f"{'' if len(fitted) == 3 else 's'} of freedom: the fitted rows' closeness is weak",
        "  evidence on its own.",
        "",
        "## Caveats",
        "",
        "- BERT-large is Hugging Face's `BertModel`, without the pre-training heads the measured run trained. The",
        "  masked-LM head (a d x d transform and the d x vocab decoder) would add "
        + (f"{mlm_share:.0%}" if mlm_share is not None else "about 10%") + " of the forward FLOPs",
        "  if applied to every token, less if only to the masked positions; the prediction leaves it out.",
        "- GPT-J is built with the measured run's vocabulary, 50257 (Hugging Face's configuration has 50400).",
        "- The CS-3 row is release 2.9.0, not 2.0.3, on hardware whose figures are partly modelling choices",
        f"  ([{HARDWARE}]({HARDWARE}#cs3-sim)); it is predicted, never fitted.",
        "- GPT-2's log does not print its release; the page's commands use release 2.3.0's paths.",
        "- Batches are inferred from samples over steps (GPT-J, BERT) or printed by the run (GPT-2); a run's total",
        "  time includes its final checkpoint, so the logged rate is used, not samples over total time.",
        "",
        "## Sources",
        "",
        *[f"- {run.workload} on {run.system}: {run.source['repo']}, `{run.source['path']}`, sample output dated "
          f"{run.source['dated']},\n  {run.source['url']}" for run in runs.runs],
        f"- One-CS-2 GPT-J reference: {runs.reference['source']['repo']}, `{runs.reference['source']['path']}`, "
        f"dated {runs.reference['source']['dated']}.",
        f"- Cerebras-GPT configurations: {runs.configurations['source']['repo']}, "
        f"`{runs.configurations['source']['path']}`.",
        "",
        f"Compiled with {placer}; compiles and fits took {elapsed / 60:.0f} minutes.",
        "",
    ]
    return "\n".join(out)


def clock_name(hz: float) -> str:
    return f"{hz / 1e9:g} GHz" if hz >= 1e9 else f"{hz / 1e6:g} MHz"


def clock_sentence(a: ClockFit, b: ClockFit, fitted: list[Run]) -> str:
    worst = [verdict([clock.ratios[r.id] for r in fitted])[2] for clock in (a, b)]
    loo = [max((factor(x.ratio) for x in clock.loo), default=math.nan) for clock in (a, b)]
    names = [clock_name(clock.clock_hz) for clock in (a, b)]
    text = (f"The worst fitted row is {worst[0]:.2f}x off at {names[0]} and {worst[1]:.2f}x at {names[1]} "
            f"(leave-one-out: {loo[0]:.2f}x and {loo[1]:.2f}x)")
    if abs(worst[0] - worst[1]) <= 0.05 * min(worst):
        text += (": the fitted rows cannot tell the clocks apart, so the choice of clock survives calibration. The "
                 "efficiency absorbs it (efficiency x clock: "
                 f"{a.fit.efficiency * a.clock_hz / 1e6:,.0f} MHz and {b.fit.efficiency * b.clock_hz / 1e6:,.0f} MHz), "
                 "and the terms that count cycles without it (SRAM ports, links, hops) barely bind these rows.")
    else:
        text += f": {names[0] if worst[0] < worst[1] else names[1]} fits the measurements better."
    return text


# --- main ------------------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROW_GROUPS),
                        help=f"comma-separated, of {', '.join(ROW_GROUPS)} (default: all)")
    parser.add_argument("--out", default=None, help=f"the doc to write (default {DEFAULT_OUT.relative_to(ROOT)}, "
                        "written only when every row ran unless given)")
    parser.add_argument("--no-doc", action="store_true", help="write no doc")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="CP-SAT's deterministic seconds per distinct layer, for every compile (default: wsc's)")
    parser.add_argument("--write-target", action="store_true",
                        help="print the calibration: section for targets/cs2-sim.yaml and targets/cs3-sim.yaml")
    parser.add_argument("--runs", default=str(RUNS_FILE), help="the measurements file")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.rows.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(ROW_GROUPS))
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROW_GROUPS)}")
    started = time.perf_counter()
    runs = load_runs(Path(args.runs))
    print(f"calibration: rows {', '.join(groups)}; compile time limit "
          f"{args.time_limit if args.time_limit is not None else 'wsc default'}", flush=True)

    compiled: dict[str, Compiled] = {}

    def report(entry: Compiled, run: Run | None = None, label: str = "") -> None:
        est = entry.program.estimate
        per_pass = est["micro_batch_tokens"] // entry.seq
        predicted = samples_per_second(est, entry.seq)
        line = (f"compiled {label or entry.name} in {entry.seconds:.0f} s: {per_pass} sequences x "
                f"{est['passes_per_system']} passes per system, uncalibrated {fmt(predicted)} samples/s, "
                f"{est['training']['bottleneck']}-bound")
        if run is not None:
            line += f" (measured {fmt(run.samples_per_second)}, ratio {predicted / run.samples_per_second:.2f})"
        print(line, flush=True)

    for run in runs.runs:
        if run.id not in groups:
            continue
        try:
            compiled[run.id] = compile_run(run, time_limit=args.time_limit)
            report(compiled[run.id], run, f"{run.id} ({run.workload}, {run.system}, batch {run.batch})")
            if run.id == "cs3":
                reference = compile_run(replace(run, target="cs2-sim"), systems=1, time_limit=args.time_limit,
                                        name="gptj-1cs2")
                compiled["gptj-1cs2"] = reference
                report(reference, None, f"gptj-1cs2 (GPT-J 6B, 1 x CS-2, batch {run.batch}, for the CS-3 ratio)")
        except Exception as error:  # a row that does not compile is reported, and the others still run
            print(f"FAILED {run.id}: {type(error).__name__}: {error}", flush=True)

    fit_rows = [r for r in runs.runs if r.fit and r.id in compiled]
    for run in fit_rows[:1]:
        entry = compiled[run.id]
        base = samples_per_second(estimate_at(entry.program, 1.0, 0.0), entry.seq)
        if samples_per_second(estimate_at(entry.program, 1.0, 0.1), entry.seq) == base:
            print("WARNING: the estimate ignores step_overhead_seconds (passes/estimate.py); the fit is degenerate",
                  flush=True)

    clocks = []
    if compiled:
        for clock_hz in (None, FAST_CLOCK_HZ):
            start = time.perf_counter()
            clocks.append(fit_at_clock(fit_rows, runs, compiled, clock_hz))
            print(f"\nfit at {clock_name(clocks[-1].clock_hz)} ({time.perf_counter() - start:.0f} s)", flush=True)
            print_table(runs, clocks[-1])
            for line in summary_lines(runs, clocks[-1]):
                print(line, flush=True)

    gpt_rows = []
    if "cerebras-gpt" in groups:
        e, c = (clocks[0].fit.efficiency, clocks[0].fit.step_seconds) if clocks and clocks[0].fit else (1.0, 0.0)
        print("\nCerebras-GPT: sequences per pass | config | wsc | passes per system | one pass", flush=True)
        for entry in runs.configurations["models"]:
            size, batch, systems = str(entry["size"]), int(entry["batch"]), int(entry["systems"])
            try:
                done = compile_cerebras_gpt(size, batch, systems, args.time_limit)
            except Exception as error:
                print(f"FAILED Cerebras-GPT {size}: {type(error).__name__}: {error}", flush=True)
                continue
            est = estimate_at(done.program, e, c)
            row = {"size": size, "batch": batch, "systems": systems, "per_pass": int(entry["per_pass"]),
                   "wsc_per_pass": est["micro_batch_tokens"] // SEQ_GPT, "passes": est["passes_per_system"],
                   "samples": samples_per_second(est, SEQ_GPT), "bottleneck": est["training"]["bottleneck"]}
            gpt_rows.append(row)
            print(f"{size} (batch {batch} on {systems} x CS-2, {done.seconds:.0f} s) | {row['per_pass']} | "
                  f"{row['wsc_per_pass']} | {row['passes']} | {'yes' if row['passes'] == 1 else 'no'} | "
                  f"{fmt(row['samples'])} samples/s at the fit, {row['bottleneck']}-bound", flush=True)

    mlm = mlm_head_share(compiled["bert"], runs.by_id("bert")) if "bert" in compiled else None
    if mlm is not None:
        print(f"\nBERT's masked-LM head over every token would add {mlm:.1%} of the forward FLOPs", flush=True)
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s", flush=True)

    if args.write_target and clocks and clocks[0].fit:
        print("\n# paste into targets/cs2-sim.yaml and targets/cs3-sim.yaml:")
        print(calibration_yaml(clocks[0].fit.efficiency, clocks[0].fit.step_seconds,
                               f"fitted on measured CS-2 training runs, release {runs.release} "
                               "(benchmarks/calibration.py, docs/calibration.md)"), end="")

    every = set(groups) == set(ROW_GROUPS) and all(r.id in compiled for r in runs.runs)
    if args.no_doc or not clocks:
        return 0
    if args.out is None and not every:
        print(f"not writing {DEFAULT_OUT.relative_to(ROOT)}: not every row ran (give --out to write anyway)")
        return 0
    out = Path(args.out) if args.out else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_doc(runs, compiled, clocks, gpt_rows, mlm, elapsed, args.time_limit), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
