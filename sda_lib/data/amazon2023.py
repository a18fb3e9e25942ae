"""Amazon Reviews 2023 (McAuley Lab; Hou et al. 2024, arXiv 2403.03952), one category per dataset.

Files of a category `<C>` (e.g. Toys_and_Games), as the release distributes them
(https://amazon-reviews-2023.github.io, the Hugging Face dataset McAuley-Lab/Amazon-Reviews-2023),
each gzipped or not, in the `source` folder:

  <C>.jsonl        the reviews, one JSON object per line: user_id, parent_asin, asin, timestamp
                   (Unix milliseconds), rating, title, text, ...
  meta_<C>.jsonl   the items, one JSON object per line, keyed by parent_asin: title, store,
                   categories (one path, a list), features (list), description (list), price,
                   images (a list of {thumb, large, hi_res, variant}), ...
  <C>.csv          instead of the reviews: the release's 5-core "rating_only" benchmark file
                   (user_id,parent_asin,rating,timestamp; with or without that header)

An item is a parent_asin: the release groups a product's variants (asin) under it, and its
benchmark files and metadata are keyed by it. The image URL is the largest of the item's MAIN
image (hi_res, else large, else thumb), else of its first image.

Recipes:
  "5core"  the release's benchmark preprocessing (benchmark_scripts/kcore_filtering.py): each
           user's reviews in time order, a repeated (user, item) review dropped for its earliest,
           then k-core filtering repeated until every user and item has at least 5 reviews. A
           rating_only file is read as it is (it is that output). Items without metadata keep empty
           text and no image (counted in `items_without_meta`), as the release counts items from
           the reviews. The workbench's leave-one-out split is then the release's "last_out" split
           (each user's latest review test, the one before validation).
  "sda"    the SDA authors' filter (sda_lib.data.amazon.sda_filter: one pass keeping reviews whose
           user and item each have at least 5, first review of each item per user, users left with
           fewer than 5 dropped) on the reviews, then items without metadata dropped, as they do.

The release's other split, by absolute time (benchmark_scripts/timestamp_split.py: train before
VALID_TIMESTAMP, validation before TEST_TIMESTAMP, test after, for every category alike), is
given by `timestamp_split` for use outside the workbench's recommenders, which evaluate
leave-one-out.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from sda_lib.data import images as item_images
from sda_lib.data.amazon import (
    _description,
    _integer,
    _lines,
    _parse,
    _plain,
    _price,
    _required,
    _title,
    default_image_cache,
    sda_filter,
)
from sda_lib.data.catalogue import Catalogue, DataError
from sda_lib.data.prepare import Recipe

K_CORE = 5  # kcore_filtering.py -k 5
VALID_TIMESTAMP, TEST_TIMESTAMP = 1628643414042, 1658002729837  # timestamp_split.py, milliseconds
TEXT_FIELDS = ["title", "categories", "store", "features", "description", "price"]
IMAGE_SIZES = ("hi_res", "large", "thumb")  # the meta's image URLs, largest first
_RELEASE = "https://amazon-reviews-2023.github.io"


def source_files(source: str | os.PathLike, category: str | None = None) -> tuple[str, Path, Path]:
    """(category, interactions file, meta file) in `source`: the reviews JSONL or, failing that, the
    5-core rating_only CSV; the category from the one meta_<C>.jsonl[.gz] there unless given."""
    folder = Path(source).expanduser()
    if category is None:
        found = sorted({_stem(p)[len("meta_") :] for p in folder.glob("meta_*.jsonl*") if _stem(p)})
        if len(found) != 1:
            what = f"several ({', '.join(found)}): keep one category per folder, or pass category=" if found else "none"
            raise DataError(
                f"{folder}: expected the metadata of one Amazon 2023 category (meta_<Category>.jsonl or .jsonl.gz), "
                f"found {what}. Download meta_<Category>.jsonl and <Category>.jsonl (reviews) from {_RELEASE}"
            )
        category = found[0]
    meta = _first(folder, [f"meta_{category}.jsonl", f"meta_{category}.jsonl.gz"])
    inter = _first(folder, [f"{category}.jsonl", f"{category}.jsonl.gz", f"{category}.csv", f"{category}.csv.gz"])
    if meta is None or inter is None:
        missing = [n for n, p in ((f"meta_{category}.jsonl", meta), (f"{category}.jsonl or .csv", inter)) if p is None]
        raise DataError(
            f"{folder}: no {' and no '.join(missing)} (gzipped or not) for Amazon 2023 category {category}: the "
            f"reviews (<C>.jsonl) or the 5-core rating_only file (<C>.csv), and the metadata (meta_<C>.jsonl), "
            f"from {_RELEASE}"
        )
    return category, inter, meta


def load_amazon2023(
    name: str,
    source: str | os.PathLike,
    recipe: Recipe = "5core",
    category: str | None = None,
    images: str | os.PathLike | None = None,
    download_images: bool = False,
    image_cache: str | os.PathLike | None = None,
    workers: int = 16,
) -> Catalogue:
    """Load one Amazon 2023 category from `source` as `recipe` filters it (module docstring).

    Images: from the folder `images` (files named <parent_asin>.jpg, .png, ...) if given; else, when
    `download_images`, fetched from the meta's largest image URL into `image_cache` (default
    ~/.cache/sda-workbench/images/<name>); else every item has image_path None."""
    category, inter_path, meta_path = source_files(source, category)
    rating_only = ".csv" in inter_path.suffixes
    if recipe == "sda" and rating_only:
        raise DataError(
            f"{inter_path} is the release's 5-core file, already filtered: recipe 'sda' filters the reviews "
            f"({category}.jsonl); prepare it with recipe '5core'"
        )
    reviews = read_rating_only(inter_path) if rating_only else read_reviews(inter_path)
    counts = {"reviews_read": len(reviews)}
    if recipe == "sda":
        interactions, sda_counts = sda_filter(reviews)
        counts |= sda_counts
    elif rating_only:
        interactions = reviews
    else:
        interactions, core_counts = release_kcore(reviews)
        counts |= core_counts
    if interactions.empty:
        raise DataError(f"{inter_path}: no review is left after recipe {recipe!r} ({len(reviews)} read)")

    wanted = list(dict.fromkeys(interactions["item_id"]))
    meta = read_meta(meta_path, set(wanted))
    counts["items_without_meta"] = len(wanted) - len(meta)
    if recipe == "sda":  # the authors drop items without meta
        interactions = interactions[interactions["item_id"].isin(list(meta))].reset_index(drop=True)
        wanted = [item for item in wanted if item in meta]
    text_counts = {"html_unescaped_titles": 0, "missing_titles": 0}
    rows = [
        {"item_id": item, **_text(meta.get(item, {}), text_counts), "image_url": largest_image(meta.get(item))}
        for item in wanted
    ]
    items = pd.DataFrame(rows)
    counts |= text_counts

    if images is not None:
        found, image_counts = item_images.find_images(items["item_id"], images, workers)
    elif download_images:
        cache = Path(image_cache) if image_cache is not None else default_image_cache(name)
        urls = {item: url for item, url in zip(items["item_id"], items["image_url"]) if url}
        image_counts = item_images.download_images(urls, cache, workers)
        found, found_counts = item_images.find_images(items["item_id"], cache, workers)
        image_counts |= found_counts
    else:
        found, image_counts = {}, {"missing_images": len(items)}
    items["image_path"] = pd.Series([found.get(i) for i in items["item_id"]], index=items.index, dtype=object)
    return Catalogue(
        name=name,
        items=items,
        interactions=interactions[["user_id", "item_id", "timestamp"]].reset_index(drop=True),
        text_fields=list(TEXT_FIELDS),
        counts=counts | image_counts,
        source=f"Amazon 2023 {category} ({inter_path.name}, {meta_path.name}), recipe {recipe}: {inter_path.parent}",
    )


def read_reviews(path: Path) -> pd.DataFrame:
    """user_id, item_id (the parent_asin), timestamp (ms) of every review line, in file order."""
    users, items, times = [], [], []
    for number, line in _lines(path):
        review = _parse(line, json.loads, path, number, "a JSON object")
        user, item, time = _required(review, ("user_id", "parent_asin", "timestamp"), path, number)
        users.append(str(user))
        items.append(str(item))
        times.append(_integer(time, "timestamp", path, number))
    return _frame(users, items, times)


def read_rating_only(path: Path) -> pd.DataFrame:
    """The release's rating_only CSV (user_id,parent_asin,rating,timestamp), header or not."""
    users, items, times = [], [], []
    for number, line in _lines(path):
        fields = line.strip().split(",")
        if number == 1 and fields[:2] == ["user_id", "parent_asin"]:
            continue
        if len(fields) != 4:
            raise DataError(
                f"{path}:{number}: expected user_id,parent_asin,rating,timestamp, got {line.strip()[:80]!r}"
            )
        users.append(fields[0])
        items.append(fields[1])
        times.append(_integer(fields[3], "timestamp", path, number))
    return _frame(users, items, times)


