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
    verify       compare with eager PyTorch on the capture input and a shuffled one, each output to the bound
                 its arithmetic allows (wsc/verification.py); on a failure, every layer and kernel diffed
                 with the captured graph's values to name the first kernel wrong by itself

The passes up to group-layers depend on the graph's shapes only and run once per capture (shape_passes);
partition and what follows depend on the share of the mesh the kernels get, and are what the search for a
share that places re-runs (fill_passes). The options of a compile are one CompileOptions (wsc.options).
"""

from __future__ import annotations

import dataclasses
import resource
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsc import micro_batch as micro_batch_lib
from wsc import ops, progress, verification
from wsc.core.errors import DoesNotPlace, WscError
from wsc.core.passmanager import PassManager
from wsc.core.program import Program
from wsc.frontend.capture import Captured, capture, fixed_shapes, run_eager, to_numpy
from wsc.frontend.golden import golden_values
from wsc.options import DEFAULT_TOLERANCE, CompileOptions
from wsc.passes import estimate as estimate_lib
from wsc.passes.estimate import Estimate
from wsc.passes.fold_constants import FoldConstants
from wsc.passes.fuse_epilogues import FuseEpilogues
from wsc.passes.group_layers import GroupLayers
from wsc.passes.legalize import Legalize
from wsc.passes.partition import Partition
from wsc.passes.place import Place
from wsc.passes.route import Route
from wsc.runtime.executor import Executor
from wsc.runtime.weight_store import WeightStore, values_digest, write_store
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
            Place(strategy=options.strategy, seed=options.seed, time_limit=options.time_limit,
                  router=options.router),
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

    def scale_of(largest: Compiled, rows: int) -> tuple[float, int]:
        """A pass of `rows` sequences against the largest's pass, and the passes each system then runs."""
        return rows * largest.program.micro_batches / batch, batch // options.systems // rows

    def floor(largest: Compiled, rows: int) -> float:
        return estimate_lib.training_floor(largest.program, *scale_of(largest, rows))

    def rank(largest: Compiled, rows: int) -> float:
        return estimate_lib.scaled_training_step(largest.program, *scale_of(largest, rows))

    search: list[micro_batch_lib.Tried] = []
    chosen = micro_batch_lib.choose(batch // options.systems, requested, attempt, training_step_seconds,
                                    rank=rank, floor=floor, cramped=fabric_bound, log=search)
    chosen.program.estimate["micro_batch_search"] = [dataclasses.asdict(t) for t in search]
    return chosen


def fabric_bound(compiled: Compiled) -> bool:
    """A training step the fabric binds: its pass's cuts may have given up lanes for room (passes/partition.py),
    which a smaller pass would not, so the micro-batch search compiles the half too."""
    return compiled.program.estimate["training"].get("bottleneck") == "fabric"


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
    seconds: float = 0.0  # the first input's run
    streamed_bytes: int = 0  # read from the store by the first input's run: one step's
    more_outputs: list[list[np.ndarray]] = field(default_factory=list)  # for each of `also`'s inputs
    weights_digest: str = ""  # of the weights as streamed (wsc.runtime.weight_store.values_digest)


@contextmanager
def opened_store(compiled: Compiled, store_path: Path | None = None,
                 weights_dtype: str = "fp32") -> Iterator[WeightStore]:
    """The weight store a run streams from: the one at `store_path` (a safetensors file, a sharded checkpoint
    folder or its index), else one written from the model's weights, in `weights_dtype` (a store of another
    dtype is converted); its keys bound to the program's weights. Closed (and a written one removed) after."""
    with tempfile.TemporaryDirectory(prefix="wsc-store-") as tmp:
        if store_path is None:
            store_path = write_store(Path(tmp) / "weights.safetensors",
                                     {k: to_numpy(v) for k, v in compiled.weights.items()}, dtype=weights_dtype)
        else:
            store_path = in_dtype(store_path, weights_dtype, Path(tmp))
        store = WeightStore(store_path)
        try:
            bind_store_keys(compiled, store)
            yield store
        finally:
            store.close()


_WIDER_FLOATS = ("F64", "F32", "BF16")  # safetensors float dtypes an fp16 run converts (bf16 does not fit fp16)


def in_dtype(store_path: Path, weights_dtype: str, folder: Path) -> Path:
    """The store at `store_path` as a run streams it: itself in fp32, or when its floats are all fp16 already;
    else converted (a tensor at a time) into a store in `folder` that holds its floats in `weights_dtype`."""
    if weights_dtype != "fp16":
        return store_path
    source = WeightStore(store_path)
    try:
        if all(source.dtype(key) not in _WIDER_FLOATS for key in source.keys()):
            return store_path  # its floats are fp16 already: a copy would only cost its size again on disk
        return write_store(folder / "streamed.safetensors", LazyWeights(source), dtype="fp16")
    finally:
        source.close()


def refuse_foreign_store(path: Path, tensors: Sequence[tuple[str, tuple[int, ...]]], aliases: dict[str, list[str]],
                         *, kind: str, holder: str, fix: str) -> None:
    """Refuse the store at `path` (`--weights`) when it holds no tensor for one of `tensors` (name, shape), or
    holds it in another shape: one line naming the first and how many more, the next few listed after it.
    `kind` names a tensor (parameter, weight), `holder` what holds `tensors` and `fix` the checkpoint to give.
    Only the files' headers are read."""
    store = WeightStore(path)
    try:
        available = set(store.keys())
        missing, wrong = [], []
        for name, shape in tensors:
            try:
                key = store_key(name, aliases, available, store.path)
            except WscError:
                missing.append(name)
                continue
            if store.shape(key) != tuple(shape):
                wrong.append(f"{name} is {list(store.shape(key))} there, {list(shape)} in {holder}")
    finally:
        store.close()
    for problems, what in ((missing, f"holds no tensor for {kind}"), (wrong, f"does not fit: {kind}")):
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise WscError("\n".join([f"--weights {path} {what} {problems[0]}{more}; give the checkpoint of {fix}",
                                      *(f"  {p}" for p in problems[1:6])]))


