"""The training kernels layernorm_backward, gelu_backward, softmax_backward and embedding_backward against torch
autograd in float64, over tilings that must all give the same bits.

Bounds follow the arithmetic (U = 2^-24, float32's unit roundoff): each rounding of a float32 operation adds
at most U of its result, a float32 sum of n terms about sqrt(n) U of the sum of their magnitudes, the inline
exp 1.02 ulp (2.04 U), erf 1.5e-7 absolute (under 3 U); what an error in one intermediate does to the output is
its first-order propagation, written out per kernel below. Each first-order bound is then doubled (SLACK). The
kernels read float32 inputs that torch reads exactly (cast to float64), so only the kernels' own roundings and,
for softmax's y, the rounding of the forward's output count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsc import ops
from wsc.runtime.lowering import compile_kernel
from wsc.runtime.reference import run_reference

U = 2.0**-24
U64 = 2.0**-53
SLACK = 2.0
rng = np.random.default_rng(4321)


def tilings(rows: int, cols: int) -> dict[str, np.ndarray]:
    """Tile tables each covering [rows, cols] once: one tile, a tile per row, column strips, single elements in
    column-major order, and an uneven grid in shuffled order."""
    out = {
        "one": [(0, rows, 0, cols)],
        "rows": [(r, r + 1, 0, cols) for r in range(rows)],
        "col_strips": [(0, rows, c, min(c + 5, cols)) for c in range(0, cols, 5)],
        "elements": [(r, r + 1, c, c + 1) for c in range(cols) for r in range(rows)],
    }
    row_cuts = np.unique(np.r_[0, rng.integers(0, rows + 1, 2), rows])
    col_cuts = np.unique(np.r_[0, rng.integers(0, cols + 1, 3), cols])
    uneven = [(a, b, c, d) for a, b in zip(row_cuts[:-1], row_cuts[1:], strict=True)
              for c, d in zip(col_cuts[:-1], col_cuts[1:], strict=True)]
    out["uneven_shuffled"] = [uneven[i] for i in rng.permutation(len(uneven))]
    return {k: np.array(v, dtype=np.int64).reshape(-1, 4) for k, v in out.items()}


def run_tilings(op: str, out_shape: tuple[int, int], inputs: list[np.ndarray], attrs: dict) -> np.ndarray:
    """The kernel's output, the same bits under every tiling and with two threads; NaN-filled, so an element a
    tile leaves unwritten shows."""
    kernel = compile_kernel(op, out_shape, [x.shape for x in inputs], attrs)
    first = None
    for name, tiles in tilings(*out_shape).items():
        for threads in (1, 2):
            out = np.full(out_shape, np.nan, dtype=np.float32)
            kernel(out, inputs, tiles, threads=threads)
            assert not np.isnan(out).any(), f"tiling {name}: elements left unwritten"
            if first is None:
                first = out
            np.testing.assert_array_equal(out, first, err_msg=f"tiling {name}, threads={threads}")
    assert first is not None
    return first


def assert_within(got: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str) -> None:
    err = np.abs(got.astype(np.float64) - want)
    ratio = np.where(err > 0, err / np.where(bound > 0, bound, np.inf * np.ones_like(bound)), 0.0)
    ratio = np.where((err > 0) & (bound == 0), np.inf, ratio)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    assert ratio.max() <= 1.0, (f"{what}: error {err[worst]:.3g} at {tuple(int(i) for i in worst)} is "
                                f"{ratio.max():.2f}x its bound {bound[worst]:.3g}")


def reference_of(op: str, inputs: list[np.ndarray], attrs: dict, out_shape: tuple[int, int]) -> np.ndarray:
    """The op's float64 reference, and run_reference (its rounding to float32 over a tiling) agreeing with it."""
    full = ops.kernel(op).reference(inputs, attrs, out_shape)
    rounded = np.full(out_shape, np.nan, dtype=np.float32)
    run_reference(op, rounded, inputs, tilings(*out_shape)["uneven_shuffled"], attrs)
    np.testing.assert_array_equal(rounded, full.astype(np.float32))
    return full


