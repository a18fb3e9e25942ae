"""Turn any `Catalogue` into a prepared dataset folder: ids, leave-one-out split, tail flags,
sampled-evaluation negatives and the data card, written atomically.

Every later stage reads only this folder, so every model is trained on the same split and ranked
on the same stored candidates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..utils.choices import check_fields
from ..utils.io import write_json
from .card import data_card
from .catalogue import Catalogue, DataError
from .images import Placeholder, placeholder_image
from .prepared import PLACEHOLDER_NAME, file_digests, file_sizes

MIN_INTERACTIONS = 3  # one train, one validation and one test item at least

# How the interactions are filtered before the split, in the words the card records. The "sda"
# filter itself runs in the loader that reads the raw reviews (`amazon.sda_filter`).
Recipe = Literal["5core", "sda"]
RECIPES: dict[Recipe, str] = {
    "5core": "the source as given (Amazon 5-core or S3-Rec files, toy or custom data); users numbered in id order",
    "sda": "the SDA authors' data_process on the raw reviews: one pass keeping reviews whose user and item "
    "each have >= 5, first review of each item per user, time order, users with < 5 items and items "
    "without meta dropped; users and items numbered in order of first appearance",
}

# Which interactions count towards an item's popularity for the tail flag, per dataset. The
# authors' rule ("all": the number of users whose whole sequence holds the item) unless named here:
# on the toy data it leaves 2.7% (toy-tiny: 4 users) and 3.2% (toy: 48) of test targets in the tail,
# too few to measure; training counts give 10% and 7.6%, which the generator was tuned for.
TailCountOn = Literal["train", "all"]
TAIL_COUNT_ON: dict[str, TailCountOn] = {"toy": "train", "toy-tiny": "train"}


def default_tail_count_on(dataset: str) -> TailCountOn:
    """The tail rule a dataset is prepared with unless told otherwise (see TAIL_COUNT_ON)."""
    return TAIL_COUNT_ON.get(dataset, "all")


@dataclass(frozen=True)
class PrepareParams:
    """How a dataset is prepared; recorded in the card, and a change prepares the folder again."""

    tail_threshold: int = 4  # tail: fewer than this many interactions ...
    tail_count_on: TailCountOn | None = None  # ... on "all" data or on "train"; None: the dataset's default
    n_negatives: int = 100
    seed: int = 0
    recipe: Recipe = "5core"  # see RECIPES; "sda" reads the raw Amazon review file
    placeholder: Placeholder = "noise"  # image of items without one: the authors' noise, or "grey"

    def __post_init__(self):
        check_fields(self)
        for name, least in (("tail_threshold", 1), ("n_negatives", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")

    def for_dataset(self, name: str) -> PrepareParams:
        """These parameters with the dataset's default tail rule filled in, as the card records them."""
        return self if self.tail_count_on else replace(self, tail_count_on=default_tail_count_on(name))


def prepare_catalogue(catalogue: Catalogue, folder: Path, params: PrepareParams = PrepareParams()) -> dict:
    """Write the prepared dataset into `folder` (a fresh temporary folder that the caller renames
    into place once this returns) and return the data card."""
    params = params.for_dataset(catalogue.name)
    counts = dict(catalogue.counts)
    items, inter = _validate(catalogue)

    n_before = len(inter)
    inter = inter.drop_duplicates(["user_id", "item_id"], keep="first")
    counts["duplicate_interactions_dropped"] = n_before - len(inter)
    # the authors number users in order of first appearance, the workbench by id; time order within
    order = pd.factorize(inter["user_id"])[0] if params.recipe == "sda" else inter["user_id"]
    inter = inter.assign(order=order).sort_values(["order", "timestamp"], kind="stable").drop(columns="order")

    seq_len = inter.groupby("user_id", sort=False)["item_id"].transform("size")
    short_users = inter.loc[seq_len < MIN_INTERACTIONS, "user_id"].nunique()
    inter = inter[seq_len >= MIN_INTERACTIONS]
    counts["users_dropped_short"] = int(short_users)
    if inter.empty:
        raise DataError(
            f"{catalogue.name}: no user has {MIN_INTERACTIONS} or more interactions after removing "
            "duplicates; check the interactions file"
        )

    used = items["item_id"].isin(inter["item_id"])
    counts["items_without_interactions"] = int((~used).sum())
    items = items[used].reset_index(drop=True)
    items.insert(0, "item", np.arange(len(items), dtype=np.int64))

    users = pd.DataFrame({"user_id": inter["user_id"].unique()})
    users.insert(0, "user", np.arange(len(users), dtype=np.int64))
    inter = pd.DataFrame(
        {
            "user": inter["user_id"].map(pd.Series(users["user"].values, index=users["user_id"])).values,
            "item": inter["item_id"].map(pd.Series(items["item"].values, index=items["item_id"])).values,
            "timestamp": inter["timestamp"].values,
        }
    )
    # Users appear in first-seen order and are grouped, so a stable sort by user keeps time order.
    inter = inter.sort_values("user", kind="stable").reset_index(drop=True)
    inter["split"] = leave_one_out(inter["user"].to_numpy())

    _flag_tail(items, inter, params)
    negatives = sample_negatives(inter["user"].to_numpy(), inter["item"].to_numpy(), len(users), len(items), params)

    items = _relative_images(items, folder, counts, params.placeholder)
    card = data_card(catalogue.name, items, inter, catalogue.text_fields, counts, params, negatives.shape[1])
    card["source"] = catalogue.source
    card["recipe"] = RECIPES[params.recipe]
    items.to_parquet(folder / "items.parquet", index=False)
    inter.to_parquet(folder / "interactions.parquet", index=False)
    users.to_parquet(folder / "users.parquet", index=False)
    np.save(folder / "negatives.npy", negatives)
    card["files"] = file_sizes(folder)
    card["sha256"] = file_digests(folder)
    write_json(folder / "card.json", card)
    return card


