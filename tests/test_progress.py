"""Progress: nothing at all on a stderr that is not a terminal; forced on, every long step names itself."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from wsc import progress
from wsc.cli import main

MODELS = Path(__file__).resolve().parent / "models"
TINY_COMPILE = ["compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16", "--strategy", "greedy"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _terminal_console() -> tuple[Console, io.StringIO]:
    screen = io.StringIO()
    return Console(file=screen, force_terminal=True, width=120), screen


@pytest.mark.parametrize("setting, stderr, shown", [
    (None, _Terminal(), True),
    (None, io.StringIO(), False),
    ("0", _Terminal(), False),
    ("1", io.StringIO(), True),
])
def test_shown_on_a_terminal_unless_the_env_says_otherwise(monkeypatch, setting, stderr, shown):
    if setting is None:
        monkeypatch.delenv("WSC_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("WSC_PROGRESS", setting)
    monkeypatch.setattr(sys, "stderr", stderr)
    assert progress.enabled() is shown


def test_the_quiet_path_does_not_import_rich():
    code = ("import sys\nfrom wsc import progress\n"
            "with progress.stage('x') as s:\n    s.update('y'); s.advance()\n"
            "print(list(progress.track([1, 2], str)), 'rich' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "WSC_PROGRESS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert (proc.stdout, proc.stderr) == ("[1, 2] False\n", "")


def test_compile_writes_nothing_to_stderr_that_is_not_a_terminal(monkeypatch, capfd, tmp_path):
    monkeypatch.delenv("WSC_PROGRESS", raising=False)
    assert main([*TINY_COMPILE, "--out", str(tmp_path)]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    assert "verification  pass" in out


def test_forced_progress_names_each_long_step_and_leaves_stdout_alone(monkeypatch, capfd, tmp_path):
    monkeypatch.setenv("WSC_PROGRESS", "1")
    console, screen = _terminal_console()
    with progress.use_console(console):
        assert main([*TINY_COMPILE, "--out", str(tmp_path)]) == 0
    shown = screen.getvalue()
    for step in ["building tiny_gpt", "capturing CerebrasGPT", "pass legalize", "pass place",
                 "placing blocks.0 (greedy)", "pass estimate", "running layer embed", "running layer blocks.1",
                 "eager PyTorch reference", f"writing {tmp_path}"]:
        assert step in shown, step
    out, err = capfd.readouterr()
    assert "\x1b" not in out and "verification  pass" in out  # the summary stays plain text on stdout
    assert err == ""  # everything went to the injected console


def test_nested_stages_share_one_display_that_a_failing_loop_ends(monkeypatch):
    monkeypatch.setenv("WSC_PROGRESS", "1")
    first, first_screen = _terminal_console()
    second, second_screen = _terminal_console()
    with progress.use_console(first), pytest.raises(RuntimeError):
        with progress.stage("outer step"):
            for _ in progress.track(["a", "b"], lambda item: f"inner item {item}"):
                raise RuntimeError("a pass failed")
    # Had the failure left the display running, this stage would join it and draw on the first console.
    with progress.use_console(second), progress.stage("next step"):
        pass
    assert "outer step" in first_screen.getvalue() and "inner item a" in first_screen.getvalue()
    assert "next step" in second_screen.getvalue() and "next step" not in first_screen.getvalue()
