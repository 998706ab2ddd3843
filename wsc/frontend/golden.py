"""The golden reference: every captured node's value in eager PyTorch, on given weights and inputs.

Verification compares each value of the compiled program with the value of the ATen node it holds
(`Node.holds`). The values come from interpreting the graph the tracer captured (torch.fx's Interpreter over the
exported program, or over the symbolic trace), so they are PyTorch's own arithmetic on the same ATen ops, not
the op table's idea of them. Values are copied as they are recorded: an in-place op later in the graph
(`add_`) must not change a value already kept, and a buffer the model writes (batch-norm statistics) is
handed in as a copy so that the model's own stays as it was.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx
from torch.nn.utils.stateless import _reparametrize_module

from wsc.core.errors import WscError
from wsc.frontend.capture import Captured


class _Recorder(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, wanted: Collection[str]):
        super().__init__(module, garbage_collect_values=True)
        self.wanted = wanted
        self.values: dict[str, np.ndarray] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        if n.name in self.wanted and isinstance(value, torch.Tensor):
            self.values[n.name] = _numpy_copy(value)
        return value


def _numpy_copy(value: torch.Tensor) -> np.ndarray:
    value = value.detach()
    if value.dtype in (torch.float16, torch.bfloat16, torch.float64):
        value = value.float()
    return value.cpu().clone().numpy()


def golden_values(captured: Captured, inputs: Sequence[np.ndarray], weights: Mapping[str, torch.Tensor],
                  wanted: Collection[str]) -> dict[str, np.ndarray]:
    """The values of the captured nodes named in `wanted`, as eager PyTorch computes them on `inputs` (the
    program's inputs, in order) with `weights` (store key -> tensor, real, not meta)."""
    if captured.fx is None:
        raise WscError("this capture kept no fx graph, so it has no golden reference; capture the model again")
    for key, tensor in weights.items():
        if tensor.is_meta:
            raise WscError(f"the golden reference needs real weights, and {key} is on the meta device; give --weights")
    tensors = [torch.from_numpy(np.array(value)) for value in inputs]
    # Buffers are the weights a graph may write (batch norm's statistics): the interpreter gets copies of them.
    written = {n.attrs["key"] for n in captured.graph.params if n.attrs.get("kind") == "buffer"}
    written |= {name for name, _ in captured.fx.named_buffers()}
    state = {key: t.detach().clone() if key in written else t.detach() for key, t in weights.items()}
    args = [tensors[what] if kind == "input" else state[what] if kind == "weight" else what
            for kind, what in captured.fx_args]
    recorder = _Recorder(captured.fx, wanted)
    with torch.no_grad():
        if captured.how != "symbolic_trace":
            recorder.run(*args)
        else:  # the symbolic trace reads its weights as attributes of the traced module
            with _reparametrize_module(captured.fx, state):
                recorder.run(*args)
    return recorder.values
