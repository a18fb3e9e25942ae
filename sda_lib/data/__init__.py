"""Datasets, registered by name: one call prepares any of them into `outputs/<dataset>/data/`.

Registered: toy, toy-tiny (synthetic, offline), beauty, sports, toys (Amazon 2014, raw or
preprocessed form, from `source`; `PrepareParams.recipe` "5core" reads the 5-core files as they
are, "sda" applies the SDA authors' filter to the raw reviews), custom (a user's interactions +
items tables in `source`), amazon2023 (a category of Amazon Reviews 2023), mmrec (one of MMRec's
published dataset folders). A user's own dataset gets its own name and folder
(`prepare_dataset("custom", source, name="mystore")`, `prepare custom --name mystore`); once
prepared, that name works everywhere a dataset name does. A new kind of source is a
`DatasetSource` registered in DATASETS (see docs/extending.md).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .. import __version__
from ..utils.choices import check_choice
from ..utils.io import atomic_dir, write_json
from ..utils.locks import folder_lock, reading
from ..utils.paths import data_dir
from ..utils.registry import Registry
from .catalogue import Catalogue, DataError
from .names import BadName, check_dataset_name, looks_like_path
from .prepare import RECIPES, PrepareParams, Recipe, default_tail_count_on, prepare_catalogue
from .prepared import IMAGES_DIR, PreparedDataset, damage, foreign_entries, read_card

__all__ = [
    "DATASETS",
    "RECIPES",
    "Catalogue",
    "DataError",
    "DatasetSource",
    "Inputs",
    "PrepareParams",
    "PreparedDataset",
    "default_tail_count_on",
    "load_catalogue",
    "prepare_dataset",
    "load_prepared",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """What preparing a dataset reads: never replaced by `out`, and watched for changes."""

    folders: dict[str, Path]  # option ("--source", "--images", "the image cache") -> resolved folder
    files: tuple[Path, ...] = ()  # the source tables
    generator: dict | None = None  # generated data: what, besides the seed, decides what is generated


class DatasetSource:
    """How one kind of dataset is read. `inputs` names what it reads (so a changed input is
    noticed and never overwritten), `load` turns it into a Catalogue. `source_help` says what
    `source` must hold; a source that reads no folder leaves it empty."""

    recipes: tuple[Recipe, ...] = ("5core",)
    source_help = ""

    def help_for(self, name: str) -> str:
        """What `source` must hold for dataset `name` (empty: no source folder is read)."""
        return f"{name} {self.source_help}" if self.source_help else ""

    def inputs(self, name: str, source: Path | None, recipe: Recipe, **load_kw) -> Inputs:
        raise NotImplementedError

    def load(self, name: str, source: Path | None, image_dir: Path, seed: int, recipe: Recipe, **load_kw) -> Catalogue:
        raise NotImplementedError


DATASETS: Registry[DatasetSource] = Registry("dataset")


class ToySource(DatasetSource):
    """The synthetic catalogues of sda_lib.data.toy, drawn offline; `preferences` says where the
    users' preferences live (sda_lib.data.toy.PREFERENCES)."""

    def inputs(self, name, source, recipe, preferences="default"):
        from .toy import SIZES, preference_weights

        preference_weights(preferences)  # an unknown setting fails before anything is prepared
        return Inputs({}, generator={"sda_lib": __version__, **asdict(SIZES[name]), "preferences": preferences})

    def load(self, name, source, image_dir, seed, recipe, preferences="default"):
        from .toy import generate_toy

        if image_dir is None:
            raise ValueError("toy datasets draw their images: pass image_dir")
        return generate_toy(name, image_dir, seed=seed, preferences=preferences)


class AmazonSource(DatasetSource):
    """An Amazon 2014 category, raw or preprocessed (sda_lib.data.amazon)."""

    recipes = tuple(RECIPES)

    def inputs(self, name, source, recipe, images=None, download_images=False):
        from .amazon import default_image_cache, source_files

        folders = {"--source": source}
        if images is not None:
            folders["--images"] = Path(images).expanduser().resolve()
        elif download_images:
            folders["the image cache"] = default_image_cache(name).resolve()
        return Inputs(folders, source_files(name, source, recipe)[1])

    def load(self, name, source, image_dir, seed, recipe, **load_kw):
        from .amazon import load_amazon

        return load_amazon(name, source, recipe=recipe, **load_kw)

    source_help = "needs --source DIR holding the category's Amazon files"

    def help_for(self, name: str) -> str:
        from .amazon import CATEGORIES

        cat = CATEGORIES[name]
        return (
            f"{name} needs --source DIR holding either reviews_{cat}_5.json.gz and meta_{cat}.json.gz "
            f"(raw form) or {cat}.txt and items.jsonl (preprocessed form); recipe 'sda' reads "
            f"reviews_{cat}.json.gz (all reviews) or reviews_{cat}_5.json.gz, and meta_{cat}.json.gz"
        )


