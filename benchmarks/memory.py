"""Peak memory of wsc's weight-streaming run: against eager PyTorch where eager can load the model, and, where it
cannot, on a model bigger than the machine's memory, checked layer by layer against PyTorch's own modules.

    .venv/bin/python benchmarks/memory.py [--size 1.3B] [--seq 128] [--workdir DIR] [--mode auto|eager|layers]
                                          [--max-rss-gb 6]

--mode eager (what `auto` picks when twice the fp32 weights fit in 60% of the RAM, wsc.api.weights_fit, the rule
by which a compile decides whether it can verify: 1.3B on a 24 GB machine). Writes the model's weights (random,
seeded) to a safetensors file once, then measures, each in a fresh process so neither sees the other's memory:
- wsc: `wsc compile examples/cerebras_gpt.py --weights FILE`: the model is built without weights and the
  compiled program streams them from the file; its peak RSS is taken right after the run, before the eager
  reference of its verification loads the weights;
- eager: the same model loaded from the same file into PyTorch and run forward once.
Prints both peaks, their ratio, and the compiled run's max abs error against eager.

--mode layers (what `auto` picks otherwise: 6.7B, whose 27 GB of fp32 weights eager PyTorch cannot load in
24 GB). Each step in its own process, its peak RSS taken from os.wait4:
1. compile: `wsc compile ... --no-verify`, the model built on the meta device;
2. store: the tensors program.json lists, seeded random (wsc.runtime.random_weights) and drawn one at a time,
   written as an fp16 safetensors file; kept in --workdir and reused while its header matches; refused (exit 2)
   when the disk has no room for it;
3. run: the program on that store, as `wsc run` runs it (program.json, WeightStore, Executor with prefetch),
   each layer's output recorded through the executor's observer; its peak RSS must stay under --max-rss-gb
   (exit 1 if not);
4. check: for each layer, PyTorch's own modules of the example (wte + wpe, a Block, ln_f + lm_head), built on
   the meta device and given exactly the tensors the layer streams (read from the store by safetensors, fp16 to
   fp32 as the runtime converts them), run on the wsc run's input to that layer, so every layer is checked by
   itself; its output is held to wsc's within the bound wsc.verification derives for the layer's own
   arithmetic (exit 1 if any layer is past it, naming the first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from wsc.core.program import Layer, Program

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cerebras_gpt.py"
SIZES = ("111M", "256M", "590M", "1.3B", "2.7B", "6.7B", "13B")  # examples/cerebras_gpt.py's, without importing it
MAX_SEQ = 2048
STORE_SEED = 0
# Room left on the disk beyond the store itself: the compiled folder (17 MB of placement.json at 6.7B), the
# recorded layer outputs and the file system's own reserve.
DISK_MARGIN_BYTES = 512 << 20
EXIT_FAIL = 1
EXIT_BAD_INPUT = 2

WRITE = """
import sys, importlib.util
spec = importlib.util.spec_from_file_location("gpt", sys.argv[1]); gpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpt)
from safetensors.torch import save_model
save_model(gpt.build_model(size=sys.argv[2], seq=int(sys.argv[3]), seed=5), sys.argv[4])
"""

EAGER = """
import sys, resource, importlib.util, torch
spec = importlib.util.spec_from_file_location("gpt", sys.argv[1]); gpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpt)
from safetensors.torch import load_file
from wsc.frontend.meta import empty_weights
with empty_weights():
    model = gpt.build_model(size=sys.argv[2], seq=int(sys.argv[3]))
state = load_file(sys.argv[4])  # the tied embedding is saved once, under one of its two names
tied = state.get("wte.weight", state.get("lm_head.weight"))
state.update({"wte.weight": tied, "lm_head.weight": tied})
model.load_state_dict(state, strict=True, assign=True)
with torch.no_grad():
    model(*gpt.example_inputs(size=sys.argv[2], seq=int(sys.argv[3])))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

