"""Named registries for the workbench's extension points: adapter kinds, backbones, recommenders
and datasets are each looked up by name in one `Registry`, so adding one is a new file plus one
`register` line, and every stage, notebook and the runner see it.

Extensions outside sda_lib register themselves when imported. The workbench imports them for you
(in every notebook kernel the runner starts, too) when they are named in the environment variable
`SDA_WORKBENCH_PLUGINS` (comma-separated module names) or declared by an installed package under
the entry-point group `sda_workbench.plugins`. A plugin that fails to import, or exits while it is
imported, stops the command with a `PluginError` naming it (and the package that installed it);
`SDA_WORKBENCH_NO_PLUGINS=1` runs without any plugin, e.g. to uninstall a broken one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

PLUGINS_ENV = "SDA_WORKBENCH_PLUGINS"
NO_PLUGINS_ENV = "SDA_WORKBENCH_NO_PLUGINS"
ENTRY_POINTS = "sda_workbench.plugins"


class PluginError(ImportError):
    """A plugin failed to import, or exited while it was imported."""


class UnknownName(KeyError, ValueError):
    """A name no registry entry has; the message lists the registered names. A KeyError, as a
    Mapping's lookup raises, and a ValueError, as a bad argument."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """Names to objects of one kind, in registration order: a read-only Mapping plus `register`.
    `builtins` names the modules whose import registers the built-in entries, imported on the first
    lookup (so a registry is complete whichever module asked first)."""

    def __init__(self, what: str, builtins: tuple[str, ...] = ()):
        self.what = what
        self._entries: dict[str, T] = {}
        self._builtins = builtins

    def _complete(self) -> None:
        modules, self._builtins = self._builtins, ()
        for module in modules:
            importlib.import_module(module)
        load_plugins()

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

    def name_of(self, obj: T, default: str | None = None) -> str | None:
        """The name `obj` is registered under (the first, if several), else `default`: the key is
        the one spelling of an entry's name."""
        return next((name for name, known in self._entries.items() if known is obj), default)

    def __getitem__(self, name: str) -> T:
        self._complete()
        if name not in self._entries:
            raise UnknownName(
                f"unknown {self.what} {name!r}; registered: {', '.join(self._entries)} "
                f"(add one with sda_lib's registries, see docs/extending.md)"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._complete()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._complete()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._complete()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


_loaded: set[str] = set()
_seen_env: str | None = None  # the SDA_WORKBENCH_PLUGINS value last acted on


def load_plugins() -> None:
    """Import the extension modules named in SDA_WORKBENCH_PLUGINS and the installed entry points
    (each once), so their registrations exist before any name is looked up. Lookups run on hot
    paths (routing every forward), so after the first call only a changed variable costs work.
    SDA_WORKBENCH_NO_PLUGINS=1 imports none."""
    global _seen_env
    env = os.environ.get(PLUGINS_ENV, "") + "\0" + os.environ.get(NO_PLUGINS_ENV, "")
    if env == _seen_env:
        return
    if os.environ.get(NO_PLUGINS_ENV, "") not in ("", "0"):
        _seen_env = env
        return
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    points = {p.value: p for p in importlib.metadata.entry_points(group=ENTRY_POINTS)}
    for name in [*names, *points]:
        if name in _loaded:
            continue
        _loaded.add(name)
        try:
            points[name].load() if name in points else importlib.import_module(name)
        except (Exception, SystemExit) as err:  # a plugin that exits must not end the command as if done
            _loaded.discard(name)
            raise PluginError(_failure(name, points.get(name), err)) from err
    _seen_env = env


def _failure(name: str, point, err: BaseException) -> str:
    """What failed, where it comes from and how to go on without it."""
    what = f"exited (SystemExit({err.code!r}))" if isinstance(err, SystemExit) else f"failed: {err}"
    if point is None:
        origin, remedy = f"named in {PLUGINS_ENV}", f"fix it or remove it from {PLUGINS_ENV}"
    else:
        dist = point.dist
        package = f"{dist.name} {dist.version}" if dist is not None else "an installed package"
        origin = f"entry point {point.name!r} of {package}"
        remedy = f"fix it, or uninstall it (pip uninstall {dist.name if dist is not None else '<package>'})"
    return (
        f"the workbench plugin {name!r} ({origin}) {what} while it was imported: {remedy}; "
        f"{NO_PLUGINS_ENV}=1 runs the workbench without plugins"
    )
