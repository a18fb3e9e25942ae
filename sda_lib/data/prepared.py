"""Read a prepared dataset folder: the only view of the data that later stages use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .catalogue import DataError

FILES = ("items.parquet", "interactions.parquet", "users.parquet", "negatives.npy", "card.json")


@dataclass
class PreparedDataset:
    folder: Path
    card: dict
    items: pd.DataFrame
    interactions: pd.DataFrame
    negatives: np.ndarray  # [users, n_negatives] item indices, never in the user's history

    @classmethod
    def load(cls, folder: str | Path) -> PreparedDataset:
        folder = Path(folder)
        missing = [f for f in FILES if not (folder / f).exists()]
        if missing:
            raise DataError(
                f"{folder} is not a prepared dataset (missing {', '.join(missing)}); prepare it with "
                f"`python -m sda_lib.data prepare {folder.parent.name}` or notebooks/01_data.ipynb"
            )
        return cls(
            folder=folder,
            card=json.loads((folder / "card.json").read_text()),
            items=pd.read_parquet(folder / "items.parquet"),
            interactions=pd.read_parquet(folder / "interactions.parquet"),
            negatives=np.load(folder / "negatives.npy"),
        )

    @property
    def name(self) -> str:
        return self.card["dataset"]

    @property
    def n_users(self) -> int:
        return self.card["users"]

    @property
    def n_items(self) -> int:
        return self.card["items"]

    @property
    def text_fields(self) -> list[str]:
        return self.card["text_fields"]

    @cached_property
    def user_offsets(self) -> np.ndarray:
        """Row offsets of each user's time-ordered interactions: user u is rows [o[u], o[u+1])."""
        return np.searchsorted(self.interactions["user"].to_numpy(), np.arange(self.n_users + 1))

    def sequences(self, upto: str = "train") -> list[np.ndarray]:
        """Each user's items in time order, up to and including split `upto` (train, valid, test)."""
        keep = {"train": 2, "valid": 1, "test": 0}[upto]
        items, off = self.interactions["item"].to_numpy(), self.user_offsets
        return [items[off[u] : off[u + 1] - keep] for u in range(self.n_users)]

    def targets(self, split: str) -> np.ndarray:
        """The held-out item of every user for split "valid" or "test"."""
        shift = {"valid": 2, "test": 1}[split]
        return self.interactions["item"].to_numpy()[self.user_offsets[1:] - shift]

    def image_paths(self) -> list[Path]:
        """Absolute image paths in item order (placeholder for items without an image)."""
        return [p if p.is_absolute() else self.folder / p for p in map(Path, self.items["image_path"])]

    def item_fields(self) -> list[dict[str, str]]:
        """Each item's text fields as a dict, in item order (the input of the text prompt)."""
        return self.items[self.text_fields].fillna("").astype(str).to_dict("records")
