"""The layout ops (wsc/ops/layout.py) and their ATen rules (passes/legalize/layout.py): each compiled on its own
and several in one model, run, and equal to eager PyTorch element for element (a layout op only copies);
permutes that compose; index ranges as torch checks them; the cases legalize refuses."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wsc
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node, Ref
from wsc.frontend.capture import capture
from wsc.passes.fold_constants import FoldConstants
from wsc.passes.legalize import Legalize

SOURCES = ("input", "param", "const")


class Layout(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor], **buffers: torch.Tensor):
        super().__init__()
        self.fn = fn
        for name, value in buffers.items():
            self.register_buffer(name, value)

    def forward(self, *xs):
        return self.fn(self, *xs)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 7 * len(shape)))


def legal(model: nn.Module, inputs: tuple) -> Graph:
    captured = capture(model.eval(), inputs)
    return Legalize().run(FoldConstants().run(captured.graph, captured.weights), captured.weights)


def compile_exact(model: nn.Module, inputs: tuple) -> wsc.Compiled:
    """Compile, run, and hold the run to eager exactly (same shape, same dtype, every element equal)."""
    # The whole batch in one pass: an input whose first dim happens to equal the batch (an index) carries none.
    micro = {"micro_batch": inputs[0].shape[0]} if inputs[0].dim() >= 2 else {}
    compiled = wsc.compile(model, inputs, "mesh-16x16", time_limit=0.3, **micro)
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    got, want = compiled(*inputs), model(*inputs)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    return compiled


def body_ops(graph: Graph) -> list[str]:
    return [n.op for n in graph if n.op not in SOURCES]


IDX = torch.tensor([2, 0, 2, 1])
NEGATIVE = torch.tensor([-1, 0, -3, 1])

# (id, fn(module, *inputs), inputs, the layout ops the legal graph must hold)
CASES: list[tuple[str, Callable[..., torch.Tensor], tuple, set[str]]] = [
    ("cat_last_dim_three_inputs", lambda m, x, y: torch.cat([x, y, x], -1), (randn(2, 3, 4), randn(2, 3, 1)),
     {"concat"}),
    ("cat_drops_empty_inputs", lambda m, x, y: torch.cat([x[:0], x, x.new_zeros(0), y]), (randn(2, 5), randn(1, 5)),
     {"concat"}),
    ("cat_rank1", lambda m, x: torch.cat([x, x[1:], x]), (randn(7),), {"concat"}),
    ("cat_one_element", lambda m, x: torch.concat([x, x], 0), (randn(1),), {"concat"}),
    ("stack_negative_dim", lambda m, x, y: torch.stack([x, y, x], -1), (randn(3, 4), randn(3, 4)), {"concat"}),
    ("stack_scalars", lambda m, x: torch.stack([x, x, x]), (randn(),), {"concat"}),
    ("stack_rank4_middle", lambda m, x: torch.stack([x, x.flip(0)], 2), (randn(2, 1, 3, 2),), {"concat", "flip"}),
    ("hstack", lambda m, x: torch.hstack([x, x]), (randn(3, 2),), {"concat"}),
    ("vstack_vectors", lambda m, x: torch.vstack([x, x]), (randn(5),), {"concat"}),
    ("expand_middle_and_leading", lambda m, x: x.expand(2, 3, 4), (randn(3, 1),), {"expand"}),
    ("expand_scalar", lambda m, x: x.expand(2, 3), (randn(),), {"expand"}),
    ("expand_minus_one", lambda m, x: x.expand(-1, 5, -1), (randn(2, 1, 3),), {"expand"}),
    ("expand_as", lambda m, x, y: torch.cat([x.expand_as(y), y]), (randn(4, 1), randn(2, 4, 3)), {"expand"}),
    ("repeat_adds_dims", lambda m, x: x.repeat(2, 1, 3), (randn(2, 3),), {"repeat"}),
    ("repeat_one_element", lambda m, x: x.repeat(4), (randn(1),), {"repeat"}),
    ("repeat_interleave_dim", lambda m, x: x.repeat_interleave(3, dim=-2), (randn(2, 3, 2),), {"repeat_interleave"}),
    ("repeat_interleave_flat", lambda m, x: x.repeat_interleave(2), (randn(2, 3),), {"repeat_interleave"}),
    ("repeat_interleave_known_repeats", lambda m, x: x.repeat_interleave(m.r, dim=1, output_size=4),
     (randn(2, 3),), {"repeat_interleave"}),
    ("index_select_const", lambda m, x: x.index_select(-1, IDX), (randn(3, 5),), {"index_select"}),
    ("index_select_runtime", lambda m, x, i: x.index_select(0, i), (randn(4, 3), torch.tensor([3, 3, 0])),
     {"index_select"}),
    ("index_select_rank0_index", lambda m, x: x.index_select(1, torch.tensor(2)), (randn(2, 3),), {"index_select"}),
    ("gather_smaller_index", lambda m, x: x.gather(1, torch.tensor([[2, 0, 0], [1, 3, 2]])), (randn(3, 4),),
     {"gather"}),
    ("gather_runtime", lambda m, x, i: x.gather(-2, i), (randn(3, 2, 4), torch.tensor([[[1, 0, 1, 1]]] * 3)),
     {"gather"}),
    ("index_negative_const", lambda m, x: x[NEGATIVE], (randn(4, 3),), {"index"}),
    ("index_runtime_separated", lambda m, x, i: x[i, :, i], (randn(4, 3, 4), torch.tensor([3, -1, 0])), {"index"}),
    ("index_runtime_adjacent_broadcast", lambda m, x, i, j: x[:, i, j],
     (randn(2, 4, 3), torch.tensor([[1], [-4]]), torch.tensor([0, 2, -1])), {"index"}),
    ("index_known_repeat_indices", lambda m, x: x[:, torch.repeat_interleave(m.r, output_size=4)], (randn(2, 3),),
     {"index"}),
    ("strided_slice", lambda m, x: x[:, 1::2], (randn(2, 7),), {"slice"}),
    ("strided_slice_rank3_bounds", lambda m, x: x[::3, :, -4:9:2], (randn(5, 2, 6),), {"slice"}),
    ("select_negative", lambda m, x: x[:, -1], (randn(2, 5),), {"slice", "reshape"}),
    ("select_to_rank0", lambda m, x: x[-2], (randn(3),), {"slice", "reshape"}),
    ("unbind", lambda m, x: x.unbind(1)[2], (randn(2, 3, 2),), {"slice", "reshape"}),
    ("narrow_negative_start", lambda m, x: x.narrow(-1, -3, 2), (randn(2, 5),), {"slice"}),
    ("squeeze_all", lambda m, x: x.squeeze(), (randn(1, 3, 1, 2),), {"reshape"}),
    ("squeeze_dims", lambda m, x: x.squeeze((0, -2)), (randn(1, 3, 1, 2),), {"reshape"}),
    ("unsqueeze_flatten_unflatten", lambda m, x: x.unsqueeze(-1).flatten(1).unflatten(-1, (2, -1)),
     (randn(2, 3, 4),), {"reshape"}),
    ("numpy_T_rank3", lambda m, x: x.T, (randn(2, 3, 4),), {"permute"}),
    ("mT", lambda m, x: x.mT, (randn(2, 3, 4),), {"permute"}),
    ("t", lambda m, x: x.t(), (randn(3, 4),), {"permute"}),
    ("swapaxes_movedim", lambda m, x: x.swapaxes(0, -1).movedim(0, 2), (randn(2, 3, 4, 5),), {"permute"}),
    ("permute_rank4", lambda m, x: x.permute(3, 1, 0, 2), (randn(2, 3, 1, 4),), {"permute"}),
    ("flip", lambda m, x: x.flip(0, -1), (randn(3, 4),), {"flip"}),
    ("pad_value", lambda m, x: F.pad(x, (1, 2, 0, 1), value=2.5), (randn(2, 3),), {"pad"}),
    ("pad_negative_crops", lambda m, x: F.pad(x, (-1, 2)), (randn(2, 4),), {"pad"}),
    ("constant_pad_nd", lambda m, x: torch.constant_pad_nd(x, [1, -1, 2, 0], -1.5), (randn(3, 3),), {"pad"}),
    ("new_zeros_and_zeros_like_fold", lambda m, x: torch.cat([x, x.new_zeros(3, 1), torch.zeros_like(x)], 1),
     (randn(3, 2),), {"concat"}),
]


@pytest.mark.parametrize("fn,inputs,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_layout_op_matches_eager_exactly(fn, inputs, expected):
    model = Layout(fn, r=torch.tensor([1, 0, 3]))
    compiled = compile_exact(model, inputs)
    ops = set(body_ops(compiled.program.graph))
    assert expected <= ops, ops
    assert all(not n.is_kernel for n in compiled.program.graph), ops  # moved, never computed
    assert compiled.report["placement"]["pes_used"] == 0


def several(m: nn.Module, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    y = torch.cat([x, x.flip(-1)], 0)[::2]  # [5, 6]
    y = y.repeat_interleave(2, dim=0).index_select(1, i)  # [10, 4]
    y = F.pad(y.T, (1, 0), value=-2.0)  # [4, 11]
    y = torch.stack([y, y[:, torch.tensor([6, -1, 0])].repeat(1, 4)[:, :11]], 0)  # [2, 4, 11]
    return y.expand(3, 2, 4, 11).permute(1, 3, 0, 2).gather(1, torch.tensor([[[[1, 0, 10, 2]] * 3] * 6] * 2))


def test_several_layout_ops_in_one_model():
    x, i = randn(5, 6), torch.tensor([5, 0, 3, 3])
    compiled = compile_exact(Layout(several), (x, i))
    assert {"concat", "flip", "slice", "repeat_interleave", "index_select", "pad", "permute", "index", "repeat",
            "expand", "gather"} <= set(body_ops(compiled.program.graph))


def test_a_buffer_of_indices_is_a_constant_not_a_weight():
    compiled = compile_exact(Layout(lambda m, x: x.index_select(1, m.r), r=torch.tensor([3, 0, 3])), (randn(2, 4),))
    graph = compiled.program.graph
    (node,) = graph.nodes_of("index_select")
    assert graph[node.inputs[1]].op == "const" and not graph.params
    assert not any(layer.weights for layer in compiled.program.layers)


def test_layout_ops_between_kernels():
    """Layout ops carry a kernel's output to the next kernel: a flow of the layer, no PEs of their own."""
    linear = nn.Linear(6, 4)
    model = Layout(lambda m, x: linear(torch.cat([x, x.flip(0)], 0).repeat_interleave(2, dim=-1)[:, ::2]))
    model.linear = linear
    x = randn(3, 6)
    compiled = wsc.compile(model, (x,), "mesh-16x16", time_limit=0.3, micro_batch=3)
    assert compiled.report["verification"]["status"] == "pass"
    assert torch.allclose(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    kernels = [n.op for n in compiled.program.graph if n.is_kernel]
    assert kernels == ["matmul"]


# ------------------------------------------------------------------------------------------------- permutes

def test_permutes_compose_into_one_and_a_restoring_pair_disappears():
    x = (randn(2, 3, 4),)
    composed = legal(Layout(lambda m, x: x.transpose(0, 1).permute(2, 0, 1)), x)
    (node,) = composed.nodes_of("permute")
    assert body_ops(composed) == ["permute"] and node.attrs["dims"] == [2, 1, 0]
    assert node.inputs == (composed.inputs[0].name,)
    restored = legal(Layout(lambda m, x: x.transpose(0, 2).permute(2, 1, 0)), x)
    assert body_ops(restored) == [] and restored.outputs == [restored.inputs[0].name]
    compile_exact(Layout(lambda m, x: x.transpose(0, 1).permute(2, 0, 1)), x)


def test_a_permute_of_unit_dims_is_a_reshape():
    """Moving only dims of size 1 keeps every element in place: a reshape, which epilogues are fused through."""
    graph = legal(Layout(lambda m, x: x.permute(1, 0, 2, 3).transpose(-1, -2)), (randn(1, 3, 4, 1),))
    assert body_ops(graph) == ["reshape"]
    graph = legal(Layout(lambda m, x: x.reshape(6, 2).reshape(3, 4)), (randn(2, 6),))
    (node,) = graph.nodes_of("reshape")
    assert node.inputs == (graph.inputs[0].name,)  # a reshape of a reshape reads the first one's input


# ------------------------------------------------------------------------------------------------ the ranges

def test_an_index_out_of_range_is_an_error_as_in_torch():
    x = randn(4, 3)
    compiled = wsc.compile(Layout(lambda m, x, i: x.index_select(0, i)), (x, torch.tensor([0, 3])), "mesh-16x16",
                           time_limit=0.3, micro_batch=4)
    with pytest.raises(ValueError, match="index -1 is out of range for dim 0 of size 4"):
        compiled(x, torch.tensor([0, -1]))  # index_select takes no negative index, as torch
    compiled = wsc.compile(Layout(lambda m, x, i: x[i]), (x, torch.tensor([0, -4])), "mesh-16x16",
                           time_limit=0.3, micro_batch=4)
    assert torch.equal(compiled(x, torch.tensor([-4, -1])), x[torch.tensor([-4, -1])])
    with pytest.raises(ValueError, match="index -5 is out of range"):
        compiled(x, torch.tensor([-5, 0]))


# -------------------------------------------------------------------------------------------------- refusals

def test_repeats_computed_at_run_time_are_refused():
    model = Layout(lambda m, x, r: x.repeat_interleave(r, dim=0, output_size=6))
    with pytest.raises(WscError, match="repeat_interleave.self_Tensor .*repeats computed at run time"):
        legal(model, (randn(3, 2), torch.tensor([1, 2, 3])))


def test_padding_modes_other_than_constant_are_refused():
    with pytest.raises(WscError, match="aten.pad.default .*reflect padding"):
        legal(Layout(lambda m, x: F.pad(x, (1, 1), mode="reflect")), (randn(2, 3, 4),))


def test_a_boolean_mask_index_is_refused():
    """torch.export cannot capture a mask's data-dependent size; a graph that holds one is refused, not run."""
    graph = Graph()
    graph.add(Node("x", "input", (), (4, 3), "float32"))
    graph.add(Node("mask", "input", (), (4,), "bool"))
    graph.add(Node("index", "aten.index.Tensor", ("x", "mask"), (2, 3), "float32",
                   {"args": (Ref("x"), [Ref("mask")])}))
    graph.outputs = ["index"]
    with pytest.raises(WscError, match="aten.index.Tensor.*indices of dtype bool"):
        Legalize().run(graph)
