"""Rules for the unary element-wise ATen ops (wsc/ops/unary.py): functions of one tensor, with Python-number
parameters (clamp's bounds, pow's exponent or base, softplus's beta and threshold)."""

from __future__ import annotations

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes
from wsc.passes.legalize.gelu import spelled_out_gelu

NOT_FLOAT32 = "tensors other than float32"
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _float_input(rw: Rewriter, node: Node, name: str = "self", index: int = 0) -> str:
    """The tensor input, refused unless it and the result are float32: what the kernels compute."""
    x = rw.arg(node, index, name)
    other = sorted({rw.out[x].dtype, node.dtype} - {"float32"})
    if other:
        raise rw.unsupported(node, f"on {' and '.join(other)} tensors (the kernels compute float32)")
    return x


def _function(op: str):
    """The rule of an ATen op that is one kernel of the same meaning and no parameters."""

    def rule(rw: Rewriter, node: Node) -> str:
        return rw.emit(op, [_float_input(rw, node)], node.shape, final=True)

    return rule


for _op in ("neg", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "reciprocal", "square", "sin", "cos", "erf",
            "sigmoid", "silu", "abs"):
    legalizes(f"aten.{_op}.default", refuses=NOT_FLOAT32)(_function(_op))


@legalizes("aten.tanh.default", refuses=NOT_FLOAT32)
def _tanh(rw: Rewriter, node: Node) -> str:
    """tanh, or the tanh GELU spelled out around it (gelu.py) as one gelu kernel."""
    if node.op == "aten.tanh.default" and (gelu := spelled_out_gelu(rw, node)) is not None:
        return gelu
    return rw.emit("tanh", [_float_input(rw, node)], node.shape, final=True)


def _number(rw: Rewriter, node: Node, value: object, what: str) -> float | None:
    """A parameter that must be a Python number, or absent (None)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    raise rw.unsupported(node, f"{what} that is not a Python number ({type(value).__name__})")


def _param(rw: Rewriter, node: Node, index: int, name: str, default: float) -> float:
    """A parameter with a default: a Python number."""
    value = _number(rw, node, rw.arg(node, index, name, default), f"a {name}")
    return default if value is None else value


def _clamp_to(rw: Rewriter, node: Node, lo: object, hi: object) -> str:
    bounds = {"min": _number(rw, node, lo, "a bound"), "max": _number(rw, node, hi, "a bound")}
    bounds = {k: v for k, v in bounds.items() if v is not None}
    if not bounds:
        raise rw.unsupported(node, "clamp with neither a min nor a max")
    return rw.emit("clamp", [_float_input(rw, node)], node.shape, final=True, **bounds)


@legalizes("aten.clamp.default", refuses=NOT_FLOAT32)
def _clamp(rw: Rewriter, node: Node) -> str:
    return _clamp_to(rw, node, rw.arg(node, 1, "min"), rw.arg(node, 2, "max"))


@legalizes("aten.clamp_min.default", refuses=NOT_FLOAT32)
def _clamp_min(rw: Rewriter, node: Node) -> str:
    return _clamp_to(rw, node, rw.arg(node, 1, "min"), None)


@legalizes("aten.clamp_max.default", refuses=NOT_FLOAT32)
def _clamp_max(rw: Rewriter, node: Node) -> str:
    return _clamp_to(rw, node, None, rw.arg(node, 1, "max"))


@legalizes("aten.hardtanh.default", refuses=NOT_FLOAT32)
def _hardtanh(rw: Rewriter, node: Node) -> str:
    return _clamp_to(rw, node, rw.arg(node, 1, "min_val", -1.0), rw.arg(node, 2, "max_val", 1.0))


@legalizes("aten.relu6.default", refuses=NOT_FLOAT32)
def _relu6(rw: Rewriter, node: Node) -> str:
    return _clamp_to(rw, node, 0.0, 6.0)


# x ** exponent for the exponents torch computes by another formula than pow: the same formula here.
_POW_AS = {2.0: "square", 0.5: "sqrt", -0.5: "rsqrt", -1.0: "reciprocal"}


@legalizes("aten.pow.Tensor_Scalar", refuses=NOT_FLOAT32)
def _pow(rw: Rewriter, node: Node) -> str:
    x = _float_input(rw, node)
    exponent = _number(rw, node, rw.arg(node, 1, "exponent"), "an exponent")
    if exponent == 1.0:
        return x
    if exponent in _POW_AS:
        return rw.emit(_POW_AS[exponent], [x], node.shape, final=True)
    return rw.emit("pow", [x], node.shape, final=True, exponent=exponent)


@legalizes("aten.pow.Scalar", refuses=NOT_FLOAT32)
def _pow_of_number(rw: Rewriter, node: Node) -> str:
    x = _float_input(rw, node, "exponent", 1)
    base = _number(rw, node, rw.arg(node, 0, "self"), "a base")
    return rw.emit("pow", [x], node.shape, final=True, base=base)


@legalizes("aten.softplus.default", refuses=NOT_FLOAT32)
def _softplus(rw: Rewriter, node: Node) -> str:
    x = _float_input(rw, node)
    beta, threshold = _param(rw, node, 1, "beta", 1.0), _param(rw, node, 2, "threshold", 20.0)
    return rw.emit("softplus", [x], node.shape, final=True, beta=beta, threshold=threshold)


@legalizes("aten.leaky_relu.default", refuses=NOT_FLOAT32)
def _leaky_relu(rw: Rewriter, node: Node) -> str:
    x = _float_input(rw, node)
    slope = _param(rw, node, 1, "negative_slope", 0.01)
    return rw.emit("leaky_relu", [x], node.shape, final=True, negative_slope=slope)


def _elu_of(rw: Rewriter, node: Node, alpha: float, scale: float, input_scale: float) -> str:
    x = _float_input(rw, node)
    return rw.emit("elu", [x], node.shape, final=True, alpha=alpha, scale=scale, input_scale=input_scale)


@legalizes("aten.elu.default", refuses=NOT_FLOAT32)
def _elu(rw: Rewriter, node: Node) -> str:
    alpha, scale, input_scale = (_param(rw, node, i, name, 1.0)
                                 for i, name in ((1, "alpha"), (2, "scale"), (3, "input_scale")))
    return _elu_of(rw, node, alpha, scale, input_scale)


@legalizes("aten.selu.default", refuses=NOT_FLOAT32)
def _selu(rw: Rewriter, node: Node) -> str:
    return _elu_of(rw, node, SELU_ALPHA, SELU_SCALE, 1.0)


@legalizes("aten.celu.default", refuses=NOT_FLOAT32 + ", alpha 0")
def _celu(rw: Rewriter, node: Node) -> str:
    alpha = _param(rw, node, 1, "alpha", 1.0)
    if alpha == 0:
        raise rw.unsupported(node, "celu with alpha 0 (its input is divided by alpha)")
    return _elu_of(rw, node, alpha, 1.0, 1.0 / alpha)
