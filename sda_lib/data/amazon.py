"""Amazon 2014 5-core review datasets (Beauty, Sports_and_Outdoors, Toys_and_Games), in either form.

Raw form, as the authors distribute it (https://jmcauley.ucsd.edu/data/amazon/links.html):
  reviews_<Category>_5.json.gz  one JSON object per line: reviewerID, asin, unixReviewTime, ...
  meta_<Category>.json.gz       one Python dict literal per line (not JSON): asin, title, brand,
                                categories, description, price, imUrl, ...
  Items are the reviewed ASINs, in order of first review; text fields title, categories, brand,
  description (capped at DESCRIPTION_CHARS), price; column `image_url` keeps imUrl for downloads.

Preprocessed form, as used by S3-Rec and many later sequential recommenders:
  <Category>.txt   one user per line, `user_id item_id item_id ...`, items in time order
  items.jsonl      {"item_id", "asin", "title", "categories"} per line, keyed by the .txt ids
  The timestamp is the position in the user's line (0 for the first item); items are those that
  occur, in items.jsonl order; text fields title, categories; column `asin` is kept. There are no
  image URLs, so images come only from a local folder of <asin>.jpg files.

Both forms unescape HTML entities in text (titles counted in `html_unescaped_titles`) and turn
absent or placeholder (`title_<n>`) titles into "" (counted in `missing_titles`).
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sda_lib.data import images as item_images
from sda_lib.data.catalogue import Catalogue, DataError

CATEGORIES = {"beauty": "Beauty", "sports": "Sports_and_Outdoors", "toys": "Toys_and_Games"}
RAW_TEXT_FIELDS = ["title", "categories", "brand", "description", "price"]
PREPROCESSED_TEXT_FIELDS = ["title", "categories"]
DESCRIPTION_CHARS = 500
DEFAULT_IMAGE_CACHE = Path("~/.cache/sda-workbench/images")

_RAW_PAGE = "https://jmcauley.ucsd.edu/data/amazon/links.html"
_RAW_FILES = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
_S3REC_REPO = "https://github.com/RUCAIBox/CIKM2020-S3Rec"
# `{'asin': '0205616461', ...` : lets the meta reader skip the ~95% of lines for unreviewed items
# without parsing them. Lines that do not start this way are parsed in full.
_LEADING_ASIN = re.compile(r"""\{\s*u?['"]asin['"]\s*:\s*u?['"]([^'"]+)['"]""")
_PLACEHOLDER_TITLE = re.compile(r"title_\d+")


def load_amazon(
    name: str,
    source: str | os.PathLike,
    images: str | os.PathLike | None = None,
    download_images: bool = False,
    image_cache: str | os.PathLike | None = None,
    workers: int = 16,
) -> Catalogue:
    """Load Amazon 2014 `name` ("beauty", "sports", "toys") from the folder `source`, either form.

    Images: from the folder `images` (files named <asin>.<jpg|png|...>) if given; else, when
    `download_images`, fetched from the raw meta's imUrl into `image_cache` (default
    ~/.cache/sda-workbench/images/<name>); else every item has image_path None.
    """
    form, files = source_files(name, source)
    category, folder = CATEGORIES[name], Path(source).expanduser()
    if form == "raw":
        items, interactions, counts = _load_raw(*files)
    else:
        if download_images and images is None:
            raise DataError(
                f"{folder}: the preprocessed form has no image URLs, so images cannot be downloaded: "
                f"pass images=<folder of <asin>.jpg files>, or use the raw files "
                f"(reviews_{category}_5.json.gz, meta_{category}.json.gz) whose imUrl can be fetched"
            )
        items, interactions, counts = _load_preprocessed(*files)

    asins = items["item_id"] if form == "raw" else items["asin"]
    if images is not None:
        found, image_counts = item_images.find_images(asins, images, workers)
    elif download_images:
        cache = Path(image_cache) if image_cache is not None else default_image_cache(name)
        urls = {asin: url for asin, url in zip(asins, items["image_url"]) if url}
        image_counts = item_images.download_images(urls, cache, workers)
        found, found_counts = item_images.find_images(asins, cache, workers)
        image_counts |= found_counts
    else:
        found, image_counts = {}, {"missing_images": len(items)}
    items["image_path"] = pd.Series([found.get(asin) for asin in asins], index=items.index, dtype=object)

    return Catalogue(
        name=name,
        items=items,
        interactions=interactions,
        text_fields=list(RAW_TEXT_FIELDS if form == "raw" else PREPROCESSED_TEXT_FIELDS),
        counts=counts | image_counts,
        source=f"Amazon 2014 {category}, {form} form: {folder}",
    )


def source_files(name: str, source: str | os.PathLike) -> tuple[str, tuple[Path, Path]]:
    """The form found in `source` ("raw", preferred, or "preprocessed") and the two files read."""
    if name not in CATEGORIES:
        raise ValueError(f"unknown Amazon dataset name {name!r}: expected one of {sorted(CATEGORIES)}")
    category = CATEGORIES[name]
    folder = Path(source).expanduser()
    raw = (folder / f"reviews_{category}_5.json.gz", folder / f"meta_{category}.json.gz")
    preprocessed = (folder / f"{category}.txt", folder / "items.jsonl")
    for form, files in (("raw", raw), ("preprocessed", preprocessed)):
        if all(path.is_file() for path in files):
            return form, files
    raise DataError(_not_found(folder, category, raw, preprocessed))


def default_image_cache(name: str) -> Path:
    """Where `download_images` keeps the images of dataset `name` unless told otherwise."""
    return (DEFAULT_IMAGE_CACHE / name).expanduser()


def _load_raw(reviews_path: Path, meta_path: Path):
    users, item_ids, times = [], [], []
    for number, line in _lines(reviews_path):
        review = _parse(line, json.loads, reviews_path, number, "a JSON object")
        user, asin, time = _required(review, ("reviewerID", "asin", "unixReviewTime"), reviews_path, number)
        users.append(str(user))
        item_ids.append(str(asin))
        times.append(_integer(time, "unixReviewTime", reviews_path, number))

    reviewed = dict.fromkeys(item_ids)  # order of first review
    meta = {}
    for number, line in _lines(meta_path):
        leading = _LEADING_ASIN.match(line)
        if leading and leading.group(1) not in reviewed:
            continue
        record = _parse(line, ast.literal_eval, meta_path, number, "a Python dict literal")
        (asin,) = _required(record, ("asin",), meta_path, number)
        if asin in reviewed:
            meta.setdefault(asin, record)
    unknown = [asin for asin in reviewed if asin not in meta]
    if unknown:
        raise DataError(
            f"{meta_path}: no metadata line for asin {unknown[0]!r}, reviewed in {reviews_path.name} "
            f"({len(unknown)} reviewed asins have none): the two files are from different categories or "
            f"releases, or the meta file is incomplete; download meta_*.json.gz for the same category again"
        )

    counts = {"html_unescaped_titles": 0, "missing_titles": 0}
    rows = []
    for asin in reviewed:
        row = _text_row(meta[asin], RAW_TEXT_FIELDS, counts)
        rows.append({"item_id": asin, **row, "image_url": meta[asin].get("imUrl") or None})
    return pd.DataFrame(rows), _interactions(users, item_ids, times), counts


def _load_preprocessed(sequences_path: Path, items_path: Path):
    records = {}
    for number, line in _lines(items_path):
        record = _parse(line, json.loads, items_path, number, "a JSON object")
        item_id, _, _ = _required(record, ("item_id", "asin", "title"), items_path, number)
        item_id = str(item_id)
        if item_id in records:
            raise DataError(f"{items_path}:{number}: item_id {item_id} appears twice: each item needs one line")
        records[item_id] = record

    users, item_ids, times = [], [], []
    for number, line in _lines(sequences_path):
        user, *sequence = line.split()
        if not sequence:
            raise DataError(
                f"{sequences_path}:{number}: expected 'user_id item_id item_id ...', got {line[:80]!r}"
            )
        if not records.keys() >= set(sequence):
            item = next(item for item in sequence if item not in records)
            raise DataError(
                f"{sequences_path}:{number}: item {item!r} is not in {items_path}: the two files do not "
                f"belong together (items.jsonl must describe the item ids of {sequences_path.name})"
            )
        users.extend([user] * len(sequence))
        item_ids.extend(sequence)
        times.extend(range(len(sequence)))

    used = set(item_ids)
    counts = {"html_unescaped_titles": 0, "missing_titles": 0}
    rows = [
        {"item_id": item_id, **_text_row(record, PREPROCESSED_TEXT_FIELDS, counts), "asin": record["asin"]}
        for item_id, record in records.items()
        if item_id in used
    ]
    return pd.DataFrame(rows), _interactions(users, item_ids, times), counts


def _interactions(users: list[str], item_ids: list[str], times: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": users, "item_id": item_ids, "timestamp": np.asarray(times, dtype=np.int64)})


# ---- reading lines -------------------------------------------------------------------------------

def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line of a text or .gz file; read failures as DataError.

    A plain text file must end with a newline: one cut mid-line can end in a shortened item id that
    is still valid (a .gz file carries its own integrity check instead).
    """
    compressed = path.suffix == ".gz"
    opener = gzip.open if compressed else open
    number, seen = 0, False
    try:
        with (
            opener(path, "rt", encoding="utf-8") as f,
            tqdm(f, desc=f"reading {path.name}", unit=" lines", unit_scale=True, leave=False) as bar,
        ):
            for number, line in enumerate(bar, 1):
                if not (compressed or line.endswith("\n")):
                    raise DataError(
                        f"{path}:{number}: the file does not end with a newline, so its last line may be cut "
                        f"short ({line[-40:]!r}): get the complete file again, or add the final newline if "
                        f"the file is whole"
                    )
                if line.strip():
                    seen = True
                    yield number, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(
            f"{path}: file is truncated or corrupt ({e}; failed after line {number}): download it again"
        ) from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{number + 1}: not UTF-8 text ({e.reason}): the file is damaged, get it again") from e
    if not seen:
        raise DataError(f"{path}: file is empty: it should hold one record per line; get the complete file again")


def _parse(line: str, parser: Callable[[str], object], path: Path, number: int, what: str) -> dict:
    try:
        record = parser(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        record = None
    if not isinstance(record, dict):
        raise DataError(
            f"{path}:{number}: line is not {what}: {line[:80].rstrip()!r}...; the file is damaged or is not "
            f"the expected file, download it again"
        )
    return record


def _required(record: dict, keys: tuple[str, ...], path: Path, number: int) -> list:
    for key in keys:
        if key not in record:
            raise DataError(
                f"{path}:{number}: line has no {key!r} key (keys found: {sorted(record)}); every line needs "
                f"{', '.join(keys)}: check that this is the right file"
            )
    return [record[key] for key in keys]


def _integer(value, key: str, path: Path, number: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}:{number}: {key} is {value!r}, expected an integer (Unix seconds)") from None


# ---- item text -----------------------------------------------------------------------------------

def _text_row(record: dict, fields: list[str], counts: dict[str, int]) -> dict[str, str]:
    """The readable text fields of one item; counts unescaped and missing titles."""
    row = {field: _FORMATTERS[field](record.get(field)) for field in fields}
    title = record.get("title")
    if isinstance(title, str) and html.unescape(title) != title:
        counts["html_unescaped_titles"] += 1
    if not row["title"]:
        counts["missing_titles"] += 1
    return row


def _plain(value) -> str:
    """Unescaped text on one line ("" for None)."""
    return "" if value is None else " ".join(html.unescape(str(value)).split())


def _title(value) -> str:
    text = _plain(value)
    return "" if _PLACEHOLDER_TITLE.fullmatch(text) else text


def _category_paths(value) -> str:
    """[["Beauty", "Makeup", "Nails"], ["Beauty", "Tools"]] -> "Beauty > Makeup > Nails | Beauty > Tools"."""
    if not isinstance(value, list):
        return _plain(value)
    paths = (path if isinstance(path, list) else [path] for path in value)
    return " | ".join(" > ".join(_plain(name) for name in path) for path in paths if path)


def _description(value) -> str:
    text = _plain(value)
    if len(text) <= DESCRIPTION_CHARS:
        return text
    return text[:DESCRIPTION_CHARS].rsplit(" ", 1)[0] + "…"


def _price(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else _plain(value)


_FORMATTERS: dict[str, Callable[[object], str]] = {
    "title": _title,
    "categories": _category_paths,
    "brand": _plain,
    "description": _description,
    "price": _price,
}


def _not_found(folder: Path, category: str, raw: tuple[Path, Path], preprocessed: tuple[Path, Path]) -> str:
    def listed(paths):
        return ", ".join(f"{p.name} ({'found' if p.is_file() else 'missing'})" for p in paths)

    where = f"{folder}" if folder.is_dir() else f"{folder} (folder does not exist)"
    return (
        f"no Amazon 2014 {category} data in {where}. Looked for either\n"
        f"  raw form:          {listed(raw)}\n"
        f"  preprocessed form: {listed(preprocessed)}\n"
        f"Raw files: the '5-core' reviews and the 'metadata' of {category} from {_RAW_PAGE} "
        f"(e.g. {_RAW_FILES}reviews_{category}_5.json.gz and meta_{category}.json.gz). Preprocessed: "
        f"data/{category}.txt from {_S3REC_REPO} plus an items.jsonl giving each of its item ids an "
        f'asin, title and categories ({{"item_id": 1, "asin": ..., "title": ..., "categories": [[...]]}}).'
    )
