"""`wsc run OUT --weights PATH | --random-weights SEED`: a compiled program run again from its output folder.

The folder is read as data only: program.json (the IR, its format, version and content hash checked, every
field validated: wsc.artifacts.program_json) and reference.safetensors (the capture input and eager PyTorch's
outputs for it, its sha256 checked). The kernels are generated again from the IR by the op table's lowerings
and JIT-compiled here; the weights come from the store the user names or are drawn again from the seed
(wsc.runtime.random_weights). Nothing from the folder is imported, executed or unpickled, so a folder someone
sent is safe to run.

When the run streams the very weights the compile verified with (the digest of their values matches the one
program.json records) on the capture input, its outputs are held to eager's recorded ones with the bound
wsc.verification derives; any other run reports its outputs, and writes them with `--outputs`, with nothing to
hold them to.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsc import progress
from wsc import verification as checks
from wsc.artifacts import program_json
from wsc.artifacts.atomic import unwritable, write_atomic
from wsc.core.dtypes import BY_NAME
from wsc.core.errors import WscError
from wsc.core.program import Program
from wsc.options import DEFAULT_TOLERANCE, MAX_SEED
from wsc.pipeline import in_dtype, refuse_foreign_store, store_key, streamed_keys
from wsc.runtime.executor import Executor
from wsc.runtime.weight_store import STORE_DTYPES, WeightStore, values_digest, write_store

EXIT_MISMATCH = 1


@dataclass
class RunOutcome:
    """What `run_folder` did: the outputs, the weights' digest, and the verdict against the reference."""

    loaded: program_json.Loaded
    outputs: list[np.ndarray]
    weights_digest: str
    verification: dict[str, Any]
    seconds: float
    streamed_bytes: int


def main(args: argparse.Namespace) -> int:
    outcome = run_folder(Path(args.out), weights=args.weights, random_weights=args.random_weights,
                         inputs=args.inputs, outputs=args.outputs, weights_dtype=args.weights_dtype,
                         tolerance=args.tolerance)
    _print_summary(outcome, args)
    return EXIT_MISMATCH if outcome.verification["status"] == "fail" else 0


def run_folder(out: Path, *, weights: str | Path | None = None, random_weights: int | None = None,
               inputs: str | Path | None = None, outputs: str | Path | None = None,
               weights_dtype: str | None = None, tolerance: float | None = None) -> RunOutcome:
    """Run the program of the output folder `out` on `weights` (a store) or the seeded `random_weights`, on
    `inputs` (a safetensors file; default the recorded capture input), writing its outputs to `outputs`."""
    # Everything the command line alone decides is refused before the folder is read.
    if (weights is None) == (random_weights is None):
        raise WscError("give the weights to run on: --weights PATH or --random-weights SEED (one of them)")
    if random_weights is not None and not 0 <= random_weights <= MAX_SEED:
        raise WscError(f"--random-weights {random_weights} is out of range; give a whole number from 0 to {MAX_SEED}")
    if weights is not None and not Path(weights).exists():
        raise WscError(f"--weights {weights} does not exist; give a safetensors file or checkpoint folder")
    if weights_dtype is not None and weights_dtype not in STORE_DTYPES:
        raise WscError(f"unknown weights dtype {weights_dtype!r}; use one of {', '.join(STORE_DTYPES)}")
    if tolerance is not None and not (0 <= tolerance < float("inf")):
        raise WscError(f"--tolerance {tolerance} is not a factor of the derived error bound; give a number of 0 or "
                       f"more (default {DEFAULT_TOLERANCE:g})")
    if inputs is not None and not Path(inputs).is_file():
        raise WscError(f"--inputs {inputs} does not exist; give a safetensors file of the program's inputs")
    if outputs is not None:
        _check_outputs_path(Path(outputs))

    loaded = program_json.load(out)
    program = loaded.program
    recorded = loaded.weights
    dtype = weights_dtype or str(recorded["dtype"])  # the compile's, checked when program.json was read
    reference = _read_reference(out, loaded)
    arrays = _inputs(program, inputs, reference)
    with _store(loaded, weights, random_weights, dtype) as store:
        digest = values_digest(store, streamed_keys(program))
        with progress.stage(f"running {program.model_name} ({len(program.layers)} layers)"):
            try:  # the lowerings check what the IR's invariants cannot: each kernel's operands against its op
                executor = Executor(program, store, prefetch=True)
            except (ValueError, AssertionError, KeyError, IndexError, TypeError) as error:
                problem = str(error).splitlines()[0][:80] if str(error) else type(error).__name__
                raise WscError(f"{loaded.path}: a kernel cannot be generated from it ({problem}); compile the "
                               "model again") from None
            start = time.perf_counter()
            results = executor.run(arrays)
            seconds = time.perf_counter() - start
        streamed = store.streamed_bytes
    if outputs is not None:
        path = Path(outputs)
        named = dict(zip(program.graph.outputs, results, strict=True))
        with tempfile.TemporaryDirectory(prefix="wsc-outputs-") as tmp:
            data = write_store(Path(tmp) / path.name, named).read_bytes()
        try:  # written under a temporary name and renamed: never half a file
            write_atomic(path, data)
        except OSError as error:
            raise WscError(f"cannot write --outputs {path} ({error.strerror or type(error).__name__}); give a file "
                           "you can write") from None
    verification = _verify(loaded, results, digest, reference, inputs is None or _same(arrays, reference),
                           tolerance if tolerance is not None else DEFAULT_TOLERANCE, dtype)
    return RunOutcome(loaded, results, digest, verification, seconds, streamed)


