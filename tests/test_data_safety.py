"""`prepare` never destroys what it did not write and never silently reuses a stale or damaged folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from sda_lib.data import DataError, PrepareParams, load_prepared, prepare_dataset
from sda_lib.data.__main__ import main
from sda_lib.data.toy import SIZES, ToySize

SMALL = PrepareParams(n_negatives=1)


def write_shop(folder: Path) -> Path:
    """A custom source: two users, four items, images beside the tables (relative paths)."""
    folder.mkdir(parents=True)
    pd.DataFrame(
        {
            "user": ["a"] * 3 + ["b"] * 3,
            "item": ["i1", "i2", "i3", "i2", "i3", "i4"],
            "timestamp": [1, 2, 3, 1, 2, 3],
        }
    ).to_csv(folder / "interactions.csv", index=False)
    pd.DataFrame(
        {
            "item": ["i1", "i2", "i3", "i4"],
            "title": ["Lipstick", "Brush", "Mirror", "Comb"],
            "image_path": ["i1.png", "i2.png", "", ""],
        }
    ).to_csv(folder / "items.csv", index=False)
    for item in ("i1", "i2"):
        Image.new("RGB", (16, 16), (200, 30, 30)).save(folder / f"{item}.png")
    return folder


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def card_mtime(out: Path) -> int:
    return (out / "card.json").stat().st_mtime_ns


# ---- 1. --out holding anything else is refused, not emptied ----------------------------------------


def test_out_with_other_files_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "thesis"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("x")
    for extra in ([], ["--force"]):
        assert main(["prepare", "toy-tiny", "--out", str(out), *extra]) == 2
        error = capsys.readouterr().err
        assert str(out) in error and "thesis.txt" in error and "sub" in error and "--out" in error
    assert (out / "thesis.txt").read_text() == "x" and (out / "sub").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["thesis"], "a temporary folder was left beside it"


def test_other_files_inside_a_prepared_folder_are_kept(tmp_path):
    out = prepare_dataset("toy-tiny", out=tmp_path / "d")
    (out / "notes.md").write_text("mine")
    with pytest.raises(DataError, match=r"notes\.md"):
        prepare_dataset("toy-tiny", out=out, force=True)
    (out / "notes.md").unlink()
    (out / "images" / "mine.txt").write_text("mine")
    with pytest.raises(DataError, match=r"images/mine\.txt"):
        prepare_dataset("toy-tiny", out=out, force=True)
    assert (out / "images" / "mine.txt").read_text() == "mine"


def test_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "data"
    out.write_text("x")
    with pytest.raises(DataError, match=f"{out} is a file"):
        prepare_dataset("toy-tiny", out=out)
    assert out.read_text() == "x"


def test_empty_folder_and_our_own_folder_are_filled(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    prepare_dataset("toy-tiny", out=out)
    assert load_prepared(out).n_users == 150
    prepare_dataset("toy-tiny", out=out, params=PrepareParams(n_negatives=20))
    assert load_prepared(out).negatives.shape[1] == 20


def test_our_file_names_without_a_card_are_not_taken_for_ours(tmp_path):
    # a custom source's own tables carry the names of prepared files
    source = write_shop(tmp_path / "shop")
    out = tmp_path / "shop-v1"
    out.mkdir()
    for table in ("items", "interactions"):
        pd.read_csv(source / f"{table}.csv").to_parquet(out / f"{table}.parquet")
    before = listing(out)
    with pytest.raises(DataError, match=f"{out} has no data card"):
        prepare_dataset("custom", source, out=out, params=SMALL)
    assert listing(out) == before


# ---- 2. --out on or above an input is refused before anything is touched ---------------------------


@pytest.mark.parametrize("where", ["source", "above-source"])
def test_out_on_or_above_the_source_is_refused(tmp_path, where):
    source = write_shop(tmp_path / "raw" / "shop")
    out = source if where == "source" else tmp_path / "raw"
    before = listing(tmp_path)
    for force in (False, True):
        with pytest.raises(DataError) as error:
            prepare_dataset("custom", source, out=out, params=SMALL, force=force)
        message = str(error.value)
        assert str(source.resolve()) in message and str(out.resolve()) in message
    assert listing(tmp_path) == before


def test_out_on_the_image_folder_is_refused(tmp_path):
    from test_amazon import write_png, write_preprocessed

    folder = write_preprocessed(tmp_path / "beauty", "1 1 4 2\n2 3 4 1\n")
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "B004.png")
    with pytest.raises(DataError, match=f"--images {images.resolve()}"):
        prepare_dataset("beauty", folder, out=images, params=SMALL, images=images)
    assert listing(images) == {"B004.png": (images / "B004.png").read_bytes()}


def test_out_inside_the_source_is_fine(tmp_path):
    source = write_shop(tmp_path / "shop")
    out = prepare_dataset("custom", source, out=source / "prepared", params=SMALL)
    assert load_prepared(out).items["title"].tolist() == ["Lipstick", "Brush", "Mirror", "Comb"]
    stamp = card_mtime(out)
    prepare_dataset("custom", source, out=out, params=SMALL)  # its own folder does not count as a change
    assert card_mtime(out) == stamp


# ---- 3. a folder with a missing or damaged file is neither loaded nor reused -----------------------


def _delete_negatives(out):
    (out / "negatives.npy").unlink()
    return "negatives.npy is missing"


def _cut_items(out):
    path = out / "items.parquet"
    path.write_bytes(path.read_bytes()[:200])
    return "items.parquet has 200 bytes"


def _delete_an_image(out):
    path = out / load_prepared(out).items.query("has_image")["image_path"].iloc[0]
    path.unlink()
    return f"image {path.relative_to(out)} of item "


def _delete_placeholder(out):
    (out / "placeholder.png").unlink()
    return "image placeholder.png of item "


@pytest.mark.parametrize("damage", [_delete_negatives, _cut_items, _delete_an_image, _delete_placeholder])
def test_damaged_folder_is_named_and_prepared_again(tmp_path, capsys, damage):
    out = tmp_path / "d"
    assert main(["prepare", "toy-tiny", "--out", str(out)]) == 0
    expected = load_prepared(out)
    problem = damage(out)
    with pytest.raises(DataError) as error:
        load_prepared(out)
    message = str(error.value)
    assert problem in message and f"python -m sda_lib.data prepare toy-tiny --out {out}" in message
    capsys.readouterr()
    assert main(["prepare", "toy-tiny", "--out", str(out)]) == 0
    assert problem in capsys.readouterr().err  # says why it prepares again
    again = load_prepared(out)
    assert again.items.equals(expected.items) and (again.negatives == expected.negatives).all()


def test_folder_prepared_before_recipe_and_placeholder_existed_is_prepared_again(tmp_path, capsys):
    out = prepare_dataset("toy-tiny", out=tmp_path / "d")
    card = json.loads((out / "card.json").read_text())
    for key in ("recipe", "placeholder"):
        del card["params"][key]
    (out / "card.json").write_text(json.dumps(card))
    capsys.readouterr()
    prepare_dataset("toy-tiny", out=out)
    assert "parameters changed: recipe None -> 5core, placeholder None -> noise" in capsys.readouterr().err
    assert load_prepared(out).card["params"]["placeholder"] == "noise"


def test_dataset_default_tail_rule_is_recorded_and_reused(tmp_path):
    out = prepare_dataset("toy-tiny", out=tmp_path / "d")
    assert load_prepared(out).card["params"]["tail_count_on"] == "train"
    stamp = card_mtime(out)
    prepare_dataset("toy-tiny", out=out, params=PrepareParams(tail_count_on="train"))  # the same rule, spelt out
    assert card_mtime(out) == stamp
    prepare_dataset("toy-tiny", out=out, params=PrepareParams(tail_count_on="all"))
    assert load_prepared(out).card["tail_rule"] == "< 4 interactions over all data (the authors' rule)"


def test_reuse_is_announced_with_the_way_out(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["prepare", "toy-tiny", "--out", str(out)]) == 0
    stamp = card_mtime(out)
    capsys.readouterr()
    assert main(["prepare", "toy-tiny", "--out", str(out)]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert "up to date" in first and "--force" in first and card_mtime(out) == stamp
    assert main(["prepare", "toy-tiny", "--out", str(out), "--force"]) == 0
    assert card_mtime(out) != stamp


# ---- 4. a changed source is prepared again ---------------------------------------------------------


def test_corrected_source_table_is_prepared_again(tmp_path):
    source = write_shop(tmp_path / "shop")
    out = prepare_dataset("custom", source, out=tmp_path / "d", params=SMALL)
    stamp = card_mtime(out)
    prepare_dataset("custom", source, out=out, params=SMALL)
    assert card_mtime(out) == stamp, "an unchanged source was prepared again"
    items = source / "items.csv"
    items.write_text(items.read_text().replace("Brush", "Hair brush"))
    prepare_dataset("custom", source, out=out, params=SMALL)
    assert load_prepared(out).items["title"].tolist() == ["Lipstick", "Hair brush", "Mirror", "Comb"]


def test_replaced_image_is_prepared_again(tmp_path):
    source = write_shop(tmp_path / "shop")
    out = prepare_dataset("custom", source, out=tmp_path / "d", params=SMALL)
    (source / "i2.png").write_text("not an image any more")
    prepare_dataset("custom", source, out=out, params=SMALL)
    assert load_prepared(out).items["has_image"].tolist() == [True, False, False, False]


def test_new_image_in_the_image_folder_is_prepared_again(tmp_path):
    from test_amazon import write_png, write_preprocessed

    folder = write_preprocessed(tmp_path / "beauty", "1 1 4 2\n2 3 4 1\n")
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "B004.png")
    out = prepare_dataset("beauty", folder, out=tmp_path / "d", params=SMALL, images=images)
    assert load_prepared(out).items["has_image"].tolist() == [False, False, False, True]
    write_png(images / "B002.png")
    prepare_dataset("beauty", folder, out=out, params=SMALL, images=images)
    assert load_prepared(out).items["has_image"].tolist() == [False, True, False, True]


def test_changed_toy_generator_is_prepared_again(tmp_path, monkeypatch):
    out = prepare_dataset("toy-tiny", out=tmp_path / "d")
    assert load_prepared(out).n_users == 150
    smaller = ToySize(**{**SIZES["toy-tiny"].__dict__, "n_users": 120})
    monkeypatch.setitem(SIZES, "toy-tiny", smaller)
    prepare_dataset("toy-tiny", out=out)
    assert load_prepared(out).n_users == 120
    assert json.loads((out / "card.json").read_text())["inputs"]["generator"]["n_users"] == 120


# ---------------------------------------------------------------- named datasets of your own


def test_own_dataset_gets_its_own_name_folder_and_remembers_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SDA_OUTPUTS", str(tmp_path / "outputs"))
    shop, other = write_shop(tmp_path / "shop"), write_shop(tmp_path / "other")
    first = prepare_dataset("mystore", shop, params=SMALL, kind="custom")
    second = prepare_dataset("yourstore", other, params=SMALL, kind="custom")
    assert first == tmp_path / "outputs" / "mystore" / "data" != second
    data = load_prepared("mystore")
    assert data.name == "mystore" and data.card["kind"] == "custom"
    assert data.card["source"] == str(shop.resolve())
    # named once, the name alone is enough: kind and source come from the card, and it is reused
    before = (first / "card.json").read_bytes()
    assert prepare_dataset("mystore", params=SMALL) == first
    assert (first / "card.json").read_bytes() == before


@pytest.mark.parametrize(
    "name, kind, message",
    [
        ("../../escape", "custom", "not a plain folder name"),
        ("beauty", "custom", "the name of a registered dataset"),
        ("neverprepared", None, r"prepare custom --name neverprepared --source DIR"),
        ("mystore", "nosuchkind", "unknown dataset 'nosuchkind'"),
    ],
)
def test_bad_dataset_names_are_refused_before_anything_is_written(tmp_path, monkeypatch, name, kind, message):
    monkeypatch.setenv("SDA_OUTPUTS", str(tmp_path / "outputs"))
    with pytest.raises(ValueError, match=message):  # DataError is one
        prepare_dataset(name, write_shop(tmp_path / "shop"), params=SMALL, kind=kind)
    assert not (tmp_path / "outputs").exists()


def test_cli_prepares_a_named_custom_dataset(tmp_path, monkeypatch, capsys):
    from sda_lib.data.__main__ import main

    monkeypatch.setenv("SDA_OUTPUTS", str(tmp_path / "outputs"))
    assert (
        main(
            [
                "prepare",
                "custom",
                "--name",
                "mystore",
                "--source",
                str(write_shop(tmp_path / "shop")),
                "--n-negatives",
                "1",
            ]
        )
        == 0
    )
    assert load_prepared("mystore").card["dataset"] == "mystore"
    assert main(["prepare", "../x", "--n-negatives", "1"]) == 2
    assert "not a plain folder name" in capsys.readouterr().err
