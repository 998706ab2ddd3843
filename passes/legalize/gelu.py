"""The tanh GELU spelled out, as Hugging Face's `NewGELUActivation` ("gelu_new": GPT-2, GPT-J) writes it:

    0.5 * x * (1.0 + tanh(sqrt(2 / pi) * (x + 0.044715 * pow(x, 3.0))))

torch.export captures it as eight element-wise ATen ops (pow, two muls by constants, an add, tanh, an add of 1,
the multiply by 0.5 and the product), each of which would be a kernel of its own with a flow of the whole
activation between each pair. `spelled_out_gelu` takes the chain into one gelu kernel with approximate="tanh",
the function `F.gelu(x, approximate="tanh")` computes; the tanh rule (unary.py) calls it, since every form of
the chain has exactly one tanh. No rule of this module is registered: it only recognises.
"""

from __future__ import annotations

import math

from wsc.core.ir import Node, Ref
from wsc.passes.legalize import Rewriter
from wsc.passes.legalize.normalization import CHECKS

MUL = ("aten.mul.Tensor", "aten.mul.Scalar")
ADD = ("aten.add.Tensor", "aten.add.Scalar")
POW = "aten.pow.Tensor_Scalar"
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715
TOLERANCE = 1e-6  # relative: a constant written to float32's precision (0.7978846) is taken, 0.045 is not


def _close(value: object, exact: float) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isclose(float(value), exact, rel_tol=TOLERANCE))


def _args(node: Node) -> tuple:
    return tuple(node.attrs.get("args", ()))


def _refs(node: Node) -> list[str]:
    return [a.name for a in _args(node) if isinstance(a, Ref)]


def _with_number(node: Node, ops: tuple[str, ...], exact: float) -> str | None:
    """The tensor operand of `node` when it is one of `ops` of a tensor and a Python number close to `exact`,
    in either order (an add with alpha 1 only); else None."""
    args = _args(node)
    if node.op not in ops or len(args) != 2 or node.attrs.get("kwargs", {}).get("alpha", 1) != 1:
        return None
    refs = _refs(node)
    numbers = [a for a in args if not isinstance(a, Ref)]
    if len(refs) != 1 or len(numbers) != 1 or not _close(numbers[0], exact):
        return None
    return refs[0]


def _of_two(node: Node, ops: tuple[str, ...]) -> list[str] | None:
    """The two tensor operands of `node` when it is one of `ops` of two distinct tensors (alpha 1); else None."""
    refs = _refs(node)
    if node.op not in ops or len(_args(node)) != 2 or len(set(refs)) != 2 \
            or node.attrs.get("kwargs", {}).get("alpha", 1) != 1:
        return None
    return refs


def spelled_out_gelu(rw: Rewriter, tanh: Node) -> str | None:
    """The chain around `tanh` as one gelu kernel (approximate="tanh") on x, when `tanh` is the tanh of
    sqrt(2/pi) * (x + 0.044715 * x^3) (pow(x, 3)) and what follows it is 0.5 * x * (1 + tanh), the 0.5 taken
    with x, with the product or with 1 + tanh, every operand in either order. Every value inside the chain must
    have no other reader (metadata checks aside) and not be an output, every value be float32 and of x's shape,
    and each constant within a relative 1e-6 of its exact value. Every node of the chain is given the kernel's
    value, so legalize passes over those after `tanh`; those before it were legalised already, and their
    kernels, which nothing reads any more, are dropped with the dead nodes. None when `tanh` is in no such
    chain: legalize then takes each op as it is."""
    source = rw.source

    def only_reader(node: Node) -> Node | None:
        readers = [source[u] for u in source.users(node.name) if source[u].op not in CHECKS]
        return readers[0] if len(readers) == 1 and node.name not in source.outputs else None

    def reads_only(node: Node | None, reader: Node) -> bool:
        return node is not None and only_reader(node) is reader

    # Before the tanh: sqrt(2/pi) * (x + 0.044715 * pow(x, 3)).
    if tanh.op != "aten.tanh.default" or len(tanh.inputs) != 1:
        return None
    scaled = source[tanh.inputs[0]]
    inner_name = _with_number(scaled, MUL, SQRT_2_OVER_PI)
    if inner_name is None or not reads_only(scaled, tanh):
        return None
    inner = source[inner_name]
    operands = _of_two(inner, ADD)
    if operands is None or not reads_only(inner, scaled):
        return None
    x, cubic, cube = None, None, None
    for maybe_x, other in (operands, operands[::-1]):
        term = source[other]
        powered = _with_number(term, MUL, CUBIC)
        if powered is None or not reads_only(term, inner):
            continue
        power = source[powered]
        if power.op == POW and len(_args(power)) == 2 and _refs(power) == [maybe_x] \
                and _close(_args(power)[1], 3.0) and reads_only(power, term):
            x, cubic, cube = maybe_x, term, power
            break
    if x is None or cubic is None or cube is None:
        return None

    # After it: 1 + tanh, then the products of x, 0.5 and 1 + tanh in one of three groupings.
    one_plus = only_reader(tanh)
    if one_plus is None or _with_number(one_plus, ADD, 1.0) != tanh.name:
        return None
    first = only_reader(one_plus)
    if first is None:
        return None
    after: list[Node] = [one_plus, first]
    if _with_number(first, MUL, 0.5) == one_plus.name:  # x * (0.5 * (1 + tanh))
        last = only_reader(first)
        if last is None or sorted(_of_two(last, MUL) or []) != sorted([first.name, x]):
            return None
        after.append(last)
    else:
        factors = _of_two(first, MUL)
        if factors is None or one_plus.name not in factors:
            return None
        other = next(f for f in factors if f != one_plus.name)
        if other == x:  # (x * (1 + tanh)) * 0.5
            last = only_reader(first)
            if last is None or _with_number(last, MUL, 0.5) != first.name:
                return None
            after.append(last)
        else:  # (0.5 * x) * (1 + tanh)
            half = source[other]
            if _with_number(half, MUL, 0.5) != x or not reads_only(half, first):
                return None
            after.append(half)
    chain = [cube, cubic, inner, scaled, tanh, *after]
    shape = source[x].shape
    value_of_x = rw.value.get(x)
    if value_of_x is None or any(n.dtype != "float32" or n.shape != shape for n in [source[x], *chain]) \
            or rw.out[value_of_x].dtype != "float32":
        return None
    value = rw.emit("gelu", [value_of_x], shape, "float32", approximate="tanh")
    for node in chain:
        rw.value[node.name] = value
    return value