class CustomSource(DatasetSource):
    """A user's own interactions and items tables (sda_lib.data.custom)."""

    source_help = (
        "needs --source DIR holding interactions.csv|parquet (user, item, timestamp) and "
        "items.csv|parquet (item, text columns, optional image_path)"
    )

    def inputs(self, name, source, recipe, **load_kw):
        return Inputs({"--source": source}, (_one_of(source, "interactions"), _one_of(source, "items")))

    def load(self, name, source, image_dir, seed, recipe, **load_kw):
        from .custom import load_custom

        return load_custom(_one_of(source, "interactions"), _one_of(source, "items"), name=name)


class Amazon2023Source(DatasetSource):
    """A category of Amazon Reviews 2023, reviews or the release's 5-core file (sda_lib.data.amazon2023)."""

    recipes = tuple(RECIPES)
    source_help = (
        "needs --source DIR holding one category's meta_<Category>.jsonl and its reviews <Category>.jsonl "
        "(or the release's 5-core <Category>.csv), gzipped or not"
    )

    def inputs(self, name, source, recipe, images=None, download_images=False, category=None, **load_kw):
        from .amazon import default_image_cache
        from .amazon2023 import source_files

        folders = {"--source": source}
        if images is not None:
            folders["--images"] = Path(images).expanduser().resolve()
        elif download_images:
            folders["the image cache"] = default_image_cache(name).resolve()
        return Inputs(folders, source_files(source, category)[1:])

    def load(self, name, source, image_dir, seed, recipe, **load_kw):
        from .amazon2023 import load_amazon2023

        return load_amazon2023(name, source, recipe=recipe, **load_kw)


class MMRecSource(DatasetSource):
    """One of MMRec's published preprocessed datasets (baby, sports, clothing...): its interactions,
    with its content features importable as a feature table (sda_lib.data.mmrec)."""

    source_help = "needs --source DIR, an MMRec dataset folder holding <name>.inter (and text_feat.npy, image_feat.npy)"

    def inputs(self, name, source, recipe, **load_kw):
        from .mmrec import inter_file

        return Inputs({"--source": source}, (inter_file(source),))

    def load(self, name, source, image_dir, seed, recipe, **load_kw):
        from .mmrec import load_mmrec

        return load_mmrec(name, source)


for _name in ("toy", "toy-tiny"):
    DATASETS.register(_name, ToySource())
for _name in ("beauty", "sports", "toys"):
    DATASETS.register(_name, AmazonSource())
DATASETS.register("custom", CustomSource())
DATASETS.register("amazon2023", Amazon2023Source())
DATASETS.register("mmrec", MMRecSource())


@dataclass(frozen=True)
class _Resolved:
    """A dataset name with the registered source kind that reads it and its source folder."""

    name: str
    kind: str
    source: Path | None


def _resolve(name: str, kind: str | None, source: str | Path | None, out: Path | None, recipe: Recipe) -> _Resolved:
    """`name` is a registered dataset, or (with `kind`) a user's dataset of a registered kind, or a
    user's dataset prepared before (its card in `out`, default outputs/<name>/data, gives the kind
    and, unless given, the source). The recipe is checked against the kind before the source is
    looked at."""
    try:
        check_dataset_name(name)
    except BadName as err:
        raise DataError(str(err)) from None
    if kind is None:
        if name in DATASETS:
            kind = name
        else:
            card = read_card(out or data_dir(name)) or {}
            if "kind" not in card:
                raise DataError(
                    f"unknown dataset {name!r}; registered: {', '.join(DATASETS)}. For your own "
                    f"tables: `python -m sda_lib.data prepare custom --name {name} --source DIR` "
                    "(or kind='custom')"
                )
            kind, source = card["kind"], source or card.get("source") or None
    elif name != kind and name in DATASETS:
        raise DataError(f"{name!r} is the name of a registered dataset; give your {kind} dataset another name")
    help_text = DATASETS[kind].help_for(name)
    _check_recipe(name, kind, recipe)
    if not help_text:
        return _Resolved(name, kind, None)
    if source is None:
        raise DataError(help_text)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise DataError(f"source folder {folder} does not exist. {help_text}")
    return _Resolved(name, kind, folder.resolve())


