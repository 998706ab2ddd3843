"""Verification: the compiled program's numbers against eager PyTorch's, to a bound derived from the arithmetic.

The rule (docs/verification.md derives it). Every value v of the program carries two counts along its longest
path from the inputs:

    terms(v)     the terms summed in fp32 on the way: the sum over the kernels on the path of each one's
                 `summed_terms` (a matmul's K, a norm's row, 1 for an element-wise op; 0 for a layout op)
    weighted(v)  the kernels on the path that read a streamed weight

Rounding errors of independent sums add in quadrature, so an element of v may differ from eager PyTorch by

    allowed = tolerance * SAFETY * (eps * sqrt(terms) + eps_w * sqrt(weighted)) * (|expected| + rms(expected))

eps is the machine epsilon of the compute dtype (fp32: 2^-23), eps_w the unit roundoff of the store's weights
when they are narrower than fp32 (fp16: 2^-11, bf16: 2^-8; 0 for fp32, whose weights stream exactly), and the
rms (over the whole output) is the atol part: an element near zero is allowed the error of the values around
it, which its sum also carried. `tolerance` (--tolerance, default 1) scales the whole bound. Outputs of
integer or bool dtype must match exactly; where eager gives NaN or an infinity, the program must give the same.

The per-layer diff (`LayerDiff`) holds every value to the same rule twice: as run in the program (its errors
include everything upstream) and run alone on the golden values of its inputs (its own error only, to the
bound of its own `summed_terms`). The first kernel wrong by itself is the one named; a streamed weight that
differs from the model's beyond its dtype's rounding is named before any kernel that reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsc import ops
from wsc.core.ir import Graph, Node
from wsc.core.program import Layer, Program, tile_table

# Machine epsilon of the dtype the kernels compute in.
COMPUTE_EPS = {"float32": 2.0**-23}
# Unit roundoff of the dtype the store holds weights in: each weight is rounded once, to nearest.
WEIGHT_EPS = {"fp32": 0.0, "fp16": 2.0**-11, "bf16": 2.0**-8}
# How far past the root-sum-square estimate a correct program may go: the estimate's constants, the few ulp of
# each transcendental, what a norm amplifies. Set from benchmarks/verification_margins.py (docs/verification.md
# lists its numbers): no correct output of the examples and Hugging Face architectures reaches a quarter of the
# bound, while every mutant of tests/test_mutants.py exceeds it.
SAFETY = 16.0
# What the store's dtype rounds a weight to: a streamed weight must be the model's, rounded so, bit for bit.
STORE_ROUNDING = {"fp32": np.float32, "fp16": np.float16}


@dataclass(frozen=True)
class PathCounts:
    terms: int  # fp32 terms summed along the longest path
    weighted: int  # kernels reading a streamed weight on it


def path_counts(graph: Graph) -> dict[str, PathCounts]:
    """terms(v) and weighted(v) of every value of the graph (see the module's docstring)."""
    counts: dict[str, PathCounts] = {}
    for node in graph:
        terms = max((counts[i].terms for i in node.inputs), default=0)
        weighted = max((counts[i].weighted for i in node.inputs), default=0)
        if node.is_kernel:
            terms += ops.kernel(node.op).summed_terms(graph, node)
            weighted += any(graph[i].op == "param" for i in node.inputs)
        counts[node.name] = PathCounts(terms, weighted)
    return counts


def relative_bound(terms: int, weighted: int, weights_dtype: str, tolerance: float) -> float:
    """The bound's rtol: allowed error per unit of |expected| + rms(expected)."""
    return tolerance * SAFETY * (COMPUTE_EPS["float32"] * math.sqrt(max(terms, 1))
                                 + WEIGHT_EPS[weights_dtype] * math.sqrt(weighted))


def compare(got: np.ndarray, want: np.ndarray, rtol: float) -> dict[str, Any]:
    """`got` against `want` elementwise to rtol * (|want| + rms(want)): the worst element (the largest error
    per unit of its bound), its index, errors and bound, and whether every element is within it. NaN and the
    infinities must be where eager has them; integer and bool values must be equal."""
    result: dict[str, Any] = {"shape": list(want.shape)}
    if got.shape != want.shape and got.size == want.size:
        got = got.reshape(want.shape)
    if got.shape != want.shape:
        return {**result, "status": "fail", "note": f"shape {list(got.shape)} where eager has {list(want.shape)}",
                "max_abs_err": None, "max_rel_err": None, "allowed_abs_err": None, "worst_index": None,
                "error_ratio": None}
    exact = want.dtype.kind in "biu"
    want64 = want.astype(np.float64)
    got64 = got.astype(np.float64)
    finite = np.isfinite(want64)
    special_agrees = (np.isnan(got64) & np.isnan(want64)) | (got64 == want64)
    bad_special = ~finite & ~special_agrees
    with np.errstate(invalid="ignore"):  # inf - inf where eager is not finite: left out by `finite`
        err = np.where(finite, np.abs(got64 - want64), 0.0)
    err = np.where(np.isnan(err), np.inf, err)  # a NaN where eager is finite (an uncomputed tile) fails
    rms = float(np.sqrt(np.mean(np.square(want64[finite])))) if finite.any() else 0.0
    allowed = np.zeros_like(want64) if exact else rtol * (np.abs(np.where(finite, want64, 0.0)) + rms)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err > 0, err / allowed, 0.0)
    ratio = np.where(bad_special, np.inf, ratio)
    if ratio.size == 0:
        return {**result, "status": "pass", "max_abs_err": 0.0, "max_rel_err": 0.0, "allowed_abs_err": 0.0,
                "worst_index": None, "error_ratio": 0.0}
    worst = int(np.argmax(ratio))
    index = [int(i) for i in np.unravel_index(worst, want.shape)] if want.ndim else []
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = err / (np.abs(np.where(finite, want64, 0.0)) + rms) if rms > 0 else err
    max_err = float(np.max(err)) if err.size else 0.0
    worst_ratio = float(ratio.flat[worst])
    return {**result, "status": "pass" if worst_ratio <= 1.0 else "fail",
            "max_abs_err": None if math.isinf(max_err) else max_err,
            "max_rel_err": None if not np.isfinite(np.max(relative)) else float(np.max(relative)),
            "allowed_abs_err": float(allowed.flat[worst]), "worst_index": index,
            "error_ratio": None if math.isinf(worst_ratio) else worst_ratio,
            "got": _number(got64.flat[worst]), "expected": _number(want64.flat[worst])}


