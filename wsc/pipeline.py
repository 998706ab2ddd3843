"""The compiler's pipeline, as one short list of steps.

    capture      torch.export (or symbolic_trace) -> wsc graph of ATen ops, shapes recorded once
    fold-constants  values computed from shapes alone (position ids, causal masks) -> constants
    legalize     ATen ops -> ops of the op table (wsc/ops/: matmul, attention, layernorm, ..., layout ops)
    fuse-epilogues  GELU and residual adds folded into the matmul before them
    group-layers cut into streaming layers: embedding, each block, final norm + LM head
    partition    each kernel -> a grid of PE tiles that fit SRAM, areas balanced by work
    place        each layer's kernels -> rectangles on the mesh (CP-SAT by default)
    route        each flow between kernels -> dimension-ordered routes, link loads
    estimate     time per step on the target, its roofline bound and the bottleneck
    run          JIT-compiled kernels execute the layers, weights streamed from the store
    verify       compare with eager PyTorch

The passes up to group-layers depend on the graph's shapes only and run once per capture (shape_passes);
partition and what follows depend on the share of the mesh the kernels get, and are what the search for a
share that places re-runs (fill_passes). The options of a compile are one CompileOptions (wsc.options).
"""

from __future__ import annotations

import resource
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsc import micro_batch as micro_batch_lib
from wsc import ops, progress
from wsc.core.errors import DoesNotPlace, WscError
from wsc.core.passmanager import PassManager
from wsc.core.program import Program
from wsc.frontend.capture import Captured, capture, fixed_shapes, run_eager, to_numpy
from wsc.options import DEFAULT_TOLERANCE, CompileOptions
from wsc.passes.estimate import Estimate
from wsc.passes.fold_constants import FoldConstants
from wsc.passes.fuse_epilogues import FuseEpilogues
from wsc.passes.group_layers import GroupLayers
from wsc.passes.legalize import Legalize
from wsc.passes.partition import Partition
from wsc.passes.place import Place
from wsc.passes.route import Route
from wsc.runtime.executor import Executor
from wsc.runtime.weight_store import WeightStore, write_store
from wsc.targets import Target


@dataclass
class Compiled:
    program: Program
    captured: Captured
    pass_seconds: dict[str, float]

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return self.captured.weights


@dataclass
class Grouped:
    """A capture after the shape passes (fold-constants .. group-layers): its program cut into layers, before
    any kernel is partitioned or placed. Everything the fill search tries starts from here."""

    captured: Captured
    program: Program
    pass_seconds: dict[str, float]


# Shares of the mesh the partitioner may hand to a layer's kernels, tried in turn: more PEs run the kernels
# faster, but past some share their rectangles no longer pack (Cerebras-GPT 1.3B at 16 sequences per pass
# places at 65% and not at 80%), and the rest leaves the placer room.
FILLS = (0.65, 0.5)
# When no share places, the last one is tried again compact: tall block grids folded near square (a layer of
# many full-height strips, a 7B decoder's rotary and element-wise kernels at 2048 tokens, leaves no band for its
# widest kernel) and each kernel held to its share. Tried last, since strips and wide rectangles route better.


def shape_passes(options: CompileOptions) -> list:
    """The passes that depend on the graph's shapes only: run once per capture."""
    return [FoldConstants(), Legalize(fused_attention=options.fused_attention), FuseEpilogues(), GroupLayers()]


def fill_passes(options: CompileOptions, fill: float, compact: bool = False) -> list:
    """The passes that depend on the share of the mesh the kernels get: run once per fill tried."""
    return [Partition(fill=fill, compact=compact),
            Place(strategy=options.strategy, seed=options.seed, time_limit=options.time_limit),
            Route(router=options.router), Estimate()]


def default_passes(options: CompileOptions | None = None, fill: float = FILLS[-1]) -> list:
    """The passes in order. The mode, micro-batches and systems are read by the passes from the Program."""
    options = options or CompileOptions()
    return shape_passes(options) + fill_passes(options, fill)


