"""The op table: one file per kernel family, each defining everything its ops mean.

    wsc/ops/matmul.py      matmul (with its fused bias, GELU and residual epilogue, and its split K)
    wsc/ops/attention.py   fused attention (queries held; keys, values and the mask streamed past), mask_bias
    wsc/ops/layernorm.py   layernorm
    wsc/ops/layernorm_backward.py  layernorm_backward: layer norm's input gradient, row statistics recomputed
    wsc/ops/rmsnorm.py     rmsnorm
    wsc/ops/softmax.py     row softmax, optionally causal, and log_softmax
    wsc/ops/softmax_backward.py  softmax_backward: the input gradient of softmax or log_softmax from its output
    wsc/ops/reduce.py      row reductions: sum, mean, var, std, amax, amin (a long row split like matmul's K)
    wsc/ops/nll.py         nll, nll_weight: the pick of a class-index target (cross_entropy)
    wsc/ops/gelu.py        gelu (erf or tanh)
    wsc/ops/gelu_backward.py  gelu_backward: dy * gelu'(x), erf or tanh
    wsc/ops/elementwise.py add, sub, mul, div, maximum, minimum, pow_tensor, comparisons, logical ops, where
                           (each operand broadcast over the output's leading rows)
    wsc/ops/relu.py        relu
    wsc/ops/unary.py       neg, abs, exp, log, log1p, expm1, sqrt, rsqrt, reciprocal, square, sin, cos, tanh, erf,
                           sigmoid, silu, softplus, leaky_relu, elu, clamp, pow (a number exponent)
    wsc/ops/embedding.py   embedding lookup
    wsc/ops/embedding_backward.py  embedding_backward: the table's gradient, each id's output gradients summed
    wsc/ops/batchnorm.py   batchnorm: eval-mode batch norm, per channel (dim 1)
    wsc/ops/pool.py        pool: the max or mean of each gathered window (max, average and adaptive pools)
    wsc/ops/im2col.py      im2col: the windows of a convolution or pooling gathered (layout: routing, no compute)
    wsc/ops/layout.py      reshape, permute, slice, concat, expand, repeat, repeat_interleave, flip, pad,
                           index_select, gather, index, cast: data movement only

For each op: its ABI shapes, FLOPs and backward FLOPs, the SRAM a PE needs for a tile and whether it needs whole
rows, its SRAM traffic, how it may be cut (a reduction that can be split), its LLVM lowering and its numpy
reference (see `base.py` for the methods and their defaults). Every module of this package is loaded with it, so
adding an op is adding a file here (and, for the ATen ops that produce it, a rule in the family's module of
passes/legalize/).
`docs/architecture.md` walks through adding one.
"""

from __future__ import annotations

from wsc.core.registry import load_modules
from wsc.ops.base import (
    KernelOp,
    LayoutOp,
    Op,
    get,
    is_layout,
    kernel,
    kernel_names,
    layout_names,
    layout_op,
    output_view,
    register,
    unregister,
    verify_plans,
)

__all__ = [
    "KernelOp", "LayoutOp", "Op", "get", "is_layout", "kernel", "kernel_names", "layout_op", "layout_names",
    "output_view", "register", "unregister", "verify_plans",
]

load_modules(__name__, __path__, skip=("base", "codegen"))
