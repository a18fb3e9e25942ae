"""Item feature tables: the hand-over from an extractor (LVLM zero-shot, SDA, CLIP, ...) to the
recommenders.

A table is a folder holding `text.npy` and `image.npy` (raw per-modality embeddings, item order),
`features.npy` (the recommender-ready table, text part then image part) and `manifest.json`. The
manifest pins the dataset and its item order, so a table can never be joined to the wrong items.
`FeatureTable.part("text")` (or "image") is a view of one part, e.g. to train a recommender on the
text half of the SDA features alone; `FeatureTable.with_part("image", other)` takes one part from
another table of the same items (the paper's Figure 3 replaces one modality's features this way).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..utils.choices import check_choice
from ..utils.io import atomic_dir, file_sha256, write_json

Modality = Literal["text", "image"]
PARTS = get_args(Modality)  # the parts of `features`, one per modality, in column order
ARRAYS = ("text", "image", "features")  # the .npy files of a table


class FeatureError(ValueError):
    """A feature table that does not fit the dataset it is used with."""


def item_order_checksum(item_ids) -> str:
    """Short hash of the item id order, stored in manifests and checked on load."""
    return hashlib.sha256("\n".join(map(str, item_ids)).encode()).hexdigest()[:16]


def check_comparable(manifests: dict[str, dict]) -> None:
    """Refuse (FeatureError) feature tables that cannot be compared or mixed, from their manifests
    ({label: manifest}): tables of other datasets or item orders, or LVLM tables (zero-shot and
    adapted: the manifests naming a `backbone`) embedded by different backbones. The message names
    both tables and what they differ in."""
    for key, what in (("dataset", "dataset"), ("item_order", "item order"), ("backbone", "backbone")):
        seen = {label: m[key] for label, m in manifests.items() if m.get(key)}
        first = next(iter(seen.items()), None)
        other = next(((label, value) for label, value in seen.items() if value != first[1]), None)
        if other is not None:
            hint = (
                "embed both with one backbone: rerun 02_zero_shot, 03_adapt and 04_export with the same backbone "
                "(the runner's -p backbone=NAME sets it for every stage)"
                if key == "backbone"
                else "export both for the dataset as it is prepared now"
            )
            raise FeatureError(
                f"the {first[0]!r} features come from {what} {first[1]!r} but the {other[0]!r} features from "
                f"{what} {other[1]!r}: they cannot be compared; {hint}"
            )


def load_tables(folders: dict[str, str | Path], dataset=None) -> dict[str, FeatureTable]:
    """{label: table} from {label: folder}, each checked against `dataset` (FeatureTable.load) and
    all against each other (check_comparable): e.g. zero-shot and adapted tables of one backbone."""
    tables = {label: FeatureTable.load(folder, dataset) for label, folder in folders.items()}
    check_comparable({label: table.manifest for label, table in tables.items()})
    return tables


@dataclass
class FeatureTable:
    text: np.ndarray  # [items, d_t] raw text-modality embeddings
    image: np.ndarray  # [items, d_v] raw image-modality embeddings
    features: np.ndarray  # [items, d_t' + d_v'] recommender-ready (e.g. per-modality PCA, concatenated)
    manifest: dict = field(default_factory=dict)  # dataset, item_order, extractor, dims, parameters

    @property
    def split_dims(self) -> tuple[int, int]:
        """Widths of the text and image parts of `features` (VBPR and SLMRec use them as channels)."""
        d = self.manifest["dims"]
        return d["features_text"], d["features_image"]

    def part(self, *names: Modality) -> FeatureTable:
        """A view holding only the named parts ("text", "image") of the table: `features` keeps
        those columns, the raw modality left out becomes [items, 0], and the manifest records the
        parts (`parts`) and the new widths, so the view still checks against its dataset.

        E.g. `table.part("text")` is the text-only half of the SDA features (paper Figure 3)."""
        names = tuple(dict.fromkeys(names))
        if not names:
            raise ValueError(f"part needs at least one of {', '.join(PARTS)}")
        for name in names:
            check_choice(name, Modality, "part")
        d_text, d_image = self.split_dims
        if d_text + d_image != self.features.shape[1]:
            raise FeatureError(
                f"feature table for {self.manifest.get('dataset')!r}: manifest dims say {d_text} "
                f"text + {d_image} image columns, features.npy has {self.features.shape[1]}; "
                "export the table again"
            )
        widths = {"text": d_text, "image": d_image}
        empty = [n for n in names if widths[n] == 0]
        if empty:
            raise FeatureError(
                f"feature table for {self.manifest.get('dataset')!r} has no {empty[0]} part "
                f"(width 0); choose from the parts it has"
            )
        columns = {"text": self.features[:, :d_text], "image": self.features[:, d_text : d_text + d_image]}
        n = self.features.shape[0]
        raw = {k: getattr(self, k) if k in names else np.zeros((n, 0), dtype=np.float32) for k in PARTS}
        dims = {
            **self.manifest.get("dims", {}),
            **{k: int(raw[k].shape[1]) for k in PARTS},
            **{f"features_{k}": widths[k] if k in names else 0 for k in PARTS},
        }
        manifest = {**self.manifest, "dims": dims, "parts": [k for k in PARTS if k in names]}
        features = np.concatenate([columns[k] for k in PARTS if k in names], axis=1)
        return FeatureTable(text=raw["text"], image=raw["image"], features=features, manifest=manifest)

    def with_part(self, name: Modality, other: FeatureTable) -> FeatureTable:
        """This table with its `name` part ("text" or "image"), raw and recommender-ready, taken
        from `other`, a table of the same dataset and item order: e.g. `sda.with_part("image",
        base)` is SDA's text beside the Base image features. The manifest records each part's
        source (`parts_from`: {part: extractor})."""
        check_choice(name, Modality, "part")
        for key in ("dataset", "item_order"):
            if self.manifest.get(key) != other.manifest.get(key):
                raise FeatureError(
                    f"cannot take the {name} part from a table of another {key.replace('_', ' ')} "
                    f"({other.manifest.get(key)!r}, this table: {self.manifest.get(key)!r}); "
                    "export both for one dataset"
                )
        tables = {part: other if part == name else self for part in PARTS}
        columns = {part: dict(zip(PARTS, t.split_dims)) for part, t in tables.items()}
        start = {part: 0 if part == "text" else columns[part]["text"] for part in PARTS}
        features = np.concatenate([tables[p].features[:, start[p] : start[p] + columns[p][p]] for p in PARTS], axis=1)
        sources = {p: str(t.manifest.get("extractor") or t.manifest.get("name")) for p, t in tables.items()}
        dims = {
            **{p: int(getattr(tables[p], p).shape[1]) for p in PARTS},
            **{f"features_{p}": columns[p][p] for p in PARTS},
        }
        manifest = {
            **{k: v for k, v in self.manifest.items() if k not in ("parts", "sha256")},
            "extractor": " + ".join(f"{sources[p]} {p}" for p in PARTS),
            "parts_from": sources,
            "dims": dims,
        }
        return FeatureTable(text=tables["text"].text, image=tables["image"].image, features=features, manifest=manifest)

    def save(self, folder: str | Path) -> Path:
        """Write the table atomically, the manifest recording each array file's SHA-256."""
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            for name in ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(self, name).astype(np.float32))
            digests = {f"{name}.npy": file_sha256(tmp / f"{name}.npy") for name in ARRAYS}
            write_json(tmp / "manifest.json", {**self.manifest, "sha256": digests})
        return folder

    @staticmethod
    def read_manifest(folder: str | Path) -> dict:
        """The manifest of the table in `folder`, without its arrays (to check tables before use)."""
        folder = Path(folder)
        if not (folder / "manifest.json").exists():
            raise FeatureError(f"{folder} holds no feature table (manifest.json missing); export one first")
        return json.loads((folder / "manifest.json").read_text())

    @classmethod
    def load(cls, folder: str | Path, dataset=None) -> FeatureTable:
        """Load and, given a PreparedDataset, check rows, item order and finiteness against it."""
        folder = Path(folder)
        manifest = cls.read_manifest(folder)
        for file, digest in manifest.pop("sha256", {}).items():  # tables from before digests: unchecked
            if file_sha256(folder / file) != digest:
                raise FeatureError(
                    f"{folder / file} does not match its checksum in {folder / 'manifest.json'}: the file "
                    "is damaged; export the table again"
                )
        arrays = {n: np.load(folder / f"{n}.npy") for n in ARRAYS}
        table = cls(**arrays, manifest=manifest)
        table.check_dims(str(folder))
        if dataset is not None:
            table.check(dataset, where=str(folder))
        return table

    def check_dims(self, where: str = "feature table") -> None:
        """The manifest's widths against the arrays (a hand-edited manifest would feed a
        recommender's text and image channels the wrong columns)."""
        d = self.manifest.get("dims", {})
        actual = {
            "text": self.text.shape[1],
            "image": self.image.shape[1],
            "features_text + features_image": self.features.shape[1],
        }
        said = {
            "text": d.get("text"),
            "image": d.get("image"),
            "features_text + features_image": (d.get("features_text") or 0) + (d.get("features_image") or 0),
        }
        wrong = {k: (said[k], actual[k]) for k in actual if said[k] != actual[k]}
        if wrong:
            raise FeatureError(
                f"{where}: the manifest's dims do not fit its arrays ({wrong}, manifest vs arrays); "
                "the manifest was edited or the table is damaged: export the table again"
            )

    def check(self, dataset, where: str = "feature table") -> None:
        n = dataset.n_items
        if self.manifest.get("dataset") != dataset.name:
            raise FeatureError(
                f"{where} was exported for dataset {self.manifest.get('dataset')!r}, "
                f"not {dataset.name!r}; export features for {dataset.name!r}"
            )
        if self.manifest.get("item_order") != item_order_checksum(dataset.items["item_id"]):
            raise FeatureError(
                f"{where}: item order differs from the prepared {dataset.name!r} items "
                "(the dataset was prepared again); export the features again"
            )
        for name in ("text", "image", "features"):
            arr = getattr(self, name)
            if arr.shape[0] != n:
                raise FeatureError(f"{where}: {name}.npy has {arr.shape[0]} rows, the dataset has {n} items")
            bad = ~np.isfinite(arr).all(axis=1)
            if bad.any():
                raise FeatureError(
                    f"{where}: {name}.npy has non-finite values in {int(bad.sum())} rows, "
                    f"first item {int(np.flatnonzero(bad)[0])}"
                )
