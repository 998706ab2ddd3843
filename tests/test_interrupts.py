"""Ctrl-C during a compile: exit 130 with one line `interrupted`, and nothing written, whatever stage it lands in.

Each stage is interrupted deterministically: the stage raises KeyboardInterrupt when it starts, as Python does
when SIGINT arrives. CP-SAT is told to leave SIGINT to Python (it took it for itself and ended its search early,
so that the compile went on with a weaker placement and exited 0); one test sends a real SIGINT to a `wsc
compile` while CP-SAT searches.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wsc import api, pipeline
from wsc.artifacts import atomic
from wsc.cli import EXIT_INTERRUPTED, main
from wsc.passes.estimate import Estimate
from wsc.passes.legalize import Legalize
from wsc.passes.partition import Partition
from wsc.passes.place import Place
from wsc.passes.route import Route

MODEL = Path(__file__).parent / "models" / "tiny_gpt.py"
ROOT = Path(__file__).resolve().parent.parent


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


STAGES = {
    "capture": (pipeline, "capture"),
    "legalize": (Legalize, "__call__"),
    "partition": (Partition, "__call__"),
    "place": (Place, "__call__"),
    "route": (Route, "__call__"),
    "estimate": (Estimate, "__call__"),
    "run": (pipeline, "run_compiled"),
    "eager reference": (pipeline, "verify"),
    "per-layer diff": (pipeline, "diff_layers"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_an_interrupt_at_any_stage_exits_130_and_writes_nothing(stage, tmp_path, monkeypatch, capsys) -> None:
    owner, name = STAGES[stage]
    monkeypatch.setattr(owner, name, interrupt)
    out = tmp_path / "out"
    flags = ["--verify-layers"] if stage == "per-layer diff" else []
    # The greedy placer: what an interrupt leaves does not depend on the placer (CP-SAT's is the real SIGINT below).
    code = main(["compile", str(MODEL), "--target", "mesh-16x16", "--out", str(out), "--strategy", "greedy", *flags])
    err = capsys.readouterr().err
    assert (code, err) == (EXIT_INTERRUPTED, "interrupted\n")
    assert not out.exists()


def test_an_interrupt_while_the_files_are_written_leaves_none_of_them(tmp_path, monkeypatch, capsys) -> None:
    """The output is written as one step: interrupted after its first file is complete, none is in place,
    no temporary is left, and the folder (which did not exist) is gone."""
    written = []
    real_fdopen = atomic.os.fdopen

    def interrupted_after_one(fd, mode):
        if written:
            raise KeyboardInterrupt
        written.append(fd)
        return real_fdopen(fd, mode)

    monkeypatch.setattr(atomic.os, "fdopen", interrupted_after_one)
    out = tmp_path / "out"
    code = main(["compile", str(MODEL), "--target", "mesh-16x16", "--out", str(out), "--strategy", "greedy",
                 "--no-verify"])
    assert (code, capsys.readouterr().err) == (EXIT_INTERRUPTED, "interrupted\n")
    assert written and not out.exists()


def test_an_interrupt_while_writing_into_an_existing_folder_leaves_it_as_it_was(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "report.json").write_text("old")
    real_replace = atomic.os.replace

    def interrupted_on_the_second(src, dst):
        if Path(dst).name == "report.json":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", interrupted_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_all_atomic(folder, {"report.json": "new", "trace.json": "new"})
    assert (folder / "report.json").read_text() == "old"
    assert sorted(p.name for p in folder.iterdir()) in (["report.json"], ["report.json", "trace.json"])


def test_cpsat_leaves_sigint_to_python(monkeypatch) -> None:
    from wsc.passes.placers import cpsat

    seen = []
    real_solve = cpsat.cp_model.CpSolver.solve

    def solve(self, model, *args, **kwargs):
        seen.append(self.parameters.catch_sigint_signal)
        return real_solve(self, model, *args, **kwargs)

    monkeypatch.setattr(cpsat.cp_model.CpSolver, "solve", solve)
    model, inputs = __import__("conftest").tiny_gpt(layers=1)
    api.compile(model, inputs, "mesh-16x16", verify=False, time_limit=0.3)
    assert seen and not any(seen)


# CSI escape sequences (colour, cursor moves, line erasing) of the forced progress display.
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_a_real_sigint_while_cpsat_searches_exits_130_and_writes_nothing(tmp_path) -> None:
    """`wsc compile` in its own process, its progress forced on (stderr is a pipe): once the display shows the
    first block's wirelength search (the one long solve of the tiny GPT on cs2-sim, which runs to its half of
    the limit: 0.5 deterministic seconds, seconds of wall time; the other layers are solved at once, and the
    second block reuses the first's placement), SIGINT. CP-SAT keeps
    searching to its limit and returns, Python raises KeyboardInterrupt, and the CLI ends with 130, erases
    the display and prints the one line `interrupted`, leaving no folder and no temporary behind."""
    out = tmp_path / "out"
    env = {**os.environ, "WSC_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "wsc.cli", "compile", str(MODEL), "--target", "cs2-sim",
                             "--out", str(out), "--time-limit", "1", "--no-verify"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()

    def read() -> None:
        assert proc.stderr is not None
        while chunk := os.read(proc.stderr.fileno(), 65536):
            err.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def frames() -> list[str]:  # the display's frames: each redraw returns the cursor to column 0 first
        return ESCAPES.sub("", err.decode("utf-8", errors="replace")).split("\r")

    def searching() -> bool:
        done = frames()[:-1]  # the last may be half written
        return bool(done) and "placing blocks.0 (cpsat)" in done[-1] and "CP-SAT searching wirelength" in done[-1]

    deadline = time.monotonic() + 60
    try:
        while not searching():
            assert proc.poll() is None, f"the compile ended before CP-SAT's long search: {frames()[-3:]}"
            assert time.monotonic() < deadline, "no CP-SAT search of blocks.0 shown in 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert proc.stdout is not None
    assert (code, proc.stdout.read()) == (130, b"")
    text = err.decode()
    assert "Traceback" not in text and "error" not in text
    # The display erased, what is left on the line is the CLI's one line.
    assert frames()[-1] == "interrupted\n" and text.endswith("\rinterrupted\n")
    assert not out.exists() and list(tmp_path.iterdir()) == []
