"""JupyterLab on a run's own copies of the notebooks.

    sda lab --dataset toy [--run NAME] [--profile P] [--no-browser] [--port N]

Copies notebooks/*.ipynb into `outputs/<dataset>/<run>/lab/` with the parameters cell's
`dataset`, `run` and `profile` filled in (every other parameter keeps its default; the profile's
settings are resolved by each notebook's first cell, as the runner resolves them), and starts
JupyterLab there. What you run and edit in Lab stays in that folder: the tracked notebooks, whose
parameters are the runner's defaults, are never written, and the results land in the run folder
the runner uses for the same run name. A copy you already have there is kept as it is (it may
hold your edits), and the command says so; delete it to get a fresh one.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat

from ..data.names import BadName, check_dataset_name, check_name
from ..utils.exits import USAGE, command
from ..utils.io import atomic_path
from ..utils.paths import NOTEBOOKS, run_dir
from .profiles import PROFILES

NOTEBOOKS = NOTEBOOKS
FILLED = ("dataset", "run", "profile")  # the parameters a lab copy sets; the rest keep their defaults


def fill_parameters(source: str, values: dict) -> str:
    """The parameters cell `source` with each top-level `name = ...` line of `values` set to
    repr(value), its comment kept; names the cell does not declare are left out."""
    lines = source.split("\n")
    for name, value in values.items():
        pattern = re.compile(rf"^{name}\s*=\s*(?P<value>[^#]*?)(?P<comment>\s*#.*)?$")
        for i, line in enumerate(lines):
            match = pattern.match(line)
            if match:
                lines[i] = f"{name} = {value!r}{match['comment'] or ''}"
                break
    return "\n".join(lines)


def lab_copy(notebook: Path, target: Path, values: dict) -> bool:
    """Write `notebook` to `target` with its parameters cell filled from `values`, unless `target`
    exists (it may hold the user's edits). Returns whether it wrote the copy."""
    if target.exists():
        return False
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source = fill_parameters(cell.source, values)
    with atomic_path(target) as tmp:
        nbformat.write(nb, tmp)
    return True


def prepare_lab(dataset: str, run: str = "default", profile: str | None = None) -> tuple[Path, list[str], list[str]]:
    """(lab folder, notebooks copied, notebooks kept as they were) for `dataset` and `run`."""
    folder = run_dir(dataset, run) / "lab"
    folder.mkdir(parents=True, exist_ok=True)
    values = {"dataset": dataset, "run": run, "profile": profile}
    copied, kept = [], []
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        (copied if lab_copy(notebook, folder / notebook.name, values) else kept).append(notebook.name)
    return folder, copied, kept


def lab_command(folder: Path, port: int | None, browser: bool) -> list[str]:
    """The `jupyter lab` command serving `folder` (root may run it only with --allow-root)."""
    command = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={folder}"]
    if port is not None:
        command.append(f"--port={port}")
    if not browser:
        command.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    return command


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sda lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="toy")
    parser.add_argument("--run", default="default", help="run name: outputs/<dataset>/<run>/lab/")
    parser.add_argument("--profile", choices=PROFILES, help="default: the dataset's (sda_lib.workbench.profiles)")
    parser.add_argument("--no-browser", action="store_true", help="print the URL, open no browser")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    try:
        check_dataset_name(args.dataset, "--dataset")
        check_name(args.run, "--run")
    except BadName as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE
    folder, copied, kept = prepare_lab(args.dataset, args.run, args.profile)
    print(f"lab folder: {folder}")
    if copied:
        print(f"copied with dataset={args.dataset!r}, run={args.run!r}, profile={args.profile!r}: {', '.join(copied)}")
    if kept:
        print(f"kept as you left them (delete one for a fresh copy): {', '.join(kept)}")
    print("run the notebooks in order, 01 to 08; JupyterLab prints its URL below (open it; Ctrl-C stops it)")
    sys.stdout.flush()
    return subprocess.call(lab_command(folder, args.port, not args.no_browser))


if __name__ == "__main__":
    sys.exit(main())
