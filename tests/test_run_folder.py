"""`wsc run OUT`: a compiled program run again from its output folder and weights alone, held to the eager outputs
the compile recorded when it streams the same weights, and nothing in the folder ever executed or unpickled."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODELS
from safetensors.numpy import load_file, save_file

import wsc
from wsc.artifacts import program_json
from wsc.cli import main
from wsc.core.errors import WscError
from wsc.run import run_folder
from wsc.runtime.executor import Executor
from wsc.runtime.random_weights import draw
from wsc.runtime.weight_store import WeightStore

TINY = str(MODELS / "tiny_gpt.py")


def wsc_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The tiny GPT compiled on seeded random weights, verified, with its reference recorded."""
    out = tmp_path_factory.mktemp("run") / "out"
    code, _, err = wsc_main("compile", TINY, "--target", "mesh-16x16", "--out", out, "--random-weights", "0",
                            "--strategy", "greedy")
    assert code == 0, err
    return out


def forged(folder: Path, tmp_path: Path, edit) -> Path:
    """A copy of `folder` whose program.json `edit` changed, its content hash made to match again."""
    copy = tmp_path / "forged"
    copy.mkdir()
    for name in ("program.json", "reference.safetensors", "report.json"):
        (copy / name).write_bytes((folder / name).read_bytes())
    doc = json.loads((copy / "program.json").read_text())
    edit(doc)
    doc["sha256"] = hashlib.sha256(program_json.canonical(doc)).hexdigest()
    (copy / "program.json").write_text(json.dumps(doc))
    return copy


def test_the_compile_writes_its_program_and_reference_and_no_weights(folder: Path) -> None:
    report = json.loads((folder / "report.json").read_text())
    doc = json.loads((folder / "program.json").read_text())
    assert report["program"] == {"file": "program.json", "sha256": doc["sha256"], "reference": "reference.safetensors"}
    assert report["weights"]["source"] == "random" and report["weights"]["seed"] == 0
    assert doc["weights"]["sha256"] == report["weights"]["sha256"] and len(doc["weights"]["sha256"]) == 64
    reference = load_file(str(folder / "reference.safetensors"))
    assert sorted(reference) == sorted([*doc["reference"]["inputs"], *doc["reference"]["outputs"]])
    assert [k.split(".")[0] for k in sorted(reference)] == ["input", "output"]
    weights = {t["key"] for t in doc["tensors"]}
    assert not weights & set(reference)  # the folder holds no weight
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1 << 20


def test_the_folder_runs_again_and_matches_the_recorded_eager_outputs(folder: Path, tmp_path: Path) -> None:
    code, out, err = wsc_main("run", folder, "--random-weights", "0", "--outputs", tmp_path / "o.safetensors")
    assert code == 0, err
    assert "verification  pass" in out and "the compile's" in out
    got = load_file(str(tmp_path / "o.safetensors"))
    reference = load_file(str(folder / "reference.safetensors"))
    (name,) = got
    expected = reference[f"output.{name}"]
    assert got[name].shape == expected.shape
    scale = float(np.abs(expected).max())
    assert 0 < float(np.abs(got[name] - expected).max()) <= 1e-5 * scale or np.array_equal(got[name], expected)


def test_the_same_weights_from_a_checkpoint_are_recognised(folder: Path, tmp_path: Path) -> None:
    doc = json.loads((folder / "program.json").read_text())
    checkpoint = {t["key"]: draw(t["key"], tuple(t["shape"]), np.float32, 0) for t in doc["tensors"]}
    save_file(checkpoint, str(tmp_path / "w.safetensors"))
    outcome = run_folder(folder, weights=tmp_path / "w.safetensors")
    assert outcome.verification["status"] == "pass"
    assert outcome.weights_digest == doc["weights"]["sha256"]
    # One weight changed by one ulp is other weights: the run reports its outputs and holds them to nothing.
    key = next(iter(checkpoint))
    checkpoint[key] = np.nextafter(checkpoint[key], np.float32(np.inf))
    save_file(checkpoint, str(tmp_path / "w2.safetensors"))
    other = run_folder(folder, weights=tmp_path / "w2.safetensors")
    assert other.verification["status"] == "none" and "not the ones the compile verified" in other.verification["note"]
    # Streamed as fp16 they are not the weights the compile streamed either.
    half = run_folder(folder, random_weights=0, weights_dtype="fp16")
    assert half.verification["status"] == "none"
    assert not np.array_equal(half.outputs[0], outcome.outputs[0])


def test_other_weights_or_inputs_run_with_nothing_to_hold_them_to(folder: Path, tmp_path: Path) -> None:
    same = run_folder(folder, random_weights=0)
    other = run_folder(folder, random_weights=1)
    assert other.verification["status"] == "none"
    assert not np.allclose(other.outputs[0], same.outputs[0])
    ids = load_file(str(folder / "reference.safetensors"))["input.ids"]
    save_file({"ids": ids}, str(tmp_path / "same.safetensors"))
    assert run_folder(folder, random_weights=0, inputs=tmp_path / "same.safetensors").verification["status"] == "pass"
    save_file({"ids": (ids + 1) % 97}, str(tmp_path / "shifted.safetensors"))
    shifted = run_folder(folder, random_weights=0, inputs=tmp_path / "shifted.safetensors")
    assert shifted.verification["status"] == "none" and "capture input" in shifted.verification["note"]