def _frame(users, items, times) -> pd.DataFrame:
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": np.asarray(times, dtype=np.int64)})


def release_kcore(reviews: pd.DataFrame, k: int = K_CORE) -> tuple[pd.DataFrame, dict[str, int]]:
    """The release's kcore_filtering.py: per user (in order of first review) the reviews sorted by
    time, a repeated item dropped after its earliest review; then users and items with fewer than
    `k` reviews removed, again and again until none is left to remove."""
    user_number = pd.factorize(reviews["user_id"])[0]
    by_time = np.argsort(reviews["timestamp"].to_numpy(), kind="stable")
    ordered = reviews.iloc[by_time[np.argsort(user_number[by_time], kind="stable")]]
    unique = ordered.drop_duplicates(["user_id", "item_id"], keep="first")
    kept, rounds = unique, 0
    while True:
        n_user = kept.groupby("user_id", sort=False)["user_id"].transform("size")
        n_item = kept.groupby("item_id", sort=False)["item_id"].transform("size")
        keep = (n_user >= k) & (n_item >= k)
        if keep.all():
            break
        kept, rounds = kept[keep], rounds + 1
    return kept.reset_index(drop=True), {
        "duplicate_reviews_dropped": len(reviews) - len(unique),
        "kcore_removed": len(unique) - len(kept),
        "kcore_rounds": rounds,
    }


