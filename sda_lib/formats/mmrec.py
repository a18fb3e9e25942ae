"""MMRec's dataset folder (enoche/MMRec), written from a prepared dataset and read back.

The folder `<data_path>/<name>/`, as MMRec's preprocessing notebooks write it and its
`utils/dataset.py` and `common/abstract_recommender.py` read it:

    <name>.inter      tab-separated, header `userID itemID timestamp x_label`: one row per
                      interaction, ids 0-based (MMRec sizes its tables as max id + 1), x_label 0 train,
                      1 validation, 2 test
    text_feat.npy     [items, d_t] float32, row i the item with itemID i
    image_feat.npy    [items, d_v] float32, same order (absent when the table has no image part:
                      MMRec then runs on text alone)
    u_id_mapping.csv  tab-separated `user_id userID`: the workbench's user id of each userID
    i_id_mapping.csv  tab-separated `asin itemID`: the workbench's item id of each itemID
    <name>.yaml       the dataset config MMRec looks up as src/configs/dataset/<name>.yaml

userID and itemID are the prepared dataset's user and item indices, and x_label its
leave-one-out split, so MMRec trains and ranks on exactly the workbench's split. The features are
the two parts of the recommender-ready table (`features.npy`), the columns the workbench's VBPR and
SLMRec read. To train there: copy `<name>.yaml` into MMRec's src/configs/dataset/, point
`data_path` (overall.yaml) at the folder above `<name>/`, and run `python main.py -m VBPR -d <name>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..method.features import item_order_checksum
from ..utils.io import atomic_dir, write_json

SPLIT_LABELS = {"train": 0, "valid": 1, "test": 2}  # MMRec's x_label values
USER_MAP, ITEM_MAP = "u_id_mapping.csv", "i_id_mapping.csv"
TEXT_FEATURES, IMAGE_FEATURES = "text_feat.npy", "image_feat.npy"
PROVENANCE = "sda-export.json"  # what was exported from where; MMRec ignores it


def dataset_config(name: str) -> str:
    """MMRec's dataset config for folder `name` (its configs/dataset/baby.yaml with the file name changed)."""
    return (
        "USER_ID_FIELD: userID\n"
        "ITEM_ID_FIELD: itemID\n"
        "TIME_FIELD: timestamp\n"
        "filter_out_cod_start_users: True\n"
        f"inter_file_name: '{name}.inter'\n"
        f"vision_feature_file: '{IMAGE_FEATURES}'\n"
        f"text_feature_file: '{TEXT_FEATURES}'\n"
        "user_graph_dict_file: 'user_graph_dict.npy'\n"
        'field_separator: "\\t"\n'
    )


def write_mmrec(dataset, table, out: Path, name: str) -> Path:
    """`dataset` (a PreparedDataset) and the checked feature table `table` (or None: interactions
    only, for ID models) as MMRec's folder `out/name`, written atomically; returns the folder."""
    from ..recsys.base import content_channels

    inter = dataset.interactions
    channels = content_channels(table)
    folder = Path(out) / name
    with atomic_dir(folder) as tmp:
        frame = pd.DataFrame(
            {
                "userID": inter["user"].to_numpy(np.int64),
                "itemID": inter["item"].to_numpy(np.int64),
                "timestamp": inter["timestamp"].to_numpy(np.int64),
                "x_label": inter["split"].astype(str).map(SPLIT_LABELS).to_numpy(np.int64),
            }
        )
        frame.to_csv(tmp / f"{name}.inter", sep="\t", index=False)
        users = pd.read_parquet(dataset.folder / "users.parquet")
        users.rename(columns={"user": "userID"})[["user_id", "userID"]].to_csv(tmp / USER_MAP, sep="\t", index=False)
        pd.DataFrame({"asin": dataset.items["item_id"], "itemID": dataset.items["item"]}).to_csv(
            tmp / ITEM_MAP, sep="\t", index=False
        )
        for part, file in (("text", TEXT_FEATURES), ("image", IMAGE_FEATURES)):
            if part in channels:
                np.save(tmp / file, np.ascontiguousarray(channels[part], dtype=np.float32))
        (tmp / f"{name}.yaml").write_text(dataset_config(name))
        write_json(tmp / PROVENANCE, provenance("mmrec", dataset, table, list(channels)))
    return folder


def provenance(fmt: str, dataset, table, parts: list[str]) -> dict:
    """What an export holds and where it came from (written beside the files; the tools ignore it)."""
    from .. import __version__

    return {
        "format": fmt,
        "dataset": dataset.name,
        "item_order": item_order_checksum(dataset.items["item_id"]),
        "split": "leave-one-out (the workbench's): x_label 2 each user's last item, 1 the one before",
        "features": None if table is None else {k: table.manifest.get(k) for k in ("name", "extractor", "backbone")},
        "feature_parts": parts,
        "sda_lib": __version__,
    }


@dataclass
class MMRecFolder:
    """An MMRec dataset folder as MMRec reads it."""

    name: str
    interactions: pd.DataFrame  # userID, itemID, x_label (+ timestamp, rating when the file has them)
    n_users: int  # max userID + 1, as MMRec sizes its tables
    n_items: int
    text: np.ndarray | None
    image: np.ndarray | None
    user_ids: pd.Series | None  # the original id of each userID, from u_id_mapping.csv when present
    item_ids: pd.Series | None


def read_mmrec(folder: str | Path, name: str | None = None) -> MMRecFolder:
    """Read `folder` (`.../<name>/`) by MMRec's rules: `<name>.inter` tab-separated with userID,
    itemID and x_label; the feature files in itemID order, each optional but not both absent.
    Raises ValueError naming the file and what is wrong."""
    folder = Path(folder)
    name = name or folder.name
    inter_file = folder / f"{name}.inter"
    if not inter_file.is_file():
        raise ValueError(f"{folder} is not an MMRec dataset folder: {inter_file.name} is missing")
    frame = pd.read_csv(inter_file, sep="\t")
    missing = [c for c in ("userID", "itemID", "x_label") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{inter_file}: no column {missing[0]!r} (columns: {list(frame.columns)}); MMRec needs all three"
        )
    labels = set(frame["x_label"].unique()) - set(SPLIT_LABELS.values())
    if labels:
        raise ValueError(f"{inter_file}: x_label holds {sorted(labels)}; MMRec knows 0 (train), 1 (valid), 2 (test)")
    n_users, n_items = int(frame["userID"].max()) + 1, int(frame["itemID"].max()) + 1
    features = {}
    for part, file in (("text", TEXT_FEATURES), ("image", IMAGE_FEATURES)):
        path = folder / file
        features[part] = np.load(path, allow_pickle=False) if path.is_file() else None
        if features[part] is not None and len(features[part]) != n_items:
            raise ValueError(
                f"{path} has {len(features[part])} rows; {inter_file.name} has {n_items} items (max itemID + 1)"
            )
    maps = {}
    for key, file, column in (("user", USER_MAP, "user_id"), ("item", ITEM_MAP, "asin")):
        path = folder / file
        if path.is_file():
            table = pd.read_csv(path, sep="\t", dtype={column: str})
            maps[key] = table.set_index(table.columns[1])[column].sort_index()
        else:
            maps[key] = None
    return MMRecFolder(name, frame, n_users, n_items, features["text"], features["image"], maps["user"], maps["item"])
