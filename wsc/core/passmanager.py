"""The pass manager: runs passes in order; a failure names the pass and the passes that ran before it.

A pass is a small frozen dataclass with a kebab-case `name` whose fields are its options, called on the
Program and returning it. With `verify=True` (the tests' setting) the program's invariants are checked after
every pass, so a pass that breaks the IR is caught where it did so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from wsc.core import progress
from wsc.core.errors import WscError
from wsc.core.program import Program


class Pass(Protocol):
    name: str

    def __call__(self, program: Program) -> Program: ...


class PassError(Exception):
    """A pass failed on valid input: a compiler bug. The message says where."""


class PassManager:
    def __init__(self, passes: Sequence[Pass], verify: bool = False,
                 on_pass: Callable[[str, float], None] | None = None,
                 checks: Sequence[Callable[[Program], None]] = (), ran_before: Sequence[str] = ()):
        """`checks` run after Program.verify when verifying (the op table's own, say); `ran_before` names the
        passes that made the program this manager starts from, for the error a failing pass raises."""
        self.passes = list(passes)
        self.verify = verify
        self.on_pass = on_pass
        self.checks = list(checks)
        self.ran_before = list(ran_before)
        self.seconds: dict[str, float] = {}

    def run(self, program: Program) -> Program:
        done: list[str] = list(self.ran_before)
        for p in progress.track(self.passes, lambda step: f"pass {step.name}"):
            start = time.perf_counter()
            try:
                program = p(program)
                if self.verify:
                    program.verify()
                    for check in self.checks:
                        check(program)
            except WscError:
                raise  # the user's input is at fault; its message already says what to do
            except Exception as error:
                before = ", ".join(done) or "none"
                raise PassError(f"pass {p.name} failed (passes run before it: {before}): "
                                f"{type(error).__name__}: {error}") from error
            self.seconds[p.name] = time.perf_counter() - start
            if self.on_pass:
                self.on_pass(p.name, self.seconds[p.name])
            done.append(p.name)
        return program