def f64(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def grad_of(leaf: torch.Tensor) -> np.ndarray:
    assert leaf.grad is not None
    return leaf.grad.numpy()


SIZES = [1, 3, 17, 64, 129]


# ------------------------------------------------------------------------------------------- layer norm


def layernorm_bound(dy: np.ndarray, x: np.ndarray, w: np.ndarray, dx: np.ndarray, eps: float) -> np.ndarray:
    """The mean's sum errs by sqrt(D) U mean|x|, which x - mean carries into xhat (times rstd); the variance's
    sum by sqrt(D) U of itself, so rstd (and xhat) by sqrt(D) U relatively: xhat_c errs by
    delta_c = sqrt(D) U (mean|x| rstd + |xhat_c|). The means of g and g * xhat err by sqrt(D) U of their
    magnitudes, the latter plus mean(|g| delta); the output combines g (U), mean(g), xhat_c * mean(g xhat)
    and is scaled by rstd."""
    d = x.shape[-1]
    x, dy, w = x.astype(np.float64), dy.astype(np.float64), w.astype(np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dy * w
    root = math.sqrt(d) * U
    delta = root * (np.abs(x).mean(axis=-1, keepdims=True) * rstd + np.abs(xhat))
    m_g, m_gx = np.abs(g).mean(axis=-1, keepdims=True), np.abs(g * xhat).mean(axis=-1, keepdims=True)
    err_mgx = root * m_gx + (np.abs(g) * delta).mean(axis=-1, keepdims=True)
    inner = U * (np.abs(g) + 2 * np.abs(dx) / rstd) + root * m_g + delta * np.abs((g * xhat).mean(axis=-1,
                                                                                         keepdims=True)) \
        + np.abs(xhat) * err_mgx
    return SLACK * (rstd * inner + root * np.abs(dx))


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("rows", [1, 6])
def test_layernorm_backward(rows, d):
    eps = 1e-5
    dy = rng.standard_normal((rows, d)).astype(np.float32)
    x = (rng.standard_normal((rows, d)) * 3.0 + 2.0).astype(np.float32)
    w = (1.5 + 0.6 * rng.standard_normal(d)).astype(np.float32)  # away from 1, some of either sign
    xt = f64(x, grad=True)
    F.layer_norm(xt, (d,), f64(w), f64(rng.standard_normal(d)), eps).backward(f64(dy))
    want = grad_of(xt)
    got = run_tilings("layernorm_backward", (rows, d), [dy, x, w], {"eps": eps})
    bound = layernorm_bound(dy, x, w, want, eps)
    assert_within(got, want, bound, "kernel vs autograd")
    ref = reference_of("layernorm_backward", [dy, x, w], {"eps": eps}, (rows, d))
    assert_within(ref, want, bound * U64 / U, "reference vs autograd")


# ----------------------------------------------------------------------------------------------- gelu


def gelu_bound(dy: np.ndarray, x: np.ndarray, dx: np.ndarray, approximate: str) -> np.ndarray:
    """erf form: Phi = (1 + erf(x / sqrt 2)) / 2 errs by (3 U of erf, x / sqrt 2's rounding through erf's slope
    under U/2, 1 + erf's U(1 + |erf|)) / 2 absolute; x phi(x) by (x^2 / 2) U from its argument's rounding, 2.04 U
    from the exp and a U for each of three products; their sum and the product with dy a U each.
    tanh form: u = k (x + a x^3) errs by 5 U relatively; t = 1 - 2 / (exp(2u) + 1) by (1 - t^2) / 2 times exp's
    relative error (10|u| + 2.04) U, plus 2 U of q = 2 / (e + 1) and U of t; (1 - t)(1 + t) by 2|t| that plus
    3 U of itself; (1 + t) / 2 by half of t's error and a U; the right term x / 2 (1 - t^2) du by its factor
    errors (du = k (1 + 3 a x^2) 4 U) and 3 U."""
    dy, x = np.abs(dy.astype(np.float64)), x.astype(np.float64)
    if approximate == "tanh":
        k, a = math.sqrt(2 / math.pi), 0.044715
        u = k * (x + a * x**3)
        t = np.tanh(u)
        sech2 = 1 - t * t
        du = k * (1 + 3 * a * x * x)
        err_t = U * (sech2 / 2 * (10 * np.abs(u) + 2.04) + 2 * (1 - t) + np.abs(t))
        err_left = 0.5 * (err_t + U * np.abs(1 + t))
        err_right = 0.5 * np.abs(x) * du * (2 * np.abs(t) * err_t + 3 * U * sech2) + 8 * U * 0.5 * np.abs(x) \
            * sech2 * du
        slope_err = err_left + err_right + U * (np.abs(0.5 * (1 + t)) + 0.5 * np.abs(x) * sech2 * du)
    else:
        xphi = np.abs(x) * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
        slope_err = U * (2.5 + cdf + xphi * (x * x / 2 + 5.1))
    return SLACK * (dy * slope_err + U * np.abs(dx))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("cols", SIZES)
def test_gelu_backward(cols, approximate):
    rows = 4
    dy = rng.standard_normal((rows, cols)).astype(np.float32)
    x = (rng.standard_normal((rows, cols)) * 3.0).astype(np.float32)
    x.flat[: min(x.size, 6)] = [0.0, -12.0, 12.0, 1.0, -3.0, -0.5][: min(x.size, 6)]
    xt = f64(x, grad=True)
    F.gelu(xt, approximate=approximate).backward(f64(dy))
    want = grad_of(xt)
    attrs = {"approximate": approximate}
    got = run_tilings("gelu_backward", (rows, cols), [dy, x], attrs)
    bound = gelu_bound(dy, x, want, approximate)
    assert_within(got, want, bound, "kernel vs autograd")
    ref = reference_of("gelu_backward", [dy, x], attrs, (rows, cols))
    assert_within(ref, want, bound * U64 / U, "reference vs autograd")


def test_gelu_backward_slope_over_a_sweep():
    """gelu' itself (dy = 1) over [-10, 10] densely, both forms, to the same bound."""
    x = np.linspace(-10, 10, 20_001, dtype=np.float32).reshape(1, -1)
    dy = np.ones_like(x)
    for approximate in ("none", "tanh"):
        kernel = compile_kernel("gelu_backward", x.shape, [x.shape, x.shape], {"approximate": approximate})
        out = np.full_like(x, np.nan)
        kernel(out, [dy, x], np.array([[0, 1, 0, x.shape[1]]], dtype=np.int64))
        xt = f64(x, grad=True)
        F.gelu(xt, approximate=approximate).sum().backward()
        want = grad_of(xt)
        assert_within(out, want, gelu_bound(dy, x, want, approximate), f"gelu' ({approximate})")


def test_gelu_backward_refuses_an_unknown_form():
    with pytest.raises(ValueError, match="approximate"):
        compile_kernel("gelu_backward", (2, 3), [(2, 3), (2, 3)], {"approximate": "sigmoid"})


# -------------------------------------------------------------------------------------------- softmax


def softmax_bound(dy: np.ndarray, y: np.ndarray, dx: np.ndarray, log: bool) -> np.ndarray:
    """softmax: s = sum(dy y) errs by (sqrt(n) + 1) U sum|dy y| (the sum, and y's rounding to float32); dy - s by
    U(|dy| + |s|), its product with y (itself rounded) by 2 U |dx|.
    log_softmax: y's rounding to float32 (U|y|) and the exp (2.04 U) make exp(y) err by (|y| + 2.04) U
    relatively, S = sum(dy) errs by sqrt(n) U sum|dy|; the product and the subtraction a U each."""
    n = dy.shape[-1]
    dy, y = dy.astype(np.float64), y.astype(np.float64)
    root = math.sqrt(n) * U
    if log:
        e = np.exp(y)
        total = dy.sum(axis=-1, keepdims=True)
        err = U * (np.abs(dy) + np.abs(dx)) + e * np.abs(total) * U * (np.abs(y) + 3.04) \
            + e * root * np.abs(dy).sum(axis=-1, keepdims=True)
    else:
        total = (dy * y).sum(axis=-1, keepdims=True)
        err = y * (U * (np.abs(dy) + np.abs(total)) + (root + U) * np.abs(dy * y).sum(axis=-1, keepdims=True)) \
            + 2 * U * np.abs(dx)
    return SLACK * err


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("cols", SIZES)
def test_softmax_backward(cols, log):
    rows = 5
    x = rng.standard_normal((rows, cols)) * 3.0
    dy = rng.standard_normal((rows, cols)).astype(np.float32)
    xt = f64(x, grad=True)
    y64 = (F.log_softmax if log else F.softmax)(xt, dim=-1)
    y64.backward(f64(dy))
    want = grad_of(xt)
    y = y64.detach().numpy().astype(np.float32)
    attrs = {"log": log}
    got = run_tilings("softmax_backward", (rows, cols), [dy, y], attrs)
    bound = softmax_bound(dy, y, want, log)
    assert_within(got, want, bound, "kernel vs autograd")
    ref = reference_of("softmax_backward", [dy, y], attrs, (rows, cols))
    assert_within(ref, want, bound, "reference vs autograd")  # the reference also reads the rounded y


# ------------------------------------------------------------------------------------------ embedding


def embedding_case(tokens: int, vocab: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids with repeats (a few ids named many times, some never), and gradients."""
    ids = rng.integers(0, max(1, vocab // 2), tokens).astype(np.int64)
    ids[: tokens // 3] = vocab - 1
    rng.shuffle(ids)
    return rng.standard_normal((tokens, d)).astype(np.float32), ids


def embedding_grad(dy: np.ndarray, ids: np.ndarray, vocab: int, padding_idx: int) -> np.ndarray:
    weight = f64(rng.standard_normal((vocab, dy.shape[1])), grad=True)
    F.embedding(torch.from_numpy(ids), weight, padding_idx=None if padding_idx < 0 else padding_idx) \
        .backward(f64(dy))
    return grad_of(weight)


@pytest.mark.parametrize("padding_idx", [-1, 0, 2])
@pytest.mark.parametrize("tokens,vocab,d", [(1, 1, 1), (12, 7, 3), (40, 9, 17), (33, 5, 64), (25, 11, 129)])
def test_embedding_backward(tokens, vocab, d, padding_idx):
    if padding_idx >= vocab:
        pytest.skip("padding row outside the table")
    dy, ids = embedding_case(tokens, vocab, d)
    if padding_idx >= 0:
        ids[:: 4] = padding_idx
    attrs = {"num_weights": vocab, "padding_idx": padding_idx}
    got = run_tilings("embedding_backward", (vocab, d), [dy, ids], attrs)
    # Bit for bit: the float32 adds in token order (numpy's add.at is unbuffered and in order).
    kept = ids != padding_idx
    exact = np.zeros((vocab, d), np.float32)
    np.add.at(exact, ids[kept], dy[kept])
    np.testing.assert_array_equal(got, exact)
    want = embedding_grad(dy, ids, vocab, padding_idx)
    if padding_idx >= 0:
        assert (got[padding_idx] == 0).all() and (want[padding_idx] == 0).all()
    # A float32 sum of n terms in order errs by at most gamma_(n-1) = (n - 1) U / (1 - (n - 1) U) of the sum of
    # their magnitudes (Higham's bound, rigorous: no slack; exact for one term).
    count = np.bincount(ids[kept], minlength=vocab).astype(np.float64)[:, None]
    magnitude = np.zeros((vocab, d))
    np.add.at(magnitude, ids[kept], np.abs(dy[kept]).astype(np.float64))

    def gamma(unit: float) -> np.ndarray:
        steps = np.maximum(count - 1, 0) * unit
        return steps / (1 - steps)

    assert_within(got, want, gamma(U) * magnitude, "kernel vs autograd")
    ref = reference_of("embedding_backward", [dy, ids], attrs, (vocab, d))
    assert_within(ref, want, gamma(U64) * magnitude, "reference vs autograd")


def test_embedding_backward_skips_ids_out_of_range():
    """The kernel writes nothing outside its table for an id past either end (the reference refuses it)."""
    vocab, d = 6, 5
    dy, ids = embedding_case(10, vocab, d)
    ids[[1, 4, 7]] = [vocab, -1, 1 << 40]
    guarded = np.full((vocab + 2, d), 99.0, np.float32)
    out = guarded[1:-1]
    kernel = compile_kernel("embedding_backward", (vocab, d), [dy.shape, ids.shape], {"num_weights": vocab})
    for tiles in tilings(vocab, d).values():
        kernel(out, [dy, ids], tiles)
        assert (guarded[0] == 99.0).all() and (guarded[-1] == 99.0).all()
        good = (ids >= 0) & (ids < vocab)
        exact = np.zeros((vocab, d), np.float32)
        np.add.at(exact, ids[good], dy[good])
        np.testing.assert_array_equal(out, exact)
    with pytest.raises(ValueError, match="out of range"):
        ops.kernel("embedding_backward").reference([dy, ids], {"num_weights": vocab}, (vocab, d))


def test_embedding_backward_checks_num_weights():
    with pytest.raises(ValueError, match="num_weights"):
        compile_kernel("embedding_backward", (4, 2), [(3, 2), (3,)], {"num_weights": 5})