def _check_outputs_path(path: Path) -> None:
    if path.suffix != ".safetensors":
        raise WscError(f"--outputs {path} is not a .safetensors file; give a path ending in .safetensors")
    if path.is_dir():
        raise WscError(f"--outputs {path} is a folder; give the path of a .safetensors file")
    problem = unwritable(path.parent)
    if problem:
        raise WscError(f"--outputs {path} cannot be written: {problem}; give a file you can write")


def _read_reference(out: Path, loaded: program_json.Loaded) -> dict[str, np.ndarray] | None:
    """The recorded capture input and eager outputs, by name, its bytes held to program.json's sha256."""
    record = loaded.reference
    if record is None:
        return None
    path = out / record["file"]
    if Path(record["file"]).name != record["file"] or not path.is_file():
        raise WscError(f"{path}: no such file, though {loaded.path.name} records it; compile the model again")
    if hashlib.sha256(path.read_bytes()).hexdigest() != record["sha256"]:
        raise WscError(f"{path} was changed after it was written (its sha256 does not match {loaded.path.name}'s); "
                       "compile the model again")
    tensors = read_tensors(path)
    wanted = [*record["inputs"], *record["outputs"]]
    missing = [name for name in wanted if name not in tensors]
    if missing:
        raise WscError(f"{path} holds no tensor {missing[0]}; compile the model again")
    return {name: tensors[name] for name in wanted}


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a small safetensors file in its own dtype (an integer input stays an integer)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        problem = str(error).splitlines()[0][:80] if str(error) else type(error).__name__
        raise WscError(f"{path} is not a readable safetensors file ({problem}); give one written by safetensors"
                       ) from None


def _inputs(program: Program, inputs: str | Path | None, reference: dict[str, np.ndarray] | None) -> list[np.ndarray]:
    """The program's inputs: from `inputs` (a tensor per input, under its name), else the recorded ones."""
    graph = program.graph
    expected = [(node.name, node.dtype, program.step_input_shape(node.name)) for node in graph.inputs]
    listing = ", ".join(f"{name} {dtype}{list(shape)}" for name, dtype, shape in expected)
    if inputs is None:
        if reference is None:
            raise WscError(f"the compile recorded no inputs to run on (it did not verify the program); give --inputs "
                           f"FILE.safetensors holding {listing}")
        return [reference[f"input.{name}"] for name, _, _ in expected]
    given = read_tensors(Path(inputs))
    missing = [name for name, _, _ in expected if name not in given]
    if missing:
        raise WscError(f"--inputs {inputs} holds no tensor {missing[0]}; give one tensor per input: {listing}")
    arrays = []
    for name, dtype, shape in expected:
        value = given[name]
        if tuple(value.shape) != tuple(shape) or value.dtype != BY_NAME[dtype].numpy:
            raise WscError(f"--inputs {inputs}: {name} is {value.dtype}{list(value.shape)}, the program takes "
                           f"{dtype}{list(shape)}; give inputs of the compiled shape and dtype")
        arrays.append(np.ascontiguousarray(value))
    return arrays