def _number(value: float) -> float | str:
    """A JSON-safe number: NaN and the infinities as strings."""
    return float(value) if np.isfinite(value) else str(value)


# ------------------------------------------------------------------------------------------ per layer


@dataclass
class ValueCheck:
    """One value of the program against its golden value: as run in the program, and alone (kernels only)."""

    name: str
    layer: Layer
    kind: str  # "kernel", "weight" or "layout"
    in_program: dict[str, Any]
    alone: dict[str, Any] | None = None


@dataclass
class LayerDiff:
    """Watches an Executor run one pass (as its observer) and holds each value it computes to its golden
    value. `golden` holds the captured nodes' eager values (wsc.frontend.golden); `weights` the model's own
    weights by param node, against which the streamed ones are held. Values with no captured
    counterpart (an operand reshaped for a kernel) get theirs by running the program's own node on golden
    inputs, so every kernel has golden inputs."""

    program: Program
    executor: Any  # wsc.runtime.executor.Executor
    golden: Mapping[str, np.ndarray]
    weights: Mapping[str, np.ndarray]  # param node name -> the model's weight
    weights_dtype: str
    tolerance: float
    inputs: Sequence[np.ndarray]
    env: dict[str, np.ndarray] = field(default_factory=dict)
    checks: list[ValueCheck] = field(default_factory=list)

    def __post_init__(self) -> None:
        graph = self.program.graph
        self.counts = path_counts(graph)
        for node, value in zip(graph.inputs, self.inputs, strict=True):
            self.env[node.name] = np.asarray(value)
        self.done_layer = -1

    def __call__(self, layer: Layer, name: str, got: np.ndarray) -> None:
        graph = self.program.graph
        if layer.index != self.done_layer:
            self._release(layer.index)
            self.done_layer = layer.index
        node = graph[name]
        if node.op == "param":
            if name not in self.weights:  # no captured weight to hold it to: taken as streamed
                self.env[name] = got
                return
            # The model's own weight for this node (not the store key it was bound to: a wrong binding is a
            # wrong weight), and as the store's dtype rounds it.
            true = np.asarray(self.weights[name], dtype=np.float32).reshape(node.shape)
            self.env[name] = true
            rounded = true.astype(STORE_ROUNDING[self.weights_dtype]).astype(np.float32)
            self.checks.append(ValueCheck(name, layer, "weight", compare(got.reshape(true.shape), rounded, 0.0)))
            return
        want = self._golden(node, layer, got)
        self.env[name] = want
        counts = self.counts[name]
        in_program = compare(got, want, relative_bound(counts.terms, counts.weighted, self.weights_dtype,
                                                       self.tolerance))
        if not node.is_kernel:
            self.checks.append(ValueCheck(name, layer, "layout", in_program))
            return
        alone_value = self.executor.execute(layer, name, self.env)
        own = ops.kernel(node.op).summed_terms(graph, node)  # its golden inputs hold no rounded weight
        alone = compare(alone_value.reshape(want.shape), want, relative_bound(own, 0, self.weights_dtype,
                                                                              self.tolerance))
        self.checks.append(ValueCheck(name, layer, "kernel", in_program, alone))

    def _golden(self, node: Node, layer: Layer, got: np.ndarray) -> np.ndarray:
        captured = self.golden.get(node.holds) if node.holds else None
        if captured is not None and captured.size == got.size:
            return captured.reshape(got.shape).astype(got.dtype, copy=False)
        if node.op == "const":
            return np.asarray(node.attrs["value"])
        if node.is_kernel:
            # A kernel legalisation invented (attention spelled out: its softmax) has no eager value: its
            # golden one is the op table's plain reference on golden inputs, so the kernel is still held to
            # what it means, not to itself.
            op = ops.kernel(node.op)
            out_shape, in_shapes = op.abi(self.program.graph, node)
            args = [np.asarray(self.env[i]).reshape(shape) for i, shape in zip(node.inputs, in_shapes, strict=True)]
            return op.reference(args, node.attrs, out_shape).astype(got.dtype).reshape(got.shape)
        return np.asarray(self.executor.execute(layer, node.name, self.env))

    def _release(self, layer_index: int) -> None:
        """Golden values no later layer reads are dropped, as the executor drops the program's."""
        last = self.executor.last_use
        for name in [v for v in self.env if last.get(v, layer_index) < layer_index]:
            del self.env[name]

    # ------------------------------------------------------------------------------------- the report

    def layers(self) -> list[dict[str, Any]]:
        """Each streaming layer's worst value as run in the program, and its worst kernel run alone, each
        against its bound."""
        rows = []
        for layer in self.program.layers:
            mine = [c for c in self.checks if c.layer.index == layer.index]
            worst = max(mine, key=lambda c: share_of_bound(c.in_program), default=None)
            worst_alone = max((c for c in mine if c.alone is not None), key=lambda c: share_of_bound(c.alone),
                              default=None)
            rows.append({
                "index": layer.index, "name": layer.name,
                "status": "fail" if any(c.in_program["status"] == "fail" for c in mine) else "pass",
                "worst_value": None if worst is None else worst.name,
                "max_abs_err": None if worst is None else worst.in_program["max_abs_err"],
                "allowed_abs_err": None if worst is None else worst.in_program["allowed_abs_err"],
                "error_ratio": None if worst is None else worst.in_program["error_ratio"],
                "worst_alone": None if worst_alone is None else worst_alone.name,
                "alone_error_ratio": None if worst_alone is None or worst_alone.alone is None
                else worst_alone.alone["error_ratio"],
                "alone_status": "fail" if any(c.alone and c.alone["status"] == "fail" for c in mine) else "pass",
            })
        return rows

    def located(self, by_itself_only: bool = False) -> dict[str, Any] | None:
        """The first value wrong by itself, in the order computed: a streamed weight unequal to its rounding, or
        a kernel whose output on golden inputs exceeds its own bound; else (none wrong alone, and not
        `by_itself_only`) the first value wrong in the program. With its layer, and for a kernel the tile
        holding the worst element and its PE."""
        order = [c for c in self.checks if (c.kind == "weight" and c.in_program["status"] == "fail")
                 or (c.kind == "kernel" and c.alone is not None and c.alone["status"] == "fail")]
        how = "by itself"
        if not order and by_itself_only:
            return None
        if not order:
            order = [c for c in self.checks if c.in_program["status"] == "fail"]
            how = "in the program (every kernel is right on golden inputs: the errors compound)"
        if not order:
            return None
        first = order[0]  # checks are in the order the values were computed, a layer's weights first
        node = self.program.graph[first.name]
        result = first.alone if first.kind == "kernel" and first.alone and first.alone["status"] == "fail" \
            else first.in_program
        located: dict[str, Any] = {
            "kind": first.kind, "kernel": first.name, "op": node.op if node.op != "param" else "weight",
            "layer": first.layer.name, "layer_index": first.layer.index, "wrong": how,
            "source": node.source, "module": node.module, **{k: result.get(k) for k in (
                "max_abs_err", "allowed_abs_err", "error_ratio", "worst_index", "got", "expected")},
        }
        if node.op == "param":
            located["key"] = node.attrs["key"]
            readers = [n for n in first.layer.nodes if first.name in self.program.graph[n].inputs]
            located["read_by"] = readers
            located["pe"] = None
            return located
        plan = first.layer.kernels.get(first.name)
        if plan is not None and result.get("worst_index") is not None:
            located.update(self._tile_of(first.layer, first.name, result["worst_index"]))
        else:
            located["pe"] = None
        return located

    def _tile_of(self, layer: Layer, name: str, index: list[int]) -> dict[str, Any]:
        """The tile (row and column block, K slices) holding element `index` of kernel `name`, the kernel's
        rectangle and the PE that computed the tile (its first K slice's, when the reduction is split)."""
        node = self.program.graph[name]
        plan = layer.kernels[name]
        rows, cols = ops.output_view(node.shape)
        flat = int(np.ravel_multi_index(index, node.shape)) if node.shape else 0
        r, c = divmod(flat, cols) if cols else (0, 0)
        # The tile the cut assigns the element (the table derived from the cut, not the plan's own copy).
        tiles = tile_table(plan.rows, plan.cols, plan.row_blocks, plan.col_blocks)
        hit = np.flatnonzero((tiles[:, 0] <= r) & (r < tiles[:, 1]) & (tiles[:, 2] <= c) & (c < tiles[:, 3]))
        out: dict[str, Any] = {"element": [r, c]}
        if len(hit) == 0:
            out["tile"] = None
            out["pe"] = None
            return out
        block = int(hit[0])
        r0, r1, c0, c1 = (int(v) for v in tiles[block])
        out["tile"] = {"block": block, "row_block": block // plan.col_blocks, "col_block": block % plan.col_blocks,
                       "rows": [r0, r1], "cols": [c0, c1], "k_splits": plan.k_splits}
        rect = layer.placement.rects[name] if layer.placement is not None else None
        if rect is None:
            out["rect"], out["pe"] = None, None
            return out
        out["rect"] = {"x": rect.x, "y": rect.y, "w": rect.w, "h": rect.h}
        pes = [list(self.program.tile_pe(layer, name, block, s)) for s in range(plan.k_splits)]
        out["pe"] = pes[0]
        out["k_slice_pes"] = pes if plan.k_splits > 1 else None
        return out


