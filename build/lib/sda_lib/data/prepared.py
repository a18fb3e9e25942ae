"""Read a prepared dataset folder: the only view of the data that later stages use."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.io import file_sha256, read_json
from ..utils.locks import reading
from .catalogue import DataError

DATA_FILES = ("items.parquet", "interactions.parquet", "users.parquet", "negatives.npy")
FILES = (*DATA_FILES, "card.json")
PLACEHOLDER_NAME = "placeholder.png"  # the image of every item without one
IMAGES_DIR = "images"  # images drawn by the toy generator


def read_card(folder: Path) -> dict | None:
    """The data card of a prepared folder; None when it is missing, unreadable or not a card."""
    card = read_json(folder / "card.json")
    return card if isinstance(card, dict) and {"dataset", "params", "sda_lib"} <= card.keys() else None


def file_sizes(folder: Path) -> dict[str, int]:
    """Sizes of the data files, recorded in the card so a cut or swapped file is noticed."""
    return {name: (folder / name).stat().st_size for name in DATA_FILES}


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of the data files, recorded in the card so a changed byte is noticed too."""
    return {name: file_sha256(folder / name) for name in DATA_FILES}


def damage(folder: Path, card: dict) -> list[str]:
    """What a prepared folder has lost or had changed since it was written ([] when whole), so a
    damaged folder is neither loaded nor reused."""
    recorded = card.get("files", {})  # cards from before sizes were recorded vouch for presence only
    found = []
    for name in DATA_FILES:
        path = folder / name
        if not path.is_file():
            found.append(f"{name} is missing")
        elif name in recorded and path.stat().st_size != recorded[name]:
            found.append(f"{name} has {path.stat().st_size} bytes, {recorded[name]} when prepared")
        elif name in card.get("sha256", {}) and file_sha256(path) != card["sha256"][name]:
            found.append(f"{name} does not match its checksum in card.json (changed or damaged on disk)")
    if found:
        return found
    try:
        items = pd.read_parquet(folder / "items.parquet", columns=["item", "image_path"])
    except Exception as e:  # pyarrow raises several unrelated types on a damaged file
        return [f"items.parquet does not read ({e})"]
    images = items.drop_duplicates("image_path")
    lost = images[[not (folder / path).is_file() for path in images["image_path"]]]
    if len(lost):
        more = f" (and {len(lost) - 1} more images)" if len(lost) > 1 else ""
        found.append(f"image {lost['image_path'].iloc[0]} of item {lost['item'].iloc[0]} is missing{more}")
    return found


def foreign_entries(folder: Path) -> list[str]:
    """Entries of `folder` that no preparation writes: replacing the folder would destroy them."""
    ours = {*FILES, PLACEHOLDER_NAME}
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name == IMAGES_DIR and entry.is_dir() and not entry.is_symlink():
            foreign += [
                f"{IMAGES_DIR}/{e.name}"
                for e in sorted(entry.iterdir())
                if not (e.suffix == ".png" and e.is_file() and not e.is_symlink())
            ]
        elif not (entry.name in ours and entry.is_file() and not entry.is_symlink()):
            foreign.append(entry.name)
    return foreign


@dataclass
class PreparedDataset:
    folder: Path
    card: dict
    items: pd.DataFrame
    interactions: pd.DataFrame
    negatives: np.ndarray  # [users, n_negatives] item indices, never in the user's history

    @classmethod
    def load(cls, folder: str | Path, how_to_prepare: str = "") -> PreparedDataset:
        """The dataset in `folder`; a folder that lost or changed a file is refused, naming the file.
        Reads under the folder's shared lock (sda_lib.utils.locks), waiting for a preparation under way.
        `how_to_prepare` is the command the message suggests when there is no dataset there."""
        folder = Path(folder)
        with reading(folder, "loading a prepared dataset"):
            card = read_card(folder)
            if card is None:
                raise DataError(
                    f"{folder} is not a prepared dataset (missing or unreadable card.json); prepare it with "
                    f"{how_to_prepare or '`python -m sda_lib.data prepare NAME --out ' + str(folder) + '`'} "
                    "or notebooks/01_data.ipynb"
                )
            found = damage(folder, card)
            if found:
                raise DataError(f"{folder} is damaged: {'; '.join(found)}. {_repair(folder, card, found)}")
            return cls(
                folder=folder,
                card=card,
                items=pd.read_parquet(folder / "items.parquet"),
                interactions=pd.read_parquet(folder / "interactions.parquet"),
                negatives=np.load(folder / "negatives.npy"),
            )

    @property
    def checksum(self) -> str:
        """A short hash of what this dataset holds: its data files' SHA-256, its parameters and its
        inputs as the card records them. Work computed from the data (export chunks, adaptation
        checkpoints) records it, so it is never resumed on a folder prepared again from other data."""
        recorded = {k: self.card.get(k) for k in ("sha256", "params", "inputs")}
        if not recorded["sha256"]:  # a card from before digests: its creation time tells preparations apart
            recorded["created"] = self.card.get("created")
        return hashlib.sha256(json.dumps(recorded, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def check_current(self) -> None:
        """Refuse (DataError) this dataset when its folder was prepared again after it was loaded:
        the items, and the images they point to, are no longer the ones loaded."""
        why = self.replaced()
        if why:
            raise DataError(why)

    def replaced(self) -> str | None:
        """Why the folder no longer holds the data loaded from it (it was prepared again since), or
        None when it still does."""
        now = read_card(self.folder)
        if now is None:  # a dataset made in memory (the benchmarks' synthetic items) was never on disk
            return f"{self.folder} no longer holds a prepared dataset" if "created" in self.card else None
        if now.get("sha256") != self.card.get("sha256") or now.get("created") != self.card.get("created"):
            return (
                f"{self.folder} was prepared again (at {now.get('created')}) after this dataset was loaded from it "
                f"(prepared at {self.card.get('created')}); load it again"
            )
        return None

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


def _repair(folder: Path, card: dict, found: list[str]) -> str:
    """What rebuilds a damaged folder: the preparation again, from a source that still exists."""
    command = f"`python -m sda_lib.data prepare {card['dataset']} --out {folder}"
    source = card.get("source", "")
    how = "Prepare it again with {} or notebooks/01_data.ipynb: prepare notices the damage and rebuilds the folder"
    if not Path(source).is_absolute():  # synthetic datasets record a description, not a folder
        return how.format(command + "`")
    if Path(source).is_dir():
        return how.format(command + f" --source {source}` (with its --images or --download-images, if any)")
    images = (
        " Its item images were read from there, and a prepared dataset keeps pointing at them."
        if any(f.startswith("image ") for f in found)
        else ""
    )
    return (
        f"It was prepared from the source folder {source}, which no longer exists.{images} A source folder must "
        f"outlive the datasets prepared from it: put it back at {source}, or prepare again from where it is "
        f"now with {command} --source DIR --force` (with its --images, if any)"
    )
