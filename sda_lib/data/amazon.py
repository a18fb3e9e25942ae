"""Amazon 2014 review datasets (Beauty, Sports_and_Outdoors, Toys_and_Games), in either form.

Raw form, as McAuley et al. distribute it (https://jmcauley.ucsd.edu/data/amazon/links.html):
  reviews_<Category>_5.json.gz  the 5-core reviews, one JSON object per line: reviewerID, asin,
                                unixReviewTime, ...
  reviews_<Category>.json.gz    all reviews, same lines (read by recipe "sda" only)
  meta_<Category>.json.gz       one Python dict literal per line (not JSON): asin, title, brand,
                                categories, description, price, imUrl, ...
  Text fields title, categories, brand, description (capped at DESCRIPTION_CHARS), price; column
  `image_url` keeps imUrl for downloads.
  Recipe "5core" reads the 5-core file as it is: items are the reviewed ASINs in order of first
  review, and a reviewed ASIN without meta is an error. Recipe "sda" applies the SDA authors'
  filter (`sda_filter`) to the full file, or to the 5-core file when the full one is absent (the
  authors' code does not tell which they read); items without meta are then dropped, as they do.

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

from sda_lib.data import images as item_images
from sda_lib.data.catalogue import Catalogue, DataError
from sda_lib.data.prepare import Recipe
from sda_lib.utils.choices import check_choice
from sda_lib.utils.frontend import tqdm

CATEGORIES = {"beauty": "Beauty", "sports": "Sports_and_Outdoors", "toys": "Toys_and_Games"}
RAW_TEXT_FIELDS = ["title", "categories", "brand", "description", "price"]
PREPROCESSED_TEXT_FIELDS = ["title", "categories"]
DESCRIPTION_CHARS = 500
SDA_MIN_COUNT = 5  # recipe "sda": user_core = item_core = filter_minmum's min_len in the authors' executed cell
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
    recipe: Recipe = "5core",
) -> Catalogue:
    """Load Amazon 2014 `name` ("beauty", "sports", "toys") from the folder `source`, either form,
    filtered by `recipe` ("5core" or "sda", see the module docstring).

    Images: from the folder `images` (files named <asin>.<jpg|png|...>) if given; else, when
    `download_images`, fetched from the raw meta's imUrl into `image_cache` (default
    ~/.cache/sda-workbench/images/<name>); else every item has image_path None.
    """
    form, files = source_files(name, source, recipe)
    category, folder = CATEGORIES[name], Path(source).expanduser()
    if recipe == "sda":
        items, interactions, counts = _load_raw_sda(*files)
    elif form == "raw":
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
        source=f"Amazon 2014 {category}, {form} form ({files[0].name}), recipe {recipe}: {folder}",
    )


def source_files(name: str, source: str | os.PathLike, recipe: Recipe = "5core") -> tuple[str, tuple[Path, Path]]:
    """The form found in `source` and the two files `recipe` reads: for "5core" the raw 5-core
    reviews (preferred) or the preprocessed form; for "sda" the full reviews, else the 5-core ones."""
    if name not in CATEGORIES:
        raise ValueError(f"unknown Amazon dataset name {name!r}: expected one of {sorted(CATEGORIES)}")
    check_choice(recipe, Recipe, "recipe")
    category = CATEGORIES[name]
    folder = Path(source).expanduser()
    meta = folder / f"meta_{category}.json.gz"
    full = (folder / f"reviews_{category}.json.gz", meta)
    five = (folder / f"reviews_{category}_5.json.gz", meta)
    preprocessed = (folder / f"{category}.txt", folder / "items.jsonl")
    looked = {"raw": [five], "preprocessed": [preprocessed]} if recipe == "5core" else {"raw": [full, five]}
    for form, candidates in looked.items():
        for files in candidates:
            if all(path.is_file() for path in files):
                return form, files
    raise DataError(_not_found(folder, category, recipe, full, five, preprocessed))


def default_image_cache(name: str) -> Path:
    """Where `download_images` keeps the images of dataset `name` unless told otherwise."""
    return (DEFAULT_IMAGE_CACHE / name).expanduser()


def _load_raw(reviews_path: Path, meta_path: Path):
    interactions = _read_reviews(reviews_path)
    reviewed = list(dict.fromkeys(interactions["item_id"]))  # order of first review
    meta = _read_meta(meta_path, reviewed)
    unknown = [asin for asin in reviewed if asin not in meta]
    if unknown:
        raise DataError(
            f"{meta_path}: no metadata line for asin {unknown[0]!r}, reviewed in {reviews_path.name} "
            f"({len(unknown)} reviewed asins have none): the two files are from different categories or "
            f"releases, or the meta file is incomplete; download meta_*.json.gz for the same category again"
        )
    counts = {"html_unescaped_titles": 0, "missing_titles": 0}
    return _item_rows(reviewed, meta, counts), interactions, counts


def _load_raw_sda(reviews_path: Path, meta_path: Path):
    """The authors' recipe: `sda_filter`, then items without meta dropped (`remove_items`) and
    items numbered in order of first appearance in the users' sequences (`id_map`)."""
    interactions, counts = sda_filter(_read_reviews(reviews_path))
    if interactions.empty:
        raise DataError(
            f"{reviews_path}: no user has {SDA_MIN_COUNT} or more reviews of items with {SDA_MIN_COUNT} or more "
            f"reviews ({counts['sda_reviews_read']} reviews read): the recipe 'sda' needs the full review file "
            f"of the category"
        )
    kept = list(dict.fromkeys(interactions["item_id"]))
    meta = _read_meta(meta_path, kept)
    with_meta = interactions["item_id"].isin(list(meta)).to_numpy()
    counts["sda_items_without_meta"] = len(kept) - len(meta)
    counts["sda_interactions_without_meta"] = int((~with_meta).sum())
    counts["sda_users_left_without_items"] = (
        interactions["user_id"].nunique() - interactions.loc[with_meta, "user_id"].nunique()
    )
    interactions = interactions[with_meta].reset_index(drop=True)
    if interactions.empty:
        raise DataError(
            f"{meta_path}: none of the {len(kept)} items kept from {reviews_path.name} has a "
            f"metadata line: the two files are from different categories or releases"
        )
    counts |= {"html_unescaped_titles": 0, "missing_titles": 0}
    items = _item_rows(list(dict.fromkeys(interactions["item_id"])), meta, counts)
    return items, interactions, counts


