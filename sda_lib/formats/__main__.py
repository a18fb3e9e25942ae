"""`python -m sda_lib.formats FORMAT --dataset D [--features NAME] [--out DIR]`: a prepared dataset and
one of its feature tables as an MMRec dataset folder or RecBole atomic files (sda_lib.formats)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data import DataError
from ..method.features import FeatureError
from ..utils.exits import USAGE, command
from ..utils.paths import run_dir
from . import FORMATS, export_format, feature_folder


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda_lib.formats", description=__doc__)
    parser.add_argument("format", choices=list(FORMATS), help="mmrec: MMRec's dataset folder; recbole: atomic files")
    parser.add_argument("--dataset", required=True, help="a prepared dataset's name or folder")
    parser.add_argument(
        "--features",
        help="feature table: a name under outputs/<dataset>/<run>/embeddings/ (e.g. sda, zero-shot) or a "
        "folder; none: interactions only",
    )
    parser.add_argument("--run", default="default", help="run folder the named table is in (default: default)")
    parser.add_argument("--name", help="dataset name in the written files (default: the dataset's)")
    parser.add_argument(
        "--out", type=Path, help="folder to write into (default outputs/<dataset>/<run>/formats/<format>)"
    )
    args = parser.parse_args(argv)
    features = args.features
    if features is not None and not Path(features).is_dir():
        features = feature_folder(args.dataset, features, args.run)
    out = args.out or run_dir(args.dataset, args.run) / "formats" / args.format
    try:
        folder = export_format(args.format, args.dataset, features, out, args.name)
    except (DataError, FeatureError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
