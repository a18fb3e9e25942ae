"""Names that become folder names: datasets (`outputs/<dataset>/`), runs (`outputs/<dataset>/<run>/`),
adapters (`adapters/<adapter_name>/`, `embeddings/<adapter_name>/`), feature tables and baselines
(`embeddings/<name>/`).

A name is one plain path component: letters, digits, `.`, `_` and `-`, starting with a letter or a
digit, at most MAX_LENGTH characters. Anything else (an empty value from an unset shell variable,
`..`, a slash, a name longer than the file system allows) would make the folder somewhere else,
or make a folder that a cleanup deletes mean far more than the one thing named, so every command
checks the names it is given before it creates or deletes anything.
"""

from __future__ import annotations

import os
import re

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_LENGTH = 100  # with the hidden siblings the workbench writes (`.<name>.parts.<random>.tmp`) well under 255
RESERVED = ("bench",)  # outputs/bench/ holds the benchmarks' records and figures

# The stage parameters whose values name folders (of a list, each element does): adapters/<adapter_name>/
# and embeddings/<adapter_name>/, embeddings/<baseline>/, embeddings/<feature>/.
PATH_PARAMETERS = ("adapter_name", "baselines", "features")


class BadName(ValueError):
    """A name that is not one plain folder name; raised before anything is created."""


def check_name(value, what: str) -> str:
    """`value` if it is one plain folder name, else BadName saying why; `what` names it in the
    message (e.g. "-p adapter_name", "--run")."""
    if not isinstance(value, str):
        raise BadName(f"{what}={value!r}: expected a name (text), got {type(value).__name__}")
    if not value:
        raise BadName(f"{what} is empty (an unset shell variable?): give it a name, e.g. {what}=mine")
    if len(value) > MAX_LENGTH:
        raise BadName(f"{what} is {len(value)} characters long: a name has at most {MAX_LENGTH}")
    if not NAME.fullmatch(value):
        raise BadName(
            f"{what}={value!r} is not a plain folder name (it becomes one folder, not a path): use letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def looks_like_path(text: str) -> bool:
    """Whether `text` is meant as a path rather than a name: it holds a `/` or starts with `.` or
    `~` (`./mystore`, not `mystore`, names a folder of the working directory)."""
    return os.sep in text or text.startswith((".", "~"))


def check_dataset_name(name, what: str = "dataset name") -> str:
    """`name` if it can name a dataset's folder outputs/<name>/: a plain name (check_name), not a
    folder the workbench keeps there for itself (RESERVED), and not one that differs only in case
    from a registered dataset or from a dataset folder already in outputs/ (the same folder on a
    case-insensitive file system)."""
    from ..utils.paths import outputs_root
    from . import DATASETS  # the registry imports plugins: only when a dataset name is checked

    check_name(name, what)
    if name.lower() in RESERVED:
        raise BadName(f"{what} {name!r}: outputs/{name.lower()}/ is the workbench's own folder; choose another name")
    root = outputs_root()
    existing = [entry.name for entry in os.scandir(root) if entry.is_dir()] if root.is_dir() else []
    for other in [*DATASETS, *existing]:
        if other != name and other.lower() == name.lower():
            where = "a registered dataset" if other in DATASETS else f"a dataset folder in {root}"
            raise BadName(
                f"{what} {name!r} differs only in case from {other!r}, {where}: on a case-insensitive file "
                f"system they are one folder; use {other!r} or a name of its own"
            )
    return name


def check_path_parameters(params: dict, where: str = "-p") -> None:
    """Each value of the PATH_PARAMETERS among `params` (strings, or lists of strings) is a name."""
    for key, value in params.items():
        if key.rpartition(".")[2] not in PATH_PARAMETERS:
            continue
        for one in value if isinstance(value, list) else [value]:
            check_name(one, f"{where} {key}")
