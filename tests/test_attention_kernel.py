"""The attention kernel's online softmax and its vector exp, against float64.

Tolerances follow the arithmetic (EPS is float32's, 2^-23, two units of its rounding): a score is an fp32 dot
product of D terms (about sqrt(D) ulp of the sum of |q_d k_d| times the scale) then a scaling, a mask add and the
subtraction of the running max (an ulp of each result); its p = exp(s - max) is off by that absolute error
relative to p, plus the exp's own ulp. An error eps_j in p_j moves a weighted mean o = sum p_j v_j / sum p_j by
P_j eps_j (v_j - o); the sums over the n visible keys (p v and p, with a rescale per key block) add about
sqrt(n) + blocks ulp of sum P_j |v_j| and of |o|; the division one more. Each bound is then doubled (first-order
terms only). Rows the reference gives as exactly 0 (no key seen, or every key masked) must be exactly 0.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from wsc import ops
from wsc.ops.attention import _check, blocking, mask_kind
from wsc.ops.codegen import KernelBuilder, KernelSpec, emit_vector_exp, for_range, i64, load_vector, store_vector
from wsc.ops.softmax import causal_visible
from wsc.runtime.lowering import Kernel, compile_kernel, host_cpu

EPS = float(np.finfo(np.float32).eps)
rng = np.random.default_rng(20240)


# ------------------------------------------------------------------------------------------------ vector exp


def exp_kernel(size: int, lanes: int) -> Kernel:
    """out = exp(x) over a [size] array, `lanes` floats at a time (1: the scalar form of the same code)."""
    spec = KernelSpec("vector_exp", (size,), ((size,),), {"lanes": lanes}, host_cpu())
    kb = KernelBuilder(spec, ["f32"])
    b = kb.b
    with kb.for_tiles() as (_, _, c0, c1):
        with for_range(b, i64(0), b.sdiv(b.sub(c1, c0), i64(lanes)), "i") as i:
            at = b.add(c0, b.mul(i, i64(lanes)))
            src, dst = b.gep(kb.inputs[0], [at]), b.gep(kb.out, [at])
            if lanes == 1:
                b.store(emit_vector_exp(b, b.load(src)), dst)
            else:
                store_vector(b, emit_vector_exp(b, load_vector(b, src, lanes)), dst)
    return Kernel(spec, kb.finish())


def exp_of(x: np.ndarray, lanes: int) -> np.ndarray:
    x = np.concatenate([x.astype(np.float32), np.zeros((-len(x)) % lanes, np.float32)])
    out = np.full_like(x, np.nan)
    exp_kernel(len(x), lanes)(out, [x], np.array([[0, 1, 0, len(x)]], dtype=np.int64))
    return out


EXP_MIN, EXP_MAX = np.float32(-87.33654022216797), np.float32(88.72283172607422)


@pytest.mark.parametrize("lanes", [1, host_cpu().lanes])
def test_vector_exp_is_within_its_stated_ulp(lanes):
    """At most 1.02 ulp (its docstring's bound, the worst over every float32 input) on a dense sweep of the range
    whose exp is a normal float, the arguments attention gives it ([-20, 0]) sampled densest."""
    x = np.concatenate([np.linspace(EXP_MIN, EXP_MAX, 1_500_001, dtype=np.float32),
                        -rng.exponential(3.0, 500_000).astype(np.float32),
                        rng.uniform(-1e-3, 1e-3, 100_000).astype(np.float32)])
    got = exp_of(x, lanes)[:len(x)].astype(np.float64)
    want = np.exp(x.astype(np.float64))
    normal = (want >= 2.0**-126) & (want <= np.finfo(np.float32).max)
    ulps = np.abs(got[normal] - want[normal]) / np.spacing(want[normal].astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.02, f"{ulps.max():.3f} ulp at x = {x[normal][ulps.argmax()]!r}"


@pytest.mark.parametrize("lanes", [1, host_cpu().lanes])
def test_vector_exp_edges(lanes):
    """0 from where exp would be subnormal down to -inf, exactly 1 at 0 and tiny arguments, inf from just past the
    largest finite result up to +inf, NaN for NaN; the ends of the finite range are normal and finite."""
    below, above = np.nextafter(EXP_MIN, np.float32(-100)), np.nextafter(EXP_MAX, np.float32(100))
    exact = [(-np.inf, 0.0), (-1e30, 0.0), (-100.0, 0.0), (-87.5, 0.0), (below, 0.0), (0.0, 1.0), (-0.0, 1.0),
             (1e-30, 1.0), (-1e-30, 1.0), (1e-45, 1.0), (above, np.inf), (89.0, np.inf), (1e30, np.inf),
             (np.inf, np.inf)]
    x = np.array([a for a, _ in exact] + [np.nan, EXP_MIN, EXP_MAX, 88.0], dtype=np.float32)
    got = exp_of(x, lanes)
    for at, (xi, want) in enumerate(exact):
        assert got[at] == want, f"exp({xi!r}) = {got[at]!r}, expected {want!r}"
    nan, low, high, e88 = got[len(exact):len(exact) + 4]
    assert np.isnan(nan)
    assert 2.0**-126 <= low < 1.2e-38
    assert np.finfo(np.float32).max * 0.99 < high <= np.finfo(np.float32).max
    assert abs(e88 / math.exp(88.0) - 1) < 2 * EPS


# ------------------------------------------------------------------------------------------------ attention


def attrs_of(m: int, causal: bool = False, **extra) -> dict:
    return {"scale": 0.37, "causal": causal, "group_rows": m, **extra}


def shapes_of(inputs: list[np.ndarray]) -> list[tuple[int, ...]]:
    return [x.shape for x in inputs]


def run(inputs: list[np.ndarray], attrs: dict, tiles: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    rows, dv = inputs[0].shape[0], inputs[2].shape[2]
    out = np.full((rows, dv), np.float32(1234.5))
    kernel = compile_kernel("attention", (rows, dv), shapes_of(inputs), attrs)
    kernel(out, inputs, np.array([[0, rows, 0, dv]] if tiles is None else tiles, dtype=np.int64), threads=threads)
    return out


def reference_and_tolerance(inputs: list[np.ndarray], attrs: dict) -> tuple[np.ndarray, np.ndarray]:
    """The op's float64 reference, and per element the error bound of the module docstring."""
    rows, dv = inputs[0].shape[0], inputs[2].shape[2]
    lay = _check(KernelSpec("attention", (rows, dv), tuple(shapes_of(inputs)), attrs))
    want = ops.kernel("attention").reference(inputs, attrs, (rows, dv))
    q, k, v = (x.astype(np.float64) for x in inputs[:3])
    kv = lay.kv_groups()
    qg, kg, vg = q.reshape(lay.g, lay.m, lay.d), k[kv], v[kv]
    scaled = np.einsum("gmd,gnd->gmn", qg, kg) * lay.scale
    magnitude = np.einsum("gmd,gnd->gmn", np.abs(qg), np.abs(kg)) * abs(lay.scale)
    seen = np.broadcast_to(causal_visible(lay.m, lay.n, lay.diagonal), scaled.shape) if lay.causal \
        else np.ones(scaled.shape, dtype=bool)
    s = scaled
    if lay.mask:
        entries = lay.mask_entries(inputs[3], s.shape)
        if lay.mask == "additive":
            s = s + entries.astype(np.float64)
        else:
            seen = seen & (entries != 0)
    with np.errstate(invalid="ignore"):
        counted = seen & np.isfinite(s)
        top = np.where(counted, s, -np.inf).max(axis=-1, keepdims=True)
        p = np.where(counted, np.exp(s - np.where(np.isfinite(top), top, 0.0)), 0.0)
        total = p.sum(axis=-1, keepdims=True)
        prob = p / np.where(total == 0, 1.0, total)
        # Rounding of the dot product, the scaling, the mask add and the subtraction of the max; then the exp.
        rounded = np.where(counted, np.abs(scaled) + np.abs(s) + np.abs(s - top), 0.0)
    score_error = EPS * ((math.sqrt(lay.d) + 2) * magnitude + rounded) + 2 * EPS
    visible = seen.sum(axis=-1, keepdims=True)
    blocks = np.ceil(visible / blocking(host_cpu(), lay.d, lay.dv).key_block)
    o = np.abs(want.reshape(lay.g, lay.m, lay.dv))
    weighted = prob * score_error
    moved = np.einsum("gmn,gnc->gmc", weighted, np.abs(vg)) + o * weighted.sum(axis=-1, keepdims=True)
    summed = EPS * (np.sqrt(visible) + blocks + 3) * (np.einsum("gmn,gnc->gmc", prob, np.abs(vg)) + o)
    return want, (2 * (moved + summed)).reshape(rows, dv)


def assert_matches_reference(got: np.ndarray, inputs: list[np.ndarray], attrs: dict, what: str = "") -> None:
    want, tol = reference_and_tolerance(inputs, attrs)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what}: NaN where the reference has NaN")
    err = np.abs(got - want)
    worst = np.unravel_index(np.argmax(np.where(nan, 0.0, err - tol)), got.shape)
    assert np.all((err <= tol) | nan), (f"{what}: |error| {err[worst]:.3g} over its bound {tol[worst]:.3g} at "
                                        f"{worst} (got {got[worst]!r}, want {want[worst]!r})")


