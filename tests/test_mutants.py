"""Mutation tests: bugs injected into the compiled program only (its kernels, its graph, its tiles, its weight
store), each of which must fail verification at the default tolerance and be located by the per-layer diff
to the kernel (or the weight) it was injected into.

The model is the tiny Cerebras-GPT with every parameter away from the identity (examples/cerebras_gpt.py's
init_weights): under the default init a norm that ignored its weight and bias computes the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_PE_TARGET, derived, tiny_gpt
from llvmlite import ir

from wsc import api, pipeline
from wsc.ops import codegen
from wsc.ops.matmul import Matmul
from wsc.options import CompileOptions
from wsc.runtime import lowering
from wsc.targets import load_target

# What the mutants change is what the kernels compute, which verification must catch; where the kernels sit
# changes none of it, so the greedy placer places them (cpsat, with its routing of every candidate, takes about
# a second a compile).
FAST = {"time_limit": 0.3, "strategy": "greedy"}


@pytest.fixture(scope="module")
def compiled_gpt():
    model, inputs = tiny_gpt()
    compiled = pipeline.compile_model(model, inputs, load_target("mesh-16x16"), **FAST)
    return model, inputs, compiled


def verify(model, inputs, compiled, **options):
    verification, _, _ = api.verify_compiled(compiled, model, inputs, CompileOptions(**options))
    return verification


def nodes(compiled, op: str, **attrs) -> list:
    return [n for n in compiled.program.graph if n.op == op and all(n.attrs.get(k) == v for k, v in attrs.items())]


def layer_of(compiled, name: str):
    return next(layer for layer in compiled.program.layers if name in layer.nodes)


@pytest.fixture
def fresh_kernels(monkeypatch):
    """An empty in-process kernel table, so that a mutated code generator is used (the on-disk cache keys
    the LLVM IR, so mutated code never meets the correct code's entry)."""
    monkeypatch.setattr(lowering, "_CACHE", {})


def assert_located(v: dict, kernel: str, kind: str = "kernel") -> dict:
    assert v["status"] == "fail", v
    located = v["located"]
    assert located is not None, v.get("layers")
    assert (located["kind"], located["kernel"]) == (kind, kernel), located
    return located


def test_the_unmutated_program_passes_with_a_margin(compiled_gpt):
    """The baseline every mutant is held against: a correct run is far inside its bound, on both inputs,
    and every kernel is inside its own bound alone."""
    model, inputs, compiled = compiled_gpt
    v = verify(model, inputs, compiled, verify_layers=True)
    assert v["status"] == "pass" and v["located"] is None
    assert [i["name"] for i in v["inputs"]] == ["capture", "shuffled (seed 1)"]
    assert v["error_ratio"] < 0.2
    assert all(layer["alone_status"] == "pass" and layer["status"] == "pass" for layer in v["layers"])


def test_gelu_with_the_tanh_approximation(compiled_gpt, monkeypatch):
    model, inputs, compiled = compiled_gpt
    fused = nodes(compiled, "matmul", epilogue="gelu")
    for node in fused:
        monkeypatch.setitem(node.attrs, "approximate", "tanh")
    assert_located(verify(model, inputs, compiled), fused[0].name)


def test_layernorm_ignoring_its_weight_and_bias(compiled_gpt, monkeypatch, fresh_kernels):
    """The kernel's generator loads 1 for the weight and 0 for the bias (its two pointer arguments)."""
    model, inputs, compiled = compiled_gpt
    from wsc.ops import layernorm

    real_load = layernorm.load_at
    loads = []

    def load_ignoring_affine(b, ptr, index):
        if isinstance(ptr, ir.Argument):  # w_ptr, then bias_ptr: x is read through a row pointer
            loads.append(ptr)
            return codegen.f32(1.0 if len(loads) % 2 else 0.0)
        return real_load(b, ptr, index)

    monkeypatch.setattr(layernorm, "load_at", load_ignoring_affine)
    located = assert_located(verify(model, inputs, compiled), nodes(compiled, "layernorm")[0].name)
    assert located["wrong"] == "by itself"


def test_every_layernorm_bound_to_the_first_ones_parameters(compiled_gpt, monkeypatch):
    """The store key of every later norm's weight and bias points at the first norm's: the first norm is
    right, and the second norm's weight, as streamed, is the first wrong value (the binding, not the kernel)."""
    model, inputs, compiled = compiled_gpt
    norms = nodes(compiled, "layernorm")
    graph = compiled.program.graph
    first_keys = [graph[i].attrs["key"] for i in norms[0].inputs[1:]]
    for norm in norms[1:]:
        for param, key in zip(norm.inputs[1:], first_keys, strict=True):
            monkeypatch.setitem(graph[param].attrs, "key", key)
    located = assert_located(verify(model, inputs, compiled), norms[1].inputs[1], kind="weight")
    assert located["read_by"] == [norms[1].name]


def test_weights_silently_rounded_to_fp16(compiled_gpt, monkeypatch):
    """The store rounds to fp16 while the run asked for fp32: the first weight streamed is named."""
    model, inputs, compiled = compiled_gpt
    real_write = pipeline.write_store
    monkeypatch.setattr(pipeline, "write_store", lambda path, tensors, dtype="fp32": real_write(path, tensors, "fp16"))
    v = verify(model, inputs, compiled)
    first_param = compiled.program.layers[0].weights[0]
    located = assert_located(v, first_param, kind="weight")
    assert located["read_by"]


def test_fp16_weights_asked_for_pass_to_their_own_bound(compiled_gpt):
    """The same rounding, asked for, is within the fp16 bound (and the fp32 bound would not hold it)."""
    model, inputs, compiled = compiled_gpt
    v = verify(model, inputs, compiled, weights_dtype="fp16")
    assert v["status"] == "pass" and v["rule"]["weight_eps"] == 2.0**-11
    assert verify(model, inputs, compiled, weights_dtype="fp16", tolerance=1e-3)["status"] == "fail"


def test_layernorm_eps_100_times_larger(compiled_gpt, monkeypatch):
    model, inputs, compiled = compiled_gpt
    norms = nodes(compiled, "layernorm")
    for norm in norms:
        monkeypatch.setitem(norm.attrs, "eps", norm.attrs["eps"] * 100)
    assert_located(verify(model, inputs, compiled), norms[0].name)


def test_a_dropped_bias(compiled_gpt, monkeypatch):
    model, inputs, compiled = compiled_gpt
    node = nodes(compiled, "matmul", bias=True)[0]
    monkeypatch.setitem(node.attrs, "bias", False)
    monkeypatch.setattr(node, "inputs", node.inputs[:2] + node.inputs[3:])
    assert_located(verify(model, inputs, compiled), node.name)


def test_one_tiles_rows_shifted(compiled_gpt):
    """Tile (1, 1) of a kernel computes the rows one below its own: its first row is never computed, and the
    tile named is that one, on the PE the placement gave it."""
    model, inputs, compiled = compiled_gpt
    node = next(n for n in nodes(compiled, "matmul") if layer_of(compiled, n.name).kernels[n.name].row_blocks > 2
                and layer_of(compiled, n.name).kernels[n.name].col_blocks > 1)
    layer = layer_of(compiled, node.name)
    plan = layer.kernels[node.name]
    shifted = plan.tiles.copy()
    moved = plan.col_blocks + 1  # block (1, 1): row block 1 is not the last, so its shift stays in the output
    shifted[moved, :2] += 1
    with derived(plan, tiles=shifted):
        located = assert_located(verify(model, inputs, compiled), node.name)
    assert (located["tile"]["block"], located["tile"]["row_block"], located["tile"]["col_block"]) == (moved, 1, 1)
    rect = layer.placement.rects[node.name]
    assert located["pe"] == [rect.x + moved % rect.w, rect.y + moved // rect.w]


def test_softmax_without_the_max_subtraction_on_large_logits(monkeypatch):
    """Attention spelled out (fused_attention off) with logits in the hundreds: without its max, the
    softmax's exponentials overflow."""
    from wsc.ops import softmax

    model, inputs = tiny_gpt()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:64] *= 40.0  # queries and keys: scores of some hundreds
    compiled = pipeline.compile_model(model, inputs, load_target("mesh-16x16"), **FAST,
                                      fused_attention=False)
    assert verify(model, inputs, compiled)["status"] == "pass"
    real_loop = softmax.loop

    def loop_without_max(b, start, stop, init, body, name=""):
        if name == "max":
            return [codegen.f32(0.0)]
        return real_loop(b, start, stop, init, body, name=name)

    monkeypatch.setattr(softmax, "loop", loop_without_max)
    monkeypatch.setattr(lowering, "_CACHE", {})  # the correct kernels compiled above are not reused
    assert_located(verify(model, inputs, compiled), nodes(compiled, "softmax")[0].name)


def test_causal_mask_off_by_one(compiled_gpt, monkeypatch):
    """Each query also sees the key after it."""
    model, inputs, compiled = compiled_gpt
    attention = nodes(compiled, "attention")
    graph = compiled.program.graph
    for node in attention:
        keys, queries = graph[node.inputs[1]].shape[-2], int(node.attrs["group_rows"])
        monkeypatch.setitem(node.attrs, "diagonal", keys - queries + 1)
    assert_located(verify(model, inputs, compiled), attention[0].name)


def test_a_k_slice_summed_twice(tmp_path, monkeypatch):
    """On PEs too small for the MLP's K, its down projection is a split reduction: the first slice's partial
    sums added in twice."""
    (tmp_path / "small.yaml").write_text(SMALL_PE_TARGET)
    model, inputs = tiny_gpt(layers=1, d_model=32, d_ffn=1024, seq=8)
    compiled = pipeline.compile_model(model, inputs, load_target(str(tmp_path / "small.yaml")), **FAST)
    split = [name for layer in compiled.program.layers for name, p in layer.kernels.items() if p.k_splits > 1]
    assert split, "the small PEs should force a K split"
    assert verify(model, inputs, compiled)["status"] == "pass"
    real_run = Matmul.run_k_split

    def slice_zero_twice(self, node, plan, args, out_shape, tiles, kernel_for, threads):
        y = real_run(self, node, plan, args, out_shape, tiles, kernel_for, threads)
        k0, k1 = int(plan.k_bounds[0]), int(plan.k_bounds[1])
        a, b = (np.ascontiguousarray(x[..., k0:k1]) for x in args[:2])
        again = np.full(out_shape, np.nan, dtype=np.float32)
        kernel_for("matmul", out_shape, [a.shape, b.shape], {})(again, [a, b], tiles, threads=threads)
        return y + again

    monkeypatch.setattr(Matmul, "run_k_split", slice_zero_twice)
    located = assert_located(verify(model, inputs, compiled), split[0])
    assert located["tile"]["k_splits"] > 1 and len(located["k_slice_pes"]) == located["tile"]["k_splits"]


def test_the_cli_names_the_first_wrong_value(tmp_path, monkeypatch, capsys):
    """A failing compile exits 1 and its summary names the kernel, its layer, tile and PE, and report.json
    holds the same under verification.located."""
    import json

    from wsc.cli import main

    real_write = pipeline.write_store
    monkeypatch.setattr(pipeline, "write_store", lambda path, tensors, dtype="fp32": real_write(path, tensors, "fp16"))
    out = tmp_path / "out"
    model_file = Path(__file__).parent / "models" / "tiny_gpt.py"
    code = main(["compile", str(model_file), "--target", "mesh-16x16", "--out", str(out), "--time-limit", "0.3",
                 "--strategy", "greedy"])
    assert code == 1
    summary = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    located = report["verification"]["located"]
    assert located["kind"] == "weight" and located["layer_index"] == 0
    assert "  verification  fail: " in summary
    assert f"  first wrong   weight {located['key']} in layer 0 (embed): " in summary
    assert [layer["index"] for layer in report["verification"]["layers"]] == [0, 1, 2, 3]


def test_a_mutant_under_fp16_weights_is_located_and_a_correct_run_names_nothing(compiled_gpt, monkeypatch):
    """fp16 weights are held to their rounding bit for bit (subnormals included), so the diff of a correct
    fp16 run finds every layer right, and with eps mutated it names the norm, not a weight."""
    model, inputs, compiled = compiled_gpt
    v = verify(model, inputs, compiled, weights_dtype="fp16", verify_layers=True)
    assert v["status"] == "pass" and v["located"] is None
    assert all(layer["status"] == "pass" for layer in v["layers"]), v["layers"]
    norms = nodes(compiled, "layernorm")
    for norm in norms:
        monkeypatch.setitem(norm.attrs, "eps", norm.attrs["eps"] * 100)
    assert_located(verify(model, inputs, compiled, weights_dtype="fp16"), norms[0].name)


def test_verify_layers_fails_a_kernel_wrong_by_itself_that_fp16_weights_hide(compiled_gpt, monkeypatch):
    """fp16 weights widen the outputs' bound past the GELU formula's error; each kernel alone is still held
    to the fp32 bound, so with the diff on the run fails and names it."""
    model, inputs, compiled = compiled_gpt
    fused = nodes(compiled, "matmul", epilogue="gelu")
    for node in fused:
        monkeypatch.setitem(node.attrs, "approximate", "tanh")
    outputs_only = verify(model, inputs, compiled, weights_dtype="fp16")
    assert outputs_only["status"] == "pass" and "layers" not in outputs_only
    located = assert_located(verify(model, inputs, compiled, weights_dtype="fp16", verify_layers=True),
                             fused[0].name)
    assert located["wrong"] == "by itself"


def test_a_micro_batched_step_is_diffed_on_the_pass_holding_the_worst_element(monkeypatch):
    model, inputs = tiny_gpt(batch=2)
    compiled = pipeline.compile_model(model, inputs, load_target("mesh-16x16"), **FAST, micro_batch=1)
    assert compiled.program.micro_batches == 2
    node = nodes(compiled, "matmul", bias=True)[0]
    monkeypatch.setitem(node.attrs, "bias", False)
    monkeypatch.setattr(node, "inputs", node.inputs[:2] + node.inputs[3:])
    assert_located(verify(model, inputs, compiled), node.name)


def test_weights_from_a_checkpoint_named_without_the_wrappers_prefix(tmp_path, monkeypatch):
    """The store binds `model.fc.weight` to the file's `fc.weight`; the diff still holds each streamed weight
    to the model's own, and names a kernel bug."""
    from safetensors.torch import save_file

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.norm = torch.nn.Linear(16, 16), torch.nn.LayerNorm(16)
            torch.nn.init.normal_(self.norm.weight, 1.0, 0.1)
            torch.nn.init.normal_(self.norm.bias, 0.0, 0.1)

        def forward(self, x):
            return self.norm(self.fc(x))

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()

        def forward(self, x):
            return self.model(x)

    torch.manual_seed(0)
    model, x = Wrapped().eval(), torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(2))
    save_file({k: v.contiguous() for k, v in model.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    compiled = pipeline.compile_model(model, (x,), load_target("mesh-16x16"), **FAST)
    v = verify(model, (x,), compiled, weights=tmp_path / "w.safetensors", verify_layers=True)
    assert v["status"] == "pass" and all(layer["status"] == "pass" for layer in v["layers"])
    norm = nodes(compiled, "layernorm")[0]
    monkeypatch.setitem(norm.attrs, "eps", 1e-1)
    assert_located(verify(model, (x,), compiled, weights=tmp_path / "w.safetensors"), norm.name)


def test_an_rmsnorm_taken_from_its_spelled_out_chain_is_held_to_its_eager_value(monkeypatch):
    """Hugging Face's Llama spells RMSNorm out (pow, mean, add, rsqrt, mul, mul); legalisation takes the chain
    into one kernel, which holds the chain's last value, so a wrong eps is located at the norm itself."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_models", Path(__file__).parents[1] / "examples" / "hf_models.py")
    hf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hf)
    model, inputs = hf.build_model("llama", num_hidden_layers=1), hf.example_inputs("llama")
    compiled = pipeline.compile_model(model, inputs, load_target("mesh-16x16"), **FAST)
    norms = nodes(compiled, "rmsnorm")
    assert norms and all(n.holds for n in norms)
    correct = verify(model, inputs, compiled, verify_layers=True)
    assert correct["status"] == "pass" and all(layer["alone_status"] == "pass" for layer in correct["layers"])
    for norm in norms:
        monkeypatch.setitem(norm.attrs, "eps", 0.1)
    assert_located(verify(model, inputs, compiled), norms[0].name)
