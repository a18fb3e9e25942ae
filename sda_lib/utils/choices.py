"""Closed sets of options, checked in one place with one message.

Each closed set is a `typing.Literal` type (e.g. `Loss = Literal["cmsa", "infonce", "text-views"]`),
so annotations say what a field or argument accepts; the tuple of options, where code needs one,
is `typing.get_args(Loss)`. `check_choice` refuses anything else, and `check_fields` checks every
Literal-typed field of a dataclass, so a field's annotation is its validation. Open sets that grow
by registration (adapter kinds, backbones, recommenders, datasets) are `Registry`s instead.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal


def options(choices: Any) -> tuple:
    """The options of a Literal type (`Literal[...] | None` includes None), or of a collection
    (a mapping's keys), in their order."""
    if typing.get_origin(choices) is Literal:
        return typing.get_args(choices)
    if typing.get_origin(choices) in (typing.Union, types.UnionType):
        return tuple(option for arg in typing.get_args(choices) for option in _union_member(arg))
    if isinstance(choices, Iterable) and not isinstance(choices, str):
        return tuple(choices)
    raise TypeError(f"not a closed set of options: {choices!r}")


def _union_member(arg) -> tuple:
    return (None,) if arg is type(None) else options(arg)


def check_choice(value, choices, what: str, error: type[Exception] = ValueError):
    """`value` when it is one of `choices` (a Literal type or a collection); else `error` naming
    `what` and the options."""
    allowed = options(choices)
    if value not in allowed:
        raise error(f"{what} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


@functools.cache
def literal_fields(cls: type) -> dict[str, tuple]:
    """{field: options} of the dataclass `cls`'s fields annotated with a Literal type (or one
    with None)."""
    hints = typing.get_type_hints(cls)
    found = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if _is_literal(hint):
            found[field.name] = options(hint)
    return found


def _is_literal(hint) -> bool:
    if typing.get_origin(hint) is Literal:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return all(arg is type(None) or typing.get_origin(arg) is Literal for arg in args)
    return False


def check_fields(instance, error: type[Exception] = ValueError) -> None:
    """Check every Literal-typed field of the dataclass `instance` (call it in `__post_init__`)."""
    for name, allowed in literal_fields(type(instance)).items():
        check_choice(getattr(instance, name), allowed, name, error)
