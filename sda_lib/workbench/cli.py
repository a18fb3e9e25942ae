"""The `sda` command: one entry point, a subcommand per job (`sda run`, `sda prepare`, `sda adapt`,
...), each the `main(argv)` of the module that does the work, imported only when chosen so that
`sda --help` is instant. `python -m sda_lib SUBCOMMAND` is the same command."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module:function, what it does); each function takes argv and returns an exit status.
# `sda prepare ARGS` is `python -m sda_lib.data prepare ARGS`.
COMMANDS = {
    "run": ("sda_lib.workbench.run:main", "run the stage notebooks (data, zero_shot, adapt, export, recommend, ...)"),
    "prepare": ("sda_lib.data.__main__:main", "prepare a dataset into outputs/<name>/data"),
    "adapt": ("sda_lib.workbench.stage_scripts:adapt", "train an adapter (under `accelerate launch` on several GPUs)"),
    "export": ("sda_lib.workbench.stage_scripts:export", "export item embeddings with an adapter or zero-shot"),
    "lab": ("sda_lib.workbench.lab:main", "JupyterLab on copies of the notebooks in a run's folder"),
    "sweep": ("sda_lib.workbench.sweep:main", "run a grid of runner parameters and seeds"),
    "formats": ("sda_lib.formats.__main__:main", "write a dataset and its features as MMRec or RecBole files"),
    "published": ("sda_lib.recsys.published.__main__:main", "print the paper's published tables and aggregates"),
    "teaching": ("sda_lib.analysis.teaching:main", "the teaching demo's figures over several runs"),
    "pretrain-mini": ("sda_lib.method.backbones.pretrain_mini:main", "pre-train the mini backbone's connector"),
    "bench": ("sda_lib.bench:main", "benchmarks (from a source checkout: benchmarks/)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "usage: sda SUBCOMMAND [ARGS ...]   (sda SUBCOMMAND --help for its options)\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sda: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function = COMMANDS[name][0].split(":")
    if name == "prepare":
        rest = ["prepare", *rest]
    return getattr(importlib.import_module(module), function)(rest) or 0
