"""The pass pipeline: verified after every pass, errors that name the pass, an estimate above its bound."""

from __future__ import annotations

import pytest
from conftest import tiny_gpt

from wsc.core.ir import Graph
from wsc.core.passmanager import PassError, PassManager
from wsc.core.program import Program
from wsc.frontend.capture import capture
from wsc.passes.estimate import Estimate
from wsc.passes.group_layers import GroupLayers, block_of
from wsc.passes.legalize import Legalize
from wsc.pipeline import compile_model


def test_block_of_module_paths():
    assert block_of("blocks.3.attn.qkv") == "blocks.3"
    assert block_of("transformer.h.11.mlp") == "transformer.h.11"
    assert block_of("lm_head") is None


def test_pass_error_names_the_failing_pass_and_those_before(small_target):
    model, inputs = tiny_gpt(layers=1)
    program = Program(capture(model, inputs).graph, small_target)
    manager = PassManager([Legalize(), GroupLayers(), Estimate()], verify=True)
    program.target = None  # a broken program: estimate cannot read the target, a compiler bug
    with pytest.raises(PassError, match=r"pass estimate failed \(passes run before it: legalize, group-layers\)"):
        manager.run(program)


def test_estimate_never_below_bound_and_names_bottleneck(small_target):
    model, inputs = tiny_gpt(layers=2)
    compiled = compile_model(model, inputs, small_target, verify_ir=True, time_limit=1.0)
    estimate = compiled.program.estimate
    assert estimate["step_seconds"] >= estimate["bound_seconds"] > 0
    assert estimate["bottleneck"] in ("compute", "fabric", "stream")
    assert len(estimate["layers"]) == 4
    assert sum(layer["seconds"] for layer in estimate["layers"]) == pytest.approx(estimate["step_seconds"])


def test_single_sequence_inference_on_cs2_is_stream_bound():
    """The primer's crossover: a 128-token step is far below the ~50k tokens where compute catches up, so a
    111M-shaped model (one block) spends its step streaming weights."""
    from wsc.targets import load_target

    model, inputs = tiny_gpt(layers=1, d_model=768, heads=12, d_ffn=3072, vocab=50257, seq=128)
    # Greedy placement: the step is the same as cpsat's here (the weights' stream sets it), and it is fast.
    compiled = compile_model(model, inputs, load_target("cs2-sim"), strategy="greedy")
    estimate = compiled.program.estimate
    assert estimate["bottleneck"] == "stream"
    assert estimate["bounds"]["stream"] > 100 * estimate["bounds"]["compute"]


def test_pipelined_mode_places_every_layer_in_its_own_band(small_target):
    from wsc.targets import load_target

    model, inputs = tiny_gpt(layers=2)
    compiled = compile_model(model, inputs, load_target("cs2-sim"), mode="pipelined", time_limit=0.3,
                             verify_ir=True)
    program = compiled.program
    bands = [layer.region for layer in program.layers]
    # The 750 rows are shared out in order, each layer's band after the previous one, sized by what it holds.
    assert [top for top, _ in bands] == [sum(rows for _, rows in bands[:i]) for i in range(4)]
    assert sum(rows for _, rows in bands) == 750 and all(rows >= 1 for _, rows in bands)
    held = [sum(graph_w.nbytes for graph_w in (program.graph[w] for w in layer.weights)) for layer in program.layers]
    assert bands[held.index(max(held))][1] == max(rows for _, rows in bands)
    for layer in program.layers:
        top, rows = layer.region
        for rect in layer.placement.rects.values():
            assert top <= rect.y and rect.y + rect.h <= top + rows
    estimate = program.estimate
    assert estimate["mode"] == "pipelined" and estimate["bounds"]["stream"] == 0
    # The pace is the slowest stage: a layer, or the activations handed between the bands (routed, and long
    # on cs2-sim's 750 rows: then the fabric binds).
    slowest = max(e["seconds"] for e in estimate["layers"])
    handoff = estimate["handoff_fabric_seconds"]
    assert handoff > 0 and compiled.program.handoff_routes is not None
    pace = max(slowest, handoff)
    assert pace <= estimate["step_seconds"] <= pace * 1.5
    assert estimate["bottleneck"] == ("fabric" if handoff > slowest else estimate["bottleneck"])
    assert estimate["step_seconds"] >= estimate["bound_seconds"]


