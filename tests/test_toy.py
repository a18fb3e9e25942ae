"""The synthetic toy catalogue: deterministic, well-formed, heavy-tailed, and content predicts behaviour."""

import numpy as np
import pytest
from PIL import Image

from sda_lib.data import DataError, load_prepared, prepare_dataset
from sda_lib.data.toy import COLOURS, SHAPES, generate_toy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_toy("toy-tiny", tmp_path_factory.mktemp("img"), seed=0)


def test_same_seed_same_catalogue(tiny, tmp_path):
    again = generate_toy("toy-tiny", tmp_path, seed=0)
    assert tiny.items.drop(columns="image_path").equals(again.items.drop(columns="image_path"))
    assert tiny.interactions.equals(again.interactions)
    for a, b in zip(tiny.items["image_path"], again.items["image_path"]):
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    other = generate_toy("toy-tiny", tmp_path / "other", seed=1)
    assert not tiny.interactions.equals(other.interactions)


def test_unknown_size():
    with pytest.raises(DataError, match="unknown toy size 'toy-huge'"):
        generate_toy("toy-huge", "/tmp/unused")


def test_contract(tiny):
    items, inter = tiny.items, tiny.interactions
    assert items["item_id"].is_unique and set(tiny.text_fields) <= set(items.columns)
    assert inter["item_id"].isin(items["item_id"]).all()
    assert set(items["item_id"]) == set(inter["item_id"]), "every item is interacted with"
    per_user = inter.groupby("user_id")
    assert per_user.size().min() >= 3
    assert per_user["timestamp"].apply(lambda t: bool(np.all(np.diff(t.to_numpy()) > 0))).all()
    assert items["image_path"].isna().sum() > 0 and (items["title"] == "").sum() > 0  # noise exists


def test_heavy_tail_and_tail_items(tmp_path):
    data = load_prepared(prepare_dataset("toy", out=tmp_path / "toy"))
    pop = np.sort(data.items["popularity_all"].to_numpy())[::-1]
    assert pop[: len(pop) // 10].sum() / pop.sum() > 0.4, "top 10% of items should hold a large share"
    assert 0.2 <= data.items["is_tail"].mean() <= 0.5
    assert data.n_items == 700 and data.n_users == 1500


def test_content_predicts_behaviour(tiny):
    """A user's last item shares its category and its colour with their earlier items far more
    often than a random item does."""
    items = tiny.items.set_index("item_id")
    rng = np.random.default_rng(0)
    agreement = {"next": [], "random": []}
    for _, seq in tiny.interactions.groupby("user_id")["item_id"]:
        history = items.loc[list(seq)[:-1]]
        for kind, target in (("next", list(seq)[-1]), ("random", items.index[rng.integers(len(items))])):
            row = items.loc[target]
            agreement[kind].append(((history["latent_category"] == row["latent_category"]).mean()
                                    + (history["latent_colour"] == row["latent_colour"]).mean()) / 2)
    assert np.mean(agreement["next"]) > 1.5 * np.mean(agreement["random"])


def test_image_only_attributes_are_in_pixels_not_text(tiny):
    items = tiny.items[tiny.items["image_path"].notna()]
    text = (items["title"] + " " + items["description"]).str.lower()
    assert not any(text.str.contains(shape).any() for shape in SHAPES if shape != "square")
    palette = np.array(list(COLOURS.values()), dtype=float)
    names = list(COLOURS)
    right = 0
    for _, row in items.iterrows():
        pixels = np.asarray(Image.open(row["image_path"]).convert("RGB"), dtype=float).reshape(-1, 3)
        # the most common palette colour among saturated pixels is the item's colour
        saturated = pixels[pixels.max(1) - pixels.min(1) > 60]
        nearest = np.argmin(((saturated[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
        right += names[np.bincount(nearest, minlength=len(names)).argmax()] == row["latent_colour"]
    assert right / len(items) > 0.8