def share_of_bound(result: dict[str, Any] | None) -> float:
    """A comparison's worst error over its bound, for ordering: infinite for a failure with no finite ratio."""
    if result is None:
        return -1.0
    if result.get("error_ratio") is None:
        return math.inf if result.get("status") == "fail" else -1.0
    return float(result["error_ratio"])


# ------------------------------------------------------------------------------------------ outputs


def verify_outputs(program: Program, expected: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                   tolerance: float, weights_dtype: str) -> dict[str, Any]:
    """The program's outputs for one input against eager's, each to the rule's bound for its path."""
    graph = program.graph
    counts = path_counts(graph)
    if len(outputs) != len(expected):
        return {"status": "fail", "max_abs_err": None, "tolerance": tolerance, "error_ratio": None,
                "note": f"the program gives {len(outputs)} outputs where eager gives {len(expected)}", "outputs": []}
    results, scale = [], 1.0
    for name, got, want in zip(graph.outputs, outputs, expected, strict=True):
        c = counts[name]
        want = np.asarray(want)
        result = compare(np.asarray(got), want, relative_bound(c.terms, c.weighted, weights_dtype, tolerance))
        results.append({"name": name, "terms": c.terms, "weighted": c.weighted, **result})
        magnitudes = np.abs(want[np.isfinite(want)]) if want.dtype.kind in "fc" else np.abs(want)
        if magnitudes.size:
            scale = max(scale, float(magnitudes.max()))
    worst = max(results, key=share_of_bound, default=None)
    errors = [r["max_abs_err"] for r in results]
    return {
        "status": "pass" if all(r["status"] == "pass" for r in results) else "fail",
        "max_abs_err": None if any(e is None for e in errors) else max(errors, default=0.0),
        "tolerance": tolerance,
        "output_scale": scale,
        "allowed_abs_err": None if worst is None else worst["allowed_abs_err"],
        "error_ratio": None if worst is None else worst["error_ratio"],
        "outputs": results,
    }