def test_pipelined_mode_refuses_weights_that_do_not_fit(gpt_module, gpt_captured):
    from wsc.core.errors import WscError
    from wsc.frontend.meta import empty_weights
    from wsc.pipeline import compile_captured
    from wsc.targets import load_target

    # 25.71 GB of fp16 weights in 30.54 GB of free SRAM: its bands are 84% weights, more than the placer packs.
    # One sequence of 128 tokens, the capture tests/test_estimate_bounds.py maps too (one pass: nothing for the
    # micro-batch search to try, so compile_model would run the same passes on it).
    with pytest.raises(WscError, match=r"pipelined mode cannot hold layer \S+ in its band of \d+ rows: .*"
                                       r"--mode weight-streaming"):
        compile_captured(gpt_captured("13B"), 128, load_target("cs2-sim"), mode="pipelined")
    with empty_weights():
        model = gpt_module.build_model("13B", seq=2048, batch=8)
    # At 8 sequences of 2048 its keys and values (40 layers x 2 x 16,384 tokens x 5,120 x 2 bytes) join them.
    with pytest.raises(WscError, match=r"pipelined mode keeps every weight on the wafer: 25\.71 GB of fp16 "
                                       r"weights and 13\.42 GB of keys and values, but cs2-sim has 30\.54 GB of "
                                       r"SRAM free; use --mode weight-streaming"):
        compile_model(model, gpt_module.example_inputs("13B", seq=2048, batch=8), load_target("cs2-sim"),
                      mode="pipelined")


def test_kernels_get_the_largest_share_of_the_mesh_that_places(small_target, monkeypatch):
    from wsc.core.errors import DoesNotPlace
    from wsc.passes.place import Place
    from wsc.pipeline import FILLS

    model, inputs = tiny_gpt(layers=1)
    assert compile_model(model, inputs, small_target, strategy="greedy").program.fill == FILLS[0]
    original = Place.__call__

    def crowded(self, program):  # as if the larger shares' rectangles could not be packed
        if program.fill > FILLS[-1]:
            raise DoesNotPlace("no room", needed=2, offered=1)
        return original(self, program)

    monkeypatch.setattr(Place, "__call__", crowded)
    program = compile_model(model, inputs, small_target, strategy="greedy").program
    assert program.fill == FILLS[-1] and program.estimate["step_seconds"] > 0
    budget = int(small_target.usable_pes * FILLS[-1])
    assert all(sum(p.active_pes for p in layer.kernels.values()) <= budget for layer in program.layers)
    with pytest.raises(DoesNotPlace):
        compile_model(model, inputs, small_target, strategy="greedy", fill=FILLS[0])


SHAPE_PASSES = ["fold-constants", "legalize", "fuse-epilogues", "group-layers"]
FILL_PASSES = ["partition", "place", "route", "estimate"]


def test_a_fill_retry_reruns_only_partition_place_route_and_estimate(small_target, monkeypatch):
    from wsc.core.errors import DoesNotPlace
    from wsc.passes.place import Place
    from wsc.pipeline import FILLS

    original = Place.__call__
    fresh = []

    def crowded(self, program):  # places, then finds the larger shares' rectangles do not pack after all
        fresh.append(all(layer.placement is None and layer.routes is None for layer in program.layers))
        program = original(self, program)
        if program.fill > FILLS[-1]:
            raise DoesNotPlace("no room", needed=2, offered=1)
        return program

    monkeypatch.setattr(Place, "__call__", crowded)
    runs: list[str] = []
    model, inputs = tiny_gpt(layers=1)
    compiled = compile_model(model, inputs, small_target, strategy="greedy", verify_ir=True,
                             on_pass=lambda name, seconds: runs.append(name))
    assert compiled.program.fill == FILLS[-1]
    # The shape passes ran once; the second fill started from the grouped program, not the first try's layers.
    assert [runs.count(name) for name in SHAPE_PASSES] == [1, 1, 1, 1]
    assert runs.count("partition") == 2 and fresh == [True, True]
    # Each pass's seconds are reported under its name, in pass order, as before the split.
    assert list(compiled.pass_seconds) == SHAPE_PASSES + FILL_PASSES


def test_default_passes_are_the_shape_passes_then_the_fill_passes():
    import inspect

    from wsc.options import CompileOptions
    from wsc.pipeline import default_passes, fill_passes, shape_passes

    options = CompileOptions(strategy="greedy", router="xy", fused_attention=False)
    assert [p.name for p in shape_passes(options)] == SHAPE_PASSES
    assert [p.name for p in fill_passes(options, 0.5)] == FILL_PASSES
    passes = default_passes(options, fill=0.5)
    assert [p.name for p in passes] == SHAPE_PASSES + FILL_PASSES
    assert (passes[1].fused_attention, passes[4].fill, passes[5].strategy, passes[6].router) == \
        (False, 0.5, "greedy", "xy")
    assert "mode" not in inspect.signature(default_passes).parameters  # the mode is the Program's


def test_a_pass_error_names_the_passes_that_made_the_program_it_was_given(small_target):
    class Broken:
        name = "broken"

        def __call__(self, program):
            raise RuntimeError("a compiler bug")

    program = Program(Graph(), small_target)
    with pytest.raises(PassError, match=r"pass broken failed \(passes run before it: legalize, group-layers\)"):
        PassManager([Broken()], ran_before=["legalize", "group-layers"]).run(program)
