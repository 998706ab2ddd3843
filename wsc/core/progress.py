"""How the long steps report progress without importing a user interface: through two hooks the driver fills.

Passes, the runtime and the front end call `track(items, describe)` over their loops and `stage(description)`
around a long step. Until a driver installs its own (wsc.progress draws bars on a terminal), both do nothing
but run the loop or the block, so the lower layers never depend on how, or whether, progress is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

T = TypeVar("T")

Track = Callable[[Sequence[Any], Callable[[Any], str]], Iterable[Any]]
Stage = Callable[[str], AbstractContextManager[Any]]

_hooks: dict[str, Any] = {"track": None, "stage": None}


def install(track_hook: Track, stage_hook: Stage) -> None:
    """Show progress through these from now on (the driver calls this once)."""
    _hooks["track"], _hooks["stage"] = track_hook, stage_hook


def track(items: Sequence[T], describe: Callable[[T], str]) -> Iterator[T]:
    """`items`, one at a time, reported as one step each when a driver shows progress."""
    hook = _hooks["track"]
    yield from (items if hook is None else hook(items, describe))


def stage(description: str) -> AbstractContextManager[Any]:
    """A block reported as one step when a driver shows progress."""
    hook = _hooks["stage"]
    return nullcontext() if hook is None else hook(description)
