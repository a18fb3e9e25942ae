"""Command-line parameters (`-p key=value`, `-p stage.key=value`) as the runner, the sweeps and the
stage scripts read them, and the check that papermill can pass each value to a notebook unchanged."""

from __future__ import annotations

import argparse
import ast


class UsageError(ValueError):
    """A bad stage or parameter on the command line; raised before any stage runs."""


class ParameterError(UsageError):
    pass


ANY = object()  # a default that is not a literal: any value goes


def parse_param(text: str | list[str]) -> tuple[str, object]:
    """`key=value` or `stage.key=value`, or papermill's two words `key value`; the value read as a
    Python literal when it is one (3, 0.1, True, None, [0, 1]), else a string. (A notebook run by
    papermill reads a list given as text the same way: sda_lib.workbench.profiles.resolve.)"""
    words = [text] if isinstance(text, str) else list(text)
    if len(words) == 1:
        key, sep, value = words[0].partition("=")
    elif len(words) == 2 and "=" not in words[0]:
        (key, value), sep = words, " "
    else:
        key, sep = "", ""
    if not sep or not all(part.isidentifier() for part in key.split(".")) or key.count(".") > 1:
        raise argparse.ArgumentTypeError(
            f"-p expects key=value, stage.key=value or key value (as papermill), got {' '.join(words)!r}"
        )
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


class _ParamAction(argparse.Action):
    """Each `-p` parsed as it is read (parse_param), so a malformed one is a usage error at once."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            parsed = parse_param(values)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), parsed])


def add_param_option(parser: argparse.ArgumentParser, help: str, metavar: str = "[STAGE.]KEY=VALUE") -> None:
    """The `-p` option of every command (runner, sweep, stage scripts): `args.params` is a list of
    (key, value); papermill's two-word form `-p KEY VALUE` is read alike."""
    parser.add_argument(
        "-p",
        dest="params",
        action=_ParamAction,
        nargs="+",
        default=[],
        metavar=metavar,
        help=f"{help}; papermill's form `-p KEY VALUE` works too",
    )


def check_type(name: str, value, stage: str, default) -> None:
    """Refuse (ParameterError) a value papermill cannot pass to a notebook as it is, or one of
    another type than the notebook's default (any passable value goes where the default is None)."""
    unpassable = _unpassable(value)
    if unpassable:
        raise ParameterError(
            f"-p {name}={value!r}: {unpassable} cannot be passed to a notebook (papermill passes text, numbers, "
            "True/False, None, and lists and dicts of them with text keys); write a list [...] for a tuple or set"
        )
    if default is None or default is ANY:
        return
    expected = type(default)
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        hint = f" (quote a string: -p {name}=\"'{value}'\")" if expected is str else ""
        raise ParameterError(
            f"-p {name}={value!r}: stage {stage!r} expects {expected.__name__} for {name.split('.')[-1]} "
            f"(default {default!r}), got {type(value).__name__}{hint}"
        )


def _unpassable(value) -> str | None:
    """What in `value` papermill would turn into its text instead of passing it (a tuple, set,
    bytes, complex number, a dict key that is not text), or None."""
    if isinstance(value, (str, bool, int, float, type(None))):
        return None
    if isinstance(value, list):
        return next(filter(None, map(_unpassable, value)), None)
    if isinstance(value, dict):
        key = next((k for k in value if not isinstance(k, str)), None)
        if key is not None:
            return f"a dict key that is not text ({key!r})"
        return next(filter(None, map(_unpassable, value.values())), None)
    return f"a {type(value).__name__}"
