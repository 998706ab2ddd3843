"""program.json: the compiled program's IR as data, which `wsc run` executes again without the model or its code.

A compile writes it beside report.json. It holds what running the program needs and nothing that could run
by itself: the legal graph (every node's op, inputs, shape, dtype and attributes, constants as base64 bytes),
the streaming layers with each kernel's cut, the target, the batching of a step, the weights the program
streams (names and shapes only: weights are never copied into the folder) and, where the compile verified
the program, the name of the file holding the capture input and eager PyTorch's outputs for it.

Reading it is the other half: `load` accepts only a document of this format and version whose content
hash (sha256 over its canonical JSON, every key but `sha256`) is right, then checks every field's type, every
op against the op table, and the graph, layers and plans with the invariants the passes keep, so what it
returns is a Program the executor can run as if the compiler had just made it. Its kernels are generated
again from that IR by the op table's lowerings. Nothing in the folder is imported, executed or unpickled.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsc import ops
from wsc.core.dtypes import BYTES as DTYPE_BYTES
from wsc.core.errors import WscError
from wsc.core.ir import SOURCE_OPS, Graph, IRError, Node
from wsc.core.program import Cut, KernelPlan, Layer, Program
from wsc.frontend.capture import Captured
from wsc.runtime.random_weights import write_random_store
from wsc.runtime.weight_store import STORE_DTYPES
from wsc.targets import Target

FORMAT = "wsc-program"
VERSION = 1
FILE = "program.json"
REFERENCE_FILE = "reference.safetensors"  # the capture input and eager's outputs for it (safetensors, data only)

# The numpy dtypes an attribute or constant may hold: numbers and bools, never objects.
_ARRAY_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64"})


# ------------------------------------------------------------------------------------------------ writing


def _encode(value: Any) -> Any:
    """An attribute as JSON: numbers, bools, strings and lists as they are; a tuple, a dict, a float JSON cannot
    spell (inf, nan), a numpy scalar and an array as an object with one key naming what it is."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.name not in _ARRAY_DTYPES:
            raise TypeError(f"cannot write an array of dtype {value.dtype} into {FILE}")
        data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
        return {"array": {"dtype": value.dtype.name, "shape": list(value.shape),
                          "data": base64.b64encode(data).decode("ascii")}}
    if isinstance(value, np.generic):
        if value.dtype.name not in _ARRAY_DTYPES:
            raise TypeError(f"cannot write a scalar of dtype {value.dtype} into {FILE}")
        return {"scalar": {"dtype": value.dtype.name, "value": _encode(value.item())}}
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    raise TypeError(f"cannot write a {type(value).__name__} attribute into {FILE}")


def _node_json(node: Node) -> dict[str, Any]:
    return {"name": node.name, "op": node.op, "inputs": list(node.inputs), "shape": list(node.shape),
            "dtype": node.dtype, "attrs": {k: _encode(v) for k, v in node.attrs.items()}, "flops": node.flops,
            "bytes": node.bytes, "layer": node.layer, "module": node.module, "source": node.source,
            "holds": node.holds}


def _plan_json(plan: KernelPlan) -> dict[str, Any]:
    return {"node": plan.node, "rows": plan.rows, "cols": plan.cols,
            "cut": [plan.cut.row_blocks, plan.cut.col_blocks, plan.cut.k_splits], "h": plan.h, "w": plan.w,
            "sram_bytes_per_pe": plan.sram_bytes_per_pe, "k_dim": plan.k_dim}


def _target_json(target: Target) -> dict[str, Any]:
    fields = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)}
    fields["dead_pes"] = sorted([int(r), int(c)] for r, c in target.dead_pes)
    return fields


