"""`python -m sda_lib.data prepare NAME [--source DIR] [--out DIR] ...`: prepare a dataset, print its card."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..utils.exits import USAGE, command
from . import DATASETS, RECIPES, DataError, PrepareParams, prepare_dataset
from .card import format_card
from .images import PLACEHOLDERS


def _integer_from(least: int):
    """An argparse type: an integer >= `least`, so a bad value is a usage error (exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, got {value}")
        return value

    return parse


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda_lib.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="prepare a dataset into outputs/<name>/data")
    p.add_argument(
        "dataset", help=f"a registered dataset ({', '.join(DATASETS)}) or one prepared before under its own --name"
    )
    p.add_argument(
        "--name",
        help="prepare your own dataset of this kind under this name (outputs/<name>/data), "
        "e.g. `prepare custom --name mystore --source DIR`",
    )
    p.add_argument("--source", type=Path, help="folder with the raw or preprocessed files (not for toy)")
    p.add_argument("--out", type=Path, help="output folder (default outputs/<name>/data)")
    p.add_argument("--images", type=Path, help="folder of item images named by item id (ASIN)")
    p.add_argument("--download-images", action="store_true", help="fetch imUrl images into a cache")
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        default=PrepareParams.recipe,
        help="5core: the source as given (default); sda: the SDA authors' filter of the raw "
        "Amazon reviews (reviews_<Category>.json.gz)",
    )
    p.add_argument("--tail-threshold", type=_integer_from(1), default=PrepareParams.tail_threshold)
    p.add_argument(
        "--tail-count-on",
        choices=["train", "all"],
        default=None,
        help="default: the dataset's (all, the authors' rule; train for toy and toy-tiny)",
    )
    p.add_argument(
        "--placeholder",
        choices=PLACEHOLDERS,
        default=PrepareParams.placeholder,
        help="image of items without a usable one: noise (the authors', default) or grey",
    )
    p.add_argument("--n-negatives", type=_integer_from(1), default=PrepareParams.n_negatives)
    p.add_argument("--seed", type=_integer_from(0), default=PrepareParams.seed)
    p.add_argument("--force", action="store_true", help="prepare again even if up to date")
    args = parser.parse_args(argv)

    params = PrepareParams(
        tail_threshold=args.tail_threshold,
        tail_count_on=args.tail_count_on,
        n_negatives=args.n_negatives,
        seed=args.seed,
        recipe=args.recipe,
        placeholder=args.placeholder,
    )
    load_kw = {}
    if args.images:
        load_kw["images"] = args.images
    if args.download_images:
        load_kw["download_images"] = True
    try:
        name, kind = (args.name, args.dataset) if args.name else (args.dataset, None)
        out = prepare_dataset(name, args.source, args.out, params, force=args.force, kind=kind, **load_kw)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE
    print(format_card(json.loads((out / "card.json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
