"""The command line: a compile writes both artifacts; bad input gets one line, exit code 2, no traceback."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import warnings
from pathlib import Path

import pytest

from wsc.cli import main

MODELS = Path(__file__).resolve().parent / "models"


@pytest.fixture(scope="module")
def compiled_out(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The command's entry point in this process (a new interpreter costs seconds; the `wsc` command itself is
    run by tests/bad_inputs, tests/test_reproducible.py and tests/test_interrupts.py)."""
    out = tmp_path_factory.mktemp("out")
    args = ["compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16", "--model-arg", "layers=2",
            "--out", str(out), "--time-limit", "1"]
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = main(args)
    return subprocess.CompletedProcess(args, code, printed.getvalue(), errors.getvalue()), out


def test_compile_writes_report_and_placement(compiled_out):
    proc, out = compiled_out
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    for section, key in [("model", "params"), ("model", "layers"), ("placement", "strategy"),
                         ("placement", "pes_used"), ("placement", "utilization"), ("placement", "wirelength"),
                         ("placement", "max_link_load"), ("simulation", "step_seconds"),
                         ("simulation", "bound_seconds"), ("simulation", "bottleneck"),
                         ("verification", "status"), ("verification", "max_abs_err"),
                         ("verification", "tolerance"), ("memory", "peak_rss_bytes"),
                         ("memory", "max_layer_weights_bytes")]:
        assert key in report[section], (section, key)
    assert report["model"]["layers"] == 4
    assert report["model"]["args"] == {"layers": 2, "seq": 12, "batch": 1}
    assert report["verification"]["status"] == "pass"
    assert report["simulation"]["step_seconds"] >= report["simulation"]["bound_seconds"]
    placement = json.loads((out / "placement.json").read_text())
    assert placement["mesh"] == {"rows": 16, "cols": 16, "dead_pes": [], "sram_bytes_per_pe": 49152,
                                 "routable_colors": 8}
    assert [layer["name"] for layer in placement["layers"]] == ["embed", "blocks.0", "blocks.1", "head"]
    assert "verification  pass" in proc.stdout


def test_placement_json_is_legal(compiled_out):
    _, out = compiled_out
    placement = json.loads((out / "placement.json").read_text())
    rows, cols = placement["mesh"]["rows"], placement["mesh"]["cols"]
    for layer in placement["layers"]:
        used = set()
        for k in layer["kernels"]:
            assert 0 <= k["x"] and k["x"] + k["w"] <= cols and 0 <= k["y"] and k["y"] + k["h"] <= rows
            cells = {(r, c) for r in range(k["y"], k["y"] + k["h"]) for c in range(k["x"], k["x"] + k["w"])}
            assert not cells & used, f"{k['name']} overlaps another kernel"
            used |= cells
        names = {k["name"] for k in layer["kernels"]}
        for edge in layer["edges"]:
            assert edge["src"] in names and edge["dst"] in names and edge["bytes"] > 0


def one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    assert pattern in lines[0], lines[0]