def qkv(g: int, m: int, n: int, d: int, dv: int | None = None, gk: int | None = None,
        scale: float = 2.0) -> list[np.ndarray]:
    gk = gk or g
    return [(rng.standard_normal(s) * scale).astype(np.float32)
            for s in ((g * m, d), (gk, n, d), (gk, n, dv or d))]


def key_block(d: int, dv: int | None = None) -> int:
    return blocking(host_cpu(), d, dv or d).key_block


# N across the key blocks of each D: 1, 2, 7, one short of a block, a block, one over, and 300.
SIZES = [(d, n) for d in (1, 3, 7, 8, 9, 64, 65, 128)
         for n in sorted({1, 2, 7, key_block(d) - 1, key_block(d), key_block(d) + 1, 300})]


@pytest.mark.parametrize("d,n", SIZES, ids=[f"d{d}-n{n}" for d, n in SIZES])
def test_matches_float64_reference(d, n):
    """Not causal (a few queries over all N keys), causal with the default diagonal (the last keys form the
    square), and a top-left causal square (diagonal 0, query i sees i + 1 keys: every block boundary is crossed
    by some row)."""
    m = min(n, 5)
    inputs = qkv(2, m, n, d)
    assert_matches_reference(run(inputs, attrs_of(m)), inputs, attrs_of(m), "not causal")
    assert_matches_reference(run(inputs, attrs_of(m, True)), inputs, attrs_of(m, True), "causal")
    square = qkv(2, n, n, d, dv=max(1, d - 2))
    attrs = attrs_of(n, True, diagonal=0)
    assert_matches_reference(run(square, attrs), square, attrs, "causal square")