# Forks and execs the command and reports its peak RSS (ru_maxrss from wait4). The command is not started
# straight from the caller: Linux carries a process's peak RSS across exec into the new program, so a child
# of a large process (a test runner holding torch) would report at least its parent's size.
LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write(f"{code} {usage.ru_maxrss * 1024}")
sys.exit(code if code >= 0 else 1)
"""

# Runs one of this file's functions in a fresh interpreter, its string arguments from the command line.
WORKER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("wsc_memory_benchmark", sys.argv[1])
module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(module)
sys.exit(getattr(module, sys.argv[2])(*sys.argv[3:]))
"""


class BadInput(Exception):
    """A problem with what the command line asked for: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage and message
        raise BadInput(f"{message}; see --help")


# ------------------------------------------------------------------------------------------ processes


@dataclass
class Measured:
    returncode: int
    peak_rss_bytes: int
    seconds: float


def measured(command: Sequence[str], log: Path | None = None) -> Measured:
    """Run `command` in its own process, its output to `log` if given; its exit code, its peak RSS (from wait4)
    and its wall time."""
    with tempfile.TemporaryDirectory(prefix="wsc-memory-rss-") as tmp:
        report = Path(tmp) / "rusage"
        start = time.perf_counter()
        with open(log, "w") if log is not None else contextlib.nullcontext() as out:
            subprocess.run([sys.executable, "-c", LAUNCH, str(report), *command], cwd=ROOT, check=False,
                           stdout=out, stderr=None if out is None else subprocess.STDOUT)
        seconds = time.perf_counter() - start
        code, peak = (int(word) for word in report.read_text().split())
    return Measured(code, peak, seconds)


def worker(function: str, *args: object) -> list[str]:
    """The command that runs this file's `function` on `args` (as strings) in a fresh interpreter."""
    return [sys.executable, "-c", WORKER, str(Path(__file__).resolve()), function, *(str(a) for a in args)]


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


# ------------------------------------------------------------------------------------------ the layers


def layer_boundaries(program: Program) -> list[tuple[Layer, list[str], list[str]]]:
    """Each layer with the values it reads from before it (the graph's inputs or earlier layers' outputs) and
    the values it hands on (read by a later layer, or an output of the graph)."""
    graph = program.graph
    computed_in = {name: layer.index for layer in program.layers for name in layer.nodes}
    read_later: set[str] = set(graph.outputs)
    for layer in program.layers:
        for name in layer.nodes:
            read_later.update(i for i in graph[name].inputs if computed_in.get(i, layer.index) < layer.index)
    rows = []
    for layer in program.layers:
        mine = set(layer.nodes)
        inputs = list(dict.fromkeys(i for name in layer.nodes for i in graph[name].inputs
                                    if i not in mine and graph[i].op not in ("param", "const")))
        rows.append((layer, inputs, [name for name in layer.nodes if name in read_later]))
    return rows


def layer_terms(program: Program, layer: Layer) -> dict[str, int]:
    """terms(v) of wsc.verification for each value of `layer`, counted from the layer's own inputs: the fp32
    terms summed along its longest path inside the layer, what a layer fed the same input differs by."""
    from wsc import ops

    graph = program.graph
    terms: dict[str, int] = {}
    for name in layer.nodes:
        node = graph[name]
        upstream = max((terms.get(i, 0) for i in node.inputs), default=0)
        terms[name] = upstream + (ops.kernel(node.op).summed_terms(graph, node) if node.is_kernel else 0)
    return terms


def _runtime() -> tuple[Any, Any, Any, Any]:
    """What the run imports, apart from numpy: also what the baseline process imports."""
    from wsc.artifacts import program_json
    from wsc.run import bind
    from wsc.runtime.executor import Executor
    from wsc.runtime.weight_store import WeightStore

    return program_json, bind, Executor, WeightStore


def baseline() -> int:
    """Import what `run_layers` imports, and nothing more: the interpreter's share of the run's peak RSS."""
    import numpy  # noqa: F401
    from safetensors.numpy import load_file, save_file  # noqa: F401

    _runtime()
    return 0


