"""The adaptation and export stages as scripts (`sda adapt`, `sda export`), so they can run on
several processes and hosts under `accelerate launch -m sda_lib adapt|export ...`; the notebooks run
the same library calls."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import torch
from accelerate import PartialState

from ..data import load_prepared
from ..data.names import BadName, check_dataset_name, check_name, looks_like_path
from ..method.adapt import AdaptConfig, train_adapter
from ..method.backbones import load_backbone
from ..method.export import export_embeddings
from ..utils.exits import command
from ..utils.io import ensure_writable
from ..utils.locks import folder_lock
from ..utils.params import UsageError, add_param_option, check_type
from ..utils.paths import run_dir


@command
def adapt(argv: list[str] | None = None) -> int:
    """`[accelerate launch] sda adapt --dataset D [--backbone B] [-p key=value ...]`:
    the adaptation notebook's job as a script, so it can run on several processes and hosts."""

    parser = argparse.ArgumentParser(prog="sda adapt", description=adapt.__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--name", default="sda", help="adapters/<name>/ in the run folder")
    parser.add_argument("--out-dir", type=Path, help="run folder (default outputs/<dataset>/default)")
    parser.add_argument("--per-process-loss", action="store_true", help="do not gather the batch across processes")
    add_param_option(parser, f"AdaptConfig field: {', '.join(f.name for f in fields(AdaptConfig))}", "KEY=VALUE")
    args = parser.parse_args(argv)
    _check_names(parser, args.dataset, args.out_dir, args.name, "--name")
    known = {f.name: f.default for f in fields(AdaptConfig)}
    unknown = [k for k, _ in args.params if k not in known]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; AdaptConfig fields are: {', '.join(sorted(known))}")
    try:
        for key, value in args.params:
            check_type(key, value, "adapt", known[key])
    except UsageError as err:
        parser.error(str(err))
    try:
        config = AdaptConfig(**dict(args.params))
    except ValueError as err:
        parser.error(str(err))
    out = ensure_writable((args.out_dir or run_dir(args.dataset)) / "adapters" / args.name)
    with folder_lock(out, "adaptation"):  # before the backbone is paid for: a second run is refused at once
        record = train_adapter(
            load_backbone(args.backbone, seed=config.seed),
            load_prepared(args.dataset),
            config,
            out,
            gather=not args.per_process_loss,
        )
    print(json.dumps({k: record[k] for k in ("final_loss", "final_tau", "seconds", "processes")}))
    return 0


@command
def export(argv: list[str] | None = None) -> int:
    """`[accelerate launch] sda export --dataset D [--backbone B] [--adapter-name sda]`:
    the export notebook's LVLM export as a script, sharded across processes when launched so."""

    parser = argparse.ArgumentParser(prog="sda export", description=export.__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument(
        "--adapter-name",
        default="sda",
        help="adapters/<name>/ -> embeddings/<name>/; 'zero-shot' exports the bare backbone",
    )
    parser.add_argument("--out-dir", type=Path, help="run folder (default outputs/<dataset>/default)")
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=512)
    args = parser.parse_args(argv)
    _check_names(parser, args.dataset, args.out_dir, args.adapter_name, "--adapter-name")
    if min(args.d, args.batch_size, args.chunk) < 1:
        parser.error(f"--d, --batch-size and --chunk must be 1 or more, got {args.d}, {args.batch_size}, {args.chunk}")
    out = args.out_dir or run_dir(args.dataset)
    adapter = None if args.adapter_name == "zero-shot" else out / "adapters" / args.adapter_name / "adapter"
    table_folder = out / "embeddings" / args.adapter_name
    with folder_lock(table_folder, "export"):  # before the backbone is paid for: a second run is refused at once
        table = export_embeddings(
            load_backbone(args.backbone),
            load_prepared(args.dataset),
            table_folder,
            adapter=adapter,
            d=args.d,
            batch_size=args.batch_size,
            chunk=args.chunk,
        )
    if PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        print(json.dumps(table.manifest["dims"]))
    return 0


def _check_names(parser: argparse.ArgumentParser, dataset: str, out_dir: Path | None, name: str, flag: str) -> None:
    """A usage error, before anything loads, for a bad dataset or adapter name; a prepared folder as
    --dataset needs the run folder too."""
    try:
        if looks_like_path(dataset) and out_dir is None:
            parser.error(f"--dataset {dataset} is a prepared folder: give the run folder with --out-dir")
        if not looks_like_path(dataset):
            check_dataset_name(dataset, "--dataset")
        check_name(name, flag)
    except BadName as err:
        parser.error(str(err))