@pytest.mark.parametrize("diagonal", [0, -1, -3, -40, 2, 500, None])
def test_causal_diagonals(diagonal):
    """Rows that see no key (diagonal < 0) are exactly 0; a diagonal past the last key lets every row see all."""
    m, n, d = 37, 140, 16
    attrs = attrs_of(m, True) if diagonal is None else attrs_of(m, True, diagonal=diagonal)
    inputs = qkv(3, m, n, d)
    out = run(inputs, attrs)
    assert_matches_reference(out, inputs, attrs, f"diagonal {diagonal}")
    if diagonal is not None and diagonal < 0:
        assert np.all(out.reshape(3, m, d)[:, :-diagonal] == 0)


def masked_inputs(g: int, m: int, n: int, d: int, mask: np.ndarray) -> list[np.ndarray]:
    return qkv(g, m, n, d) + [mask]


@pytest.mark.parametrize("n,d", [(9, 8), (130, 64), (70, 13)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_additive_masks(n, d, causal):
    """A per-query mask with -inf entries, a row -inf at every key, a row hidden by finite values only (eager
    spreads it evenly) and a key-padding mask that broadcasts over heads and queries."""
    g, m = 4, 6
    mask = rng.standard_normal((2, 2, m, n)).astype(np.float32) * 3
    mask[rng.random(mask.shape) < 0.3] = -np.inf
    mask[0, 1, 2] = -np.inf
    mask[1, 0, 4] = -1e9
    mask[1, 1, :, -1] = -np.inf  # the last key (every causal row's own) hidden
    attrs = attrs_of(m, causal, mask="additive")
    inputs = masked_inputs(g, m, n, d, mask)
    out = run(inputs, attrs)
    assert_matches_reference(out, inputs, attrs, "per-query")
    assert np.all(out.reshape(g, m, d)[1, 2] == 0), "a row the mask hides from every key is 0"
    padding = np.where(rng.random((2, 1, 1, n)) < 0.4, -np.inf, 0.0).astype(np.float32)
    padding[1, 0, 0] = -np.inf
    inputs = masked_inputs(g, m, n, d, padding)
    out = run(inputs, attrs)
    assert_matches_reference(out, inputs, attrs, "padding")
    assert np.all(out.reshape(g, m, d)[2:] == 0)


@pytest.mark.parametrize("kind", ["bool", "f32"])
@pytest.mark.parametrize("n,d", [(9, 4), (129, 64), (70, 13)])
def test_bool_masks(kind, n, d):
    """Seen where nonzero, as 1-byte bools or float 0.0 / 1.0, per query and head or one row for all queries;
    rows that see nothing are 0."""
    g, m = 4, 5
    seen = rng.random((1, 4, m, n)) < 0.5
    seen[0, 2, 3] = False
    attrs = attrs_of(m, True, mask="bool", mask_kind=kind) if kind == "f32" else attrs_of(m, True, mask="bool")
    assert mask_kind(attrs) == kind
    mask = seen if kind == "bool" else seen.astype(np.float32)
    inputs = masked_inputs(g, m, n, d, mask)
    out = run(inputs, attrs)
    assert_matches_reference(out, inputs, attrs, "per query")
    assert np.all(out.reshape(g, m, d)[2, 3] == 0)
    keys = rng.random((1, 1, 1, n)) < 0.7
    inputs = masked_inputs(g, m, n, d, keys if kind == "bool" else keys.astype(np.float32))
    assert_matches_reference(run(inputs, attrs), inputs, attrs, "one row of keys")


@pytest.mark.parametrize("groups,gk,g", [(3, 2, 6), (2, 1, 6), (1, 2, 6), (4, 1, 4)])
def test_grouped_and_broadcast_keys(groups, gk, g):
    """`groups` query groups share a key/value group, and the key/value groups repeat over the batch (modulo)."""
    m, n, d = 7, 75, 24
    inputs = qkv(g, m, n, d, gk=gk)
    attrs = attrs_of(m, True, groups=groups)
    out = run(inputs, attrs)
    assert_matches_reference(out, inputs, attrs)
    kv = (np.arange(g) // groups) % gk
    for h in range(g):
        alone = run([inputs[0][h * m:(h + 1) * m], inputs[1][kv[h]:kv[h] + 1], inputs[2][kv[h]:kv[h] + 1]],
                    attrs_of(m, True))
        np.testing.assert_array_equal(out[h * m:(h + 1) * m], alone, err_msg=f"group {h} against its heads alone")


def random_tiles(rows: int, cols: int, m: int) -> np.ndarray:
    """Tiles covering [rows, cols] once: row cuts at random (inside groups too) plus a few single rows, each row
    band cut into random column ranges, in random order."""
    cuts = set(rng.integers(1, rows, 6).tolist()) | {m // 2, m + 1}
    single = rng.integers(0, rows - 1, 3).tolist()
    cuts |= set(single) | {r + 1 for r in single}
    rows_at = sorted({0, rows} | {c for c in cuts if 0 < c < rows})
    tiles = []
    for r0, r1 in zip(rows_at[:-1], rows_at[1:], strict=True):
        cols_at = sorted({0, cols} | set(rng.integers(1, cols, 2).tolist())) if cols > 1 else [0, cols]
        tiles += [(r0, r1, c0, c1) for c0, c1 in zip(cols_at[:-1], cols_at[1:], strict=True)]
    return np.array([tiles[i] for i in rng.permutation(len(tiles))], dtype=np.int64)


@pytest.mark.parametrize("m,n,d,dv,causal", [(40, 40, 64, 64, True), (19, 150, 9, 70, True), (33, 33, 5, 3, True),
                                             (12, 200, 128, 128, False), (50, 1, 16, 16, False)])
def test_any_tiling_gives_the_same_bits(m, n, d, dv, causal):
    """Random tile tables (cut inside groups, single-row tiles, column ranges), one tile per row and column,
    and two threads all give exactly the output of one tile over everything."""
    g = 3
    inputs = qkv(g, m, n, d, dv=dv)
    attrs = attrs_of(m, causal)
    whole = run(inputs, attrs)
    assert_matches_reference(whole, inputs, attrs)
    rows = g * m
    for trial in range(3):
        tiles = random_tiles(rows, dv, m)
        np.testing.assert_array_equal(run(inputs, attrs, tiles), whole, err_msg=f"random tiles {trial}")
        np.testing.assert_array_equal(run(inputs, attrs, tiles, threads=2), whole, err_msg=f"2 threads {trial}")
    cells = [(r, r + 1, c, c + 1) for r in range(0, rows, 7) for c in range(dv)]
    out = np.full((rows, dv), np.float32(1234.5))
    compile_kernel("attention", (rows, dv), shapes_of(inputs), attrs)(out, inputs, np.array(cells, dtype=np.int64))
    written = out[::7]
    np.testing.assert_array_equal(written, whole[::7], err_msg="one element a tile")
    assert np.all(np.delete(out, np.s_[::7], axis=0) == np.float32(1234.5)), "a tile writes only its elements"


def rising_scores(g: int, m: int, n: int, d: int, top: float) -> list[np.ndarray]:
    """Keys whose score rises with the key index (to `top` at the last key, scale 1): every key block raises the
    running max, so each block rescales what came before."""
    q = np.zeros((g * m, d), np.float32)
    q[:, 0] = 1.0
    k = np.zeros((g, n, d), np.float32)
    k[:, :, 0] = np.linspace(-top / 4, top, n)
    k[:, :, 1:] = rng.standard_normal((g, n, d - 1)) * 0.1
    q[:, 1:] = rng.standard_normal((g * m, d - 1)) * 0.1
    return [q, k, rng.standard_normal((g, n, d)).astype(np.float32)]


@pytest.mark.parametrize("top", [4.0, 30.0, 80.0])
def test_rising_scores_are_rescaled(top):
    """Scores rising along the keys: each block's max is above the last, so the accumulated p v and sum are
    rescaled at every block; with a top of 80 the first keys' p underflow to 0 once the max passes them."""
    n, d = 5 * key_block(32) + 3, 32
    inputs = rising_scores(2, 4, n, d, top)
    attrs = {"scale": 1.0, "group_rows": 4}
    assert_matches_reference(run(inputs, attrs), inputs, attrs, f"rising to {top}")
    falling = [inputs[0], inputs[1][:, ::-1].copy(), inputs[2][:, ::-1].copy()]
    assert_matches_reference(run(falling, attrs), falling, attrs, f"falling from {top}")


def test_large_scores_do_not_overflow():
    """Scores of +-80 and spread over +-300: exp(s - max) never overflows, and the p far below the max are 0."""
    g, m, n, d = 2, 6, 150, 16
    q, k, v = qkv(g, m, n, d)
    q[:, :] = 0.0
    q[:, 0] = 1.0
    k[:, :, 0] = np.where(rng.random((g, n)) < 0.5, 80.0, -80.0)
    k[0, 7, 0] = 300.0
    k[1, 140, 0] = -300.0
    inputs = [q, k, v]
    attrs = {"scale": 1.0, "group_rows": m, "causal": True}
    out = run(inputs, attrs)
    assert np.isfinite(out).all()
    assert_matches_reference(out, inputs, attrs)
    spread = qkv(g, m, n, d, scale=12.0)  # scores of a few hundred
    assert_matches_reference(run(spread, attrs), spread, attrs, "spread")


def test_nan_and_inf_make_their_rows_nan():
    """A NaN in a query, +inf in a key (inf * 0 = NaN or an inf score) or an additive mask's NaN or +inf makes
    its row NaN, as in PyTorch; the other rows are untouched."""
    g, m, n, d = 2, 4, 70, 16
    q, k, v = qkv(g, m, n, d)
    q[1, 3] = np.nan
    mask = np.zeros((1, 1, m, n), np.float32)
    mask[0, 0, 2, 65] = np.inf
    mask[0, 0, 0, 10] = np.nan
    inputs = [q, k, v, mask]
    attrs = attrs_of(m, False, mask="additive")
    out = run(inputs, attrs)
    want = np.zeros((g * m,), bool)
    want[[0, 1, 2, 4, 6]] = True
    np.testing.assert_array_equal(np.isnan(out).all(axis=1), want)
    np.testing.assert_array_equal(np.isnan(out).any(axis=1), want)
    assert_matches_reference(out, inputs, attrs)
    q2, k2, v2 = qkv(g, m, n, d)
    q2[:, 5] = np.abs(q2[:, 5]) + 0.1  # so that the key's score is +inf, not -inf (a masked key)
    k2[0, 30, 5] = np.inf
    out = run([q2, k2, v2], attrs_of(m))
    assert np.isnan(out[:m]).all() and np.isfinite(out[m:]).all()


def test_no_infinity_in_the_ir_without_a_mask():
    """The running max starts at -FLT_MAX and exp overflows by a product: no -inf or +inf constant is needed."""
    spec = KernelSpec("attention", (64, 64), ((64, 64), (1, 64, 64), (1, 64, 64)), attrs_of(64, True), host_cpu())
    text = str(ops.kernel("attention").lower(spec).module).lower()
    assert "0xfff0000000000000" not in text and "0x7ff0000000000000" not in text


@pytest.mark.parametrize("bits", [128, 256, 512])
@pytest.mark.parametrize("d,n", [(64, 70), (20, 33), (128, 40)])
def test_every_vector_width(bits, d, n):
    """The kernel as lowered for hosts of 4, 8 and 16 lanes (run here, where LLVM splits or narrows vectors
    wider than this host's): the transposed reduction and the lane masks of each width."""
    m = 9
    inputs = qkv(2, m, n, d, dv=d + 3)
    for causal in (False, True):
        attrs = attrs_of(m, causal)
        host = dataclasses.replace(host_cpu(), vector_bits=bits)
        spec = KernelSpec("attention", (2 * m, d + 3), tuple(shapes_of(inputs)), attrs, host)
        out = np.full((2 * m, d + 3), np.nan, dtype=np.float32)
        Kernel(spec, ops.kernel("attention").lower(spec))(out, inputs, np.array([[0, 2 * m, 0, d + 3]], np.int64))
        assert_matches_reference(out, inputs, attrs, f"{bits}-bit vectors")