def captured_keys(program: Program, captured: Captured) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The store key each weight of `program` was captured under (a run binds it to its store again: verifying
    from a checkpoint may have renamed it), and the tensors the program streams, one per key in the order the
    graph first reads it: the key, every other name the model holds it under (a tied weight), its shape and
    dtype as the model holds it (a weight legalisation viewed in another shape keeps its own), and whether it is
    a parameter or a buffer."""
    origins = {n.name: n for n in captured.graph.params}
    keys: dict[str, str] = {}
    tensors: dict[str, dict[str, Any]] = {}
    for node in program.graph.params:
        origin = origins.get(node.name) or origins.get(node.holds)
        key = str(origin.attrs["key"]) if origin is not None else str(node.attrs["key"])
        keys[node.name] = key
        if key not in tensors:
            held = captured.weights.get(key)
            shape = list(held.shape) if held is not None else list(node.shape)
            tensors[key] = {"key": key, "names": [n for n in captured.aliases.get(key, []) if n != key],
                            "shape": shape, "dtype": node.dtype, "kind": str(node.attrs.get("kind", "parameter"))}
    return keys, list(tensors.values())


def write_random_weights(tensors: list[dict[str, Any]], path: Path, seed: int) -> Path:
    """A store at `path` of the seeded weights (wsc.runtime.random_weights) of `tensors`, as `captured_keys`
    lists them and program.json holds them: what a compile with --random-weights and `wsc run` both draw."""
    return write_random_store(path, {t["key"]: t["shape"] for t in tensors}, seed)


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes the content hash is taken over: the document without its `sha256`, keys sorted, no spaces."""
    body = {k: v for k, v in document.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def document(program: Program, captured: Captured, *, weights: dict[str, Any],
             reference: dict[str, Any] | None) -> dict[str, Any]:
    """program.json's content for `program` (compiled from `captured`): `weights` says what the compile ran on
    (source, seed, the digest of the values, the precision streamed) and `reference` names the capture input
    and eager outputs recorded beside it (or is None)."""
    graph = program.graph
    keys, tensors = captured_keys(program, captured)
    nodes = []
    for node in graph:
        entry = _node_json(node)
        if node.op == "param":
            entry["attrs"]["key"] = keys[node.name]
        nodes.append(entry)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": program.model_name,
        "target": _target_json(program.target),
        "dtype": program.dtype,
        "mode": program.mode,
        "tokens": program.tokens,
        "micro_batches": program.micro_batches,
        "systems": program.systems,
        "batched_inputs": list(program.batched_inputs),
        "nodes": nodes,
        "outputs": list(graph.outputs),
        "layers": [{"index": layer.index, "name": layer.name, "nodes": list(layer.nodes),
                    "weights": list(layer.weights), "store_bytes": layer.store_bytes,
                    "kernels": [_plan_json(plan) for plan in layer.kernels.values()]}
                   for layer in program.layers],
        "tensors": tensors,
        "weights": weights,
        "reference": reference,
    }
    doc["sha256"] = hashlib.sha256(canonical(doc)).hexdigest()
    return doc


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class Loaded:
    """A program read back from a folder, with the parts of its document the run reports on."""

    program: Program
    document: dict[str, Any]
    path: Path

    @property
    def sha256(self) -> str:
        return str(self.document["sha256"])

    @property
    def tensors(self) -> list[dict[str, Any]]:
        return list(self.document["tensors"])

    @property
    def weights(self) -> dict[str, Any]:
        return dict(self.document["weights"])

    @property
    def reference(self) -> dict[str, Any] | None:
        return self.document["reference"]


