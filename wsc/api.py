"""The Python API: `wsc.compile(module, example_inputs, target="cs2-sim")` returns a CompiledModel.

Calling a CompiledModel runs the compiled program on the simulated target (the JIT kernels over the
partitioner's tiles, weights streamed from the store) and returns torch tensors; `.report` holds the same
report as report.json, and `.save(folder)` writes report.json and placement.json.

    import wsc
    compiled = wsc.compile(model, (ids,), target="cs2-sim")
    logits = compiled(ids)
    print(compiled.report["simulation"]["step_seconds"])
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsc import pipeline
from wsc import verification as checks
from wsc.artifacts.atomic import write_all_atomic
from wsc.artifacts.report import build_report, dumps, placement_json
from wsc.core.errors import DoesNotFit, WscError
from wsc.core.mesh import mesh_of
from wsc.core.program import Program
from wsc.frontend.capture import TORCH_DTYPES, to_numpy
from wsc.frontend.meta import physical_memory_bytes, weight_bytes
from wsc.options import CompileOptions
from wsc.runtime.executor import Executor
from wsc.runtime.weight_store import WeightStore, write_store
from wsc.targets import Target, load_target

# Verifying holds the eager model's weights, the store's copy and one streamed layer: skip verification
# (with a note) rather than exhaust memory when that would not fit in this share of the machine's RAM.
VERIFY_MEMORY_SHARE = 0.6
# The most bytes of capture input and eager outputs an output folder keeps as its reference (111M's logits at
# 128 tokens are 26 MB); past it, `wsc run` runs the folder but has nothing to hold its outputs to.
REFERENCE_BYTES = 64 << 20


class CompiledModel:
    """A model compiled for a target: callable like the module, with its report."""

    def __init__(self, compiled: pipeline.Compiled, report: dict[str, Any]):
        self.compiled = compiled
        self.program = compiled.program
        self.report = report
        self._store_dir: tempfile.TemporaryDirectory | None = None
        self._executor: Executor | None = None
        # What the compile ran on and, where it verified the program, the capture input with eager's outputs
        # for it: program.json records the first, reference.safetensors holds the second (`wsc run` checks a
        # run of the folder against it).
        self.weights_record: dict[str, Any] = {"source": "model", "seed": None, "file": None, "sha256": None,
                                               "dtype": "fp32"}
        self.reference: dict[str, list[np.ndarray]] | None = None

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """The outputs in the form the module returns them: a tensor, a tuple or dict of them, or a Hugging Face
        output object (`.logits`)."""
        return self.compiled.captured.structure(list(self.flat_outputs(*inputs)))

    def flat_outputs(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The output tensors in the order of the graph's outputs (what torch.compile's backend hands back)."""
        arrays = check_inputs(self.program, inputs)
        return tuple(torch.from_numpy(o) for o in self.executor().run(arrays))

    def executor(self) -> Executor:
        """The runtime for this program, with its weight store; made on first use and kept."""
        if self._executor is None:
            weights = self.compiled.weights
            if any(t.is_meta for t in weights.values()):
                raise WscError("this model was compiled without weights (its parameters are on the meta "
                               "device); compile a module with real weights to run it")
            self._store_dir = tempfile.TemporaryDirectory(prefix="wsc-store-")
            path = Path(self._store_dir.name) / "weights.safetensors"
            write_store(path, {k: to_numpy(v) for k, v in weights.items()})
            self._executor = Executor(self.program, WeightStore(path))
        return self._executor

    def save(self, out: Path | str) -> None:
        """Write placement.json, report.json, trace.json (the estimate as a Perfetto timeline), report.html
        (summary, pictures and per-layer table in one page) and program.json (the IR `wsc run` executes
        again), with reference.safetensors (the capture input and eager's outputs) when the compile verified
        the program, into `out`, all of them or none. Weights are never written there."""
        from wsc.artifacts import OUTPUT_FILES, program_json, viz
        from wsc.artifacts.trace import trace_events

        out = Path(out)
        # Everything is rendered before anything is written, so a failure leaves the folder as it was.
        placement = placement_json(self.program)
        reference_bytes, reference = self._reference_file()
        program_doc = program_json.document(self.program, self.compiled.captured, weights=self.weights_record,
                                            reference=reference)
        if self.report:
            self.report["program"] = {"file": program_json.FILE, "sha256": program_doc["sha256"],
                                      "reference": None if reference is None else reference["file"]}
            self.report["weights"] = dict(self.weights_record)
        files: dict[str, bytes | str] = {
            "placement.json": dumps(placement),
            "report.json": dumps(self.report),
            "trace.json": dumps(trace_events(self.program)),
            program_json.FILE: program_json.dumps(program_doc),
        }
        if reference_bytes is not None:
            files[program_json.REFERENCE_FILE] = reference_bytes
        if self.report:  # a report-less model (never compiled through wsc.compile) has nothing to summarise
            files["report.html"] = viz.render(placement, self.report, ".html")
        # A file an earlier compile left that this one does not write would describe another program.
        write_all_atomic(out, files, remove=[name for name in OUTPUT_FILES if name not in files])

    def _reference_file(self) -> tuple[bytes | None, dict[str, Any] | None]:
        """reference.safetensors' bytes and program.json's record of it; (None, None) without a reference or
        when its outputs exceed REFERENCE_BYTES (a 1.3B model's logits at 2048 tokens are 0.4 GB)."""
        import hashlib

        from wsc.artifacts import program_json

        if self.reference is None:
            return None, None
        graph = self.program.graph
        tensors = {f"input.{node.name}": value for node, value in zip(graph.inputs, self.reference["inputs"],
                                                                       strict=True)}
        tensors |= {f"output.{name}": value for name, value in zip(graph.outputs, self.reference["outputs"],
                                                                    strict=True)}
        if sum(np.asarray(v).nbytes for v in tensors.values()) > REFERENCE_BYTES:
            return None, None
        with tempfile.TemporaryDirectory(prefix="wsc-reference-") as tmp:
            data = write_store(Path(tmp) / program_json.REFERENCE_FILE, tensors).read_bytes()
        return data, {"file": program_json.REFERENCE_FILE, "sha256": hashlib.sha256(data).hexdigest(),
                      "inputs": [f"input.{n.name}" for n in graph.inputs],
                      "outputs": [f"output.{name}" for name in graph.outputs]}


