"""User-supplied datasets: CSV and parquet tables in, a checked Catalogue out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sda_lib.data.catalogue import DataError
from sda_lib.data.custom import load_custom

INTERACTIONS = pd.DataFrame(
    {
        "user": ["alice", "bob", "alice", "007"],
        "item": ["i1", "i2", "i2", "i1"],
        "timestamp": [1_400_000_300, 1_400_000_100, 1_400_000_300, 1_400_000_200],
    }
)
ITEMS = pd.DataFrame(
    {
        "item": ["i1", "i2", "i3"],
        "title": ["Red lipstick", "Brush", "Never bought"],
        "price": [9.5, 3.0, 1.25],
        "image_path": ["img/i1.png", "img/i2.jpg", ""],
        "brand": ["Acme", None, "Other"],
    }
)


def write(table: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False) if path.suffix == ".csv" else table.to_parquet(path, index=False)
    return path


def write_images(folder: Path) -> None:
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 90, 200)).save(folder / "img" / "i1.png")
    (folder / "img" / "i2.jpg").write_bytes(b"not really a jpeg")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(tmp_path, suffix):
    data = tmp_path / "data"
    write_images(data)
    catalogue = load_custom(
        write(INTERACTIONS, tmp_path / f"interactions{suffix}"), write(ITEMS, data / f"items{suffix}"), name="shop"
    )
    assert catalogue.name == "shop"
    assert catalogue.text_fields == ["title", "brand"]  # text columns in table order; price is not text
    assert catalogue.items.to_dict("list") == {
        "item_id": ["i1", "i2", "i3"],
        "title": ["Red lipstick", "Brush", "Never bought"],
        "price": [9.5, 3.0, 1.25],
        "brand": ["Acme", "", "Other"],
        # relative to the items file's folder, not the working directory; i2's file does not decode
        "image_path": [str(data.resolve() / "img" / "i1.png"), None, None],
    }
    assert catalogue.interactions.to_dict("list") == {
        "user_id": ["alice", "bob", "alice", "007"],  # "007" stays text in CSV too
        "item_id": ["i1", "i2", "i2", "i1"],
        "timestamp": [1_400_000_300, 1_400_000_100, 1_400_000_300, 1_400_000_200],
    }
    assert catalogue.interactions["timestamp"].dtype == np.int64
    assert catalogue.counts == {
        "missing_images": 2,
        "corrupt_images": 1,
        "extreme_aspect_images": 0,
        "items_without_interactions": 1,
    }


def test_datetime_strings_and_numeric_ids(tmp_path):
    interactions = pd.DataFrame(
        {
            "user": [10, 11],
            "item": [1, 2],
            "timestamp": ["2014-01-02 00:00:00+00:00", "2014-01-01 01:00:00+01:00"],
        }
    )
    catalogue = load_custom(
        write(interactions, tmp_path / "i.csv"), write(pd.DataFrame({"item": [1, 2]}), tmp_path / "items.parquet")
    )
    # 2014-01-01T00:00Z is 1,388,534,400 Unix seconds; the second time is that instant in +01:00
    assert catalogue.interactions["timestamp"].tolist() == [1_388_534_400 + 86_400, 1_388_534_400]
    assert catalogue.interactions["item_id"].tolist() == ["1", "2"]
    assert catalogue.items["image_path"].tolist() == [None, None]
    assert catalogue.text_fields == []
    assert catalogue.counts["missing_images"] == 2
    naive = pd.DataFrame({"user": ["a"], "item": [1], "timestamp": ["2014-01-01 00:00:05"]})
    naive_catalogue = load_custom(write(naive, tmp_path / "naive.csv"), tmp_path / "items.parquet")
    assert naive_catalogue.interactions["timestamp"].tolist() == [1_388_534_405]  # naive times read as UTC


def test_missing_column_names_file_columns_and_schema(tmp_path):
    path = write(INTERACTIONS.rename(columns={"user": "user_name"}), tmp_path / "interactions.csv")
    with pytest.raises(DataError) as error:
        load_custom(path, write(ITEMS.drop(columns="image_path"), tmp_path / "items.csv"))
    message = str(error.value)
    assert "interactions.csv: missing column 'user'" in message
    assert "['user_name', 'item', 'timestamp']" in message
    assert "user, item, timestamp" in message


def test_unknown_items_are_named_and_counted(tmp_path):
    interactions = pd.concat(
        [INTERACTIONS, pd.DataFrame({"user": ["x", "y", "z"], "item": ["i9", "i8", "i9"], "timestamp": [1, 2, 3]})]
    )
    items = write(ITEMS.drop(columns="image_path"), tmp_path / "items.csv")
    with pytest.raises(DataError, match=r"item 'i9' is not in .*items\.csv \(2 interaction items are not\)"):
        load_custom(write(interactions, tmp_path / "interactions.csv"), items)


@pytest.mark.parametrize(
    ("interactions_text", "items_text", "message"),
    [
        ("", "item\ni1\n", r"interactions\.csv: file is empty"),
        ("user,item,timestamp\n", "item\ni1\n", r"interactions\.csv: file is empty"),
        ("user,item,timestamp\na,i1,5\n", "item\ni1\ni1\n", r"items\.csv: item 'i1' has more than one row"),
        ("user,item,timestamp\na,,5\n", "item\ni1\n", r"column 'item' is empty in 1 rows \(first: data row 1\)"),
        ("user,item,timestamp\na,i1,5\nb,i1,\n", "item\ni1\n", r"'timestamp' is empty in 1 rows \(first: data row 2\)"),
        ("user,item,timestamp\na,i1,5.5\n", "item\ni1\n", r"'timestamp' has fractional values \(e\.g\. 5\.5\)"),
        ("user,item,timestamp\na,i1,yesterday\n", "item\ni1\n", r"'timestamp' is neither numbers nor date-times"),
    ],
    ids=["empty-file", "header-only", "duplicate-item", "empty-id", "empty-timestamp", "fractional", "not-a-time"],
)
def test_bad_tables(tmp_path, interactions_text, items_text, message):
    (tmp_path / "interactions.csv").write_text(interactions_text)
    (tmp_path / "items.csv").write_text(items_text)
    with pytest.raises(DataError, match=message):
        load_custom(tmp_path / "interactions.csv", tmp_path / "items.csv")


def test_unknown_extension_and_unreadable_parquet(tmp_path):
    items = write(ITEMS.drop(columns="image_path"), tmp_path / "items.csv")
    (tmp_path / "interactions.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"interactions\.xlsx: unknown file type '\.xlsx': use \.csv or \.parquet"):
        load_custom(tmp_path / "interactions.xlsx", items)
    (tmp_path / "interactions.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"interactions\.parquet: cannot be read as parquet"):
        load_custom(tmp_path / "interactions.parquet", items)
    with pytest.raises(DataError, match=r"nothing\.csv: file not found"):
        load_custom(tmp_path / "nothing.csv", items)


def test_image_paths_that_all_miss_point_at_the_base_folder(tmp_path):
    items = write(ITEMS, tmp_path / "elsewhere" / "items.csv")  # images are not next to it
    with pytest.raises(DataError, match=r"none of the 2 files in column 'image_path' exists.*elsewhere"):
        load_custom(write(INTERACTIONS, tmp_path / "interactions.csv"), items)
