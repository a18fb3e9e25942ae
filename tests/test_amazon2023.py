"""Amazon Reviews 2023: reviews and meta JSONL (gzipped or not), parent_asin items, the largest
image URL, the release's k-core and splits, the authors' recipe; on files the tests write."""

import gzip
import json
import re

import pandas as pd
import pytest

from sda_lib.data import DataError, PrepareParams, load_catalogue, load_prepared, prepare_dataset
from sda_lib.data.amazon2023 import (
    TEST_TIMESTAMP,
    VALID_TIMESTAMP,
    largest_image,
    release_kcore,
    timestamp_split,
)

DAY = 86_400_000  # ms


def write_jsonl(path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


N_USERS, N_ITEMS = 12, 8
NO_META = f"P{N_ITEMS - 1}"


def category_files(folder, gz=False, n_users=N_USERS, n_items=N_ITEMS):
    """A small category: user u reviews 5 or 6 items from item u on, cyclically (so every user and
    item has 5 or more and the 5-core keeps them all), variants of item 0 under one parent, one
    repeated review, one item without meta, HTML in a title."""
    reviews = []
    for u in range(n_users):
        for step, i in enumerate((u + j) % n_items for j in range(5 + u % 2)):
            asin = f"V{i}{u % 2}" if i == 0 else f"P{i}"  # item 0 sold as two variants
            reviews.append(
                {
                    "user_id": f"U{u}",
                    "parent_asin": f"P{i}",
                    "asin": asin,
                    "timestamp": 1_600_000_000_000 + (u * 10 + step) * DAY,
                    "rating": 5.0,
                    "text": "ok",
                }
            )
    reviews.append({**reviews[0], "timestamp": reviews[0]["timestamp"] + DAY})  # the same pair reviewed again
    meta = [
        {
            "parent_asin": f"P{i}",
            "title": "Mug &amp; Saucer" if i == 1 else f"Item {i}",
            "store": f"Store {i % 2}",
            "categories": ["Home & Kitchen", "Kitchen & Dining", "Mugs"],
            "features": ["Holds 350 ml", "Dishwasher safe"],
            "description": ["A sturdy mug."],
            "price": 9.5 if i % 2 else None,
            "images": [
                {"thumb": f"http://x/{i}_t.jpg", "large": f"http://x/{i}_l.jpg", "hi_res": None, "variant": "PT01"},
                {
                    "thumb": f"http://x/{i}_mt.jpg",
                    "large": f"http://x/{i}_ml.jpg",
                    "hi_res": f"http://x/{i}_mh.jpg" if i % 2 else None,
                    "variant": "MAIN",
                },
            ],
        }
        for i in range(n_items - 1)  # the last item has no meta line
    ]
    write_jsonl(folder / "Home_and_Kitchen.jsonl", reviews, gz)
    write_jsonl(folder / "meta_Home_and_Kitchen.jsonl", meta, gz)
    return reviews, meta


def test_items_are_parents_with_text_and_largest_image(tmp_path):
    reviews, _ = category_files(tmp_path, gz=True)
    catalogue = load_catalogue("hk23", tmp_path, kind="amazon2023")
    items = catalogue.items.set_index("item_id")
    assert set(items.index) == {f"P{i}" for i in range(N_ITEMS)}  # variants V0x grouped under P0
    assert items.loc["P1", "title"] == "Mug & Saucer"
    assert items.loc["P1", "categories"] == "Home & Kitchen > Kitchen & Dining > Mugs"
    assert items.loc["P1", "features"] == "Holds 350 ml Dishwasher safe"
    assert items.loc["P1", "price"] == "9.50" and items.loc["P2", "price"] == ""
    assert items.loc["P1", "image_url"] == "http://x/1_mh.jpg"  # MAIN, hi_res
    assert items.loc["P2", "image_url"] == "http://x/2_ml.jpg"  # MAIN has no hi_res: large
    assert items.loc[NO_META, "title"] == "" and pd.isna(items.loc[NO_META, "image_url"])
    assert catalogue.counts["items_without_meta"] == 1 and catalogue.counts["html_unescaped_titles"] == 1
    assert catalogue.counts["duplicate_reviews_dropped"] == 1
    assert len(catalogue.interactions) == len(reviews) - 1


def test_largest_image_prefers_main_then_size():
    assert largest_image(None) is None and largest_image({"images": []}) is None
    assert largest_image({"images": [{"thumb": "t", "large": "l"}]}) == "l"
    assert largest_image({"images": [{"large": "a"}, {"variant": "MAIN", "thumb": "m"}]}) == "m"


def test_release_kcore_repeats_until_stable_and_keeps_earliest():
    rows = [("a", i, t) for t, i in enumerate(["x", "y", "z"])]  # user a: 3 items
    rows += [(u, "x", 10 + k) for k, u in enumerate("bcd")] + [("b", "y", 20), ("c", "y", 21)]
    rows += [("a", "x", 99)]  # repeated review: the earliest (t=0) stays
    reviews = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    two_core, counts = release_kcore(reviews, k=2)
    # z (1 review) goes, then nobody falls below 2: users a, b, c with items x, y; d (x only) goes
    assert sorted(map(tuple, two_core[["user_id", "item_id"]].to_numpy())) == [
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
        ("b", "y"),
        ("c", "x"),
        ("c", "y"),
    ]
    assert two_core.loc[(two_core.user_id == "a") & (two_core.item_id == "x"), "timestamp"].item() == 0
    assert counts == {"duplicate_reviews_dropped": 1, "kcore_removed": 2, "kcore_rounds": 1}
    # a removal that makes another fall below k needs a second round
    chain = pd.DataFrame(
        [("a", "x", 0), ("a", "y", 1), ("b", "y", 2), ("b", "z", 3), ("c", "x", 4), ("c", "y", 5)],
        columns=["user_id", "item_id", "timestamp"],
    )
    kept, counts = release_kcore(chain, k=2)
    assert set(kept["user_id"]) == {"a", "c"} and counts["kcore_rounds"] == 2


def test_timestamp_split_uses_the_release_cut_points():
    labels = timestamp_split([VALID_TIMESTAMP - 1, VALID_TIMESTAMP, TEST_TIMESTAMP - 1, TEST_TIMESTAMP])
    assert labels.tolist() == ["train", "valid", "valid", "test"]


def test_rating_only_file_and_leave_one_out_is_last_out(tmp_path, outputs):
    _, meta = category_files(tmp_path)
    reviews = [json.loads(line) for line in (tmp_path / "Home_and_Kitchen.jsonl").read_text().splitlines()]
    (tmp_path / "Home_and_Kitchen.jsonl").unlink()
    lines = ["user_id,parent_asin,rating,timestamp"]
    kept, _ = release_kcore(
        pd.DataFrame(
            {
                "user_id": [r["user_id"] for r in reviews],
                "item_id": [r["parent_asin"] for r in reviews],
                "timestamp": [r["timestamp"] for r in reviews],
            }
        )
    )
    lines += [f"{u},{i},5.0,{t}" for u, i, t in kept.to_numpy()]
    (tmp_path / "Home_and_Kitchen.csv").write_text("\n".join(lines) + "\n")
    data = load_prepared(prepare_dataset("hk23", tmp_path, kind="amazon2023"))
    # the release's last_out: each user's latest review is the test item, the one before validation
    per_user = kept.sort_values("timestamp", kind="stable").groupby("user_id")["item_id"].agg(list)
    users = pd.read_parquet(data.folder / "users.parquet")["user_id"]
    ids = data.items["item_id"].to_numpy()
    assert ids[data.targets("test")].tolist() == [per_user[u][-1] for u in users]
    assert ids[data.targets("valid")].tolist() == [per_user[u][-2] for u in users]
    with pytest.raises(DataError, match="already filtered"):
        prepare_dataset("hk23b", tmp_path, kind="amazon2023", params=PrepareParams(recipe="sda"))


def test_authors_recipe_drops_items_without_meta(tmp_path):
    category_files(tmp_path)
    catalogue = load_catalogue("hk23", tmp_path, kind="amazon2023", recipe="sda")
    assert NO_META not in set(catalogue.interactions["item_id"]) and NO_META not in set(catalogue.items["item_id"])
    assert catalogue.counts["sda_reviews_read"] == N_USERS * 5 + N_USERS // 2 + 1
    assert catalogue.counts["sda_duplicates_dropped"] == 1


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "found none"),
        ({"meta_A.jsonl": "{}\n", "meta_B.jsonl": "{}\n"}, "several (A, B)"),
        ({"meta_A.jsonl": "{}\n"}, "no A.jsonl or .csv"),
        (
            {"meta_A.jsonl": '{"parent_asin": "p"}\n', "A.jsonl": '{"user_id": "u", "timestamp": 1}\n'},
            "no 'parent_asin' key",
        ),
    ],
)
def test_bad_folders_are_named(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=re.escape(message)):
        load_catalogue("x23", tmp_path, kind="amazon2023")


@pytest.mark.slow
def test_amazon2023_fixture_prepared_through_the_runner(tmp_path, outputs):
    from sda_lib.workbench import run as runner

    source = tmp_path / "source"
    source.mkdir()
    category_files(source, gz=True)
    out = runner.run_stages("hk23", ["data"], params={"kind": "amazon2023", "source": str(source)}, progress=False)
    data = load_prepared("hk23")
    assert data.card["kind"] == "amazon2023" and data.n_users == N_USERS and data.n_items == N_ITEMS
    assert data.card["counts"]["items_without_meta"] == 1
    assert data.text_fields == ["title", "categories", "store", "features", "description", "price"]
    assert json.loads((out / "stages.json").read_text())["data"]["params"]["kind"] == "amazon2023"
