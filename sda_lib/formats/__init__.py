"""What SDA produces, in the formats the field's own tools read, registered by name:

    mmrec    an MMRec dataset folder (enoche/MMRec): `<name>.inter`, `text_feat.npy`,
             `image_feat.npy`, the id maps and a dataset config (sda_lib.formats.mmrec)
    recbole  RecBole atomic files: `<name>.inter`, the split as benchmark files, the item
             features as a `.item` file of float sequences (sda_lib.formats.recbole)

Both carry the workbench's exact leave-one-out split and the feature table's text and image parts,
the columns the workbench's own VBPR and SLMRec read, so a model there trains on the same data:

    python -m sda_lib.formats mmrec --dataset toy --features sda

A new format is a function (dataset, table or None, out folder, name) -> folder, registered in
FORMATS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..method.features import FeatureTable
from ..utils.registry import Registry
from . import mmrec, recbole

Writer = Callable[..., Path]
FORMATS: Registry[Writer] = Registry("export format")
FORMATS.register("mmrec", mmrec.write_mmrec)
FORMATS.register("recbole", recbole.write_recbole)

__all__ = ["FORMATS", "export_format", "feature_folder"]


def feature_folder(dataset: str, features: str, run: str = "default") -> Path:
    """Where the runner keeps feature table `features` of `dataset` (outputs/<dataset>/<run>/embeddings/<name>)."""
    from ..utils.paths import run_dir

    return run_dir(dataset, run) / "embeddings" / features


def export_format(
    fmt: str,
    dataset,
    features: FeatureTable | str | Path | None,
    out: str | Path,
    name: str | None = None,
) -> Path:
    """Write `dataset` (a PreparedDataset, a name or a prepared folder) with `features` (a table, a
    table folder, or None for interactions only) in format `fmt` under `out`; returns the folder
    the tool reads (`out/<name>`, name default the dataset's)."""
    from ..data import load_prepared
    from ..recsys.base import resolve_features

    writer = FORMATS[fmt]
    prepared = load_prepared(dataset) if isinstance(dataset, (str, Path)) else dataset
    table = resolve_features(prepared, features)
    return writer(prepared, table, Path(out), name or prepared.name)
