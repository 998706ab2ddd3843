"""A registry of named plug-ins (placers, routers): each registers itself from a file of its own package.

A name is checked in one place, `get`, whose refusal lists the names there are. `names()` gives the built-in
ones in a fixed order (what reports and benchmarks list them by), then any others by name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from wsc.core.errors import WscError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, order: tuple[str, ...]):
        self.what = what  # what a name names, for the messages: "placement strategy", "router"
        self.order = order
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register under `name`. A name already taken by another item is refused."""

        def add(item: T) -> T:
            taken = self._items.get(name)
            if taken is not None and taken is not item:
                raise ValueError(f"{self.what} {name!r} is already registered ({getattr(taken, '__module__', '?')})")
            self._items[name] = item
            return item

        return add

    def unregister(self, name: str) -> None:
        """Remove one (tests that register a throwaway one clean up with this)."""
        self._items.pop(name, None)

    def names(self) -> tuple[str, ...]:
        rank = {name: i for i, name in enumerate(self.order)}
        return tuple(sorted(self._items, key=lambda n: (rank.get(n, len(self.order)), n)))

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise WscError(f"unknown {self.what} {name!r}; use one of {', '.join(self.names())}") from None


def load_modules(package: str, path: Iterable[str], skip: tuple[str, ...] = ()) -> None:
    """Import every module of a package but those in `skip`: how its plug-ins, one file each, register
    themselves."""
    for module in pkgutil.iter_modules(path):
        if module.name not in skip:
            importlib.import_module(f"{package}.{module.name}")
