"""Running a case of the bad-input corpus (cases.py): its files made in a folder of its own, its command run
there through the CLI's entry point in this process (or as the `wsc` command in a process of its own), and
what it printed, its exit code and what it left behind read back."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cases import Case, Output, Safetensors, linear

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 160  # the first line printed is shorter than this


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def first_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[0] if lines else ""


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def compile_tiny(folder: Path) -> Path:
    """The output folder of a real compile of the tiny model (tiny.py, elsewhere than any case's model file), the
    source of every `Output` a case holds."""
    from wsc.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.py").write_text(linear())
    with inside(folder), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["compile", "tiny.py", "--target", "mesh-16x16", "--out", "compiled", "--random-weights", "0",
                     "--strategy", "greedy"])
    assert code == 0, err.getvalue()
    return folder / "compiled"


def prepare(case: Case, folder: Path, compiled: Path) -> None:
    """Make the case's files in `folder`."""
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, Safetensors):
            path.write_bytes(safetensors_bytes(content))
        elif isinstance(content, Output):
            shutil.copytree(compiled, path)
            for edit in content.edits:
                apply_edit(path, *edit)
        else:
            raise TypeError(f"case {case.name}: no way to make {name} from {type(content).__name__}")


def safetensors_bytes(spec: Safetensors) -> bytes:
    from safetensors.numpy import save

    tensors = {key: np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) / 100
               for key, shape in spec.tensors.items()}
    data = save(tensors)
    if spec.header:
        (length,) = struct.unpack("<Q", data[:8])
        data = struct.pack("<Q", len(spec.header)) + spec.header + data[8 + length:]
    return data[:len(data) - spec.cut] if spec.cut else data


def apply_edit(folder: Path, file: str, how: str, *args: Any) -> None:
    path = folder / file
    if how == "cut":
        path.write_bytes(path.read_bytes()[: args[0]])
    elif how == "delete":
        path.unlink()
    elif how == "rehash":  # a forged program.json: edited, and its content hash made to match again
        from wsc.artifacts import program_json

        doc = json.loads(path.read_text())
        doc["sha256"] = hashlib.sha256(program_json.canonical(doc)).hexdigest()
        path.write_text(json.dumps(doc, indent=1))
    elif how == "set":
        dotted, value = args
        doc = json.loads(path.read_text())
        *parents, last = [int(k) if k.isdigit() else k for k in dotted.split(".")]
        holder = doc
        for key in parents:
            holder = holder[key]
        holder[last] = value
        path.write_text(json.dumps(doc, indent=2))
    else:
        raise ValueError(f"unknown edit {how!r}")


def snapshot(path: Path) -> Any:
    """What is at `path`: None (nothing), a file's bytes, or a folder's files (relative name -> bytes)."""
    if not os.path.lexists(path):
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def temporaries(folder: Path) -> list[str]:
    """Files an interrupted or failed write would leave (the atomic writer's `.NAME.*.tmp`)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


@contextlib.contextmanager
def patched(patch: str) -> Iterator[None]:
    """The failure a case simulates. disk-full: the first file written is written whole, every later one fails
    half way with ENOSPC, as a disk filling up does; disk-full-now: every file fails so."""
    if not patch:
        yield
        return
    if patch not in ("disk-full", "disk-full-now"):
        raise ValueError(f"unknown patch {patch!r}")
    from wsc.artifacts import atomic

    real, calls, whole = atomic._write_file, [], 1 if patch == "disk-full" else 0

    def fill_up(fd: int, data: bytes | str) -> None:
        calls.append(fd)
        if len(calls) <= whole:
            return real(fd, data)
        raw = data.encode() if isinstance(data, str) else data
        with os.fdopen(fd, "wb") as f:
            f.write(raw[: len(raw) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    atomic._write_file = fill_up
    try:
        yield
    finally:
        atomic._write_file = real


def run_in_process(case: Case, folder: Path) -> Result:
    """The case's command through `wsc.cli.main`, in `folder`, with what it prints captured."""
    from wsc.cli import main

    out, err = io.StringIO(), io.StringIO()
    with inside(folder), patched(case.patch), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as a test run collects them: the corpus reads what wsc prints
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(case.argv))
            except SystemExit as exit_:  # argparse's --help; anything else is a finding
                code = exit_.code if isinstance(exit_.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def wsc_command() -> list[str]:
    script = Path(sys.executable).parent / "wsc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsc.cli"]


def run_in_a_process(case: Case, folder: Path) -> Result:
    """The case's command as the `wsc` command, in `folder`."""
    env = {**os.environ, "WSC_PROGRESS": "0"}
    proc = subprocess.run([*wsc_command(), *case.argv], cwd=folder, capture_output=True, text=True, env=env,
                          timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def problems(case: Case, result: Result, before: Any, folder: Path) -> list[str]:
    """Every way the case's run breaks the rules for a bad input; empty when it keeps them all."""
    import re

    found = []
    if result.code != 2:
        found.append(f"exit code {result.code}, not 2")
    line = result.first_line
    if not line.startswith("error: "):
        found.append(f"the first line does not start with 'error: ': {line!r}")
    if len(line) >= LIMIT:
        found.append(f"the first line is {len(line)} characters long, not under {LIMIT}: {line!r}")
    if not re.search(case.expect, line):
        found.append(f"the first line does not match {case.expect!r}: {line!r}")
    if "Traceback" in result.stderr + result.stdout:
        found.append("a traceback was printed")
    if case.out is not None and snapshot(folder / case.out) != before:
        found.append(f"{case.out} was {'written' if before is None else 'changed'}")
    if temporaries(folder):
        found.append(f"temporary files were left: {temporaries(folder)}")
    return found