def timestamp_split(timestamps) -> np.ndarray:
    """The release's absolute-time split of interactions with these timestamps (ms): "train"
    before VALID_TIMESTAMP, "valid" before TEST_TIMESTAMP, "test" from then on."""
    t = np.asarray(timestamps, dtype=np.int64)
    return np.where(t >= TEST_TIMESTAMP, "test", np.where(t >= VALID_TIMESTAMP, "valid", "train"))


def read_meta(path: Path, wanted: set[str]) -> dict[str, dict]:
    """The first meta record of each wanted parent_asin."""
    meta = {}
    for number, line in _lines(path):
        record = _parse(line, json.loads, path, number, "a JSON object")
        (item,) = _required(record, ("parent_asin",), path, number)
        if item in wanted:
            meta.setdefault(str(item), record)
    return meta


def largest_image(record: dict | None) -> str | None:
    """The URL of the largest size of the item's MAIN image (else its first image), or None."""
    pictures = [p for p in (record or {}).get("images") or [] if isinstance(p, dict)]
    if not pictures:
        return None
    main = next((p for p in pictures if p.get("variant") == "MAIN"), pictures[0])
    return next((main[size] for size in IMAGE_SIZES if main.get(size)), None)


def _text(record: dict, counts: dict[str, int]) -> dict[str, str]:
    """An item's readable text fields (the 2014 loader's formatting; lists joined: the category
    path with " > ", features and description paragraphs with spaces); counts unescaped and
    missing titles."""
    title = record.get("title")
    row = {
        "title": _title(title),
        "categories": " > ".join(_plain(c) for c in record.get("categories") or []),
        "store": _plain(record.get("store")),
        "features": _description(" ".join(_plain(f) for f in record.get("features") or [])),
        "description": _description(" ".join(_plain(d) for d in record.get("description") or [])),
        "price": _price(record.get("price")),
    }
    counts["html_unescaped_titles"] += isinstance(title, str) and html.unescape(title) != title
    counts["missing_titles"] += not row["title"]
    return row


def _first(folder: Path, names: list[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.gz", ".jsonl"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return ""