def sda_filter(reviews: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The SDA authors' interaction filter (`RaoZhongtao/SDA:data_process.ipynb`, `filter_common`
    then `filter_minmum`), on reviews (user_id, item_id, timestamp) in file order.

    One pass, not an iterative k-core: keep the reviews whose user and whose item each have at
    least SDA_MIN_COUNT reviews in the whole file, duplicates included; per user keep the first
    review of each item in file order; sort each user's items by time (stable); drop users left
    with fewer than SDA_MIN_COUNT items. Returns the kept rows grouped by user, users in order of
    first appearance among the kept reviews (the authors' numbering), and what was dropped.
    """
    n_user = reviews.groupby("user_id", sort=False)["user_id"].transform("size")
    n_item = reviews.groupby("item_id", sort=False)["item_id"].transform("size")
    kept = reviews[(n_user >= SDA_MIN_COUNT) & (n_item >= SDA_MIN_COUNT)]
    unique = kept.drop_duplicates(["user_id", "item_id"], keep="first")
    # two stable sorts: by time, then by user number (first appearance), so ties keep file order
    user_number = pd.factorize(unique["user_id"])[0]
    by_time = np.argsort(unique["timestamp"].to_numpy(), kind="stable")
    grouped = unique.iloc[by_time[np.argsort(user_number[by_time], kind="stable")]]
    length = grouped.groupby("user_id", sort=False)["user_id"].transform("size")
    result = grouped[length >= SDA_MIN_COUNT].reset_index(drop=True)
    return result, {
        "sda_reviews_read": len(reviews),
        "sda_reviews_below_core": len(reviews) - len(kept),
        "sda_duplicates_dropped": len(kept) - len(unique),
        "sda_users_below_min_length": int(grouped.loc[length < SDA_MIN_COUNT, "user_id"].nunique()),
    }


def _read_reviews(path: Path) -> pd.DataFrame:
    """user_id, item_id, timestamp of every review line, in file order."""
    users, item_ids, times = [], [], []
    for number, line in _lines(path):
        review = _parse(line, json.loads, path, number, "a JSON object")
        user, asin, time = _required(review, ("reviewerID", "asin", "unixReviewTime"), path, number)
        users.append(str(user))
        item_ids.append(str(asin))
        times.append(_integer(time, "unixReviewTime", path, number))
    return _interactions(users, item_ids, times)


def _read_meta(path: Path, wanted: list[str]) -> dict[str, dict]:
    """The first meta record of each wanted asin that has one."""
    wanted = set(wanted)
    meta = {}
    for number, line in _lines(path):
        leading = _LEADING_ASIN.match(line)
        if leading and leading.group(1) not in wanted:
            continue
        record = _parse(line, ast.literal_eval, path, number, "a Python dict literal")
        (asin,) = _required(record, ("asin",), path, number)
        if asin in wanted:
            meta.setdefault(asin, record)
    return meta


def _item_rows(asins: list[str], meta: dict[str, dict], counts: dict[str, int]) -> pd.DataFrame:
    rows = []
    for asin in asins:
        row = _text_row(meta[asin], RAW_TEXT_FIELDS, counts)
        rows.append({"item_id": asin, **row, "image_url": meta[asin].get("imUrl") or None})
    return pd.DataFrame(rows)


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
            raise DataError(f"{sequences_path}:{number}: expected 'user_id item_id item_id ...', got {line[:80]!r}")
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
            opener(path, "rb") as f,
            tqdm(f, desc=f"reading {path.name}", unit=" lines", unit_scale=True, leave=False) as bar,
        ):
            for number, raw in enumerate(bar, 1):
                line = _decode(raw, path, number)  # line by line, so an error names its own line
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
    if not seen:
        raise DataError(f"{path}: file is empty: it should hold one record per line; get the complete file again")


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start + 1} of the line): the file is "
            "damaged, get it again"
        ) from e


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


def _not_found(
    folder: Path,
    category: str,
    recipe: Recipe,
    full: tuple[Path, Path],
    five: tuple[Path, Path],
    preprocessed: tuple[Path, Path],
) -> str:
    def listed(paths):
        return ", ".join(f"{p.name} ({'found' if p.is_file() else 'missing'})" for p in paths)

    where = f"{folder}" if folder.is_dir() else f"{folder} (folder does not exist)"
    downloads = (
        f"Raw files: the reviews and the 'metadata' of {category} from {_RAW_PAGE} (e.g. "
        f"{_RAW_FILES}reviews_{category}_5.json.gz, reviews_{category}.json.gz and meta_{category}.json.gz)."
    )
    if recipe == "sda":
        return (
            f"no Amazon 2014 {category} review file for recipe 'sda' in {where}. It filters the raw reviews, "
            f"so it looked for\n"
            f"  all reviews (preferred): {listed(full)}\n"
            f"  or the 5-core reviews:   {listed(five)}\n"
            f"{downloads} The preprocessed form ({category}.txt) is already filtered: prepare it with "
            f"recipe '5core' (--recipe 5core)."
        )
    hint = ""
    if full[0].is_file():
        hint = (
            f"\n{full[0].name} (all reviews) is there: the recipe 'sda' (--recipe sda) reads it, "
            f"the recipe '5core' reads only the 5-core file."
        )
    return (
        f"no Amazon 2014 {category} data in {where}. Looked for either\n"
        f"  raw form:          {listed(five)}\n"
        f"  preprocessed form: {listed(preprocessed)}\n"
        f"{downloads} Preprocessed: "
        f"data/{category}.txt from {_S3REC_REPO} plus an items.jsonl giving each of its item ids an "
        f'asin, title and categories ({{"item_id": 1, "asin": ..., "title": ..., "categories": [[...]]}}).'
        f"{hint}"
    )
