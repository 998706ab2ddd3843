"""`.pt2` files through the CLI. Issue 12: a plain GPT exported at batch 2 was refused ("has no batch
dimension": its fixed graph was tried as a smaller micro-batch), and --model-arg was silently ignored."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from conftest import tiny_gpt

from wsc.cli import main


def run(capsys, *args: str) -> subprocess.CompletedProcess:
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.fixture(scope="module")
def batch2_pt2(tmp_path_factory):
    model, inputs = tiny_gpt(layers=1, batch=2, seq=48, vocab=1000)
    path = tmp_path_factory.mktemp("pt2") / "gpt_batch2.pt2"
    torch.export.save(torch.export.export(model, inputs), path)
    return path


def test_a_gpt_exported_at_batch_2_compiles_and_verifies(batch2_pt2, tmp_path, capsys):
    proc = run(capsys, "compile", str(batch2_pt2), "--target", "mesh-16x16", "--out", str(tmp_path),
               "--time-limit", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert "verification  pass" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"]["tokens_per_step"] == 2 * 48
    assert report["simulation"]["micro_batches"] == 1  # the exported graph is the whole batch's


def one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], proc.stderr


def test_model_arg_is_refused_for_a_pt2_file(batch2_pt2, tmp_path, capsys):
    out = tmp_path / "out"
    proc = run(capsys, "compile", str(batch2_pt2), "--target", "mesh-16x16", "--model-arg", "seq=64",
               "--out", str(out))
    one_line_error(proc, "error: --model-arg seq=64 does not apply to a .pt2 file")
    assert not out.exists()


def test_micro_batch_cannot_split_a_pt2_file(batch2_pt2, tmp_path, capsys):
    out = tmp_path / "out"
    proc = run(capsys, "compile", str(batch2_pt2), "--target", "mesh-16x16", "--micro-batch", "1",
               "--out", str(out))
    one_line_error(proc, "--systems and --micro-batch cannot split it")
    assert not out.exists()
