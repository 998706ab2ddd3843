"""What legalize says about a model it cannot take: every unsupported op at once, each at the model's own line,
and in-place ops taken as their out-of-place rule."""

from __future__ import annotations

import pytest
import torch

import wsc
from wsc.core.errors import WscError


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(x).cumsum(-1)  # cumsum has no rule


class TwoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x + x.cumprod(-1)  # cumprod neither, and it reads a refused value


def test_a_refusal_names_every_unsupported_op_with_its_line_and_count():
    with pytest.raises(WscError) as refusal:
        wsc.compile(TwoBlocks(), (torch.randn(2, 8),), "mesh-16x16", time_limit=0.3)
    first, *others = str(refusal.value).splitlines()
    assert first.startswith("2 unsupported ops or uses, the first: unsupported op aten.cumsum.default at "
                            "test_legalize_errors.py:")
    assert "return self.proj(x).cumsum(-1)" in first and "(2 times)" in first  # both blocks, one line
    assert first.endswith("`wsc ops` lists what is supported")
    assert len(others) == 1
    assert others[0].startswith("  unsupported op aten.cumprod.default at test_legalize_errors.py:")
    assert "x.cumprod(-1)" in others[0]


def test_one_unsupported_op_is_one_line():
    with pytest.raises(WscError) as refusal:
        wsc.compile(Block(), (torch.randn(2, 8),), "mesh-16x16", time_limit=0.3)
    assert "\n" not in str(refusal.value)
    assert str(refusal.value).startswith("unsupported op aten.cumsum.default at test_legalize_errors.py:")


class InPlace(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        y, z = self.a(x), self.b(x)
        before = self.b(y)  # reads y before it is added to: must not see the update
        y += z
        return before, self.b(y), y  # read after: must see it


def test_in_place_ops_are_their_out_of_place_rule_and_later_readers_see_the_update():
    model, x = InPlace().eval(), torch.randn(3, 8)
    compiled = wsc.compile(model, (x,), "mesh-16x16", time_limit=0.3)
    assert compiled.report["verification"]["status"] == "pass"
    with torch.no_grad():
        expected = model(x)
    for got, want in zip(compiled(x), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class IgnoresAnInput(torch.nn.Module):
    def forward(self, x, shape_only):
        return torch.relu(x).expand_as(shape_only)


def test_an_input_no_output_reads_is_still_an_input_of_the_program():
    x, other = torch.randn(1, 6), torch.randn(4, 6)
    compiled = wsc.compile(IgnoresAnInput(), (x, other), "mesh-16x16", time_limit=0.3)
    assert [n.name for n in compiled.program.graph.inputs] == ["x", "shape_only"]
    torch.testing.assert_close(compiled(x, other), torch.relu(x).expand(4, 6))


class Narrow(torch.nn.Module):
    def forward(self, x, start):
        return x.narrow(0, start, 2)


class Repeats(torch.nn.Module):
    def forward(self, x, repeats):
        return x.repeat_interleave(repeats)


@pytest.mark.parametrize("model, second", [(Narrow(), torch.tensor(1)), (Repeats(), torch.tensor([1, 2, 0, 3]))])
def test_a_shape_that_depends_on_input_values_is_one_line(model, second):
    with pytest.raises(WscError) as refusal:
        wsc.compile(model, (torch.randn(4), second), "mesh-16x16", time_limit=0.3)
    message = str(refusal.value)
    assert "\n" not in message and len(message) < 200
    assert "depends on the" in message and "input values" in message or "values of its inputs" in message
