"""Ctrl-C during a compile: exit 130 with one line `interrupted`, and nothing written, whatever stage it lands in.

Each stage is interrupted deterministically: the stage raises KeyboardInterrupt when it starts, as Python does
when SIGINT arrives. CP-SAT is told to leave SIGINT to Python (it took it for itself and ended its search early,
so that the compile went on with a weaker placement and exited 0).
"""

from __future__ import annotations

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
    code = main(["compile", str(MODEL), "--target", "mesh-16x16", "--out", str(out), "--time-limit", "0.3", *flags])
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
    code = main(["compile", str(MODEL), "--target", "mesh-16x16", "--out", str(out), "--time-limit", "0.3",
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