def rule(weights_dtype: str, tolerance: float) -> dict[str, Any]:
    """The bound's constants, as report.json states them."""
    return {"allowed": "tolerance * safety * (eps * sqrt(terms) + weight_eps * sqrt(weighted)) * "
                       "(|expected| + rms(expected))",
            "eps": COMPUTE_EPS["float32"], "weight_eps": WEIGHT_EPS[weights_dtype], "safety": SAFETY,
            "tolerance": tolerance}


def combine(per_input: Sequence[tuple[str, dict[str, Any]]], weights_dtype: str, tolerance: float) -> dict[str, Any]:
    """One verification of several inputs: it passes when every input passes; the top-level numbers are the
    worst input's (by its error per unit of bound), and `inputs` lists each."""
    worst_label, worst = max(per_input, key=lambda item: share_of_bound(item[1]))
    errors = [r["max_abs_err"] for _, r in per_input]
    combined = {k: v for k, v in worst.items() if k != "outputs"}
    combined.update({
        "status": "pass" if all(r["status"] == "pass" for _, r in per_input) else "fail",
        "max_abs_err": None if any(e is None for e in errors) else max(errors),
        "output_scale": max(r.get("output_scale", 1.0) for _, r in per_input),
        "weights_dtype": weights_dtype,
        "rule": rule(weights_dtype, tolerance),
        "inputs": [{"name": label, "status": r["status"], "max_abs_err": r["max_abs_err"],
                    "error_ratio": r.get("error_ratio")} for label, r in per_input],
        "worst_input": worst_label,
        "outputs": [{"input": label, **o} for label, r in per_input for o in r.get("outputs", [])],
    })
    return combined


def shuffled(example_inputs: tuple, seed: int) -> tuple:
    """Another input of the same domain: each tensor's elements in a seeded random order (token ids stay ids
    of the vocabulary, a mask keeps its count of zeros, an image its pixel values)."""
    import torch

    rng = np.random.default_rng(seed)
    out = []
    for value in example_inputs:
        if isinstance(value, torch.Tensor) and value.numel() > 1:
            flat = value.reshape(-1)
            value = flat[torch.from_numpy(rng.permutation(flat.numel()))].reshape(value.shape).clone()
        out.append(value)
    return tuple(out)
