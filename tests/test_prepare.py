"""Preparation: duplicates, short users, leave-one-out split, tail flags, negatives, placeholder,
card, atomicity, parameter errors."""

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sda_lib.data import Catalogue, DataError, PrepareParams, default_tail_count_on, load_prepared, prepare_dataset
from sda_lib.data.card import format_card
from sda_lib.data.prepare import leave_one_out, prepare_catalogue, sample_negatives


def catalogue(interactions, n_items=8, **kw):
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(n_items)],
            "title": [f"Item {k}" for k in range(n_items)],
            "image_path": [None] * n_items,
        }
    )
    inter = pd.DataFrame(interactions, columns=["user_id", "item_id", "timestamp"])
    return Catalogue("hand", items, inter, ["title"], **kw)


HAND = [
    # user a: 4 items, with an exact duplicate (a, i1) that must go; file order is not time order
    ("a", "i2", 30),
    ("a", "i0", 10),
    ("a", "i1", 20),
    ("a", "i1", 25),
    ("a", "i3", 40),
    ("b", "i0", 5),
    ("b", "i2", 6),
    ("b", "i4", 7),
    ("c", "i0", 1),
    ("c", "i5", 2),  # too short: dropped
]


def test_prepare_by_hand(tmp_path):
    params = PrepareParams(tail_threshold=2, tail_count_on="train", n_negatives=1)
    card = prepare_catalogue(catalogue(HAND, n_items=6), tmp_path, params)
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
    card = prepare_catalogue(catalogue(HAND, n_items=6), tmp_path, PrepareParams(tail_threshold=2, n_negatives=1))
    # the default for a dataset without its own rule: the authors' count over all data, i.e. the
    # users whose sequence holds the item (a's duplicate i1 counts once): i0 {a,b}, i1 {a}, i2 {a,b}
    assert card["params"]["tail_count_on"] == "all" and card["tail_rule"] == "< 2 interactions over all data"
    assert list(load_prepared(tmp_path).items["is_tail"]) == [False, True, False, True, True]


# six users buy i0, i1, i2, then two of i3, i4, i5 (each pair in both orders): every item has at
# least 4 interactions in all, but i3, i4 and i5 are always a validation or test item, so none in training
ENDINGS = [(3, 4), (4, 3), (3, 5), (5, 3), (4, 5), (5, 4)]
EVERYONE_BUYS_ALL = [
    (f"u{u}", f"i{k}", t) for u, ending in enumerate(ENDINGS) for t, k in enumerate((0, 1, 2, *ending))
]


def test_authors_tail_rule_and_its_empty_tail_are_named(tmp_path):
    (tmp_path / "all").mkdir()
    (tmp_path / "train").mkdir()
    card = prepare_catalogue(
        catalogue(EVERYONE_BUYS_ALL, n_items=6), tmp_path / "all", PrepareParams(tail_count_on="all", n_negatives=1)
    )
    assert card["tail_rule"] == "< 4 interactions over all data (the authors' rule)"
    assert card["tail_items"] == 0 and card["tail_test_share"] == 0
    assert card["tail_note"] == (
        "no tail items under the rule '< 4 interactions over all data (the authors' rule)': every item has at "
        "least 4; use tail_count_on='train' (--tail-count-on train) for a training-count tail"
    )
    assert f"rule: {card['tail_rule']}\n              {card['tail_note']}\n" in format_card(card)

    card = prepare_catalogue(
        catalogue(EVERYONE_BUYS_ALL, n_items=6), tmp_path / "train", PrepareParams(tail_count_on="train", n_negatives=1)
    )
    assert card["tail_rule"] == "< 4 training interactions"
    assert list(load_prepared(tmp_path / "train").items["is_tail"]) == [False, False, False, True, True, True]
    assert card["tail_test_share"] == 1.0 and card["tail_note"] is None


