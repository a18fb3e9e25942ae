"""MMRec's published preprocessed datasets (enoche/MMRec data/README.md: Amazon baby, sports,
clothing, elec, ... folders) as a dataset source, and their content features as a feature table.

A folder `<D>/` holds `<D>.inter` (tab-separated userID, itemID, ..., timestamp, x_label),
`text_feat.npy` (Sentence-Transformers text embeddings) and `image_feat.npy` (CNN image features)
in itemID order, and often `i_id_mapping.csv` / `u_id_mapping.csv` (the Amazon asin and reviewer
of each id). Read by MMRec's own rules (sda_lib.formats.mmrec.read_mmrec).

Items are the itemIDs, named by their asin when the item map is there; they have no text or image
in these folders, so they reach recommenders through MMRec's features: `import_features` writes
them as a feature table, the "Base" setting of a results table. The workbench splits the
interactions leave-one-out in time order; MMRec's own x_label (a random per-user split, see its
preprocessing/1splitting.ipynb) is not used, and the card counts where it differs
(`mmrec_x_label_differs`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from sda_lib.data.catalogue import Catalogue, DataError


def inter_file(source: str | os.PathLike) -> Path:
    """The `<folder name>.inter` file of an MMRec folder (or its only .inter file)."""
    folder = Path(source).expanduser()
    named = folder / f"{folder.name}.inter"
    if named.is_file():
        return named
    found = sorted(folder.glob("*.inter"))
    if len(found) == 1:
        return found[0]
    raise DataError(
        f"{folder}: expected an MMRec dataset folder holding {folder.name}.inter (tab-separated userID, itemID, "
        f"x_label), text_feat.npy and image_feat.npy; found {len(found)} .inter files. MMRec's folders: "
        "https://github.com/enoche/MMRec/blob/master/data/README.md"
    )


def _read(source: str | os.PathLike):
    from ..formats.mmrec import read_mmrec

    path = inter_file(source)
    try:
        return read_mmrec(path.parent, path.name.removesuffix(".inter"))
    except ValueError as err:
        raise DataError(str(err)) from err


def _item_ids(folder) -> list[str]:
    if folder.item_ids is not None:
        return [str(folder.item_ids.get(i, i)) for i in range(folder.n_items)]
    return [str(i) for i in range(folder.n_items)]


def load_mmrec(name: str, source: str | os.PathLike) -> Catalogue:
    """The interactions of MMRec folder `source` as a Catalogue (items without text or image)."""
    folder = _read(source)
    frame = folder.interactions
    ids = np.asarray(_item_ids(folder), dtype=object)
    names = folder.user_ids
    user_ids = [str(u) if names is None else str(names.get(u, u)) for u in frame["userID"]]
    # no timestamps: MMRec's split order stands in (train, then validation, then test rows)
    times = frame["timestamp"].to_numpy(np.int64) if "timestamp" in frame else frame["x_label"].to_numpy(np.int64)
    interactions = pd.DataFrame({"user_id": user_ids, "item_id": ids[frame["itemID"].to_numpy()], "timestamp": times})
    return Catalogue(
        name=name,
        items=pd.DataFrame({"item_id": ids, "image_path": pd.Series([None] * len(ids), dtype=object)}),
        interactions=interactions,
        text_fields=[],
        counts={"missing_images": len(ids), "mmrec_x_label_differs": _split_differs(frame, times)},
        source=f"MMRec dataset folder {inter_file(source).parent}",
    )


def _split_differs(frame: pd.DataFrame, times: np.ndarray) -> int:
    """Users whose MMRec test rows are not exactly their latest interaction (leave-one-out in time)."""
    order = np.lexsort((np.arange(len(frame)), times, frame["userID"].to_numpy()))
    ordered = frame.iloc[order]
    last = ordered.groupby("userID", sort=False).tail(1)
    tests = frame[frame["x_label"] == 2].groupby("userID").size()
    same = (last["x_label"].to_numpy() == 2) & (tests.reindex(last["userID"]).to_numpy() == 1)
    return int((~same).sum())


def import_features(dataset, source: str | os.PathLike, out: str | Path):
    """MMRec's text_feat.npy and image_feat.npy of folder `source` as the feature table of the
    prepared `dataset` (a PreparedDataset prepared from that folder), rows in the dataset's item
    order, saved to `out`: raw and recommender-ready parts are the features as MMRec feeds them."""
    from .. import __version__
    from ..method.features import FeatureTable, item_order_checksum

    folder = _read(source)
    if folder.text is None and folder.image is None:
        raise DataError(f"{source}: neither text_feat.npy nor image_feat.npy is there: no features to import")
    position = {item: i for i, item in enumerate(_item_ids(folder))}
    missing = [item for item in dataset.items["item_id"] if item not in position]
    if missing:
        raise DataError(f"{source}: item {missing[0]!r} of dataset {dataset.name!r} is not in this folder's items")
    rows = np.array([position[item] for item in dataset.items["item_id"]])
    parts = {
        k: (v[rows] if v is not None else np.zeros((len(rows), 0))).astype(np.float32)
        for k, v in (("text", folder.text), ("image", folder.image))
    }
    table = FeatureTable(
        text=parts["text"],
        image=parts["image"],
        features=np.concatenate([parts["text"], parts["image"]], axis=1),
        manifest={
            "dataset": dataset.name,
            "item_order": item_order_checksum(dataset.items["item_id"]),
            "n_items": int(dataset.n_items),
            "extractor": "mmrec",
            "name": "mmrec",
            "source": str(Path(source).resolve()),
            "dims": {
                "text": parts["text"].shape[1],
                "image": parts["image"].shape[1],
                "features_text": parts["text"].shape[1],
                "features_image": parts["image"].shape[1],
            },
            "sda_lib": __version__,
        },
    )
    table.save(out)
    return table
