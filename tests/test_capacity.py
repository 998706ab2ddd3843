"""The capacity of a pass as the wafer runs it: a PE holds its weight tile and the token rows in flight, a layer
holds its activation store for the whole pass, and the passes Cerebras ran fit in one (numbers by hand)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import tiny_gpt
from wsc import ops
from wsc.core.errors import DoesNotFit
from wsc.core.ir import Graph, Node
from wsc.core.program import Cut
from wsc.frontend.capture import capture
from wsc.frontend.meta import empty_weights
from wsc.options import CompileOptions
from wsc.passes.estimate import Estimate, scaled_training_step, sustained_rate, training_floor
from wsc.passes.partition import Area, Partition, activation_store_bytes
from wsc.pipeline import compile_model, group
from wsc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent


def linear_node(tokens: int, k: int, n: int, bias: bool = True) -> tuple[Graph, Node]:
    graph = Graph()
    graph.add(Node("x", "input", (), (tokens, k), "float32"))
    graph.add(Node("w", "param", (), (n, k), "float32"))
    inputs = ("x", "w", "b") if bias else ("x", "w")
    if bias:
        graph.add(Node("b", "param", (), (n,), "float32"))
    return graph, graph.add(Node("y", "matmul", inputs, (tokens, n), "float32", {"bias": bias}))


def test_a_matmul_pe_holds_its_weight_tile_and_two_rows_in_flight() -> None:
    graph, node = linear_node(1000, 64, 48)
    matmul = ops.kernel("matmul")
    # Cut(10, 4, 2): tiles of 100 token rows x 12 columns over a K slice of 32. In flight: 2 rows of the input
    # slice (2 x 32 x 2 B) and their fp32 partial sums (2 x 12 x 4 B); held for the layer's turn: the weight tile
    # (32 x 12 x 2 B) and the bias's 12 columns; with K split, the neighbour's partials for the 2 rows.
    assert matmul.sram_bytes(graph, node, Cut(10, 4, 2), 2) == 128 + 96 + 768 + 24 + 96
    # More tokens per PE hold nothing more: the rows flow through.
    assert matmul.sram_bytes(graph, node, Cut(2, 4, 2), 2) == matmul.sram_bytes(graph, node, Cut(10, 4, 2), 2)
    # One row per PE holds one row in flight; an unsplit K has no arriving partials.
    assert matmul.sram_bytes(graph, node, Cut(1000, 4, 1), 2) == 64 * 2 + 12 * 4 + 64 * 12 * 2 + 12 * 2
    # Pipelined mode holds the same bytes: the weight tile stays either way.
    assert matmul.sram_bytes(graph, node, Cut(10, 4, 2), 2, resident=True) == 1112


def test_an_elementwise_pe_holds_two_rows_of_each_operand() -> None:
    graph = Graph()
    graph.add(Node("a", "input", (), (1000, 48), "float32"))
    graph.add(Node("b", "input", (), (1000, 48), "float32"))
    node = graph.add(Node("s", "add", ("a", "b"), (1000, 48), "float32"))
    # 2 inputs and the output, 2 rows of 12 columns each, at 2 bytes.
    assert ops.kernel("add").sram_bytes(graph, node, Cut(10, 4), 2) == 3 * 2 * 12 * 2


def partitioned(model, inputs, target, mode="weight-streaming"):
    captured = capture(model, inputs)
    options = CompileOptions(mode=mode)
    grouped = group(captured, inputs[0].numel(), target, options, model_name="m", verify_ir=False, on_pass=None,
                    micro_batches=1, batched_inputs=())
    return grouped.program


def test_the_activation_store_holds_a_layers_inputs_outputs_and_keys_and_values() -> None:
    batch, seq, d = 2, 16, 32
    model, inputs = tiny_gpt(layers=2, d_model=d, seq=seq, batch=batch)
    tokens = batch * seq
    program = partitioned(model, inputs, load_target("mesh-16x16"))
    embed, block, _, head = program.layers
    # The embedding: its token ids (8 bytes each) in, its output out to the first block, at fp16.
    assert activation_store_bytes(program, embed) == tokens * 8 + tokens * d * 2
    # A block: the residual stream in, its output, and attention's keys and values (d each per token).
    assert activation_store_bytes(program, block) == 4 * tokens * d * 2
    # The head: the stream in; its logits leave the wafer as they are made.
    assert activation_store_bytes(program, head) == tokens * d * 2
    # Pipelined: tokens flow from layer to layer, so only the keys and values are held whole.
    pipelined = partitioned(model, inputs, load_target("mesh-16x16"), mode="pipelined")
    assert [activation_store_bytes(pipelined, layer) for layer in pipelined.layers] == [0, 2 * tokens * d * 2,
                                                                                     2 * tokens * d * 2, 0]
    # The partitioner records it, and a PE's tile gets its SRAM less the reserve and its share of the store.
    done = Partition()(program)
    assert [layer.store_bytes for layer in done.layers] == [activation_store_bytes(program, layer)
                                                           for layer in program.layers]
    area = Area(16, 16, 256)
    stored = replace(block, store_bytes=activation_store_bytes(program, block))
    assert Partition().tile_capacity(program, stored, area) == 49152 - 8192 - -(-4 * tokens * d * 2 // 256)


def test_a_store_larger_than_the_wafers_sram_is_refused_with_its_size() -> None:
    model, inputs = tiny_gpt(layers=1, d_model=32, seq=64, batch=8)
    program = partitioned(model, inputs, load_target("mesh-16x16"))
    block = program.layers[1]
    store = 4 * 8 * 64 * 32 * 2  # 131,072 bytes: 512 bytes a PE of a 16 x 16 mesh
    assert activation_store_bytes(program, block) == store
    with pytest.raises(DoesNotFit, match=r"layer blocks.0 holds 0.00 GB of activations for the pass") as refusal:
        Partition(reserved_bytes=49152 - 512).tile_capacity(program, replace(block, store_bytes=store),
                                                            Area(16, 16, 256))
    assert (refusal.value.needed, refusal.value.offered) == (store, 256 * 512)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("size", "sequences"), [("111M", 120), ("1.3B", 132), ("13B", 90)])
def test_the_passes_cerebras_ran_fit_cs2_sim_in_one_pass(size: str, sequences: int) -> None:
    """The Cerebras-GPT configurations' sequences of 2048 per system per pass (the model zoo's configs)."""
    gpt = load_example("cerebras_gpt")
    with empty_weights():
        model = gpt.build_model(size=size, seq=2048, batch=sequences)
    inputs = gpt.example_inputs(size=size, seq=2048, batch=sequences)
    program = Partition()(partitioned(model, inputs, load_target("cs2-sim")))
    d = {"111M": 768, "1.3B": 2048, "13B": 5120}[size]
    tokens = sequences * 2048
    assert program.layers[1].store_bytes == 4 * tokens * d * 2  # e.g. 13B: 7.55 GB, 10 KB of each PE
    for layer in program.layers:
        assert all(plan.sram_bytes_per_pe <= 49152 - 8192 - -(-layer.store_bytes // 745500)
                   for plan in layer.kernels.values())


@pytest.fixture(scope="module")
def one_pass():
    model, inputs = tiny_gpt(layers=2, seq=32, batch=4)
    return compile_model(model, inputs, load_target("mesh-16x16"), strategy="greedy", micro_batch=4).program


def test_the_fitted_efficiency_slows_the_arithmetic_and_the_step_cost_is_paid_once(one_pass) -> None:
    target = one_pass.target
    assert sustained_rate(replace(target, compute_efficiency=0.5), "fp16") == 0.5 * target.pe_flops("fp16")
    slow = Estimate()(replace(one_pass, target=replace(target, compute_efficiency=0.5))).estimate
    base = one_pass.estimate
    assert slow["bound_seconds"] == base["bound_seconds"]  # the bound keeps the peak
    assert all(s["compute_seconds"] >= b["compute_seconds"] for s, b in zip(slow["layers"], base["layers"],
                                                                            strict=True))
    assert slow["training"]["step_seconds"] > base["training"]["step_seconds"] >= base["training"]["bound_seconds"]
    paid = Estimate()(replace(one_pass, target=replace(target, step_overhead_seconds=0.25))).estimate
    assert paid["training"]["step_seconds"] == pytest.approx(base["training"]["step_seconds"] + 0.25)
    assert paid["training"]["step_boundary_seconds"] == 0.25
    assert paid["step_seconds"] == base["step_seconds"]  # a forward step has no optimizer boundary


def test_the_search_ranks_by_the_compiled_terms_and_its_floor_is_under_a_real_compile(one_pass) -> None:
    step = one_pass.estimate["training"]["step_seconds"]
    assert scaled_training_step(one_pass, 1.0, 1) == pytest.approx(step)
    assert training_floor(one_pass, 1.0, 1) <= step
    model, inputs = tiny_gpt(layers=2, seq=32, batch=4)
    quarter = compile_model(model, inputs, load_target("mesh-16x16"), strategy="greedy", micro_batch=1).program
    assert quarter.passes_per_system == 4
    assert training_floor(one_pass, 0.25, 4) <= quarter.estimate["training"]["step_seconds"]


def test_pipelined_mode_holds_a_model_whose_weights_fill_more_than_half_the_wafer() -> None:
    """Llama-3-8B's 16.06 GB of fp16 weights in cs2-sim's 30.54 GB of free SRAM: each band's kernels take what
    their weight tiles need, up to what the placer packs."""
    hf = load_example("hf_models")
    with empty_weights():
        model = hf.build_model(arch="llama", size="8B", seq=32)
    inputs = hf.example_inputs(arch="llama", size="8B", seq=32)
    program = Partition()(partitioned(model, inputs, load_target("cs2-sim"), mode="pipelined"))
    weights = sum(p.numel for p in program.graph.params) * 2
    assert 16.0e9 < weights < 16.1e9
    held = sum(plan.pes * plan.sram_bytes_per_pe for layer in program.layers for plan in layer.kernels.values())
    assert held >= weights  # every weight tile is on the wafer at once
    assert all(sum(plan.pes for plan in layer.kernels.values()) <= 0.85 * 994 * layer.region[1]
               for layer in program.layers)


def test_a_step_the_boundary_takes_most_of_is_bound_by_it(tmp_path, capsys) -> None:
    from wsc.cli import main

    text = (ROOT / "targets" / "mesh-16x16.yaml").read_text()
    target = tmp_path / "slow-boundary.yaml"
    target.write_text(text + "\ncalibration: {step_seconds: 1.0}\n")
    code = main(["compile", str(ROOT / "tests" / "models" / "tiny_gpt.py"), "--target", str(target),
                 "--out", str(tmp_path / "out"), "--no-verify", "--strategy", "greedy"])
    out = capsys.readouterr().out
    assert code == 0
    training = next(line for line in out.splitlines() if line.startswith("  training"))
    assert "bound by the step boundary" in training
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["simulation"]["training"]["bottleneck"] == "boundary"
    assert report["simulation"]["training"]["step_boundary_seconds"] == 1.0
