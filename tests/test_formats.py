"""Exports to MMRec's dataset folder and RecBole's atomic files, read back by each format's own
documented rules (written out here, independently of the writers), and the command line."""

import numpy as np
import pandas as pd
import pytest

from sda_lib.formats import export_format
from sda_lib.formats.__main__ import main
from sda_lib.formats.mmrec import read_mmrec
from sda_lib.method.export import feature_table


@pytest.fixture(scope="module")
def table(toy_tiny):
    rng = np.random.default_rng(3)
    return feature_table(
        rng.normal(size=(toy_tiny.n_items, 12)), rng.normal(size=(toy_tiny.n_items, 20)), toy_tiny, d=8
    )


def mmrec_read(folder, name):
    """MMRec's RecDataset, TrainDataLoader and GeneralRecommender reading rules (enoche/MMRec
    src/utils/dataset.py, dataloader.py, common/abstract_recommender.py)."""
    df = pd.read_csv(folder / f"{name}.inter", usecols=["userID", "itemID", "x_label"], sep="\t")
    item_num, user_num = int(df["itemID"].max()) + 1, int(df["userID"].max()) + 1
    splits = [df[df["x_label"] == i].drop(columns="x_label") for i in range(3)]
    train_users = set(splits[0]["userID"])
    splits[1:] = [s[s["userID"].isin(train_users)] for s in splits[1:]]  # filter_out_cod_start_users
    features = {k: np.load(folder / f"{k}_feat.npy", allow_pickle=True) for k in ("text", "image")}
    return user_num, item_num, splits, features


def test_mmrec_export_reads_back_by_mmrecs_rules(toy_tiny, table, tmp_path):
    folder = export_format("mmrec", toy_tiny, table, tmp_path, name="tt")
    assert folder == tmp_path / "tt"
    users, items, (train, valid, test), features = mmrec_read(folder, "tt")
    n = toy_tiny.n_users
    assert (users, items) == (n, toy_tiny.n_items)
    assert (len(train), len(valid), len(test)) == (len(toy_tiny.interactions) - 2 * n, n, n)
    # one validation and one test item per user: the workbench's leave-one-out targets
    assert valid.sort_values("userID")["itemID"].tolist() == toy_tiny.targets("valid").tolist()
    assert test.sort_values("userID")["itemID"].tolist() == toy_tiny.targets("test").tolist()
    # feature rows in itemID order: the two parts of the recommender-ready table
    d_text, d_image = table.split_dims
    assert features["text"].shape == (items, d_text) and features["image"].shape == (items, d_image)
    assert features["text"].dtype == np.float32
    np.testing.assert_array_equal(features["text"], table.features[:, :d_text])
    np.testing.assert_array_equal(features["image"], table.features[:, d_text:])
    # the id maps give back the workbench's ids
    item_map = pd.read_csv(folder / "i_id_mapping.csv", sep="\t", dtype={"asin": str})
    assert item_map.set_index("itemID")["asin"].loc[np.arange(items)].tolist() == toy_tiny.items["item_id"].tolist()
    assert "inter_file_name: 'tt.inter'" in (folder / "tt.yaml").read_text()


def test_mmrec_export_without_image_part_and_without_features(toy_tiny, table, tmp_path):
    text_only = export_format("mmrec", toy_tiny, table.part("text"), tmp_path / "a")
    assert (text_only / "text_feat.npy").exists() and not (text_only / "image_feat.npy").exists()
    ids_only = export_format("mmrec", toy_tiny, None, tmp_path / "b")
    assert not any(ids_only.glob("*_feat.npy"))
    back = read_mmrec(ids_only)
    assert back.text is None and len(back.interactions) == len(toy_tiny.interactions)


def parse_atomic(path):
    """RecBole's atomic-file rules: tab-separated, header `name:type`; float_seq cells hold floats
    separated by spaces."""
    frame = pd.read_csv(path, sep="\t", dtype=str)
    out = {}
    for column in frame.columns:
        name, kind = column.split(":")
        if kind == "float":
            out[name] = frame[column].astype(float).to_numpy()
        elif kind == "float_seq":
            out[name] = np.array([[float(v) for v in cell.split(" ")] for cell in frame[column]])
        else:
            out[name] = frame[column].to_numpy()
    return out


def test_recbole_export_reads_back_by_recboles_rules(toy_tiny, table, tmp_path):
    folder = export_format("recbole", toy_tiny, table, tmp_path)
    name = toy_tiny.name
    inter = parse_atomic(folder / f"{name}.inter")
    assert len(inter["user_id"]) == len(toy_tiny.interactions)
    # RecBole's LS split in time order: per user, the last row by timestamp is test, the one before valid
    frame = pd.DataFrame(inter).astype({"user_id": int, "item_id": int})
    ordered = frame.sort_values(["user_id", "timestamp"], kind="stable").groupby("user_id")["item_id"]
    assert ordered.nth(-1).tolist() == toy_tiny.targets("test").tolist()
    assert ordered.nth(-2).tolist() == toy_tiny.targets("valid").tolist()
    # benchmark files: the same split written out
    parts = {p: parse_atomic(folder / f"{name}.{p}.inter") for p in ("train", "valid", "test")}
    assert [len(parts[p]["user_id"]) for p in ("valid", "test")] == [toy_tiny.n_users] * 2
    assert sum(len(p["user_id"]) for p in parts.values()) == len(toy_tiny.interactions)
    assert parts["test"]["item_id"].astype(int).tolist() == toy_tiny.targets("test").tolist()
    # item features: float sequences of each part, item tokens in order, float32 values back exactly
    item = parse_atomic(folder / f"{name}.item")
    d_text, _ = table.split_dims
    assert item["item_id"].astype(int).tolist() == list(range(toy_tiny.n_items))
    np.testing.assert_array_equal(item["text_emb"].astype(np.float32), table.features[:, :d_text])
    np.testing.assert_array_equal(item["image_emb"].astype(np.float32), table.features[:, d_text:])
    assert "item: [item_id, text_emb, image_emb]" in (folder / f"{name}.yaml").read_text()


def test_command_line_exports_a_named_table(toy_tiny, table, outputs, tmp_path, capsys):
    table.save(tmp_path / "sda")
    assert (
        main(
            [
                "mmrec",
                "--dataset",
                str(toy_tiny.folder),
                "--features",
                str(tmp_path / "sda"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(tmp_path / "o" / toy_tiny.name)
    assert (
        main(["recbole", "--dataset", str(toy_tiny.folder), "--features", "missing", "--out", str(tmp_path / "o")]) == 2
    )
    assert "holds no feature table" in capsys.readouterr().err


def test_table_of_another_dataset_is_refused(toy_tiny, tmp_path):
    rng = np.random.default_rng(0)
    other = feature_table(rng.normal(size=(toy_tiny.n_items, 4)), rng.normal(size=(toy_tiny.n_items, 4)), toy_tiny, d=4)
    other.manifest["dataset"] = "toy"
    with pytest.raises(ValueError, match="exported for dataset 'toy'"):
        export_format("mmrec", toy_tiny, other, tmp_path)
    assert not (tmp_path / toy_tiny.name).exists()