def test_a_forged_program_runs_what_it_says_and_fails_against_the_reference(folder: Path, tmp_path: Path) -> None:
    """The kernels are generated from the IR read: a layernorm's eps changed (and the hash made to match) is
    run with that eps, and the recorded eager outputs catch it."""
    def bigger_eps(doc: dict) -> None:
        norms = [n for n in doc["nodes"] if n["op"] == "layernorm"]
        assert norms
        norms[0]["attrs"]["eps"] = 3.0

    copy = forged(folder, tmp_path, bigger_eps)
    code, out, err = wsc_main("run", copy, "--random-weights", "0")
    assert code == 1, err
    assert "verification  fail" in out


def test_the_reference_is_dropped_when_a_compile_no_longer_verifies(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert wsc_main("compile", TINY, "--target", "mesh-16x16", "--out", out, "--random-weights", "0",
                    "--strategy", "greedy")[0] == 0
    assert (out / "reference.safetensors").exists()
    assert wsc_main("compile", TINY, "--target", "mesh-16x16", "--out", out, "--no-verify", "--strategy",
                    "greedy")[0] == 0
    assert not (out / "reference.safetensors").exists()
    assert json.loads((out / "program.json").read_text())["reference"] is None
    with pytest.raises(WscError, match="recorded no inputs to run on"):
        run_folder(out, random_weights=0)


class ConvNet(torch.nn.Module):
    """Convolution, batch norm (running statistics: buffers the program streams), max pool (its -inf fill an
    attribute) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)
        return self.head(y.flatten(1))


def test_the_ir_survives_the_round_trip_whole(tmp_path: Path) -> None:
    """program.json read back is the program: the same graph (constants, buffers, -inf attributes included),
    layers and plans, and the executor computes bit for bit the same outputs from it."""
    model = ConvNet().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    compiled = wsc.compile(model, (x,), "mesh-16x16", strategy="greedy", random_weights=5)
    assert compiled.report["verification"]["status"] == "pass"
    assert {t["kind"] for t in json.loads(json.dumps(program_json.captured_keys(
        compiled.program, compiled.compiled.captured)[1]))} == {"parameter", "buffer"}
    compiled.save(tmp_path / "out")
    loaded = program_json.load(tmp_path / "out")
    original, again = compiled.program, loaded.program
    assert again.graph.summary() == original.graph.summary()
    for node in original.graph:
        twin = again.graph[node.name]
        assert (twin.flops, twin.bytes, twin.layer, twin.holds, twin.module) == \
            (node.flops, node.bytes, node.layer, node.holds, node.module)
        assert set(twin.attrs) == set(node.attrs)
        for key, value in node.attrs.items():
            if isinstance(value, np.ndarray):
                assert twin.attrs[key].dtype == value.dtype and np.array_equal(twin.attrs[key], value)
            elif key != "key":
                assert twin.attrs[key] == value and type(twin.attrs[key]) is type(value), (node.name, key)
    assert any(v == -np.inf for n in again.graph for v in n.attrs.values() if isinstance(v, float))
    for a, b in zip(original.layers, again.layers, strict=True):
        assert (a.index, a.name, a.nodes, a.weights, a.store_bytes) == (b.index, b.name, b.nodes, b.weights,
                                                                        b.store_bytes)
        assert a.kernels == b.kernels
    assert (again.micro_batches, again.batched_inputs, again.target) == \
        (original.micro_batches, original.batched_inputs, original.target)
    # The same store, the two programs: the same bits.
    store_path = program_json.write_random_weights(loaded.tensors, tmp_path / "w.safetensors", 5)
    results = []
    for program in (original, again):
        store = WeightStore(store_path)
        for node in program.graph.params:
            node.attrs["key"] = next(k for k in store.keys() if k == node.attrs["key"] or
                                     node.attrs["key"].endswith(k))
        results.append(Executor(program, store).run([x.numpy()]))
        store.close()
    assert np.array_equal(results[0][0], results[1][0])
    assert run_folder(tmp_path / "out", random_weights=5).verification["status"] == "pass"


def test_random_weights_depend_on_the_seed_and_the_name_only() -> None:
    a = draw("blocks.0.attn.weight", (8, 4), np.float32, 0)
    assert np.array_equal(a, draw("blocks.0.attn.weight", (8, 4), np.float32, 0))
    assert not np.array_equal(a, draw("blocks.0.attn.weight", (8, 4), np.float32, 1))
    assert not np.array_equal(a, draw("blocks.1.attn.weight", (8, 4), np.float32, 0))
    assert abs(float(draw("w", (512, 256), np.float32, 0).std()) - 256 ** -0.5) < 0.01
    norm = draw("ln.weight", (1000,), np.float32, 0)
    assert 0.5 <= norm.min() and norm.max() <= 1.5 and abs(float(norm.mean()) - 1) < 0.05
    assert abs(float(draw("ln.bias", (1000,), np.float32, 0).std()) - 0.1) < 0.01


# Run in a process of its own, with an audit hook: every file of the folder opened, every code object
# compiled from or executed out of it, every module imported from it, every unpickling anywhere.
AUDIT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    folder = Path(sys.argv[1]).resolve()
    seen = {"opened": [], "executed": [], "unpickled": []}

    def inside(path) -> bool:
        try:
            return folder in Path(path if isinstance(path, str) else path.decode()).resolve().parents
        except (TypeError, ValueError, AttributeError, OSError):
            return False

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes)) and inside(args[0]):
            seen["opened"].append(Path(args[0] if isinstance(args[0], str) else args[0].decode()).name)
        elif event == "compile" and len(args) > 1 and isinstance(args[1], str) and inside(args[1]):
            seen["executed"].append(args[1])
        elif event == "exec" and args and inside(getattr(args[0], "co_filename", "")):
            seen["executed"].append(args[0].co_filename)
        elif event == "import" and len(args) > 1 and isinstance(args[1], str) and inside(args[1]):
            seen["executed"].append(args[1])
        elif event == "pickle.find_class":
            seen["unpickled"].append(f"{args[0]}.{args[1]}")

    sys.path.insert(0, str(folder))  # a module planted in the folder would be found if anything imported it
    sys.addaudithook(hook)
    from wsc.cli import main

    code = main(["run", str(folder), "--random-weights", "0"])
    print(json.dumps({"exit": code, **seen}))
''')


def test_a_run_reads_only_data_from_the_folder(folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "shared"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    marker = tmp_path / "executed"
    planted = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("program.py", "__init__.py", "model.py", "sitecustomize.py", "wsc_plugin.py"):
        (copy / name).write_text(planted)

    class Payload:
        def __reduce__(self):
            return (exec, (planted,))

    import pickle

    (copy / "weights.pt").write_bytes(pickle.dumps(Payload()))
    (copy / "program.pkl").write_bytes(pickle.dumps(Payload()))
    proc = subprocess.run([sys.executable, "-c", AUDIT, str(copy)], capture_output=True, text=True, timeout=300,
                          env={"WSC_PROGRESS": "0", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["exit"] == 0
    assert set(seen["opened"]) == {"program.json", "reference.safetensors"}
    assert seen["executed"] == [] and seen["unpickled"] == []
    assert not marker.exists()


@pytest.mark.parametrize("value", [
    (1, 2), [1, (2, 3)], {"a": (1.5, "x")}, float("-inf"), float("inf"), 0.1, True, None, "gelu", 7,
    np.float32(0.1), np.int64(-3), np.arange(6, dtype=np.int64).reshape(2, 3), np.array([True, False]),
    np.array([[0.5, -np.inf]], dtype=np.float32), np.zeros((0, 4), dtype=np.float16),
])
def test_an_attribute_reads_back_as_it_was_written(value) -> None:
    back = program_json._Reader(Path("program.json")).value(json.loads(json.dumps(program_json._encode(value))), "a")
    if isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and back.shape == value.shape and np.array_equal(back, value)
    else:
        assert back == value and type(back) is type(value)
        if isinstance(value, list):
            assert type(back[1]) is tuple
        if isinstance(value, dict):
            assert type(back["a"]) is tuple


def test_a_nan_attribute_reads_back_as_nan() -> None:
    back = program_json._Reader(Path("program.json")).value(program_json._encode(float("nan")), "a")
    assert isinstance(back, float) and back != back


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("stage", ["load", "draw", "digest", "execute", "write"])
def test_an_interrupt_of_a_run_exits_130_and_leaves_nothing(stage: str, folder: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    import wsc.run as run_module

    owner, name = {"load": (run_module.program_json, "load"), "draw": (run_module.program_json, "write_random_weights"),
                   "digest": (run_module, "values_digest"), "execute": (run_module.Executor, "run"),
                   "write": (run_module, "write_atomic")}[stage]
    monkeypatch.setattr(owner, name, _interrupt)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, _, err = wsc_main("run", folder, "--random-weights", "0", "--outputs", tmp_path / "o.safetensors")
    assert (code, err) == (130, "interrupted\n")
    assert list(tmp_path.iterdir()) == []
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


class Reshapes(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(2, 15).reshape(2, 3, 5)


def test_a_program_without_layers_is_saved_and_runs_again(tmp_path: Path) -> None:
    """Reshapes that cancel out leave a program with no layer at all, so nothing to draw: the page says so
    rather than the save failing."""
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    compiled = wsc.compile(Reshapes(), (x,), "mesh-16x16", strategy="greedy")
    assert compiled.program.layers == []
    compiled.save(tmp_path / "out")
    assert "no kernels" in (tmp_path / "out" / "report.html").read_text()
    outcome = run_folder(tmp_path / "out", random_weights=0)
    assert outcome.verification["status"] == "pass"
    assert np.array_equal(outcome.outputs[0], x.numpy())