def leave_one_out(users: np.ndarray) -> pd.Categorical:
    """Split labels for interactions grouped by user in time order: last test, second-to-last valid."""
    n = len(users)
    is_last = np.ones(n, dtype=bool)
    is_last[:-1] = users[1:] != users[:-1]
    is_second = np.zeros(n, dtype=bool)
    is_second[:-1] = is_last[1:] & (users[:-1] == users[1:])
    labels = np.full(n, "train", dtype=object)
    labels[is_second] = "valid"
    labels[is_last] = "test"
    return pd.Categorical(labels, categories=["train", "valid", "test"])


def sample_negatives(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, params: PrepareParams
) -> np.ndarray:
    """For each user, `n_negatives` distinct items drawn uniformly from those never interacted with.

    Draws k distinct ranks in the complement of the user's history and maps rank -> item id with one
    searchsorted, so no rejection loop is needed.
    """
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    bounds = np.searchsorted(users, np.arange(n_users + 1))
    longest = int(np.diff(bounds).max())
    k = params.n_negatives
    if n_items - longest < k:
        k = n_items - longest
        if k < 1:
            raise DataError(f"a user interacted with every item ({n_items}); no negatives can be drawn")
        warnings.warn(
            f"only {k} items lie outside the longest history ({longest} of {n_items} items); "
            f"n_negatives reduced from {params.n_negatives} to {k}",
            stacklevel=2,
        )
    rng = np.random.default_rng(params.seed)
    out = np.empty((n_users, k), dtype=np.int32)
    for u in range(n_users):
        hist = items[bounds[u] : bounds[u + 1]]
        ranks = rng.choice(n_items - len(hist), size=k, replace=False)
        out[u] = ranks + np.searchsorted(hist - np.arange(len(hist)), ranks, side="right")
    return out


def _validate(catalogue: Catalogue) -> tuple[pd.DataFrame, pd.DataFrame]:
    items, inter = catalogue.items, catalogue.interactions
    where = f"dataset {catalogue.name!r}" + (f" ({catalogue.source})" if catalogue.source else "")
    for frame, name, cols in (
        (items, "items", ["item_id", "image_path", *catalogue.text_fields]),
        (inter, "interactions", ["user_id", "item_id", "timestamp"]),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(f"{where}: {name} table lacks column(s) {missing}; found {list(frame.columns)}")
        if frame.empty:
            raise DataError(f"{where}: the {name} table is empty")
    if items["item_id"].duplicated().any():
        dup = items.loc[items["item_id"].duplicated(), "item_id"].iloc[0]
        raise DataError(f"{where}: item {dup!r} appears more than once in the items table")
    unknown = ~inter["item_id"].isin(items["item_id"])
    if unknown.any():
        first = inter.loc[unknown, "item_id"].iloc[0]
        raise DataError(
            f"{where}: {int(unknown.sum())} interaction(s) name items missing from the items table, "
            f"first {first!r}; the interactions and items files do not belong together"
        )
    return items.copy(), inter[["user_id", "item_id", "timestamp"]].copy()


def _flag_tail(items: pd.DataFrame, inter: pd.DataFrame, params: PrepareParams) -> None:
    n = len(items)
    items["popularity"] = np.bincount(inter.loc[inter["split"] == "train", "item"], minlength=n)
    items["popularity_all"] = np.bincount(inter["item"], minlength=n)
    counted = items["popularity"] if params.tail_count_on == "train" else items["popularity_all"]
    items["is_tail"] = counted < params.tail_threshold


def _relative_images(items: pd.DataFrame, folder: Path, counts: dict, placeholder: str) -> pd.DataFrame:
    """Image paths inside the folder become relative (the folder can move); items without a usable
    image keep their text and point at one placeholder image (`images.placeholder_image`)."""
    items = items.copy()
    items["has_image"] = items["image_path"].notna()
    counts["missing_images"] = int((~items["has_image"]).sum())
    placeholder_image(placeholder).save(folder / PLACEHOLDER_NAME)
    root = folder.resolve()

    def relative(path):
        if path is None or pd.isna(path):
            return PLACEHOLDER_NAME
        p = Path(path).resolve()
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    items["image_path"] = items["image_path"].map(relative).astype(str)
    return items