def run_layers(folder: str | Path, store: str | Path, inputs: str | Path, record: str | Path) -> int:
    """Run the program of the compiled `folder` on the weight `store`, as `wsc run` does (weights bound to the
    store, the next layer's prefetched), on the tensors of `inputs`; write each layer's outputs to `record`."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    program_json, bind, Executor, WeightStore = _runtime()
    loaded = program_json.load(folder)
    program = loaded.program
    given = load_file(str(inputs))
    arrays = [given[node.name] for node in program.graph.inputs]
    handed_on = {name for _, _, outputs in layer_boundaries(program) for name in outputs}
    outputs: dict[str, np.ndarray] = {}
    weights = WeightStore(store)
    try:
        bind(program, loaded.tensors, weights)
        start = time.perf_counter()
        executor = Executor(program, weights, prefetch=True)
        built = time.perf_counter() - start

        def keep(layer: Layer, name: str, value: np.ndarray) -> None:
            if name in handed_on:
                outputs[name] = np.array(value, dtype=np.float32)  # its own copy: the executor frees its arrays

        executor.observer = keep
        start = time.perf_counter()
        executor.run(arrays)
        ran = time.perf_counter() - start
    finally:
        weights.close()
    stats = {"build_seconds": built, "run_seconds": ran, "streamed_bytes": weights.streamed_bytes,
             "peak_resident_layers": weights.peak_resident_layers,
             "peak_resident_weight_bytes": weights.peak_resident_bytes}
    save_file(outputs, str(record), metadata={"stats": json.dumps(stats)})
    return 0


# ------------------------------------------------------------------------------------------ the check


def stage(model: Any, layer_name: str) -> tuple[list[Any], Callable[..., Any]]:
    """The example's modules that compute the program's layer `layer_name`, and how they are called: the
    pieces of CerebrasGPT.forward, one streaming layer each."""
    import torch

    if layer_name == "embed":
        return [model.wte, model.wpe], lambda ids: model.wte(ids) + model.wpe(torch.arange(ids.shape[1]))
    if layer_name == "head":
        return [model.ln_f, model.lm_head], lambda x: model.lm_head(model.ln_f(x))
    if layer_name.startswith("blocks."):
        block = model.get_submodule(layer_name)
        return [block], block
    raise ValueError(f"layer {layer_name} is none of Cerebras-GPT's embed, blocks.N and head")


def check_layers(folder: str | Path, store: str | Path, inputs: str | Path, record: str | Path, size: str,
                 seq: str | int, result: str | Path) -> int:
    """Hold each layer's outputs in `record` (written by `run_layers`) to PyTorch's modules for that layer, given
    the tensors the layer streams from `store` and the inputs it got in the wsc run; write the verdict of every
    layer to `result` (JSON), print a summary, and return 1 if any layer is past its bound."""
    import torch
    from safetensors import safe_open
    from safetensors.numpy import load_file
    from torch import nn

    from wsc.artifacts import program_json
    from wsc.frontend.meta import empty_weights
    from wsc.options import DEFAULT_TOLERANCE
    from wsc.verification import compare, relative_bound

    with empty_weights():
        model = _example().build_model(size=size, seq=int(seq))
    loaded = program_json.load(folder)
    program, graph = loaded.program, loaded.program.graph
    key_of = {name: t["key"] for t in loaded.tensors for name in (t["key"], *t["names"])}
    values = {**load_file(str(inputs)), **load_file(str(record))}
    qualified = {id(module): name for name, module in model.named_modules()}
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for layer, layer_inputs, layer_outputs in layer_boundaries(program):
        if len(layer_outputs) != 1:
            raise ValueError(f"layer {layer.name} hands on {len(layer_outputs)} values; a stage of the example "
                             "computes one")
        modules, forward = stage(model, layer.name)
        params = [(module, local, f"{qualified[id(module)]}.{local}".lstrip("."))
                  for module in modules for local, _ in module.named_parameters(remove_duplicate=False)]
        streamed = {graph[w].attrs["key"] for w in layer.weights}
        fed = {key_of[full] for _, _, full in params}
        if fed != streamed:  # the modules must be given exactly what the layer streams, no more, no less
            raise ValueError(f"layer {layer.name} streams {sorted(streamed)} but its modules hold {sorted(fed)}")
        # Opened for one layer at a time: the store's pages read stay mapped, and resident, until it is closed.
        with safe_open(str(store), framework="pt") as tensors:
            for module, local, full in params:
                owner, _, leaf = local.rpartition(".")
                value = tensors.get_tensor(key_of[full]).to(torch.float32)
                setattr(module.get_submodule(owner), leaf, nn.Parameter(value, requires_grad=False))
        with torch.no_grad():
            want = forward(*(torch.from_numpy(values[name]) for name in layer_inputs)).numpy()
        for module, local, _ in params:  # back on the meta device: only one layer's weights are ever held
            owner, _, leaf = local.rpartition(".")
            held = getattr(module.get_submodule(owner), leaf)
            setattr(module.get_submodule(owner), leaf, nn.Parameter(held.to("meta"), requires_grad=False))
        name = layer_outputs[0]
        terms = layer_terms(program, layer)[name]
        # The weights are the same fp32 values on both sides and so is the layer's input: the bound has no
        # term for the weights' rounding (fp32's is 0) nor for anything upstream of the layer.
        verdict = compare(values[name], want, relative_bound(terms, 0, "fp32", DEFAULT_TOLERANCE))
        rows.append({"layer": layer.name, "value": name, "terms": terms, **{k: verdict[k] for k in (
            "status", "error_ratio", "max_abs_err", "allowed_abs_err", "worst_index")}})
        del want
    seconds = time.perf_counter() - start
    failed = [row for row in rows if row["status"] != "pass"]
    Path(result).write_text(json.dumps({"status": "fail" if failed else "pass", "layers": rows,
                                        "seconds": seconds}, indent=1))
    print(summarise(rows))
    return EXIT_FAIL if failed else 0


def _ratio(row: dict[str, Any]) -> float:
    return math.inf if row["error_ratio"] is None else float(row["error_ratio"])


def summarise(rows: list[dict[str, Any]]) -> str:
    """The layer-by-layer verdict in a few lines: the worst layer, the spread over the blocks, every failure."""
    failed = [row for row in rows if row["status"] != "pass"]
    worst = max(rows, key=_ratio)
    blocks = sorted((row for row in rows if row["layer"].startswith("blocks.")), key=_ratio)
    lines = [f"layer-by-layer check: {'FAIL' if failed else 'pass'}, {len(rows) - len(failed)} of {len(rows)} "
             f"layers within their bound; worst {worst['layer']} at {_ratio(worst):.3g} of its bound (max abs "
             f"error {worst['max_abs_err'] or 0:.2e}, allowed {worst['allowed_abs_err'] or 0:.2e})"]
    spread = [f"{row['layer']} {_ratio(row):.3g}" for row in rows if not row["layer"].startswith("blocks.")]
    if blocks:
        spread.insert(1, f"{len(blocks)} blocks {_ratio(blocks[0]):.3g} .. {_ratio(blocks[len(blocks) // 2]):.3g} "
                         f"(median) .. {_ratio(blocks[-1]):.3g} ({blocks[-1]['layer']})")
    lines.append("  error / bound: " + ", ".join(spread))
    lines += [f"  {row['layer']} FAILS: worst element {row['worst_index']} at {_ratio(row):.3g} of its bound "
              f"(error {row['max_abs_err'] or math.inf:.2e}, allowed {row['allowed_abs_err'] or 0:.2e})"
              for row in failed]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the store


def store_matches(path: Path, tensors: list[dict[str, Any]]) -> bool:
    """Whether the store at `path` holds every tensor of `tensors`, in its shape, in fp16, and nothing else. The
    header is enough: a seeded tensor's values depend on the seed (in the file's name), its name and its shape
    alone, and a store is written under a temporary name and renamed, so a present one is whole."""
    import struct

    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        if path.stat().st_size != 8 + length + end:
            return False
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False
    header.pop("__metadata__", None)
    return {k: (e.get("dtype"), e.get("shape")) for k, e in header.items()} == {
        t["key"]: (_stored_code(t["dtype"]), list(t["shape"])) for t in tensors}


def _stored_code(ir_dtype: str) -> str:
    """The safetensors code an fp16 store holds a tensor of IR dtype `ir_dtype` under: F16 for a float, an
    integer's own."""
    from wsc.core.dtypes import BY_NAME

    return "F16" if ir_dtype.startswith(("float", "bfloat")) else str(BY_NAME[ir_dtype].safetensors)