def load_catalogue(
    name: str,
    source: str | Path | None = None,
    image_dir: Path | None = None,
    seed: int = 0,
    recipe: Recipe = "5core",
    kind: str | None = None,
    **load_kw,
) -> Catalogue:
    """Load dataset `name` (of source kind `kind`, default the name) from its source, filtered by
    `recipe` (see RECIPES). `image_dir` receives generated images."""
    found = _resolve(name, kind, source, None, recipe)
    return DATASETS[found.kind].load(found.name, found.source, image_dir, seed, recipe, **load_kw)


def prepare_dataset(
    name: str,
    source: str | Path | None = None,
    out: str | Path | None = None,
    params: PrepareParams = PrepareParams(),
    force: bool = False,
    kind: str | None = None,
    **load_kw,
) -> Path:
    """Prepare `name` into `out` (default outputs/<name>/data) and return the folder.

    `kind` names the registered source that reads it, for a dataset of your own
    (`prepare_dataset("mystore", "tables/", kind="custom")`); a registered name is its own kind, and
    a name prepared before remembers its kind and source. `params.tail_count_on=None` takes the
    dataset's default tail rule (`default_tail_count_on`); the card records the rule used.

    The folder appears only once complete. It is reused, unless `force`, when it was prepared with
    the same parameters from inputs unchanged since and is whole (checked under a reader's lock, so
    runs reading it go on); it is never replaced while another process reads it (sda_lib.utils.locks),
    when it holds anything a preparation does not write, or when it is (or is above) an input
    folder.
    """
    params = params.for_dataset(name)
    found = _resolve(name, kind, source, Path(out) if out is not None else None, params.recipe)
    out = Path(out) if out is not None else data_dir(found.name)
    inputs = DATASETS[found.kind].inputs(found.name, found.source, params.recipe, **load_kw)
    if not force:  # a folder that is up to date is reused under a reader's lock: others may be reading it too
        with reading(out, "data preparation"):
            if _stale(out, name, params, inputs) is None:
                return _reused(out)
    with folder_lock(out, "data preparation"):
        _check_out(out, inputs)
        why = "force=True (--force)" if force else _stale(out, name, params, inputs)
        if why is None:  # prepared by another process meanwhile
            return _reused(out)
        log.info(f"preparing {name} into {out}: {why}")
        before = _fingerprint(inputs)  # taken before reading: an edit made meanwhile is noticed
        with atomic_dir(out) as tmp:
            catalogue = DATASETS[found.kind].load(
                found.name, found.source, tmp / IMAGES_DIR, params.seed, params.recipe, **load_kw
            )
            catalogue.name = found.name
            if found.source is not None:
                catalogue.source = str(found.source)
            card = prepare_catalogue(catalogue, tmp, params)
            card["kind"] = found.kind
            # the inputs include the folders of the images the written items point to, hence a second write
            card["inputs"] = _fingerprint(inputs, tmp)
            edited = _changed_inputs(before, card["inputs"], union=False)
            if edited:
                raise DataError(
                    f"{', '.join(edited)} changed while {name} was being prepared from it: nothing was written; "
                    "prepare again once it is no longer being written"
                )
            write_json(tmp / "card.json", card)
        return out


def _reused(out: Path) -> Path:
    log.info(
        f"{out} is up to date (same parameters, inputs unchanged, every file in place): reused; "
        f"--force (force=True) prepares it again"
    )
    return out


