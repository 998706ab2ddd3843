"""im2col: the windows of a convolution or a pooling gathered from an [N, C, *spatial] input, as a layout op.

A convolution is a matmul once every output position holds its window of the input (an implicit GEMM), and a
pooling is a reduction over the same windows. On the wafer the gather is how activations are routed to the PEs
that hold the filter (or reduce the window): each input element is sent to every window it falls in, so the op
moves data and computes nothing. Its output is kernel-size times larger than its input; a 1x1 convolution with
stride 1 needs no gather at all (a permute).

Along each spatial dim, window `o` reads input positions `o * stride - before + k * dilation` for k < kernel
(torch's rule for convolutions and pools), or with `adaptive` the positions floor(o * size / out) up to
ceil((o + 1) * size / out), torch's adaptive pooling rule; `kernel` is then the widest window. A position
outside the input (padding, a ceil-mode window past the edge, an adaptive window narrower than the widest)
reads attrs["fill"]: 0 for a convolution or a mean, -inf for a max.

attrs: kernel, stride, dilation, padding ([before, after] per dim), output (the output's spatial sizes),
adaptive, fill, and form:
- "patches": [G, N * prod(output), C/G * prod(kernel)], a grouped matmul's left operand, each row one
  position's window over the channels of its group, in the (channel, kernel offsets) order of a filter
  [OC, C/G, *kernel] viewed as [G, OC/G, K];
- "windows": [N, C, *output, prod(kernel)], what the pool kernel reduces over its last dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsc.core.ir import Node
from wsc.ops.base import LayoutOp, register

OUTSIDE = -1  # the index of a window position that falls outside the input


def window_index(size: int, out: int, kernel: int, stride: int, before: int, dilation: int) -> np.ndarray:
    """[out, kernel] input positions of each window along one dim, OUTSIDE where it leaves the input."""
    index = np.arange(out)[:, None] * stride - before + np.arange(kernel)[None, :] * dilation
    return np.where((index >= 0) & (index < size), index, OUTSIDE)


def adaptive_bounds(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's adaptive pooling windows along one dim: [start, end) of each of the `out` windows."""
    o = np.arange(out)
    return (o * size) // out, -((-(o + 1) * size) // out)


def adaptive_widest(size: int, out: int) -> int:
    """The widest of torch's adaptive windows along one dim."""
    start, end = adaptive_bounds(size, out)
    return int((end - start).max()) if out else 0


def adaptive_index(size: int, out: int) -> np.ndarray:
    """[out, widest window] input positions of torch's adaptive windows, OUTSIDE past each window's end."""
    start, end = adaptive_bounds(size, out)
    index = start[:, None] + np.arange(adaptive_widest(size, out))[None, :]
    return np.where(index < end[:, None], index, OUTSIDE)


def gather_windows(x: np.ndarray, tables: Sequence[np.ndarray], fill: float) -> np.ndarray:
    """x [N, C, *spatial] gathered through one [out_d, kernel_d] index table per spatial dim:
    [N, C, out_1, kernel_1, out_2, kernel_2, ...], `fill` where a table says OUTSIDE."""
    spatial = x.shape[2:]
    # One fill element past the end of every spatial dim: OUTSIDE indexes it.
    padded = np.pad(x, [(0, 0), (0, 0)] + [(0, 1)] * len(spatial), constant_values=fill)
    value = padded
    for d, (size, table) in enumerate(zip(spatial, tables, strict=True)):
        axis = 2 + 2 * d
        flat = np.where(table == OUTSIDE, size, table).reshape(-1)
        value = np.take(value, flat, axis=axis)
        value = value.reshape(value.shape[:axis] + table.shape + value.shape[axis + 1:])
    return value


@register
class Im2col(LayoutOp):
    """The windows of a convolution or pooling, gathered (see the module docstring for the attrs and forms)."""

    name = "im2col"

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        (x,) = values
        a = node.attrs
        spatial, out = x.shape[2:], a["output"]
        if a.get("adaptive", False):
            tables = [adaptive_index(s, o) for s, o in zip(spatial, out, strict=True)]
        else:
            tables = [window_index(s, o, k, st, pad[0], dil) for s, o, k, st, pad, dil
                      in zip(spatial, out, a["kernel"], a["stride"], a["padding"], a["dilation"], strict=True)]
        gathered = gather_windows(x, tables, float(a["fill"]))
        n, c, d = x.shape[0], x.shape[1], len(spatial)
        outs, kernels = list(range(2, 2 + 2 * d, 2)), list(range(3, 3 + 2 * d, 2))
        if a["form"] == "windows":
            value = gathered.transpose([0, 1, *outs, *kernels])
        else:
            g = int(a.get("groups", 1))
            grouped = gathered.reshape(n, g, c // g, *gathered.shape[2:])  # dims after C move one along
            value = grouped.transpose([1, 0, *(i + 1 for i in outs), 2, *(i + 1 for i in kernels)])
        return np.ascontiguousarray(value).reshape(node.shape)
