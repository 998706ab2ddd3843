"""Progress for the long steps (capture, the passes, placement, running, the eager reference), on a terminal only.

Policy:
- Shown only when stderr is a terminal. CI logs, pipes and tests get nothing at all, not even escape codes,
  and the quiet path never imports rich: a stage is then a no-op object.
- `WSC_PROGRESS=0` turns it off on a terminal too; `WSC_PROGRESS=1` forces it on (to test or record it).
- Written to stderr, and transient: each bar disappears when its step ends, so what stays on screen is the
  CLI's summary on stdout.

Stages nest: a stage opened while another is shown becomes one more line of the same display (rich allows
one live display per console), and the display ends with the outermost stage.

    with progress.stage("capturing GPT"):           # a spinner
        ...
    for layer in progress.track(layers, lambda layer: f"running layer {layer.name}"):   # a bar
        ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from wsc.core import progress as core_progress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

T = TypeVar("T")

_display: Progress | None = None  # the live display while any stage is shown
_console: Console | None = None  # where progress goes instead of stderr (see use_console)


def enabled() -> bool:
    """Whether a stage opened now would be shown: WSC_PROGRESS=0/1 decides, else whether stderr is a tty."""
    setting = os.environ.get("WSC_PROGRESS", "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return _isatty(sys.stderr)


class Stage:
    """A step in progress, as its caller sees it. This base class is the quiet one: every call is a no-op."""

    def advance(self, n: int = 1) -> None:
        """Count `n` more units of the stage's total done."""

    def update(self, description: str) -> None:
        """Say what the stage is doing now (e.g. which pass or layer)."""


_QUIET = Stage()


class _ShownStage(Stage):
    def __init__(self, display: Progress, task: TaskID):
        self._display, self._task = display, task

    def advance(self, n: int = 1) -> None:
        self._display.advance(self._task, n)

    def update(self, description: str) -> None:
        # Refresh now rather than at the next tick: a pass or layer can finish before the tick comes.
        self._display.update(self._task, description=description, refresh=True)


@contextmanager
def stage(description: str, total: int | None = None) -> Iterator[Stage]:
    """A step shown while the block runs: a bar over `total` units, or a spinner when `total` is None."""
    global _display
    if _display is None and not enabled():
        yield _QUIET
        return
    outermost = _display is None
    if _display is None:
        _display = _start()
    display = _display
    task = display.add_task(description, total=total)
    try:
        yield _ShownStage(display, task)
    finally:
        display.remove_task(task)
        if outermost:
            _display = None
            display.stop()


def track(items: Sequence[T], describe: Callable[[T], str]) -> Iterator[T]:
    """Yield `items` as one stage with a bar, each item one step, the description naming the current item.

    A loop that raises or breaks ends the stage at once: CPython closes this generator as the loop unwinds."""
    with stage(describe(items[0]) if items else "", total=len(items)) as shown:
        for item in items:
            shown.update(describe(item))
            yield item
            shown.advance()


@contextmanager
def use_console(console: Console | None) -> Iterator[None]:
    """Send progress to `console` instead of stderr while the block runs (tests read a StringIO this way).
    Whether progress is shown is still decided by `enabled()`."""
    global _console
    saved, _console = _console, console
    try:
        yield
    finally:
        _console = saved


def _start() -> Progress:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class _CountIfKnown(MofNCompleteColumn):
        def render(self, task) -> Text:  # a spinner has no total: "0/?" would say nothing useful
            return super().render(task) if task.total is not None else Text("")

    # The console is bound to today's stderr: capture later points sys.stderr at a sink to silence the
    # tracers, and the spinner must stay on the terminal meanwhile. Forced on, it draws even into a file
    # (rich would otherwise see no terminal and draw nothing), which is what forcing is for.
    forced = os.environ.get("WSC_PROGRESS", "").strip() == "1"
    console = _console or Console(file=sys.stderr, force_terminal=forced or None)
    display = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _CountIfKnown(),
                       TimeElapsedColumn(), console=console, transient=True,
                       # stdout is moved above the bars only when it shares their screen; piped, it stays put.
                       redirect_stdout=_isatty(sys.stdout), redirect_stderr=True)
    display.start()
    return display


def _isatty(stream) -> bool:
    try:  # stderr may be missing (pythonw) or closed
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


core_progress.install(track, stage)