def load_prepared(dataset: str | Path) -> PreparedDataset:
    """A prepared dataset by name (outputs/<name>/data) or by folder: a Path, or text that looks
    like a path (holding a `/`, or starting with `.` or `~`). A name is never taken as a folder of
    the working directory, which may well be the source folder of the same name."""
    if isinstance(dataset, Path) or looks_like_path(dataset):
        return PreparedDataset.load(Path(dataset).expanduser())
    try:
        check_dataset_name(dataset)
    except BadName as err:
        raise DataError(f"{err} (a prepared folder is given as a path, e.g. ./{dataset}/)") from None
    if dataset in DATASETS:
        how = f"`python -m sda_lib.data prepare {dataset}" + (
            " --source DIR`" if DATASETS[dataset].help_for(dataset) else "`"
        )
    else:
        how = f"`python -m sda_lib.data prepare custom --name {dataset} --source DIR` (or another kind of source)"
    return PreparedDataset.load(data_dir(dataset), how_to_prepare=how)


def _check_out(out: Path, inputs: Inputs) -> None:
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
    refuse = (
        "preparing replaces the whole --out folder, so it will not use this one. Choose a new or "
        "empty folder for --out, or"
    )
    foreign = foreign_entries(out)
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DataError(f"{out} holds {listed}, which no preparation writes: {refuse} move those away")
    if read_card(out) is None:  # e.g. a custom source's own items.parquet and interactions.parquet
        raise DataError(
            f"{out} has no data card (card.json), so nothing shows that a preparation wrote the files in it: "
            f"{refuse} delete it yourself if it is an old prepared dataset"
        )


def _stale(out: Path, name: str, params: PrepareParams, inputs: Inputs) -> str | None:
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
    recorded = card.get("inputs")
    if not recorded:
        return "its card does not record its inputs"
    changed = _changed_inputs(recorded, _fingerprint(inputs, out))
    return "changed since it was prepared: " + ", ".join(changed) if changed else None


def _changed_inputs(recorded: dict, now: dict, union: bool = True) -> list[str]:
    """The inputs whose fingerprints differ between `recorded` and `now`: over the inputs either
    names (`union`), or over those `recorded` names (a fingerprint taken before the items, and so
    the folders of their images, were known)."""
    changed = [
        path
        for kind in ("files", "image_folders")
        for path in ({**recorded[kind], **now[kind]} if union else recorded[kind])
        if recorded[kind].get(path) != now[kind].get(path)
    ]
    if recorded["generator"] != now["generator"]:
        changed.append("the toy generator")
    return changed


def _fingerprint(inputs: Inputs, folder: Path | None = None) -> dict:
    """Size and modification time of each source table, and a summary of each image folder read
    (the --images folder or cache, and, given the prepared `folder`, the folders of the images its
    items point to), so a corrected file, a new or replaced image is noticed."""
    paths = pd.read_parquet(folder / "items.parquet", columns=["image_path"])["image_path"].unique() if folder else []
    image_folders = {f for option, f in inputs.folders.items() if option != "--source"}
    image_folders |= {Path(p).parent for p in paths if Path(p).is_absolute()}  # toy images are inside
    return {
        "files": {str(path): [path.stat().st_size, path.stat().st_mtime_ns] for path in inputs.files},
        "image_folders": {str(f): _listing(f) for f in sorted(image_folders)},
        "generator": inputs.generator,
    }


def _listing(folder: Path) -> list[int] | None:
    """[files, bytes, newest modification] of the files in `folder`; None when it does not exist.
    Hidden files are left out: they are no item's image, and the lock of an --out prepared inside
    an image folder is one (sda_lib.utils.locks)."""
    try:
        stats = [entry.stat() for entry in os.scandir(folder) if entry.is_file() and not entry.name.startswith(".")]
    except FileNotFoundError:
        return None
    return [len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]


def _check_recipe(name: str, kind: str, recipe: Recipe) -> None:
    """The recipe "sda" filters raw Amazon reviews; other sources come as they are."""
    check_choice(recipe, Recipe, "recipe", DataError)
    allowed = DATASETS[kind].recipes
    if recipe not in allowed:
        amazon = [n for n in DATASETS if recipe in DATASETS[n].recipes]
        raise DataError(
            f"recipe {recipe!r} is the SDA authors' filter of the raw Amazon review files ({', '.join(amazon)}); "
            f"{name} data is prepared as it comes: use recipe {allowed[0]!r} (--recipe {allowed[0]})"
        )


def _one_of(folder: Path, stem: str) -> Path:
    for ext in (".parquet", ".csv"):
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    raise DataError(f"{folder} holds no {stem}.csv or {stem}.parquet (see docs/data.md, 'Your own data')")
