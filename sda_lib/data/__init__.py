"""Dataset registry: one call to load any source as a `Catalogue` and prepare it into
`outputs/<dataset>/data/`.

Sources: toy, toy-tiny (synthetic, offline), beauty, sports, toys (Amazon 2014, raw or
preprocessed form, from `source`; `PrepareParams.recipe` "5core" reads the 5-core files as they
are, "sda" applies the SDA authors' filter to the raw reviews), custom (a user's interactions +
items tables in `source`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .. import __version__
from ..io import atomic_dir, write_json
from ..paths import data_dir
from .catalogue import Catalogue, DataError
from .prepare import RECIPES, PrepareParams, default_tail_count_on, prepare_catalogue
from .prepared import IMAGES_DIR, PreparedDataset, damage, foreign_entries, read_card

DATASETS = ("toy", "toy-tiny", "beauty", "sports", "toys", "custom")
TOY = ("toy", "toy-tiny")
AMAZON = ("beauty", "sports", "toys")

__all__ = ["DATASETS", "RECIPES", "Catalogue", "DataError", "PrepareParams", "PreparedDataset",
           "default_tail_count_on", "load_catalogue", "prepare_dataset", "load_prepared"]


def load_catalogue(name: str, source: str | Path | None = None, image_dir: Path | None = None,
                   images: str | Path | None = None, download_images: bool = False,
                   seed: int = 0, recipe: str = "5core") -> Catalogue:
    """Load dataset `name` from its source, filtered by `recipe` (see RECIPES). `image_dir` receives
    generated toy images."""
    _check_recipe(name, recipe)
    if name in TOY:
        from .toy import generate_toy

        if image_dir is None:
            raise ValueError("toy datasets draw their images: pass image_dir")
        return generate_toy(name, image_dir, seed=seed)
    if name not in AMAZON and name != "custom":
        raise _unknown(name)
    source = _source_folder(name, source)
    if name == "custom":
        from .custom import load_custom

        return load_custom(_one_of(source, "interactions"), _one_of(source, "items"))
    from .amazon import load_amazon

    return load_amazon(name, source, images=images, download_images=download_images, recipe=recipe)


def prepare_dataset(name: str, source: str | Path | None = None, out: str | Path | None = None,
                    params: PrepareParams = PrepareParams(), force: bool = False, **load_kw) -> Path:
    """Prepare `name` into `out` (default outputs/<name>/data) and return the folder.

    `params.tail_count_on=None` takes the dataset's default tail rule (`default_tail_count_on`);
    the card records the rule used.

    The folder appears only once complete. It is reused, unless `force`, when it was prepared with
    the same parameters from inputs unchanged since and is whole; it is never replaced when it holds
    anything a preparation does not write, or when it is (or is above) an input folder.
    """
    out = Path(out) if out is not None else data_dir(name)
    params = params.for_dataset(name)
    inputs = _inputs(name, source, params.recipe, **load_kw)
    _check_out(out, inputs)
    why = "force=True (--force)" if force else _stale(out, name, params, inputs)
    if why is None:
        print(f"{out} is up to date (same parameters, inputs unchanged, every file in place): reused; "
              f"--force (force=True) prepares it again")
        return out
    print(f"preparing {name} into {out}: {why}")
    with atomic_dir(out) as tmp:
        catalogue = load_catalogue(name, source, image_dir=tmp / IMAGES_DIR, seed=params.seed,
                                   recipe=params.recipe, **load_kw)
        if "--source" in inputs.folders:
            catalogue.source = str(inputs.folders["--source"])
        card = prepare_catalogue(catalogue, tmp, params)
        # the inputs include the folders of the images the written items point to, hence a second write
        card["inputs"] = _fingerprint(inputs, tmp)
        write_json(tmp / "card.json", card)
    return out


def load_prepared(dataset: str | Path) -> PreparedDataset:
    """A prepared dataset by name (outputs/<name>/data) or by folder."""
    folder = Path(dataset)
    if str(dataset) in DATASETS and not folder.exists():
        folder = data_dir(str(dataset))
    return PreparedDataset.load(folder)


@dataclass(frozen=True)
class _Inputs:
    """What preparing a dataset reads: never replaced by `out`, and watched for changes."""

    folders: dict[str, Path]  # option ("--source", "--images", "the image cache") -> resolved folder
    files: tuple[Path, ...] = ()  # the source tables
    generator: dict | None = None  # toy data: what, besides the seed, decides what is generated


def _inputs(name: str, source: str | Path | None, recipe: str, images: str | Path | None = None,
            download_images: bool = False) -> _Inputs:
    _check_recipe(name, recipe)
    if name in TOY:
        from .toy import SIZES

        return _Inputs({}, generator={"sda_lib": __version__, **asdict(SIZES[name])})
    if name not in AMAZON and name != "custom":
        raise _unknown(name)
    folder = _source_folder(name, source).resolve()
    if name == "custom":
        return _Inputs({"--source": folder}, (_one_of(folder, "interactions"), _one_of(folder, "items")))
    from .amazon import default_image_cache, source_files

    folders = {"--source": folder}
    if images is not None:
        folders["--images"] = Path(images).expanduser().resolve()
    elif download_images:
        folders["the image cache"] = default_image_cache(name).resolve()
    return _Inputs(folders, source_files(name, folder, recipe)[1])


def _check_out(out: Path, inputs: _Inputs) -> None:
    """Refuse an `out` whose replacement would destroy what no preparation wrote, before touching it."""
    target = out.resolve()
    for option, folder in inputs.folders.items():
        if target == folder or target in folder.parents:
            relation = "is the same folder as" if target == folder else "is a folder above"
            raise DataError(
                f"--out {target} {relation} {option} {folder}: preparing replaces the whole --out folder, "
                f"which would delete the input; choose an --out outside {folder}"
            )
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a folder: choose a new or empty folder for --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    refuse = ("preparing replaces the whole --out folder, so it will not use this one. Choose a new or "
              "empty folder for --out, or")
    foreign = foreign_entries(out)
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DataError(f"{out} holds {listed}, which no preparation writes: {refuse} move those away")
    if read_card(out) is None:  # e.g. a custom source's own items.parquet and interactions.parquet
        raise DataError(
            f"{out} has no data card (card.json), so nothing shows that a preparation wrote the files in it: "
            f"{refuse} delete it yourself if it is an old prepared dataset"
        )


def _stale(out: Path, name: str, params: PrepareParams, inputs: _Inputs) -> str | None:
    """Why `out` must be prepared (again), or None when it can be reused as it is."""
    card = read_card(out)
    if card is None:
        return "no prepared dataset there yet"
    if card.get("dataset") != name:
        return f"it holds {card.get('dataset')!r}"
    found = damage(out, card)
    if found:
        return "; ".join(found)
    before = card.get("params", {})
    changed = [f"{k} {before.get(k)} -> {v}" for k, v in asdict(params).items() if before.get(k) != v]
    if changed:
        return "parameters changed: " + ", ".join(changed)
    recorded, now = card.get("inputs"), _fingerprint(inputs, out)
    if not recorded:
        return "its card does not record its inputs"
    changed = [path for kind in ("files", "image_folders") for path in {**recorded[kind], **now[kind]}
               if recorded[kind].get(path) != now[kind].get(path)]
    if recorded["generator"] != now["generator"]:
        changed.append("the toy generator")
    return "changed since it was prepared: " + ", ".join(changed) if changed else None


def _fingerprint(inputs: _Inputs, folder: Path) -> dict:
    """Size and modification time of each source table, and a summary of each image folder read
    (the --images folder or cache, and the folders of the images the items in `folder` point to),
    so a corrected file, a new or replaced image is noticed."""
    paths = pd.read_parquet(folder / "items.parquet", columns=["image_path"])["image_path"].unique()
    image_folders = {f for option, f in inputs.folders.items() if option != "--source"}
    image_folders |= {Path(p).parent for p in paths if Path(p).is_absolute()}  # toy images are inside
    return {
        "files": {str(path): [path.stat().st_size, path.stat().st_mtime_ns] for path in inputs.files},
        "image_folders": {str(f): _listing(f) for f in sorted(image_folders)},
        "generator": inputs.generator,
    }


def _listing(folder: Path) -> list[int] | None:
    """[files, bytes, newest modification] of the files in `folder`; None when it does not exist."""
    try:
        stats = [entry.stat() for entry in os.scandir(folder) if entry.is_file()]
    except FileNotFoundError:
        return None
    return [len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]


def _check_recipe(name: str, recipe: str) -> None:
    """The recipe "sda" filters raw Amazon reviews; other sources come as they are."""
    if recipe not in RECIPES:
        raise DataError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    if recipe == "sda" and name in (*TOY, "custom"):
        raise DataError(
            f"recipe 'sda' is the SDA authors' filter of the raw Amazon review files ({', '.join(AMAZON)}); "
            f"{name} data is prepared as it comes: use recipe '5core' (--recipe 5core)"
        )


def _source_folder(name: str, source: str | Path | None) -> Path:
    if source is None:
        raise DataError(_needs_source(name))
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise DataError(f"source folder {folder} does not exist. {_needs_source(name)}")
    return folder


def _unknown(name: str) -> DataError:
    return DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


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
            f"(raw form) or {cat}.txt and items.jsonl (preprocessed form); recipe 'sda' reads "
            f"reviews_{cat}.json.gz (all reviews) or reviews_{cat}_5.json.gz, and meta_{cat}.json.gz")