def test_tail_items_that_are_never_a_test_target_are_named(tmp_path):
    # i6 and i7 are tail items under the rule, but every test target (i3, i4 or i5) has 4 interactions
    rows = EVERYONE_BUYS_ALL + [("u0", "i6", -2), ("u1", "i7", -1)]
    card = prepare_catalogue(catalogue(rows, n_items=8), tmp_path, PrepareParams(n_negatives=1))
    assert card["tail_items"] == 2 and card["tail_test_share"] == 0
    assert card["tail_note"] == (
        "no test target is a tail item under the rule '< 4 interactions over all data "
        "(the authors' rule)': the tail metrics are empty"
    )


def test_default_tail_rule_per_dataset():
    assert {
        name: default_tail_count_on(name) for name in ("beauty", "sports", "toys", "custom", "toy", "toy-tiny")
    } == {"beauty": "all", "sports": "all", "toys": "all", "custom": "all", "toy": "train", "toy-tiny": "train"}
    assert PrepareParams().for_dataset("toy").tail_count_on == "train"
    assert PrepareParams().for_dataset("beauty").tail_count_on == "all"
    assert PrepareParams(tail_count_on="train").for_dataset("beauty").tail_count_on == "train"


NOISE_SHA256 = "2c0957690ec5d17edfff1b42046aba70228638339615c034755baab11b7da253"


def test_missing_images_get_the_authors_noise_image_by_default(tmp_path):
    card = prepare_catalogue(catalogue(HAND, n_items=6), tmp_path, PrepareParams(n_negatives=1))
    d = load_prepared(tmp_path)
    assert card["params"]["placeholder"] == "noise" and not d.items["has_image"].any()
    pixels = np.asarray(Image.open(tmp_path / "placeholder.png"))
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    # floor(clip(N(0, 50), 0, 255)): a value is 0 when the draw is below 1, P = Phi(1/50)
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    assert (pixels == 0).mean() == pytest.approx(phi(1 / 50), abs=0.005)
    mean = sum(k * (phi((k + 1) / 50) - phi(k / 50)) for k in range(255)) + 255 * (1 - phi(255 / 50))
    assert pixels.mean() == pytest.approx(mean, abs=0.3)  # about 19.7: a dark image
    # a fixed seed: the same pixels on every machine and in every prepared folder
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == NOISE_SHA256


def test_grey_placeholder_is_an_option(tmp_path):
    card = prepare_catalogue(catalogue(HAND, n_items=6), tmp_path, PrepareParams(n_negatives=1, placeholder="grey"))
    image = Image.open(tmp_path / "placeholder.png")
    assert image.size == (64, 64) and (np.asarray(image) == 128).all()
    assert card["params"]["placeholder"] == "grey"
    assert "images 5 (shown as the grey placeholder)" in format_card(card)


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


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_negatives", 0, "n_negatives must be an integer >= 1, got 0"),
        ("tail_threshold", 2.5, "tail_threshold must be an integer >= 1, got 2.5"),
        ("seed", -1, "seed must be an integer >= 0, got -1"),
        ("tail_count_on", "test", "tail_count_on must be one of train, all, None, got 'test'"),
        ("recipe", "10core", "recipe must be one of 5core, sda, got '10core'"),
        ("placeholder", "black", "placeholder must be one of noise, grey, got 'black'"),
    ],
)
def test_bad_parameters_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        PrepareParams(**{field: value})


@pytest.mark.parametrize(
    "argv",
    [
        ["--n-negatives", "0"],
        ["--tail-threshold", "0"],
        ["--seed", "-1"],
        ["--n-negatives", "many"],
        ["--recipe", "10core"],
    ],
)
def test_cli_bad_parameter_is_a_usage_error(tmp_path, capsys, argv):
    from sda_lib.data.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "toy-tiny", "--out", str(tmp_path / "d"), *argv])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {argv[0]}:" in error and "Traceback" not in error
    assert not (tmp_path / "d").exists()


def test_recipe_sda_is_for_amazon_only(tmp_path, capsys):
    from sda_lib.data.__main__ import main

    assert main(["prepare", "toy-tiny", "--out", str(tmp_path / "d"), "--recipe", "sda"]) == 2
    assert "recipe 'sda' is the SDA authors' filter of the raw Amazon review files" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


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