def fp16_bytes(tensors: list[dict[str, Any]]) -> int:
    return sum(2 * math.prod(t["shape"]) for t in tensors)


def write_weights(folder: str | Path, store: str | Path, seed: str | int) -> int:
    """The seeded random weights of every tensor program.json lists, written to `store` in fp16, drawn and
    converted one tensor at a time."""
    from wsc.artifacts import program_json
    from wsc.runtime.random_weights import RandomWeights
    from wsc.runtime.weight_store import write_store

    tensors = program_json.load(folder).tensors
    write_store(store, RandomWeights({t["key"]: t["shape"] for t in tensors}, int(seed)), dtype="fp16")
    return 0


def check_disk(where: Path, needed: int) -> None:
    """Refuse, naming the shortfall, when the disk of `where` (a folder, made later if it does not exist yet) has
    fewer than `needed` bytes free."""
    existing = next(p for p in (where.absolute(), *where.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise BadInput(f"the fp16 weight store needs {_gb(needed)} free in {where}, which has {_gb(free)}; give "
                       "--workdir on a disk with room")


# ------------------------------------------------------------------------------------------ the modes


def compile_folder(size: str, seq: int, out: Path, log: Path) -> Measured:
    return measured([sys.executable, "-m", "wsc.cli", "compile", str(EXAMPLE), "--target", "cs2-sim",
                     "--model-arg", f"size={size}", "--model-arg", f"seq={seq}", "--no-verify", "--out", str(out)],
                    log)


def write_inputs(folder: Path, size: str, seq: int, path: Path) -> None:
    """The example's input, under the names of the program's inputs, for the run and the check."""
    from safetensors.numpy import save_file

    from wsc.artifacts import program_json
    from wsc.frontend.capture import to_numpy

    gpt = _example()
    program = program_json.load(folder).program
    arrays = [to_numpy(x) for x in gpt.example_inputs(size=size, seq=seq)]
    save_file({node.name: a for node, a in zip(program.graph.inputs, arrays, strict=True)}, str(path))


def _example() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("cerebras_gpt", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layers_mode(size: str, seq: int, work: Path, max_rss: float) -> int:
    """Compile, write the store, run and check layer by layer, each step in its own process (the module's
    docstring); print each step's time and peak RSS and a summary."""
    from wsc.frontend.meta import empty_weights, physical_memory_bytes

    with empty_weights():
        model = _example().build_model(size=size, seq=seq)
    params = sum(p.numel() for p in model.parameters())  # the tied embedding once, as the store holds it
    store = work / f"cerebras-gpt-{size}-fp16-seed{STORE_SEED}.safetensors"
    if not store.exists():  # checked before anything else runs; a store already written needs no room
        check_disk(work, 2 * params + DISK_MARGIN_BYTES)
    work.mkdir(parents=True, exist_ok=True)
    print(f"Cerebras-GPT {size}, seq {seq}: {params / 1e9:.2f}B parameters, {_gb(4 * params)} in fp32 "
          f"(this machine has {_gb(physical_memory_bytes())} of RAM)")

    folder = work / "wsc_out"
    log = work / "compile.log"
    step = compile_folder(size, seq, folder, log)
    if step.returncode:
        print(f"the compile failed (exit {step.returncode}); its output is in {log}", file=sys.stderr)
        return step.returncode
    print(f"  compile  {step.seconds:7.1f} s  peak RSS {_gb(step.peak_rss_bytes)}  (built on the meta device, "
          "--no-verify)")
    from wsc.artifacts import program_json

    tensors = program_json.load(folder).tensors
    if store_matches(store, tensors):
        print(f"  store    {'':7}    reused {store} ({_gb(store.stat().st_size)})")
    else:
        store.unlink(missing_ok=True)  # a store of this name whose header does not match: stale
        check_disk(work, fp16_bytes(tensors) + DISK_MARGIN_BYTES)
        step = measured(worker("write_weights", folder, store, STORE_SEED))
        if step.returncode:
            print(f"writing the store failed (exit {step.returncode})", file=sys.stderr)
            return step.returncode
        print(f"  store    {step.seconds:7.1f} s  peak RSS {_gb(step.peak_rss_bytes)}  wrote {store} "
              f"({_gb(store.stat().st_size)}, fp16, seed {STORE_SEED})")
    inputs, record, result = work / "inputs.safetensors", work / "layer_outputs.safetensors", work / "check.json"
    write_inputs(folder, size, seq, inputs)

    run = measured(worker("run_layers", folder, store, inputs, record))
    if run.returncode:
        print(f"the wsc run failed (exit {run.returncode})", file=sys.stderr)
        return run.returncode
    from safetensors import safe_open

    with safe_open(str(record), framework="numpy") as f:
        stats = json.loads(f.metadata()["stats"])
    within = run.peak_rss_bytes <= max_rss
    print(f"  wsc run  {run.seconds:7.1f} s  peak RSS {_gb(run.peak_rss_bytes)}  (limit {_gb(max_rss)}: "
          f"{'within' if within else 'OVER'}); kernels built in {stats['build_seconds']:.1f} s, forward "
          f"{stats['run_seconds']:.1f} s, {_gb(stats['streamed_bytes'])} streamed, at most "
          f"{stats['peak_resident_layers']} layers ({_gb(stats['peak_resident_weight_bytes'])}) of weights held")

    result.unlink(missing_ok=True)
    log = work / "check.log"
    check = measured(worker("check_layers", folder, store, inputs, record, size, seq, result), log)
    if not result.exists():
        print(f"the layer-by-layer check failed to run (exit {check.returncode}); its output is in {log}",
              file=sys.stderr)
        return check.returncode or EXIT_FAIL
    verdict = json.loads(result.read_text())
    print(f"  check    {check.seconds:7.1f} s  peak RSS {_gb(check.peak_rss_bytes)}  (PyTorch's modules, one "
          "layer's weights at a time)")
    print("\n".join("  " + line for line in summarise(verdict["layers"]).splitlines()))

    layers = len(verdict["layers"])
    activations = max(activation_bytes(program_json.load(folder).program))
    print(f"\nCerebras-GPT {size}, seq {seq}, {layers} streaming layers; weight store {_gb(store.stat().st_size)} "
          "(fp16) on disk")
    print(f"{'':34}{'peak RSS':>10}")
    print(f"{'wsc (weight streaming)':34}{_gb(run.peak_rss_bytes):>10}")
    print(f"{'PyTorch, layer by layer (check)':34}{_gb(check.peak_rss_bytes):>10}")
    why = "it cannot load here" if 4 * params > physical_memory_bytes() else "not run in this mode"
    print(f"{'eager PyTorch, whole model':34}{'>= ' + _gb(4 * params + activations):>10}  (estimate: its fp32 "
          f"weights {_gb(4 * params)} plus activations; {why})")
    print(f"verification: {verdict['status']}, every layer checked by itself against PyTorch fed the same "
          "streamed weights and inputs")
    if not within:
        return EXIT_FAIL
    return EXIT_FAIL if verdict["status"] != "pass" else 0


def activation_bytes(program: Program) -> list[int]:
    """Per layer, the bytes of the values it computes and reads from before it: the executor holds them all
    until the layer ends."""
    graph = program.graph
    rows = []
    for layer, inputs, _ in layer_boundaries(program):
        rows.append(sum(graph[name].nbytes for name in [*inputs, *layer.nodes] if graph[name].op != "const"))
    return rows


def eager_mode(size: str, seq: int, work: Path) -> int:
    weights = work / f"cerebras-gpt-{size}.safetensors"
    if not weights.exists():
        subprocess.run([sys.executable, "-c", WRITE, str(EXAMPLE), size, str(seq), str(weights)], check=True)
    out = work / "wsc_out"
    subprocess.run([sys.executable, "-m", "wsc.cli", "compile", str(EXAMPLE), "--target", "cs2-sim",
                    "--model-arg", f"size={size}", "--model-arg", f"seq={seq}",
                    "--weights", str(weights), "--out", str(out)], check=True, cwd=ROOT)
    report = json.loads((out / "report.json").read_text())
    eager = subprocess.run([sys.executable, "-c", EAGER, str(EXAMPLE), size, str(seq), str(weights)],
                           check=True, capture_output=True, text=True)
    eager_peak = int(eager.stdout.strip().splitlines()[-1])
    wsc_peak = report["memory"]["peak_rss_bytes"]
    v = report["verification"]
    print(f"\nCerebras-GPT {size}, seq {seq}, weights {weights.stat().st_size / 1e9:.2f} GB (fp32)")
    print(f"{'':24}{'peak RSS':>12}")
    print(f"{'wsc (weight streaming)':24}{wsc_peak / 1e9:>10.2f} GB")
    print(f"{'eager PyTorch':24}{eager_peak / 1e9:>10.2f} GB")
    print(f"wsc / eager = {wsc_peak / eager_peak:.3f}; verification {v['status']}, max abs error "
          f"{v['max_abs_err']:.2e}, {v['error_ratio']:.2g} of its bound (tolerance {v['tolerance']:g})")
    return EXIT_FAIL if v["status"] == "fail" else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(description=(__doc__ or "").split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--size", default="1.3B", help=f"one of {', '.join(SIZES)}")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--workdir", help="where to keep the weights (default: a temporary folder)")
    parser.add_argument("--mode", default="auto", help="eager (wsc against eager PyTorch), layers (wsc alone, "
                        "checked layer by layer) or auto (layers when the model's weights do not fit in memory)")
    parser.add_argument("--max-rss-gb", type=float, default=6.0, help="the wsc run's limit in --mode layers")
    try:
        args = parser.parse_args(argv)
        if args.size not in SIZES:
            raise BadInput(f"unknown --size {args.size}; choose one of {', '.join(SIZES)}")
        if not 1 <= args.seq <= MAX_SEQ:
            raise BadInput(f"--seq {args.seq} is out of range; give 1 to {MAX_SEQ}")
        if args.mode not in ("auto", "eager", "layers"):
            raise BadInput(f"unknown --mode {args.mode}; choose auto, eager or layers")
        if not 0 < args.max_rss_gb < math.inf:
            raise BadInput(f"--max-rss-gb {args.max_rss_gb} is not a limit; give a number of gigabytes above 0")
        if args.workdir and Path(args.workdir).exists() and not Path(args.workdir).is_dir():
            raise BadInput(f"--workdir {args.workdir} is a file; give a folder")
        mode = args.mode
        if mode == "auto":
            from wsc.api import weights_fit
            from wsc.frontend.meta import empty_weights

            with empty_weights():
                mode = "eager" if weights_fit(_example().build_model(size=args.size, seq=args.seq)) else "layers"
        with tempfile.TemporaryDirectory(prefix="wsc-memory-") as tmp:
            work = Path(args.workdir or tmp)
            if mode == "eager":
                work.mkdir(parents=True, exist_ok=True)
                return eager_mode(args.size, args.seq, work)
            return layers_mode(args.size, args.seq, work, args.max_rss_gb * 1e9)
    except BadInput as problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