class _Reader:
    """Field checks that fail with one line naming the file, the field and the fix."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, problem: str) -> WscError:
        return WscError(f"{self.path}: {field} {problem}; compile the model again")

    def get(self, doc: Any, key: str, kind: type | tuple[type, ...], field: str = "") -> Any:
        where = f"{field}.{key}" if field else key
        if not isinstance(doc, dict) or key not in doc:
            raise self.fail(where, "is missing")
        value = doc[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(where, f"is {value!r}, not a {_kind_name(kind)}")
        if not isinstance(value, kind):
            raise self.fail(where, f"is {type(value).__name__}, not a {_kind_name(kind)}")
        return value

    def count(self, doc: Any, key: str, field: str = "", least: int = 0) -> int:
        value = self.get(doc, key, int, field)
        if value < least:
            raise self.fail(f"{field}.{key}" if field else key, f"is {value}, less than {least}")
        return int(value)

    def names(self, doc: Any, key: str, field: str) -> list[str]:
        values = self.get(doc, key, list, field)
        if not all(isinstance(v, str) for v in values):
            raise self.fail(f"{field}.{key}", "holds something that is not a name")
        return list(values)

    def shape(self, doc: Any, key: str, field: str) -> tuple[int, ...]:
        values = self.get(doc, key, list, field)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise self.fail(f"{field}.{key}", f"{values} is not a shape")
        return tuple(values)

    def value(self, encoded: Any, field: str) -> Any:
        """An attribute `_encode` wrote, decoded; anything else is refused."""
        if encoded is None or isinstance(encoded, (bool, str, int)):
            return encoded
        if isinstance(encoded, float):
            return encoded
        if isinstance(encoded, list):
            return [self.value(v, field) for v in encoded]
        if not isinstance(encoded, dict) or len(encoded) != 1:
            raise self.fail(field, "is not an attribute value wsc writes")
        (tag, inner), = encoded.items()
        if tag == "tuple" and isinstance(inner, list):
            return tuple(self.value(v, field) for v in inner)
        if tag == "dict" and isinstance(inner, dict):
            return {str(k): self.value(v, field) for k, v in inner.items()}
        if tag == "float" and inner in ("inf", "-inf", "nan"):
            return float(inner)
        if tag == "scalar" and isinstance(inner, dict) and inner.get("dtype") in _ARRAY_DTYPES:
            number = self.value(inner.get("value"), field)
            if isinstance(number, (bool, int, float)):
                return np.dtype(inner["dtype"]).type(number)
        if tag == "array" and isinstance(inner, dict) and inner.get("dtype") in _ARRAY_DTYPES:
            shape = self.shape(inner, "shape", field)
            data = inner.get("data")
            if not isinstance(data, str):
                raise self.fail(field, "holds an array without its data")
            try:
                raw = base64.b64decode(data.encode("ascii"), validate=True)
            except (ValueError, UnicodeEncodeError):
                raise self.fail(field, "holds an array whose data is not base64") from None
            dtype = np.dtype(inner["dtype"]).newbyteorder("<")
            if len(raw) != math.prod(shape) * dtype.itemsize:
                raise self.fail(field, f"holds {len(raw)} bytes for a {inner['dtype']} array of shape {list(shape)}")
            return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)
        raise self.fail(field, f"is a {tag!r} value wsc does not write")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "bool", int: "whole number", float: "number", str: "text", list: "list", dict: "mapping"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def read_document(folder: Path) -> tuple[dict[str, Any], Path]:
    """program.json of `folder`, parsed, of this format and version, its content hash checked."""
    path = folder / FILE
    if not folder.is_dir():
        raise WscError(f"{folder} is not a folder; give the output folder of `wsc compile`")
    if not path.is_file():
        raise WscError(f"{path}: no such file; compile the model (wsc compile) into {folder} first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise WscError(f"{path} is not text; compile the model again") from None
    except ValueError as error:
        raise WscError(f"{path} is not valid JSON (truncated or edited: {str(error).split(':')[0]}); compile the "
                       "model again") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise WscError(f"{path} is not a wsc program (no format {FORMAT!r}); give a folder `wsc compile` wrote")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise WscError(f"{path} has no version this wsc reads; compile the model again")
    if version > VERSION:
        raise WscError(f"{path} is of version {version}, newer than this wsc reads ({VERSION}); update wsc or "
                       "compile the model again with this one")
    stated = doc.get("sha256")
    try:
        actual = hashlib.sha256(canonical(doc)).hexdigest()
    except ValueError:  # a number JSON cannot hold (NaN) put in by hand
        actual = ""
    if stated != actual:
        raise WscError(f"{path} was changed after it was written (its content hash does not match); compile the "
                       "model again rather than edit it")
    return doc, path


def load(folder: Path | str) -> Loaded:
    """The program of the output folder `folder`, read from its program.json and checked (see the module)."""
    doc, path = read_document(Path(folder))
    r = _Reader(path)
    target = _target(r, r.get(doc, "target", dict))
    graph = _graph(r, r.get(doc, "nodes", list), r.names(doc, "outputs", "program"))
    layers = [_layer(r, entry, i) for i, entry in enumerate(r.get(doc, "layers", list))]
    batched = r.names(doc, "batched_inputs", "program")
    program = Program(graph=graph, target=target, model_name=r.get(doc, "model", str), layers=layers,
                      dtype=r.get(doc, "dtype", str), mode=r.get(doc, "mode", str), tokens=r.count(doc, "tokens"),
                      micro_batches=r.count(doc, "micro_batches", least=1), systems=r.count(doc, "systems", least=1),
                      batched_inputs=tuple(batched))
    _check_program(r, program)
    _check_tensors(r, program, r.get(doc, "tensors", list))
    weights = r.get(doc, "weights", dict)
    if weights.get("dtype") not in STORE_DTYPES:
        raise r.fail("weights.dtype", f"{weights.get('dtype')!r} is not one of {', '.join(STORE_DTYPES)}")
    reference = doc.get("reference")
    if reference is not None:
        r.get(reference, "file", str, "reference")
        r.get(reference, "sha256", str, "reference")
        r.names(reference, "inputs", "reference")
        r.names(reference, "outputs", "reference")
    return Loaded(program, doc, path)


def _target(r: _Reader, entry: dict[str, Any]) -> Target:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Target):
        if f.name == "dead_pes":
            pes = r.get(entry, "dead_pes", list, "target")
            if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p) for p in pes):
                raise r.fail("target.dead_pes", "is not a list of [row, col]")
            values["dead_pes"] = frozenset((int(a), int(b)) for a, b in pes)
        elif f.name == "flops_per_cycle_per_pe":
            rates = r.get(entry, f.name, dict, "target")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rates.values()):
                raise r.fail(f"target.{f.name}", "holds a rate that is not a number")
            values[f.name] = dict(rates)
        elif f.type in ("str",):
            values[f.name] = r.get(entry, f.name, str, "target")
        elif f.type in ("int",):
            values[f.name] = r.get(entry, f.name, int, "target")
        else:
            values[f.name] = float(r.get(entry, f.name, (int, float), "target"))
    return Target(**values)


def _graph(r: _Reader, entries: list[Any], outputs: list[str]) -> Graph:
    graph = Graph()
    known = set(SOURCE_OPS) | set(ops.kernel_names()) | set(ops.layout_names())
    for i, entry in enumerate(entries):
        field = f"nodes[{i}]"
        name = r.get(entry, "name", str, field)
        field = f"node {name}"
        op = r.get(entry, "op", str, field)
        if op not in known:
            raise r.fail(f"{field}.op", f"{op!r} is not an op of this wsc's op table")
        dtype = r.get(entry, "dtype", str, field)
        if dtype not in DTYPE_BYTES:
            raise r.fail(f"{field}.dtype", f"{dtype!r} is not a dtype wsc knows")
        attrs = {str(k): r.value(v, f"{field}.attrs.{k}") for k, v in r.get(entry, "attrs", dict, field).items()}
        layer = entry.get("layer") if isinstance(entry, dict) else None
        if layer is not None and not (isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0):
            raise r.fail(f"{field}.layer", f"is {layer!r}, not a layer index")
        node = Node(name, op, tuple(r.names(entry, "inputs", field)), r.shape(entry, "shape", field), dtype, attrs,
                    flops=r.count(entry, "flops", field), bytes=r.count(entry, "bytes", field), layer=layer,
                    module=r.get(entry, "module", str, field), source=r.get(entry, "source", str, field),
                    holds=r.get(entry, "holds", str, field))
        if op == "param" and not isinstance(attrs.get("key"), str):
            raise r.fail(f"{field}.attrs.key", "is missing: a weight must name its tensor in the store")
        if op == "const" and not isinstance(attrs.get("value"), np.ndarray):
            raise r.fail(f"{field}.attrs.value", "is missing: a constant must hold its value")
        if op == "const" and tuple(attrs["value"].shape) != node.shape:
            raise r.fail(f"{field}.attrs.value", f"is of shape {list(attrs['value'].shape)}, not {list(node.shape)}")
        try:
            graph.add(node)
        except IRError as error:
            raise WscError(f"{r.path}: {error}; compile the model again") from None
    graph.outputs = outputs
    return graph


def _layer(r: _Reader, entry: Any, position: int) -> Layer:
    field = f"layers[{position}]"
    index = r.count(entry, "index", field)
    if index != position:
        raise r.fail(f"{field}.index", f"is {index}, not its position {position}")
    kernels = {}
    for j, plan_entry in enumerate(r.get(entry, "kernels", list, field)):
        where = f"{field}.kernels[{j}]"
        cut = r.get(plan_entry, "cut", list, where)
        if len(cut) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in cut):
            raise r.fail(f"{where}.cut", f"{cut} is not [row blocks, column blocks, K slices], each 1 or more")
        plan = KernelPlan(node=r.get(plan_entry, "node", str, where), rows=r.count(plan_entry, "rows", where),
                          cols=r.count(plan_entry, "cols", where), cut=Cut(*cut),
                          h=r.count(plan_entry, "h", where, least=1), w=r.count(plan_entry, "w", where, least=1),
                          sram_bytes_per_pe=r.count(plan_entry, "sram_bytes_per_pe", where),
                          k_dim=r.count(plan_entry, "k_dim", where, least=1))
        if cut[0] > max(plan.rows, 1) or cut[1] > max(plan.cols, 1) or cut[2] > plan.k_dim:
            raise r.fail(f"{where}.cut", f"{cut} cuts finer than the kernel's {plan.rows} x {plan.cols} x {plan.k_dim}")
        if plan.node in kernels:
            raise r.fail(where, f"plans kernel {plan.node} a second time")
        kernels[plan.node] = plan
    return Layer(index=index, name=r.get(entry, "name", str, field), nodes=r.names(entry, "nodes", field),
                 weights=r.names(entry, "weights", field), kernels=kernels,
                 store_bytes=r.count(entry, "store_bytes", field))


def _check_program(r: _Reader, program: Program) -> None:
    """The invariants every pass keeps, held to the program read: a program that breaks one is refused."""
    graph = program.graph
    if program.mode not in ("weight-streaming", "pipelined"):
        raise r.fail("mode", f"{program.mode!r} is not weight-streaming or pipelined")
    inputs = {n.name for n in graph.inputs}
    if not set(program.batched_inputs) <= inputs:
        raise r.fail("batched_inputs", "names a value that is not an input of the program")
    if program.micro_batches % program.systems:
        raise r.fail("micro_batches", f"{program.micro_batches} is not a multiple of systems ({program.systems})")
    placed: dict[str, int] = {}
    for layer in program.layers:
        for name in layer.nodes:
            if name not in graph:
                raise r.fail(f"layer {layer.index}", f"names {name}, which is not a node")
            if name in placed:
                raise r.fail(f"layer {layer.index}", f"runs {name}, which layer {placed[name]} runs too")
            placed[name] = layer.index
        for name in layer.weights:
            if name not in graph or graph[name].op != "param":
                raise r.fail(f"layer {layer.index}", f"streams {name}, which is not a weight of the program")
        for name in layer.kernels:
            if name not in layer.nodes or not graph[name].is_kernel:
                raise r.fail(f"layer {layer.index}", f"plans {name}, which is not one of its kernels")
        for name in layer.nodes:
            node = graph[name]
            if node.is_kernel and name not in layer.kernels:
                raise r.fail(f"layer {layer.index}", f"runs kernel {name} without a plan of its tiles")
    for node in graph:
        if node.op not in SOURCE_OPS and node.name not in placed:
            raise r.fail(f"node {node.name}", "is computed by no layer")
    for layer in program.layers:  # a value is read only after the layer computing it ran (or in it, in order)
        for name in layer.nodes:
            for src in graph[name].inputs:
                if graph[src].op not in SOURCE_OPS and placed[src] > layer.index:
                    raise r.fail(f"node {name}", f"of layer {layer.index} reads {src} of the later layer "
                                 f"{placed[src]}")
                if graph[src].op == "param" and src not in layer.weights:
                    raise r.fail(f"node {name}", f"reads the weight {src}, which layer {layer.index} does not stream")
    try:
        graph.verify(legal=True)
        program.verify()
        ops.verify_plans(program)
        for node in graph:
            if node.is_kernel:
                ops.kernel(node.op).abi(graph, node)
    except (IRError, AssertionError, WscError, KeyError, IndexError, TypeError, ValueError) as error:
        raise r.fail("program", f"breaks an invariant of the IR ({str(error).splitlines()[0][:80]})") from None


def _check_tensors(r: _Reader, program: Program, tensors: list[Any]) -> None:
    sizes: dict[str, int] = {}
    for i, entry in enumerate(tensors):
        field = f"tensors[{i}]"
        key = r.get(entry, "key", str, field)
        r.names(entry, "names", field)
        sizes[key] = math.prod(r.shape(entry, "shape", field))
        if r.get(entry, "dtype", str, field) not in DTYPE_BYTES:
            raise r.fail(f"{field}.dtype", "is not a dtype wsc knows")
        if r.get(entry, "kind", str, field) not in ("parameter", "buffer"):
            raise r.fail(f"{field}.kind", "is neither parameter nor buffer")
    for node in program.graph.params:
        key = node.attrs["key"]
        if key not in sizes:
            raise r.fail("tensors", f"does not list the weight {key} the program streams")
        if sizes[key] != node.numel:
            raise r.fail(f"node {node.name}", f"views {sizes[key]} elements of {key} as {list(node.shape)}")


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"
