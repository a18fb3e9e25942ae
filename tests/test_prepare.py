"""Preparation: duplicates, short users, leave-one-out split, tail flags, negatives, card, atomicity."""

import json

import numpy as np
import pandas as pd
import pytest

from sda_lib.data import Catalogue, DataError, PrepareParams, load_prepared, prepare_dataset
from sda_lib.data.prepare import leave_one_out, prepare_catalogue, sample_negatives


def catalogue(interactions, n_items=8, **kw):
    items = pd.DataFrame({
        "item_id": [f"i{k}" for k in range(n_items)],
        "title": [f"Item {k}" for k in range(n_items)],
        "image_path": [None] * n_items,
    })
    inter = pd.DataFrame(interactions, columns=["user_id", "item_id", "timestamp"])
    return Catalogue("hand", items, inter, ["title"], **kw)


HAND = [
    # user a: 4 items, with an exact duplicate (a, i1) that must go; file order is not time order
    ("a", "i2", 30), ("a", "i0", 10), ("a", "i1", 20), ("a", "i1", 25), ("a", "i3", 40),
    ("b", "i0", 5), ("b", "i2", 6), ("b", "i4", 7),
    ("c", "i0", 1), ("c", "i5", 2),  # too short: dropped
]


def test_prepare_by_hand(tmp_path):
    card = prepare_catalogue(catalogue(HAND, n_items=6), tmp_path, PrepareParams(tail_threshold=2, n_negatives=1))
    d = load_prepared(tmp_path)
    # item i5 was only used by the dropped user: it is dropped too
    assert list(d.items["item_id"]) == ["i0", "i1", "i2", "i3", "i4"]
    assert card["counts"]["duplicate_interactions_dropped"] == 1
    assert card["counts"]["users_dropped_short"] == 1
    assert card["counts"]["items_without_interactions"] == 1
    assert (card["users"], card["items"], card["interactions"]) == (2, 5, 7)
    assert card["density"] == pytest.approx(7 / 10)
    # time order a: i0 i1 i2 i3 -> train i0 i1, valid i2, test i3; b: i0 | i2 | i4
    assert [list(s) for s in d.sequences("train")] == [[0, 1], [0]]
    assert list(d.targets("valid")) == [2, 2] and list(d.targets("test")) == [3, 4]
    assert [list(s) for s in d.sequences("test")] == [[0, 1, 2, 3], [0, 2, 4]]
    # training counts: i0 2, i1 1, i2..i4 0 -> tail (< 2) all but i0
    assert list(d.items["popularity"]) == [2, 1, 0, 0, 0]
    assert list(d.items["popularity_all"]) == [2, 1, 2, 1, 1]
    assert list(d.items["is_tail"]) == [False, True, True, True, True]
    assert card["tail_test_share"] == 1.0
    # no image anywhere: all point at the placeholder, which exists
    assert card["missing_images"] == 5 and all(p.exists() for p in d.image_paths())


def test_tail_counted_on_all(tmp_path):
    prepare_catalogue(catalogue(HAND, n_items=6), tmp_path, PrepareParams(tail_threshold=2, tail_count_on="all",
                                                                  n_negatives=1))
    assert list(load_prepared(tmp_path).items["is_tail"]) == [False, True, False, True, True]


def test_leave_one_out_labels():
    labels = leave_one_out(np.array([0, 0, 0, 1, 1, 1, 1]))
    assert list(labels) == ["train", "valid", "test", "train", "train", "valid", "test"]


def test_negatives_avoid_history_and_are_seeded():
    rng = np.random.default_rng(1)
    n_users, n_items = 300, 50
    users = np.repeat(np.arange(n_users), 20)
    items = np.concatenate([rng.choice(n_items, 20, replace=False) for _ in range(n_users)])
    params = PrepareParams(n_negatives=25, seed=7)
    neg = sample_negatives(users, items, n_users, n_items, params)
    assert neg.shape == (n_users, 25)
    for u in range(n_users):
        hist = set(items[users == u])
        assert not hist & set(neg[u]), "a negative was taken from the user's history"
        assert len(set(neg[u])) == 25, "negatives repeat within a user"
    assert np.array_equal(neg, sample_negatives(users, items, n_users, n_items, params))
    other = sample_negatives(users, items, n_users, n_items, PrepareParams(n_negatives=25, seed=8))
    assert not np.array_equal(neg, other)
    # uniform over the complement: every item drawn about equally often overall
    counts = np.bincount(neg.ravel(), minlength=n_items)
    expected = 25 * n_users / n_items
    assert counts.min() > 0.6 * expected and counts.max() < 1.4 * expected


def test_negatives_capped_when_catalogue_small():
    users, items = np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 2, 3, 4, 5])
    with pytest.warns(UserWarning, match="reduced from 100 to 3"):
        neg = sample_negatives(users, items, 2, 6, PrepareParams(n_negatives=100))
    assert sorted(neg[0]) == [3, 4, 5] and sorted(neg[1]) == [0, 1, 2]


def test_unknown_item_is_named(tmp_path):
    bad = HAND + [("b", "ghost", 9)]
    with pytest.raises(DataError, match="ghost"):
        prepare_catalogue(catalogue(bad, n_items=6), tmp_path)


def test_wrong_column_is_named(tmp_path):
    cat = catalogue(HAND, n_items=6)
    cat.interactions = cat.interactions.rename(columns={"timestamp": "time"})
    with pytest.raises(DataError, match=r"lacks column\(s\) \['timestamp'\]"):
        prepare_catalogue(cat, tmp_path)


def test_interrupted_prepare_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "data"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("sda_lib.data.prepare.sample_negatives", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("toy-tiny", out=out)
    assert list(tmp_path.iterdir()) == [], "an interrupted run left files behind"


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'beuty'"):
        prepare_dataset("beuty", out=tmp_path / "x")


def test_prepare_cli_prints_card(tmp_path, capsys):
    from sda_lib.data.__main__ import main

    assert main(["prepare", "toy-tiny", "--out", str(tmp_path / "d")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    card = json.loads(last)
    assert {"users", "items", "interactions"} <= card.keys()
    d = load_prepared(tmp_path / "d")
    assert card["interactions"] == len(d.interactions) and card["items"] == len(d.items)
    # a second run with the same parameters reuses the folder
    mtime = (tmp_path / "d" / "card.json").stat().st_mtime_ns
    assert main(["prepare", "toy-tiny", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "card.json").stat().st_mtime_ns == mtime
