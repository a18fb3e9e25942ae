"""Named registries for the workbench's extension points: adapter kinds, backbones, recommenders
and datasets are each looked up by name in one `Registry`, so adding one is a new file plus one
`register` line, and every stage, notebook and the runner see it.

Extensions outside sda_lib register themselves when imported. The workbench imports them for you
(in every notebook kernel the runner starts, too) when they are named in the environment variable
`SDA_WORKBENCH_PLUGINS` (comma-separated module names) or declared by an installed package under
the entry-point group `sda_workbench.plugins`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

PLUGINS_ENV = "SDA_WORKBENCH_PLUGINS"
ENTRY_POINTS = "sda_workbench.plugins"


class Registry(Generic[T]):
    """Names to objects of one kind, in registration order."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """`registry.register("name", obj)`, or `@registry.register("name")` above a class or function.
        Registering a name twice is refused unless it is the same object (a module imported again)."""

        def add(obj: T) -> T:
            known = self._entries.get(name)
            if known is not None and _qualname(known) != _qualname(obj):
                raise ValueError(
                    f"{self.what} {name!r} is already registered ({_qualname(known)}); "
                    f"choose another name for {_qualname(obj)}"
                )
            self._entries[name] = obj
            return obj

        return add if obj is None else add(obj)

    def __getitem__(self, name: str) -> T:
        load_plugins()
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.what} {name!r}; registered: {', '.join(self._entries)} "
                f"(add one with sda_lib's registries, see the README's Extending section)"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(list(self._entries))

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


_loaded: set[str] = set()
_seen_env: str | None = None  # the SDA_WORKBENCH_PLUGINS value last acted on


def load_plugins() -> None:
    """Import the extension modules named in SDA_WORKBENCH_PLUGINS and the installed entry points
    (each once), so their registrations exist before any name is looked up. Lookups run on hot
    paths (routing every forward), so after the first call only a changed variable costs work."""
    global _seen_env
    env = os.environ.get(PLUGINS_ENV, "")
    if env == _seen_env:
        return
    names = [n.strip() for n in env.split(",") if n.strip()]
    points = {p.value: p for p in importlib.metadata.entry_points(group=ENTRY_POINTS)}
    for name in [*names, *points]:
        if name in _loaded:
            continue
        _loaded.add(name)
        try:
            points[name].load() if name in points else importlib.import_module(name)
        except Exception as err:
            _loaded.discard(name)
            origin = f"entry point {points[name].name!r}" if name in points else f"{PLUGINS_ENV}"
            raise ImportError(f"the workbench extension {name!r} (from {origin}) failed to import: {err}") from err
    _seen_env = env
