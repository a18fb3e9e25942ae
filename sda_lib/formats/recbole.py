"""RecBole's atomic files (recbole.io, "Atomic Files"), written from a prepared dataset.

Every file is tab-separated with a header of `name:type` fields (token, float, float_seq: floats
separated by spaces). The folder `<data_path>/<name>/` holds:

    <name>.inter                 user_id:token, item_id:token, timestamp:float: every interaction,
                                 the timestamp being the position in the user's sequence, so
                                 RecBole's leave-one-out in time order (`eval_args: {split: {LS:
                                 valid_and_test}, order: TO}`) gives the workbench's split exactly
    <name>.train.inter, .valid.inter, .test.inter
                                 the same rows split as the workbench splits them, for
                                 `benchmark_filename: [train, valid, test]` (general recommenders,
                                 which split randomly otherwise)
    <name>.item                  item_id:token, text_emb:float_seq, image_emb:float_seq: the two
                                 parts of the recommender-ready table, the form RecBole's
                                 feature-aware models read (`load_col: {item: [item_id, text_emb,
                                 image_emb]}`, e.g. FDSA's `selected_features`)
    <name>.yaml                  the config keys that load them (no extra filtering)

Ids are the workbench's user and item indices written as tokens; RecBole re-numbers tokens from 1,
which changes no ranking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.io import atomic_dir, write_json
from .mmrec import PROVENANCE, provenance

INTER_HEADER = ("user_id:token", "item_id:token", "timestamp:float")
SPLITS = ("train", "valid", "test")
FLOAT_DIGITS = 9  # float32 survives the text round trip at 9 significant digits


def positions(offsets: np.ndarray) -> np.ndarray:
    """Each interaction's position in its user's sequence, from the users' row offsets."""
    lengths = np.diff(offsets)
    return np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)


def inter_frame(dataset) -> pd.DataFrame:
    """The interactions as RecBole's .inter columns (position in the sequence as timestamp)."""
    inter = dataset.interactions
    return pd.DataFrame(
        {
            INTER_HEADER[0]: inter["user"].to_numpy(),
            INTER_HEADER[1]: inter["item"].to_numpy(),
            INTER_HEADER[2]: positions(np.asarray(dataset.user_offsets)),
        }
    )


def write_inter(dataset, path: Path) -> None:
    """The sequences as one RecBole .inter file at `path` (not atomic: for a caller's own folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    inter_frame(dataset).to_csv(path, sep="\t", index=False)


def float_seq(rows: np.ndarray) -> list[str]:
    """Rows of floats as RecBole float_seq cells (space-separated)."""
    return [" ".join(f"{v:.{FLOAT_DIGITS}g}" for v in row) for row in np.asarray(rows, dtype=np.float32)]


def config(name: str, parts: list[str]) -> str:
    item_cols = ", ".join(["item_id", *(f"{p}_emb" for p in parts)])
    return (
        "USER_ID_FIELD: user_id\n"
        "ITEM_ID_FIELD: item_id\n"
        "TIME_FIELD: timestamp\n"
        "load_col:\n"
        "  inter: [user_id, item_id, timestamp]\n"
        + (f"  item: [{item_cols}]\n" if parts else "")
        + "user_inter_num_interval: '[0,inf)'\n"
        "item_inter_num_interval: '[0,inf)'\n"
        "# sequential models: leave-one-out in time order gives the workbench's split\n"
        "eval_args: {split: {LS: valid_and_test}, order: TO, mode: full, group_by: user}\n"
        "# general models: read the split as written instead\n"
        "# benchmark_filename: [train, valid, test]\n"
    )


def write_recbole(dataset, table, out: Path, name: str) -> Path:
    """`dataset` and the checked feature table `table` (or None) as RecBole's atomic files in
    `out/name`, written atomically; returns the folder."""
    from ..recsys.base import content_channels

    channels = content_channels(table)
    folder = Path(out) / name
    frame = inter_frame(dataset)
    split = dataset.interactions["split"].astype(str).to_numpy()
    with atomic_dir(folder) as tmp:
        frame.to_csv(tmp / f"{name}.inter", sep="\t", index=False)
        for part in SPLITS:
            frame[split == part].to_csv(tmp / f"{name}.{part}.inter", sep="\t", index=False)
        if channels:
            item = pd.DataFrame({"item_id:token": dataset.items["item"].to_numpy()})
            for part, rows in channels.items():
                item[f"{part}_emb:float_seq"] = float_seq(rows)
            item.to_csv(tmp / f"{name}.item", sep="\t", index=False)
        (tmp / f"{name}.yaml").write_text(config(name, list(channels)))
        write_json(tmp / PROVENANCE, provenance("recbole", dataset, table, list(channels)))
    return folder
