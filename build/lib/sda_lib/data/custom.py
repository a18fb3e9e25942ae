"""Your own dataset: an interactions table and an items table, as CSV or parquet files.

Schema:

  interactions (.csv or .parquet), one row per interaction:
    user        user id (any value; read as text)
    item        item id (any value; read as text); must appear in the items table
    timestamp   a number (e.g. Unix seconds; only the order matters, ties keep file order) or a
                date-time string such as "2014-03-08 17:05:00" (read as UTC unless it names a time
                zone, stored as Unix seconds)

  items (.csv or .parquet), one row per item:
    item        item id, unique
    image_path  optional: path of the item's image file; a relative path is read from the items
                file's folder. Empty, missing or undecodable images leave the item without an image
                (counted as missing_images; undecodable files also as corrupt_images, images too
                elongated for the backbone as extreme_aspect_images).
    any other text column (e.g. title, brand, description) becomes a text field of the item's
    prompts, in the table's column order; empty cells become "". Non-text columns are kept as they
    are but do not enter prompts.

Items without interactions stay in the catalogue (counted as items_without_interactions).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from sda_lib.data.catalogue import Catalogue, DataError
from sda_lib.data.images import check_images

INTERACTION_COLUMNS = ["user", "item", "timestamp"]
ITEM_ID_COLUMN = "item"
IMAGE_COLUMN = "image_path"
_SCHEMA = (
    "expected an interactions table with columns user, item, timestamp and an items table with "
    "column item, optional image_path, and text columns (see sda_lib.data.custom)"
)


def load_custom(interactions: str | os.PathLike, items: str | os.PathLike, name: str = "custom") -> Catalogue:
    """Load a user-supplied dataset (schema in the module docstring) as a `Catalogue`."""
    interactions_path, items_path = Path(interactions).expanduser(), Path(items).expanduser()
    events = _read_table(interactions_path, INTERACTION_COLUMNS)
    table = _read_table(items_path, [ITEM_ID_COLUMN])

    item_ids = _ids(table, ITEM_ID_COLUMN, items_path)
    duplicated = item_ids[item_ids.duplicated()].unique()
    if len(duplicated):
        raise DataError(
            f"{items_path}: item {duplicated[0]!r} has more than one row ({len(duplicated)} items do): "
            f"each item needs exactly one row"
        )
    interaction_items = _ids(events, "item", interactions_path)
    unknown = interaction_items[~interaction_items.isin(item_ids)].unique()
    if len(unknown):
        raise DataError(
            f"{interactions_path}: item {unknown[0]!r} is not in {items_path} ({len(unknown)} interaction "
            f"items are not): add a row for each item to the items table"
        )

    catalogue_items = pd.DataFrame({"item_id": item_ids})
    text_fields = []
    for column in table.columns:
        if column in (ITEM_ID_COLUMN, IMAGE_COLUMN):
            continue
        if pd.api.types.is_string_dtype(table[column]):
            text_fields.append(column)
            catalogue_items[column] = table[column].fillna("").astype(str).str.strip()
        else:
            catalogue_items[column] = table[column]
    image_paths, counts = _image_paths(table, item_ids, items_path)
    catalogue_items[IMAGE_COLUMN] = pd.Series(image_paths, dtype=object)

    catalogue_interactions = pd.DataFrame(
        {
            "user_id": _ids(events, "user", interactions_path),
            "item_id": interaction_items,
            "timestamp": _timestamps(events["timestamp"], interactions_path),
        }
    )
    counts["items_without_interactions"] = int((~item_ids.isin(interaction_items)).sum())
    return Catalogue(
        name=name,
        items=catalogue_items,
        interactions=catalogue_interactions,
        text_fields=text_fields,
        counts=counts,
        source=f"custom: {interactions_path}, {items_path}",
    )


def _read_table(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found; {_SCHEMA}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            # ids as text, so "007" stays "007" and matches across the two files
            table = pd.read_csv(path, dtype={"user": str, "item": str}, keep_default_na=False, na_values=[""])
        elif suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: unknown file type {path.suffix!r}: use .csv or .parquet; {_SCHEMA}")
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{_first_bad_line(path)}: not UTF-8 text ({e.reason}); save the file as UTF-8") from e
    except Exception as e:  # pandas / pyarrow parse errors have no common base class
        raise DataError(f"{path}: cannot be read as {suffix[1:]} ({e}); {_SCHEMA}") from e
    if table.empty:
        raise DataError(f"{path}: file is empty (no rows); {_SCHEMA}")
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (columns found: {list(table.columns)}); {_SCHEMA}")
    return table.reset_index(drop=True)


def _first_bad_line(path: Path) -> int:
    """The line of `path` that is not UTF-8 (pandas decodes in blocks and cannot say)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def _ids(table: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """An id column as text; empty ids are an error."""
    values = table[column]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        raise DataError(
            f"{path}: column {column!r} is empty in {int(empty.sum())} rows (first: data row "
            f"{int(empty.idxmax()) + 1}): every row needs a {column} id"
        )
    return values.astype(str).str.strip()


def _timestamps(values: pd.Series, path: Path) -> np.ndarray:
    """Numbers as int64; date-time strings as Unix seconds (UTC)."""
    if values.isna().any():
        raise DataError(
            f"{path}: column 'timestamp' is empty in {int(values.isna().sum())} rows (first: data row "
            f"{int(values.isna().idxmax()) + 1}): every interaction needs a timestamp"
        )
    if pd.api.types.is_bool_dtype(values):
        raise DataError(f"{path}: column 'timestamp' holds true/false values: expected numbers or date-times")
    numbers = pd.to_numeric(values, errors="coerce") if values.dtype == object else values
    if numbers.notna().all():
        values = numbers  # numbers stored as text (e.g. a string column in parquet) are numbers
    elif numbers.notna().sum() * 2 > len(values):
        row = int(numbers.isna().to_numpy().argmax())
        raise DataError(
            f"{path}: column 'timestamp' holds numbers, but data row {row + 1} holds {values.iloc[row]!r}: write "
            "every timestamp as a number (e.g. Unix seconds) or every one as a date-time"
        )
    if pd.api.types.is_numeric_dtype(values):
        fractional = values != np.floor(values)
        if fractional.any():
            raise DataError(
                f"{path}: column 'timestamp' has fractional values (e.g. {values[fractional].iloc[0]}): "
                f"scale them to whole numbers (e.g. milliseconds)"
            )
        return values.to_numpy(dtype=np.int64)
    if not pd.api.types.is_datetime64_any_dtype(values):
        try:
            values = pd.to_datetime(values, utc=True)
        except (ValueError, TypeError) as e:
            bad = pd.to_datetime(values, utc=True, errors="coerce", format=_format_of(values.iloc[0])).isna()
            row = f" (first: data row {int(bad.idxmax()) + 1}, {values[bad].iloc[0]!r})" if bad.any() else ""
            raise DataError(
                f"{path}: column 'timestamp' is neither numbers nor date-times{row} ({e}); write numbers (e.g. "
                f"Unix seconds) or date-times in one format such as 2014-03-08 17:05:00"
            ) from e
    elif values.dt.tz is None:
        values = values.dt.tz_localize("UTC")
    return ((values - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def _format_of(first) -> str:
    """The date-time format pandas reads a column in (the first row's): a row written otherwise is
    the one to name."""
    return guess_datetime_format(str(first)) or "mixed"


def _image_paths(table: pd.DataFrame, item_ids: pd.Series, items_path: Path):
    """Checked image paths (None when absent or undecodable) and their counts."""
    if IMAGE_COLUMN not in table.columns:
        return [None] * len(table), {"missing_images": len(table), "corrupt_images": 0, "extreme_aspect_images": 0}
    base = items_path.resolve().parent
    given = {
        item: [base / Path(value).expanduser()] if isinstance(value, str) and value.strip() else []
        for item, value in zip(item_ids, table[IMAGE_COLUMN])
    }
    named = [paths[0] for paths in given.values() if paths]
    if named and not any(path.exists() for path in named):
        raise DataError(
            f"{items_path}: none of the {len(named)} files in column {IMAGE_COLUMN!r} exists (e.g. "
            f"{named[0]}): relative paths are read from the items file's folder {base}"
        )
    found, counts = check_images(given)
    return [found[item] for item in item_ids], counts