def _same(arrays: list[np.ndarray], reference: dict[str, np.ndarray] | None) -> bool:
    if reference is None:
        return False
    recorded = [v for k, v in reference.items() if k.startswith("input.")]
    return len(recorded) == len(arrays) and all(np.array_equal(a, b) for a, b in zip(arrays, recorded, strict=True))


@contextmanager
def _store(loaded: program_json.Loaded, weights: str | Path | None, random_weights: int | None,
           dtype: str) -> Iterator[WeightStore]:
    """The store the run streams from, in `dtype`, every weight of the program bound to its tensor there and
    its shape checked against the program's, before anything runs."""
    program = loaded.program
    with tempfile.TemporaryDirectory(prefix="wsc-run-store-") as tmp:
        if random_weights is not None:
            with progress.stage(f"drawing the random weights of seed {random_weights}"):
                path = program_json.write_random_weights(loaded.tensors, Path(tmp) / "weights.safetensors",
                                                         random_weights)
        else:
            path = Path(weights)  # type: ignore[arg-type]  # one of the two is given (checked by run_folder)
        tensors = [(t["key"], tuple(t["shape"])) for t in loaded.tensors]
        refuse_foreign_store(path, tensors, _aliases(loaded.tensors), kind="weight", holder="the program",
                             fix="the compiled model")
        store = WeightStore(in_dtype(path, dtype, Path(tmp)))
        try:
            bind(program, loaded.tensors, store)
            yield store
        finally:
            store.close()


def _aliases(tensors: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {t["key"]: list(t["names"]) for t in tensors}


def bind(program: Program, tensors: list[dict[str, Any]], store: WeightStore) -> None:
    """Point each weight of the program at its tensor in `store` (a checkpoint may name it differently)."""
    available, aliases = set(store.keys()), _aliases(tensors)
    for node in program.graph.params:
        node.attrs["key"] = store_key(node.attrs["key"], aliases, available, store.path)


def _verify(loaded: program_json.Loaded, outputs: list[np.ndarray], digest: str,
            reference: dict[str, np.ndarray] | None, same_inputs: bool, tolerance: float,
            dtype: str) -> dict[str, Any]:
    """The run's outputs held to eager's recorded ones when it ran what the compile verified; else why not."""
    recorded = loaded.weights
    if reference is None:
        return {"status": "none", "note": "the compile recorded no eager outputs to hold the run to"}
    if not same_inputs:
        return {"status": "none", "note": "these inputs are not the capture input the compile recorded eager's "
                                          "outputs for"}
    if digest != recorded.get("sha256"):
        return {"status": "none", "note": "these weights are not the ones the compile verified with (their "
                                          "values' digest differs)"}
    graph = loaded.program.graph
    expected = [reference[f"output.{name}"] for name in graph.outputs]
    return checks.verify_outputs(loaded.program, expected, outputs, tolerance, dtype)


def _print_summary(outcome: RunOutcome, args: argparse.Namespace) -> None:
    loaded, program = outcome.loaded, outcome.loaded.program
    kernels = sum(len(layer.kernels) for layer in program.layers)
    print(f"wsc run: {program.model_name} from {args.out} (program {loaded.sha256[:12]}, {len(program.layers)} "
          f"layers, {kernels} kernels, regenerated from its IR)")
    where = f"random, seed {args.random_weights}" if args.random_weights is not None else str(args.weights)
    same = "the compile's" if outcome.weights_digest == loaded.weights.get("sha256") else "not the compile's"
    print(f"  weights       {where} (sha256 {outcome.weights_digest[:12]}, {same})")
    shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in zip(program.graph.outputs, outcome.outputs,
                                                                           strict=True))
    print(f"  run           {outcome.seconds:.2f} s, {outcome.streamed_bytes / 1e6:,.1f} MB streamed: {shapes}")
    v = outcome.verification
    if v["status"] == "none":
        print(f"  verification  none: {v['note']}")
    else:
        err = "nan" if v["max_abs_err"] is None else f"{v['max_abs_err']:.2e}"
        ratio = v.get("error_ratio")
        share = f"at {ratio:.2g} of its bound" if ratio is not None else "off where the bound is 0"
        print(f"  verification  {v['status']}: worst element {share} (max abs error {err}) vs the eager PyTorch "
              "outputs the compile recorded")
    if args.outputs:
        print(f"  wrote         {args.outputs}")
