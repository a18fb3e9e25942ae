"""`python -m sda_lib.data prepare NAME [--source DIR] [--out DIR] ...`: prepare a dataset, print its card."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import DATASETS, DataError, PrepareParams, prepare_dataset
from .card import format_card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda_lib.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="prepare a dataset into outputs/<name>/data")
    p.add_argument("name", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--source", type=Path, help="folder with the raw or preprocessed files (not for toy)")
    p.add_argument("--out", type=Path, help="output folder (default outputs/<name>/data)")
    p.add_argument("--images", type=Path, help="folder of item images named by item id (ASIN)")
    p.add_argument("--download-images", action="store_true", help="fetch imUrl images into a cache")
    p.add_argument("--tail-threshold", type=int, default=PrepareParams.tail_threshold)
    p.add_argument("--tail-count-on", choices=["train", "all"], default=PrepareParams.tail_count_on)
    p.add_argument("--n-negatives", type=int, default=PrepareParams.n_negatives)
    p.add_argument("--seed", type=int, default=PrepareParams.seed)
    p.add_argument("--force", action="store_true", help="prepare again even if up to date")
    args = parser.parse_args(argv)

    params = PrepareParams(args.tail_threshold, args.tail_count_on, args.n_negatives, args.seed)
    load_kw = {}
    if args.images:
        load_kw["images"] = args.images
    if args.download_images:
        load_kw["download_images"] = True
    try:
        out = prepare_dataset(args.name, args.source, args.out, params, force=args.force, **load_kw)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_card(json.loads((out / "card.json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