def compile_model(model: torch.nn.Module, example_inputs: tuple, target: Target,
                  options: CompileOptions | None = None, *, model_name: str = "model", verify_ir: bool = False,
                  on_pass: Callable[[str, float], None] | None = None, **keywords: Any) -> Compiled:
    """Capture `model` and run the passes with `options` (CompileOptions; `keywords` change single options).

    The step's batch (the inputs' first dimension) is split over `options.systems` wafers, and each system's
    share is run as passes of `options.micro_batch` sequences: by default the one with the fastest training
    step of those that fit (see micro_batch.choose). Each size tried is captured (so the graph's shapes are one
    pass's) and put through the shape passes once, kept by the inputs' shapes; only partition, place, route
    and the estimate are run for each fill of each size."""
    options = CompileOptions.of(options, **keywords)
    tokens = count_tokens(example_inputs)
    batch = micro_batch_lib.batch_size(example_inputs)
    if batch is None:
        if options.systems != 1 or options.micro_batch is not None:
            raise WscError("--systems and --micro-batch split the batch, but the model's first input has no "
                           "batch dimension ([batch, ...]); drop them")
        captured = capture(model, example_inputs)
        return compile_captured(captured, tokens, target, options, model_name=model_name, verify_ir=verify_ir,
                                on_pass=on_pass)
    if batch % options.systems:
        raise WscError(f"--systems {options.systems} does not divide the batch of {batch} sequences; give a "
                       "divisor of it")
    requested = options.micro_batch
    if fixed_shapes(model):
        # An exported program's graph has the shapes it was exported with: a pass of fewer sequences would
        # need a graph it does not hold, so the step runs the whole batch in one pass.
        if options.systems != 1 or requested not in (None, batch):
            raise WscError(f"an exported program (.pt2) holds one graph, for its batch of {batch} sequences, so "
                           "--systems and --micro-batch cannot split it; export it at the batch one pass should "
                           "run, or drop them")
        requested = batch
    carried = micro_batch_lib.batched(example_inputs, batch)
    grouped_by_shape: dict[tuple, Grouped] = {}

    def attempt(rows: int) -> Compiled:
        inputs = micro_batch_lib.first_rows(example_inputs, batch, rows) if rows != batch else example_inputs
        key = tuple((tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else repr(t) for t in inputs)
        grouped = grouped_by_shape.get(key)
        if grouped is None:
            try:
                captured = capture(model, inputs)
            except WscError as error:
                if rows == batch:
                    raise
                # A model whose shapes are tied to its batch (a reshape to a fixed leading size) does not
                # run on fewer sequences: this micro-batch is not one of its choices.
                raise micro_batch_lib.NotBatched(f"the model does not take a micro-batch of {rows} "
                                                 f"sequences: {error}") from None
            grouped = grouped_by_shape[key] = group(
                captured, tokens, target, options, model_name=model_name, verify_ir=verify_ir, on_pass=on_pass,
                micro_batches=batch // rows,
                batched_inputs=tuple(n.name for n, c in zip(captured.graph.inputs, carried, strict=True) if c))
        compiled = map_grouped(grouped, options, verify_ir=verify_ir, on_pass=on_pass)
        check_outputs_batched(compiled.program, rows)
        return compiled

    return micro_batch_lib.choose(batch // options.systems, requested, attempt, training_step_seconds)


def training_step_seconds(compiled: Compiled) -> float:
    """What micro-batches are for: a training batch too big for the wafer. Its step (forward, backward and
    gradients out, passes/estimate.py) is what the choice of micro-batch minimises."""
    estimate = compiled.program.estimate
    return estimate["training"].get("step_seconds", estimate["step_seconds"])


def check_outputs_batched(program: Program, rows: int) -> None:
    """Passes over micro-batches are put together along the batch, so every output must carry it."""
    if program.micro_batches == 1:
        return
    for name in program.graph.outputs:
        node = program.graph[name]
        if not node.shape or node.shape[0] != rows:
            raise micro_batch_lib.NotBatched(
                f"output {node.name} {list(node.shape)} has no batch dimension, so the step cannot be split into "
                "micro-batches; return per-sequence outputs, or use a smaller batch that fits in one pass")


def compile_captured(captured: Captured, tokens: int, target: Target, options: CompileOptions | None = None, *,
                     model_name: str = "model", verify_ir: bool = False,
                     on_pass: Callable[[str, float], None] | None = None, micro_batches: int = 1,
                     batched_inputs: tuple[str, ...] = (), **keywords: Any) -> Compiled:
    """Run the passes on a captured model. Legalisation builds a new graph, so one capture can be mapped
    any number of times (other strategies, other targets) without tracing the model again. The capture is
    one pass's (one micro-batch); `tokens` counts the whole step. Unless `options.fill` is given, the kernels
    get the largest share of the mesh in FILLS whose rectangles the placer can pack."""
    options = CompileOptions.of(options, **keywords)
    grouped = group(captured, tokens, target, options, model_name=model_name, verify_ir=verify_ir, on_pass=on_pass,
                    micro_batches=micro_batches, batched_inputs=batched_inputs)
    return map_grouped(grouped, options, verify_ir=verify_ir, on_pass=on_pass)


def group(captured: Captured, tokens: int, target: Target, options: CompileOptions, *, model_name: str,
          verify_ir: bool, on_pass: Callable[[str, float], None] | None, micro_batches: int,
          batched_inputs: tuple[str, ...]) -> Grouped:
    """The shape passes on a fresh Program of the capture."""
    program = Program(captured.graph, target, model_name=model_name, tokens=tokens,
                      weights=captured.weights, mode=options.mode, micro_batches=micro_batches,
                      systems=options.systems, batched_inputs=batched_inputs)
    manager = PassManager(shape_passes(options), verify=verify_ir, on_pass=on_pass, checks=[ops.verify_plans])
    program = manager.run(program)
    return Grouped(captured, program, dict(manager.seconds))


def map_grouped(grouped: Grouped, options: CompileOptions, *, verify_ir: bool,
                on_pass: Callable[[str, float], None] | None) -> Compiled:
    """The fill passes on the grouped program: at `options.fill`, else at each share in FILLS in turn until
    one places, and last the compact try at the last share (Partition.compact). Each try starts from the grouped
    program itself: the passes return a new Program (partition new Layers) and leave theirs as it was. The pass
    seconds reported are the shape passes' and the fill passes' of the try that placed."""
    fills = [options.fill] if options.fill is not None else list(FILLS)
    tries = [(fill, False) for fill in fills] + [(fills[-1], True)]
    for fill, compact in tries:
        manager = PassManager(fill_passes(options, fill, compact), verify=verify_ir, on_pass=on_pass,
                              checks=[ops.verify_plans], ran_before=list(grouped.pass_seconds))
        try:
            program = manager.run(grouped.program)
        except DoesNotPlace as error:
            if (fill, compact) != tries[-1]:
                continue
            if grouped.program.mode == "pipelined":  # each layer has only its band of rows
                raise DoesNotPlace(f"pipelined mode cannot place every layer in its band of rows: {error}; use "
                                   "--mode weight-streaming", error.needed, error.offered) from None
            raise
        return Compiled(program, grouped.captured, {**grouped.pass_seconds, **manager.seconds})
    raise AssertionError("unreachable: the last fill returns or raises")


def count_tokens(example_inputs: tuple) -> int:
    """Tokens per step: the ids of a language model ([batch, seq]), else the rows of the first input."""
    first = example_inputs[0]
    if not first.dtype.is_floating_point:
        return int(first.numel())
    return int(np.prod(first.shape[:-1])) if first.dim() > 1 else 1


@dataclass
class RunResult:
    outputs: list[np.ndarray]
    executor: Executor
    peak_rss_bytes: int


def run_compiled(compiled: Compiled, example_inputs: tuple, store_path: Path | None = None,
                 weights_dtype: str = "fp32", prefetch: bool = True) -> RunResult:
    """Execute the program layer by layer, streaming weights from a store: the one at `store_path` (a
    safetensors file, a sharded checkpoint folder or its index), else one written from the model's weights.
    With weights_dtype fp16 the store holds (and streams) half-precision weights; the kernels compute in fp32.
    With `prefetch`, the next layer's weights are copied in while the current layer runs."""
    with tempfile.TemporaryDirectory(prefix="wsc-store-") as tmp:
        if store_path is None:
            store_path = write_store(Path(tmp) / "weights.safetensors",
                                     {k: to_numpy(v) for k, v in compiled.weights.items()}, dtype=weights_dtype)
        elif weights_dtype == "fp16":
            source = WeightStore(store_path)
            store_path = write_store(Path(tmp) / "weights.safetensors", LazyWeights(source), dtype="fp16")
            source.close()
        store = WeightStore(store_path)
        bind_store_keys(compiled, store)
        executor = Executor(compiled.program, store, prefetch=prefetch)
        try:
            outputs = executor.run([to_numpy(t) for t in example_inputs])
        finally:
            store.close()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return RunResult(outputs, executor, peak)


class LazyWeights(Mapping):
    """A store's tensors read one at a time (and their pages given back), for converting a store without
    holding it in memory."""

    def __init__(self, store: WeightStore):
        self.store = store

    def __getitem__(self, key: str) -> np.ndarray:
        return self.store.read(key)

    def __iter__(self):
        return iter(self.store.keys())

    def __len__(self) -> int:
        return len(self.store.keys())


def bind_store_keys(compiled: Compiled, store: WeightStore) -> None:
    """Point each weight of the program at its tensor in the store. A checkpoint may name a weight
    differently from the captured graph: a tied weight under its other name (`wte.weight` for
    `lm_head.weight`), or without a wrapper's prefix (`transformer.h.0...` for `model.transformer.h.0...`)."""
    available = set(store.keys())
    for node in compiled.program.graph.params:
        node.attrs["key"] = store_key(node.attrs["key"], compiled.captured.aliases, available, store.path)


def store_key(key: str, aliases: dict[str, list[str]], available: set[str], where: Path) -> str:
    if key in available:
        return key
    names = [key, *aliases.get(key, [])]
    found = [k for k in names if k in available]
    if not found:
        found = sorted({k for name in names for k in available if name.endswith("." + k)})
    if len(found) != 1:
        raise WscError(f"weight {key} is {'missing from' if not found else 'ambiguous in'} the store {where}; "
                       "give the checkpoint of this model")
    return found[0]


def load_weights(module: torch.nn.Module, captured: Captured, store_path: Path) -> None:
    """Give a module built without weights (meta device) the store's weights, to run it eagerly."""
    store = WeightStore(store_path)
    try:
        available = set(store.keys())
        state = {name: torch.from_numpy(store.read(store_key(name, captured.aliases, available, store.path)))
                 for name, t in module.state_dict(keep_vars=True).items() if t.is_meta}
    finally:
        store.close()
    module.load_state_dict(state, strict=False, assign=True)


def verify(model: torch.nn.Module, example_inputs: tuple, outputs: list[np.ndarray],
           tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Eager PyTorch on the same inputs. Pass when the largest absolute difference is within `tolerance`
    times the outputs' scale (their largest magnitude, at least 1): rounding grows with the values, so
    logits of 30 may differ by ten times what logits of 3 do, for the same arithmetic."""
    with torch.no_grad(), progress.stage("eager PyTorch reference"):
        expected_list = run_eager(model, example_inputs)  # the tensors of its output, as capture flattened them
    if len(outputs) != len(expected_list):
        return {"status": "fail", "max_abs_err": None, "tolerance": tolerance}
    worst, scale = 0.0, 1.0
    for got, want in zip(outputs, expected_list, strict=True):
        want_np = to_numpy(want).astype(np.float32)
        if got.shape != want_np.shape:
            worst = float("inf")
            break
        # Where eager gives NaN or an infinity, the compiled program must give the same; the error and the
        # scale are over the finite values.
        finite = np.isfinite(want_np)
        special_agrees = (np.isnan(got) & np.isnan(want_np)) | (got == want_np)
        if not special_agrees[~finite].all():
            worst = float("nan")
            break
        if finite.any():
            scale = max(scale, float(np.max(np.abs(want_np[finite]))))
        err = float(np.max(np.abs(got[finite] - want_np[finite]))) if finite.any() else 0.0
        worst = err if np.isnan(err) else max(worst, err)
        if np.isnan(worst):
            break
    allowed = tolerance * scale
    status = "pass" if worst <= allowed else "fail"  # NaN compares false: an uncomputed tile fails
    return {"status": status, "max_abs_err": None if np.isnan(worst) else worst, "tolerance": tolerance,
            "output_scale": scale, "allowed_abs_err": allowed}