def buffer_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in module.named_buffers() if not b.is_meta}


def set_buffers(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name in state:
                b.copy_(state[name])


def worst_pass(program: Program, verification: dict[str, Any]) -> int:
    """The pass (micro-batch) of the step holding the worst output element, which the per-layer diff reruns."""
    outputs = [o for o in verification.get("outputs", []) if o["input"] == verification.get("worst_input")]
    worst = max(outputs, key=checks.share_of_bound, default=None)
    if program.micro_batches == 1 or worst is None or not worst.get("worst_index"):
        return 0
    rows = program.graph[worst["name"]].shape[0]  # a pass's rows of a batched output
    return min(program.micro_batches - 1, worst["worst_index"][0] // rows)


def check_inputs(program, inputs: tuple) -> list[np.ndarray]:
    """The inputs must match what the program was compiled for: same count, dtypes and (whole-step) shapes."""
    expected = program.graph.inputs
    if len(inputs) != len(expected):
        raise WscError(f"the compiled model takes {len(expected)} inputs, got {len(inputs)}")
    arrays = []
    for i, (tensor, node) in enumerate(zip(inputs, expected, strict=True)):
        if not isinstance(tensor, torch.Tensor):
            raise WscError(f"input {i} is a {type(tensor).__name__}, expected a tensor")
        dtype = TORCH_DTYPES.get(tensor.dtype, str(tensor.dtype))
        shape = program.step_input_shape(node.name)
        if dtype != node.dtype or tuple(tensor.shape) != shape:
            raise WscError(f"input {i} is {dtype}{list(tensor.shape)} but the model was compiled for "
                           f"{node.dtype}{list(shape)}; compile again for this shape and dtype")
        arrays.append(to_numpy(tensor))
    return arrays


def weights_fit(module: torch.nn.Module) -> bool:
    """Whether verifying `module` fits in memory: the eager model's weights and the store's copy (twice its
    weight bytes) within VERIFY_MEMORY_SHARE of the machine's RAM. Meta-device parameters count their size,
    so a model built without weights tells whether it may be built with them."""
    return weight_bytes(module) * 2 <= VERIFY_MEMORY_SHARE * physical_memory_bytes()


def check_finite_weights(module: torch.nn.Module) -> None:
    """Refuse a parameter holding NaN or an infinity, naming it and the index of its first such element: the
    program would compute nothing but that, and verification could only say its outputs are not finite."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.is_meta or not parameter.is_floating_point():
                continue
            bad = ~torch.isfinite(parameter)
            if not bool(bad.any()):
                continue
            where = bad.nonzero()
            index = where[0].tolist()
            value = float(parameter[tuple(index)])
            kind = "NaN" if value != value else ("inf" if value > 0 else "-inf")
            others = len(where) - 1
            more = f" (and {others} more non-finite value{'s' if others > 1 else ''})" if others else ""
            raise WscError(f"parameter {name} holds {kind} at index {index}{more}; give the model finite weights")


def check_store(module: torch.nn.Module, path: Path) -> None:
    """Refuse a --weights store that is not this model's checkpoint (a parameter it does not hold, or holds in
    another shape) before anything is compiled: only the files' headers are read."""
    from wsc.frontend.capture import tensor_aliases

    tensors = [(name, tuple(parameter.shape)) for name, parameter in module.named_parameters()]
    pipeline.refuse_foreign_store(path, tensors, tensor_aliases(module), kind="parameter", holder="the model",
                                  fix="this model")


def compile(module: torch.nn.Module, example_inputs: tuple, target: str | Target = "cs2-sim",
            options: CompileOptions | None = None, *, model_name: str | None = None,
            model_info: dict[str, Any] | None = None, on_pass: Callable[[str, float], None] | None = None,
            **keywords: Any) -> CompiledModel:
    """Compile `module` for `target` with `options` (a wsc.options.CompileOptions), or the defaults changed
    by `keywords` (its field names: strategy, router, mode, micro_batch, systems, verify, tolerance, weights,
    weights_dtype, random_weights, seed, time_limit, fused_attention, fill); with `verify`, run it and compare
    with eager PyTorch. With `random_weights` (a seed) the program is run, and `module` (whose tensors the program
    streams are replaced) is verified, on wsc's seeded weights (wsc.runtime.random_weights).

    `weights` names a store to run from (a safetensors file, a sharded checkpoint folder or its index); the
    module may then be built without weights (wsc.frontend.meta.empty_weights): the eager reference loads them from
    the store after the compiled run, whose peak memory is measured first. `weights_dtype` fp16 streams half
    the bytes (the kernels still compute in fp32), and verification allows for their rounding. Verification
    runs the capture input and a shuffled one (wsc.verification.shuffled); on a failure, or with
    `verify_layers`, it diffs every layer and kernel with eager's values and names the first wrong one
    (`report["verification"]["located"]`). The batch is split over `systems` wafers (data parallel), and
    each one's share is run in passes of `micro_batch` sequences (default: the most that fit)."""
    start = time.perf_counter()
    options = CompileOptions.of(options, **keywords)
    target = load_target(target) if isinstance(target, str) else target
    example_inputs = tuple(example_inputs)
    check_finite_weights(module)
    if options.weights is not None:
        check_store(module, options.weights)
    name = model_name or type(module).__name__
    try:
        compiled = pipeline.compile_model(module, example_inputs, target, options, model_name=name, on_pass=on_pass)
    except DoesNotFit as error:
        raise too_few_pes(error, target, options) or error from None
    with tempfile.TemporaryDirectory(prefix="wsc-random-weights-") as tmp:
        if options.random_weights is not None:  # drawn for exactly the tensors the program streams
            store = draw_weights(compiled, Path(tmp), options.random_weights)
            pipeline.load_weights(module, compiled.captured, store, every=True)
            run_options = dataclasses.replace(options, weights=store, random_weights=None)
        else:
            run_options = options
        return finish_compile(compiled, module, example_inputs, target, options, run_options, start,
                              model_name=name, model_info=model_info)


def draw_weights(compiled: pipeline.Compiled, folder: Path, seed: int) -> Path:
    """A store in `folder` of the seeded weights (wsc.runtime.random_weights) of the tensors the program
    streams, by the keys they were captured under."""
    from wsc.artifacts.program_json import captured_keys, write_random_weights

    _, tensors = captured_keys(compiled.program, compiled.captured)
    return write_random_weights(tensors, folder / "weights.safetensors", seed)


def finish_compile(compiled: pipeline.Compiled, module: torch.nn.Module, example_inputs: tuple, target: Target,
                   options: CompileOptions, run_options: CompileOptions, start: float, *, model_name: str,
                   model_info: dict[str, Any] | None) -> CompiledModel:
    """Verify the compiled program on `run_options`' weights and build its report; `options` are the compile's
    as given (its weights drawn at random when `random_weights` is set)."""
    # On a faulty wafer the same compile on the wafer without its defects is the step they are weighed against.
    perfect = None
    if target.dead_pes:
        clean = dataclasses.replace(target, dead_pes=frozenset())
        perfect = pipeline.compile_model(module, example_inputs, clean, dataclasses.replace(options, verify=False),
                                         model_name=model_name).program
    result = CompiledModel(compiled, {})
    ran: dict[str, Any] = {}
    verification, memory, run_seconds = verify_compiled(compiled, module, example_inputs, run_options, ran)
    result.weights_record = {
        "source": "random" if options.random_weights is not None else ("file" if options.weights else "model"),
        "seed": options.random_weights, "file": None if options.weights is None else str(options.weights),
        "sha256": ran.get("digest"), "dtype": options.weights_dtype}
    if ran:
        result.reference = {"inputs": ran["inputs"], "outputs": ran["outputs"]}
    result.report = build_report(compiled, verification=verification, memory=memory, run_seconds=run_seconds,
                                 total_seconds=time.perf_counter() - start, model_info=model_info or {},
                                 perfect=perfect)
    return result


def too_few_pes(error: DoesNotFit, target: Target, options: CompileOptions) -> WscError | None:
    """The one line for a model refused because the target's defects leave too few working PEs: the PEs its
    largest need asks of the mesh, those left (the mesh less its dead and cut-off PEs) and the difference.
    None when the defects are not the cause (a clean wafer of this size would be too small too), or the refusal
    is not one of PEs: the refusal itself is then the message."""
    if not target.dead_pes or options.mode != "weight-streaming" or not error.needed:
        return None
    left = target.rows * target.cols - len(mesh_of(target).dead)
    # The partitioner's refusal (passes/partition.py): a layer's tiles need more PEs than its share of the mesh.
    if not error.layer or not error.share:
        return None
    fill = error.share
    needed = math.ceil(error.needed / fill)
    if needed <= left or needed > target.rows * target.cols:
        return None
    return DoesNotFit(f"too few PEs left on {target.name}: layer {error.layer} needs {needed:,} (its "
                      f"{error.needed:,} tiles at a {fill:.0%} share), {left:,} are left, {needed - left:,} missing; "
                      "use fewer defects or a smaller model", needed, left)


def verify_compiled(compiled: pipeline.Compiled, module: torch.nn.Module, example_inputs: tuple,
                    options: CompileOptions, ran: dict[str, Any] | None = None,
                    ) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Run the compiled program and hold it to eager PyTorch (unless `options.verify` is off or the model
    cannot be run here): the report's verification and memory sections, and the seconds of the run. When it
    ran, `ran` (if given) receives the capture input ("inputs"), eager's outputs for it ("outputs") and the
    digest of the weights streamed ("digest")."""
    tolerance = options.verify_tolerance
    verification: dict[str, Any] = {"status": "skipped", "max_abs_err": None, "tolerance": tolerance}
    memory: dict[str, Any] = {"peak_rss_bytes": None}
    run_seconds = 0.0
    on_meta = any(t.is_meta for t in compiled.weights.values()) and options.weights is None
    if options.verify and on_meta:
        verification["note"] = "the model was built without weights (meta device): give --weights to run it"
    elif options.verify and not weights_fit(module):
        verification["note"] = (f"{weight_bytes(module) / 1e9:.1f} GB of weights are too many to verify in "
                                f"{physical_memory_bytes() / 1e9:.0f} GB of memory")
    elif options.verify:
        store = options.weights
        input_sets = [("capture", example_inputs), ("shuffled (seed 1)", checks.shuffled(example_inputs, seed=1))]
        run = pipeline.run_compiled(compiled, example_inputs, store, options.weights_dtype,
                                    also=[inputs for _, inputs in input_sets[1:]])
        run_seconds = run.seconds
        memory = {"peak_rss_bytes": run.peak_rss_bytes,  # measured before the eager reference below
                  "peak_resident_layers": run.executor.store.peak_resident_layers,
                  "peak_resident_weight_bytes": run.executor.store.peak_resident_bytes,
                  "streamed_bytes": run.streamed_bytes}
        if store is not None:
            pipeline.load_weights(module, compiled.captured, store)
        # Eager runs may move the module's buffers (batch norm's running statistics in train mode), and every
        # input was run by the program on the buffers as they were: each eager run starts from them too, and
        # the module is left as one eager call on the capture input leaves it.
        before = buffer_state(module)
        per_input, after_capture = [], None
        expected: list[np.ndarray] = []
        for (label, inputs), outputs in zip(input_sets, [run.outputs, *run.more_outputs], strict=True):
            set_buffers(module, before)
            per_input.append((label, pipeline.verify(module, inputs, outputs, compiled.program, tolerance,
                                                     options.weights_dtype,
                                                     expected_out=expected if after_capture is None else None)))
            if after_capture is None:
                after_capture = buffer_state(module)
        if ran is not None:
            ran.update(inputs=[to_numpy(t) for t in example_inputs], outputs=expected, digest=run.weights_digest)
        set_buffers(module, before if after_capture is None else after_capture)
        verification = checks.combine(per_input, options.weights_dtype, tolerance)
        if verification["status"] == "fail" or options.verify_layers:
            label = verification["worst_input"]
            inputs = dict(input_sets)[label]
            diff = pipeline.diff_layers(compiled, module, inputs, store, options.weights_dtype, tolerance,
                                        worst_pass(compiled.program, verification))
            if diff is not None:
                verification["layers_input"] = label
                verification["layers"] = diff.layers()
                # A kernel or weight wrong by itself fails the run even when the outputs are within their
                # bound (fp16 weights widen it); a value inside the program near its bound names nothing.
                by_itself = diff.located(by_itself_only=True)
                if by_itself is not None:
                    verification["status"] = "fail"
                verification["located"] = by_itself or (diff.located() if verification["status"] == "fail"
                                                        else None)
    return verification, memory, run_seconds
