"""MMRec's published dataset folders as a dataset source and their features as a feature table,
on folders the tests write (and on a workbench export read back)."""

import numpy as np
import pandas as pd
import pytest

from sda_lib.data import DataError, load_prepared, prepare_dataset
from sda_lib.data.mmrec import import_features
from sda_lib.formats import export_format
from sda_lib.method.export import feature_table
from sda_lib.method.features import FeatureTable


def mmrec_folder(root, name="babyx", n_users=6, n_items=9):
    """A folder as MMRec publishes them: .inter with rating and timestamp, features, id maps."""
    folder = root / name
    folder.mkdir(parents=True)
    rows = []
    for u in range(n_users):
        items = [(u + 2 * j) % n_items for j in range(4)]
        for position, item in enumerate(items):
            label = 0 if position < 2 else (1 if position == 2 else 2)
            rows.append((u, item, 5.0, 1000 * u + position, label))
    rows[3], rows[2] = (rows[3][0], rows[3][1], 5.0, rows[3][3], 1), (rows[2][0], rows[2][1], 5.0, rows[2][3], 2)
    pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"]).to_csv(
        folder / f"{name}.inter", sep="\t", index=False
    )
    rng = np.random.default_rng(0)
    np.save(folder / "text_feat.npy", rng.normal(size=(n_items, 5)).astype(np.float32))
    np.save(folder / "image_feat.npy", rng.normal(size=(n_items, 7)).astype(np.float32))
    pd.DataFrame({"asin": [f"B{i:03d}" for i in range(n_items)], "itemID": range(n_items)}).to_csv(
        folder / "i_id_mapping.csv", sep="\t", index=False
    )
    pd.DataFrame({"user_id": [f"A{u}" for u in range(n_users)], "userID": range(n_users)}).to_csv(
        folder / "u_id_mapping.csv", sep="\t", index=False
    )
    return folder


def test_mmrec_folder_prepares_and_its_features_import(tmp_path, outputs):
    folder = mmrec_folder(tmp_path)
    data = load_prepared(prepare_dataset("babyx", folder, kind="mmrec"))
    assert data.card["kind"] == "mmrec" and (data.n_users, data.n_items) == (6, 9)
    assert set(data.items["item_id"]) == {f"B{i:03d}" for i in range(9)}
    assert data.card["counts"]["mmrec_x_label_differs"] == 1  # user 0's test row is not its latest
    table = import_features(data, folder, tmp_path / "mmrec-features")
    back = FeatureTable.load(tmp_path / "mmrec-features", data)
    rows = [int(item[1:]) for item in data.items["item_id"]]
    np.testing.assert_array_equal(back.text, np.load(folder / "text_feat.npy")[rows])
    np.testing.assert_array_equal(back.features[:, 5:], np.load(folder / "image_feat.npy")[rows])
    assert table.split_dims == (5, 7)


def test_workbench_export_reads_back_as_the_same_dataset(toy_tiny, tmp_path, outputs):
    rng = np.random.default_rng(1)
    table = feature_table(rng.normal(size=(toy_tiny.n_items, 6)), rng.normal(size=(toy_tiny.n_items, 6)), toy_tiny, d=4)
    folder = export_format("mmrec", toy_tiny, table, tmp_path / "export")
    again = load_prepared(prepare_dataset("tt-again", folder, kind="mmrec"))
    assert again.card["counts"]["mmrec_x_label_differs"] == 0
    same = (
        again.items["item_id"].to_numpy()[again.interactions["item"]]
        == toy_tiny.items["item_id"].to_numpy()[toy_tiny.interactions["item"]]
    )
    assert same.all() and (again.interactions["split"] == toy_tiny.interactions["split"]).all()
    imported = import_features(again, folder, tmp_path / "f")
    np.testing.assert_array_equal(imported.features, table.features)


def test_folder_without_inter_file_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="expected an MMRec dataset folder holding empty.inter"):
        prepare_dataset("e", tmp_path / "empty", kind="mmrec", out=tmp_path / "out")
