"""Dataset registry: one call to load any source as a `Catalogue` and prepare it into
`outputs/<dataset>/data/`.

Sources: toy, toy-tiny (synthetic, offline), beauty, sports, toys (Amazon 2014 5-core, raw or
preprocessed form, from `source`), custom (a user's interactions + items tables in `source`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..io import atomic_dir, read_json
from ..paths import data_dir
from .catalogue import Catalogue, DataError
from .prepare import PrepareParams, prepare_catalogue
from .prepared import PreparedDataset

DATASETS = ("toy", "toy-tiny", "beauty", "sports", "toys", "custom")
AMAZON = ("beauty", "sports", "toys")

__all__ = ["DATASETS", "Catalogue", "DataError", "PrepareParams", "PreparedDataset",
           "load_catalogue", "prepare_dataset", "load_prepared"]


def load_catalogue(name: str, source: str | Path | None = None, image_dir: Path | None = None,
                   images: str | Path | None = None, download_images: bool = False,
                   seed: int = 0) -> Catalogue:
    """Load dataset `name` from its source. `image_dir` receives generated toy images."""
    if name in ("toy", "toy-tiny"):
        from .toy import generate_toy

        if image_dir is None:
            raise ValueError("toy datasets draw their images: pass image_dir")
        return generate_toy(name, image_dir, seed=seed)
    if name in AMAZON or name == "custom":
        if source is None:
            raise DataError(_needs_source(name))
        source = Path(source)
        if not source.is_dir():
            raise DataError(f"source folder {source} does not exist. {_needs_source(name)}")
        if name == "custom":
            from .custom import load_custom

            return load_custom(_one_of(source, "interactions"), _one_of(source, "items"))
        from .amazon import load_amazon

        return load_amazon(name, source, images=images, download_images=download_images)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def prepare_dataset(name: str, source: str | Path | None = None, out: str | Path | None = None,
                    params: PrepareParams = PrepareParams(), force: bool = False, **load_kw) -> Path:
    """Prepare `name` into `out` (default outputs/<name>/data) and return the folder.

    The folder appears only once complete; an existing folder prepared with the same parameters
    and source is reused unless `force`.
    """
    out = Path(out) if out is not None else data_dir(name)
    source_str = str(Path(source).resolve()) if source is not None else ""
    if not force and _is_current(out, params, source_str):
        return out
    with atomic_dir(out) as tmp:
        catalogue = load_catalogue(name, source, image_dir=tmp / "images", seed=params.seed, **load_kw)
        catalogue.source = source_str or catalogue.source
        prepare_catalogue(catalogue, tmp, params)
    return out


def load_prepared(dataset: str | Path) -> PreparedDataset:
    """A prepared dataset by name (outputs/<name>/data) or by folder."""
    folder = Path(dataset)
    if str(dataset) in DATASETS and not folder.exists():
        folder = data_dir(str(dataset))
    return PreparedDataset.load(folder)


def _is_current(out: Path, params: PrepareParams, source: str) -> bool:
    card = read_json(out / "card.json")
    if card is None:
        return False
    wanted = asdict(params)
    same_source = not source or card.get("source") == source
    return {k: card["params"].get(k) for k in wanted} == wanted and same_source


def _one_of(folder: Path, stem: str) -> Path:
    for ext in (".parquet", ".csv"):
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    raise DataError(f"{folder} holds no {stem}.csv or {stem}.parquet (see the README, 'custom data')")


def _needs_source(name: str) -> str:
    if name == "custom":
        return ("custom needs --source DIR holding interactions.csv|parquet (user, item, timestamp) "
                "and items.csv|parquet (item, text columns, optional image_path)")
    from .amazon import CATEGORIES

    cat = CATEGORIES[name]
    return (f"{name} needs --source DIR holding either reviews_{cat}_5.json.gz and meta_{cat}.json.gz "
            f"(raw form) or {cat}.txt and items.jsonl (preprocessed form)")