# The warning categories a Python process does not print unless asked to (its default filters).
HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def wsc_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same entry point without a new interpreter (importing torch costs seconds per process)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_unsupported_op_is_one_line_exit_2(tmp_path, capfd):
    # In this process, what reaches file descriptors 1 and 2 (the tracers' C++ side included) is read, and the
    # warnings a new interpreter would print to stderr are recorded: none may add to the one line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proc = wsc_in_process(capfd, "compile", str(MODELS / "cumsum_model.py"), "--target", "mesh-16x16", "--out",
                              str(tmp_path / "o"))
    shown = [w for w in caught if not issubclass(w.category, HIDDEN_BY_DEFAULT)]
    assert not shown, [str(w.message) for w in shown]
    one_line_error(proc, "unsupported op aten.cumsum.default at cumsum_model.py:12: return self.proj(x).cumsum")
    assert "wsc ops" in proc.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_model_file_errors(tmp_path, capsys):
    run = lambda *a: wsc_in_process(capsys, "compile", *a)  # noqa: E731
    one_line_error(run(str(MODELS / "no_functions.py"), "--target", "mesh-16x16"), "does not define build_model")
    one_line_error(run(str(MODELS / "syntax_error.py"), "--target", "mesh-16x16"), "has a syntax error at line 1")
    one_line_error(run(str(tmp_path / "missing.py"), "--target", "mesh-16x16"), "does not exist")
    one_line_error(run(str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16", "--model-arg", "x"),
                   "is not KEY=VALUE")
    one_line_error(run(str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16", "--model-arg", "depth=3"),
                   "unexpected keyword argument 'depth'")


def test_bad_target_errors(tmp_path, capsys):
    one_line_error(wsc_in_process(capsys, "compile", str(MODELS / "tiny_gpt.py"), "--target", "nope"), "cs2-sim")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmesh: {rows: -3, cols: 4}\n")
    one_line_error(wsc_in_process(capsys, "compile", str(MODELS / "tiny_gpt.py"), "--target", str(bad)),
                   "bad.yaml")


def test_ops_lists_supported_ops(capsys):
    proc = wsc_in_process(capsys, "ops")
    assert proc.returncode == 0
    assert "aten.scaled_dot_product_attention.default" in proc.stdout
    assert "  matmul" in proc.stdout


def test_mismatch_exits_1_and_still_reports(tmp_path, capsys):
    """A tolerance no fp32 run can meet: verification fails, the exit code says so, the report shows why."""
    proc = wsc_in_process(capsys, "compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16",
                          "--model-arg", "layers=1", "--tolerance", "0", "--time-limit", "0.2",
                          "--out", str(tmp_path))
    assert proc.returncode == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verification"]["status"] == "fail"
    assert 0 < report["verification"]["max_abs_err"] < 1e-4
    assert "verification  fail" in proc.stdout


def test_data_dependent_control_flow_is_one_line_exit_2(capsys):
    proc = wsc_in_process(capsys, "compile", str(MODELS / "data_dependent.py"), "--target", "mesh-16x16")
    one_line_error(proc, "data-dependent control flow (an `if` on a tensor's value) is the usual cause")
    assert proc.stdout == ""  # the tracers' own graph dumps and warnings are not shown


def test_input_of_the_wrong_dtype_is_one_line_exit_2(capsys):
    proc = wsc_in_process(capsys, "compile", str(MODELS / "wrong_input.py"), "--target", "mesh-16x16")
    one_line_error(proc, "the model fails on its example inputs (float32[1, 12])")
    assert "give inputs of the dtype and shape its forward expects" in proc.stderr


def test_missing_weights_file_is_one_line_exit_2(capsys, tmp_path):
    proc = wsc_in_process(capsys, "compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16",
                          "--weights", str(tmp_path / "nope.safetensors"))
    one_line_error(proc, "nope.safetensors does not exist")


def test_check_subcommand_proves_the_output_legal(compiled_out, capsys):
    _, out = compiled_out
    assert main(["check", str(out)]) == 0
    assert capsys.readouterr().out.startswith("legal: ")


def test_weights_from_a_checkpoint_fp32_and_fp16(tmp_path, capsys):
    """--weights: the model is built without weights, the program streams them from the file (the tied
    embedding saved under one name only), and the eager reference loads the same file."""
    import importlib.util

    import torch
    from safetensors.torch import save_model

    spec = importlib.util.spec_from_file_location("tiny", MODELS / "tiny_gpt.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    model = tiny.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # weights the file's readers could not get by rebuilding the model
    save_model(model, str(tmp_path / "w.safetensors"))
    reports = {}
    for dtype in ("fp32", "fp16"):
        out = tmp_path / dtype
        code = wsc_in_process(capsys, "compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16",
                              "--weights", str(tmp_path / "w.safetensors"), "--weights-dtype", dtype,
                              "--time-limit", "0.3", "--out", str(out)).returncode
        reports[dtype] = json.loads((out / "report.json").read_text())
        assert code == 0, reports[dtype]["verification"]
    for dtype, weight_eps in (("fp32", 0.0), ("fp16", 2.0**-11)):
        v = reports[dtype]["verification"]
        assert v["status"] == "pass" and v["tolerance"] == 1.0 and v["weights_dtype"] == dtype
        assert v["rule"]["weight_eps"] == weight_eps
    assert reports["fp32"]["verification"]["max_abs_err"] < 1e-5
    assert reports["fp16"]["memory"]["streamed_bytes"] * 2 == reports["fp32"]["memory"]["streamed_bytes"]


BAD_OPTIONS = [
    (["--tolerance", "-1"], "--tolerance -1.0 is not a factor of the derived error bound"),
    (["--time-limit", "0"], "--time-limit 0.0 is not a time"),
    (["--micro-batch", "0"], "--micro-batch 0 is not a number of sequences"),
    (["--systems", "0"], "--systems 0 is not a number of wafers"),
    (["--seed", "-1"], "--seed -1 is out of range"),
    (["--strategy", "best"], "unknown placement strategy 'best'; use one of cpsat"),
    (["--router", "manhattan"], "unknown router 'manhattan'; use one of congestion, xy"),
    (["--mode", "streaming"], "unknown mode 'streaming'; use one of weight-streaming, pipelined"),
    (["--weights-dtype", "bf16"], "unknown weights dtype 'bf16'; use one of fp32, fp16"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_OPTIONS, ids=[" ".join(f) for f, _ in BAD_OPTIONS])
def test_a_bad_option_is_one_line_exit_2_and_nothing_is_built(flags, message, tmp_path, capsys, monkeypatch):
    import wsc.frontend.modelfile

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before its options were checked")

    monkeypatch.setattr(wsc.frontend.modelfile, "build", no_build)
    proc = wsc_in_process(capsys, "compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16",
                          "--out", str(tmp_path / "out"), *flags)
    one_line_error(proc, message)
    assert not (tmp_path / "out").exists()


def test_the_cli_hands_one_checked_options_object_to_wsc_compile(tmp_path, capsys, monkeypatch):
    import wsc.api
    from wsc.core.errors import WscError
    from wsc.options import DEFAULT_TOLERANCE, CompileOptions

    given = []

    def compile_(model, inputs, target, options, **keywords):
        given.append(options)
        raise WscError("stop here")

    monkeypatch.setattr(wsc.api, "compile", compile_)
    one_line_error(wsc_in_process(capsys, "compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16",
                                  "--strategy", "greedy", "--weights-dtype", "fp16", "--seed", "7", "--no-verify",
                                  "--out", str(tmp_path / "out")), "stop here")
    assert given == [CompileOptions(strategy="greedy", weights_dtype="fp16", seed=7, verify=False)]
    assert given[0].verify_tolerance == DEFAULT_TOLERANCE == 1.0  # fp16's rounding is in the bound, not here


def test_the_cli_builds_the_weights_only_when_they_fit(tmp_path, capsys, monkeypatch):
    """Whether the weights fit is the API's one rule (api.weights_fit), asked of the weightless build."""
    import wsc.api

    asked = []
    monkeypatch.setattr(wsc.api, "weights_fit", lambda module: asked.append(module) or False)
    proc = wsc_in_process(capsys, "compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16",
                          "--model-arg", "layers=1", "--strategy", "greedy", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert asked and all(p.is_meta for p in asked[0].parameters())
    v = json.loads((tmp_path / "report.json").read_text())["verification"]
    assert v["status"] == "skipped" and "built without weights" in v["note"]


# ------------------------------------------------------------------------------------------ --out and --force

LINEAR = '''\
import torch


class Two(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a = torch.nn.Linear(d, d)
        self.b = torch.nn.Linear(d, d)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def build_model(d: int = 16):
    return Two(d)


def example_inputs(d: int = 16):
    return (torch.randn(2, 8, d),)
'''
QUICK = ("--target", "mesh-16x16", "--strategy", "greedy", "--no-verify")


def test_out_holding_another_models_output_needs_force(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("first.py").write_text(LINEAR)
    Path("second.py").write_text(LINEAR)
    assert wsc_in_process(capsys, "compile", "first.py", *QUICK, "--model-arg", "d=24", "--out", "out").returncode == 0
    origin = json.loads(Path("out/report.json").read_text())["origin"]
    assert origin == {"model_file": str(tmp_path / "first.py"), "model_args": {"d": 24},
                      "argv": ["compile", "first.py", *QUICK, "--model-arg", "d=24"]}
    # The same model again (other arguments too) replaces its own output without --force.
    assert wsc_in_process(capsys, "compile", "first.py", *QUICK, "--out", "out").returncode == 0
    before = {p.name: p.read_bytes() for p in Path("out").iterdir()}
    one_line_error(wsc_in_process(capsys, "compile", "second.py", *QUICK, "--out", "out"),
                   "--out out holds another model's output (first.py); give another --out, or --force to replace it")
    assert {p.name: p.read_bytes() for p in Path("out").iterdir()} == before
    assert wsc_in_process(capsys, "compile", "second.py", *QUICK, "--out", "out", "--force").returncode == 0
    assert json.loads(Path("out/report.json").read_text())["origin"]["model_file"] == str(tmp_path / "second.py")


def test_a_report_written_before_origin_is_known_by_its_model_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("first.py").write_text(LINEAR)
    Path("out").mkdir()
    Path("out/report.json").write_text(json.dumps({"schema": 1, "model": {"file": "first.py"}}))
    assert wsc_in_process(capsys, "compile", "first.py", *QUICK, "--out", "out").returncode == 0
    Path("out/report.json").write_text(json.dumps({"schema": 1, "model": {"file": "elsewhere/first.py"}}))
    one_line_error(wsc_in_process(capsys, "compile", "first.py", *QUICK, "--out", "out"),
                   "holds another model's output (first.py)")


@pytest.mark.parametrize(("out", "message"), [
    ("notes.txt/sub", "--out notes.txt/sub cannot be written: notes.txt is a file, not a folder"),
    ("/proc/wsc-out", "--out /proc/wsc-out cannot be written: making a folder there failed"),
    ("taken", "--out taken holds the output of another compile"),
])
def test_a_bad_out_is_refused_before_the_model_is_built(out, message, tmp_path, capsys, monkeypatch):
    import wsc.frontend.modelfile

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr(wsc.frontend.modelfile, "build", no_build)
    monkeypatch.chdir(tmp_path)
    Path("model.py").write_text(LINEAR)
    Path("notes.txt").write_text("mine")
    Path("taken").mkdir()
    Path("taken/placement.json").write_text("{}")
    one_line_error(wsc_in_process(capsys, "compile", "model.py", *QUICK, "--out", out), message)
    assert not Path("notes.txt/sub").exists() and Path("notes.txt").read_text() == "mine"


def test_a_model_without_parameters_is_not_a_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("model.py").write_text(LINEAR.replace("return self.b(torch.relu(self.a(x)))", "return torch.relu(x) * 2.0"))
    proc = wsc_in_process(capsys, "compile", "model.py", "--target", "mesh-16x16", "--strategy", "greedy",
                          "--out", "out")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(Path("out/report.json").read_text())
    assert report["model"]["params"] == 0 and report["verification"]["status"] == "pass"


# ------------------------------------------------------------------------------------------ --debug


def test_debug_adds_the_details_under_the_same_first_line(capsys):
    plain = wsc_in_process(capsys, "compile", str(MODELS / "wrong_input.py"), "--target", "mesh-16x16")
    debug = wsc_in_process(capsys, "compile", str(MODELS / "wrong_input.py"), "--target", "mesh-16x16", "--debug")
    assert plain.returncode == debug.returncode == 2
    first = plain.stderr.splitlines()[0]
    assert first in debug.stderr.splitlines() and len(first) < 160
    assert "Expected tensor for argument #1 'indices'" not in plain.stderr
    assert "eager: RuntimeError: Expected tensor for argument #1 'indices'" in debug.stderr


def test_an_internal_error_names_its_traceback_once(tmp_path, capsys, monkeypatch):
    import wsc.api

    def broken(*args, **kwargs):
        raise RuntimeError("a compiler bug")

    monkeypatch.setattr(wsc.api, "compile", broken)
    argv = ("compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16", "--no-verify",
            "--out", str(tmp_path / "out"))
    plain = wsc_in_process(capsys, *argv)
    assert plain.returncode == 3 and "Traceback" not in plain.stderr
    line = "error: internal error: RuntimeError: a compiler bug"
    assert plain.stderr == f"{line} (rerun with --debug for the traceback)\n"
    debug = wsc_in_process(capsys, *argv, "--debug")
    assert debug.returncode == 3 and debug.stderr.startswith("Traceback")
    assert debug.stderr.splitlines()[-1] == f"{line} (the traceback is above)"
    assert not (tmp_path / "out").exists()
