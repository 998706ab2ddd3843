"""Embedding lookup: out[t, c] = weight[ids[t], c].

Ids are range-checked in Python before the call rather than clamped in the kernel: a bad id is a
bug upstream, and clamping would hide it behind plausible-looking output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsc.runtime.lowering import (
    KernelBuilder,
    KernelIR,
    KernelSpec,
    for_range,
    i64,
    load_at,
    register_lowering,
    store_at,
)


@register_lowering("embedding")
def lower_embedding(spec: KernelSpec) -> KernelIR:
    if len(spec.out_shape) != 2 or len(spec.in_shapes) != 2:
        raise ValueError(f"embedding: expected out [T, D] and inputs weight [V, D], ids [T]; got {spec}")
    t_dim, d = spec.out_shape
    w_shape, ids_shape = spec.in_shapes
    if len(w_shape) != 2 or w_shape[1] != d or ids_shape != (t_dim,):
        raise ValueError(f"embedding: inputs {spec.in_shapes}, expected [V, {d}] and [{t_dim}]")
    vocab = w_shape[0]
    kb = KernelBuilder(spec, ["f32", "i64"])
    b = kb.b
    w_ptr, ids_ptr = kb.inputs

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "t") as t:
            w_row = b.gep(w_ptr, [b.mul(load_at(b, ids_ptr, t), i64(d))], inbounds=True)
            o_row = b.gep(kb.out, [b.mul(t, i64(d))], inbounds=True)
            with for_range(b, c0, c1, "c") as c:
                store_at(b, load_at(b, w_row, c), o_row, c)

    def check_ids(inputs: Sequence[np.ndarray]) -> None:
        ids = inputs[1]
        bad = (ids < 0) | (ids >= vocab)
        if bad.any():
            t = int(np.argmax(bad))
            raise ValueError(f"embedding: id {int(ids[t])} at position {t} is outside [0, {vocab})")

    return kb.finish(check_ids)