def run_compiled(compiled: Compiled, example_inputs: tuple, store_path: Path | None = None,
                 weights_dtype: str = "fp32", prefetch: bool = True, also: Sequence[tuple] = ()) -> RunResult:
    """Execute the program layer by layer, streaming weights from a store (see `opened_store`): on
    `example_inputs`, then on each input of `also` (whose outputs are `more_outputs`). With weights_dtype fp16
    the store holds (and streams) half-precision weights; the kernels compute in fp32. With `prefetch`, the
    next layer's weights are copied in while the current layer runs."""
    with opened_store(compiled, store_path, weights_dtype) as store:
        executor = Executor(compiled.program, store, prefetch=prefetch)
        outputs = executor.run([to_numpy(t) for t in example_inputs])
        seconds, streamed = executor.stats.seconds, store.streamed_bytes
        more = [executor.run([to_numpy(t) for t in inputs]) for inputs in also]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the digest reads every weight
        digest = values_digest(store, streamed_keys(compiled.program))
    return RunResult(outputs, executor, peak, seconds, streamed, more, digest)


def streamed_keys(program: Program) -> list[str]:
    """The store keys of the program's weights, each once, in the order the graph first reads them."""
    return list(dict.fromkeys(str(n.attrs["key"]) for n in program.graph.params))


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


def load_weights(module: torch.nn.Module, captured: Captured, store_path: Path, every: bool = False) -> None:
    """Give a module built without weights (meta device) the store's weights, to run it eagerly; with `every`,
    each of its tensors the store holds is replaced by the store's, whether it had values or not."""
    store = WeightStore(store_path)
    try:
        available = set(store.keys())
        state = {}
        for name, t in module.state_dict(keep_vars=True).items():
            names = [name, *captured.aliases.get(name, [])]
            if t.is_meta or (every and any(n in available for n in names)):
                value = store.read(store_key(name, captured.aliases, available, store.path))
                state[name] = torch.from_numpy(value).to(t.dtype)
    finally:
        store.close()
    module.load_state_dict(state, strict=False, assign=True)


def verify(model: torch.nn.Module, example_inputs: tuple, outputs: list[np.ndarray], program: Program,
           tolerance: float = DEFAULT_TOLERANCE, weights_dtype: str = "fp32",
           expected_out: list[np.ndarray] | None = None) -> dict:
    """Eager PyTorch on the same inputs, each output held to the bound wsc.verification derives for its
    path (scaled by `tolerance`). Eager's outputs are appended to `expected_out` when it is given."""
    with torch.no_grad(), progress.stage("eager PyTorch reference"):
        expected = [to_numpy(e) for e in run_eager(model, example_inputs)]  # as capture flattened them
    if expected_out is not None:
        expected_out.extend(expected)
    return verification.verify_outputs(program, expected, outputs, tolerance, weights_dtype)


def golden_weights(compiled: Compiled, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's own weights by store key (those loaded into a module built on meta included); None when
    some are still on the meta device."""
    state = model.state_dict()
    weights = {k: (state[k] if v.is_meta and k in state else v) for k, v in compiled.weights.items()}
    return None if any(v.is_meta for v in weights.values()) else weights


def diff_layers(compiled: Compiled, model: torch.nn.Module, example_inputs: tuple, store_path: Path | None,
                weights_dtype: str, tolerance: float, step_pass: int = 0) -> verification.LayerDiff | None:
    """Run pass `step_pass` of the step on `example_inputs` once more, every value held to its golden value
    (the captured graph interpreted by PyTorch on the model's weights): in the program and, for each kernel,
    alone on golden inputs. None when the model's weights are not all real."""
    program = compiled.program
    weights = golden_weights(compiled, model)
    if weights is None:
        return None
    arrays = [to_numpy(t) for t in example_inputs]
    if program.micro_batches > 1:
        for i, node in enumerate(program.graph.inputs):
            if node.name in program.batched_inputs:
                rows = node.shape[0]
                arrays[i] = arrays[i][step_pass * rows:(step_pass + 1) * rows]
    wanted = {n.holds for n in program.graph if n.holds}
    with progress.stage("per-layer diff with eager PyTorch"):
        golden = golden_values(compiled.captured, arrays, weights, wanted)
        with opened_store(compiled, store_path, weights_dtype) as store:
            executor = Executor(program, store)
            # The model's weight of each param node, by the key it was captured under: binding the program to
            # its store may have renamed the key (a checkpoint without the wrapper's prefix).
            captured_params = {n.name: n for n in compiled.captured.graph.params}
            by_node = {}
            for node in program.graph.params:  # a view legalisation made of a weight holds its origin
                origin = captured_params.get(node.name) or captured_params.get(node.holds)
                if origin is not None:
                    by_node[node.name] = to_numpy(weights[origin.attrs["key"]]).reshape(node.shape)
            diff = verification.LayerDiff(program, executor, golden, by_node, weights_dtype, tolerance, arrays)
            executor.observer = diff
            executor.run_pass(arrays)
    return diff
