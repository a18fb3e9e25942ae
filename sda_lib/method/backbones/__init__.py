"""Backbones by name: `load_backbone("tiny" | "small" | "7b-shaped[:N]" | "7b" | "mini[:untrained]" |
hub id | folder)`. The interface is `base.Backbone`; Qwen2.5-VL (`qwen.py`) and mini (`mini.py`)
implement it; adapter targets per architecture are in `targets.py`. A new architecture registers a
loader (LoadOptions -> Backbone) in BACKBONES."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ...utils.registry import Registry
from ..prompts import Prompts
from . import mini, qwen
from .base import Backbone, LoadOptions, PooledEncoder, mean_pool
from .qwen import HUB_7B, PRESETS, SHAPED, _pretrained, _shaped_layers

MINI = mini.NAME

BACKBONES: Registry[Callable[[LoadOptions], Backbone]] = Registry("backbone")


def load_backbone(
    name_or_path: str | os.PathLike = "tiny",
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    min_pixels: int = 20 * 20,
    max_pixels: int = 256 * 256,
    layers: int | None = None,
    prompts: Prompts = Prompts(),
) -> Backbone:
    """A registered backbone ("tiny", "small", "7b-shaped": random seeded weights; "7b":
    Qwen2.5-VL-7B-Instruct; "mini": the small pretrained backbone of sda_lib.method.backbones.mini; or one an
    extension registered in BACKBONES), a hub id or a local model folder.

    The 7b-shaped preset's decoder-layer count is part of its name, "7b-shaped:2", so that it passes
    through every CLI and notebook parameter that takes a backbone name; `layers=2` with
    "7b-shaped" is the same for Python callers (give one or the other). Without either, it has all
    28 layers.

    dtype defaults to float32 for tiny / small, bfloat16 for 7b-shaped; for pretrained weights to
    bfloat16 on a GPU and float32 on CPU (the 7B then needs about 31 GiB; pass dtype=torch.bfloat16
    for about 16 GiB). min_pixels / max_pixels bound the area every image is resized to, hence its
    number of image tokens ((h / 28) * (w / 28) after resizing), for presets and real models alike.
    "mini" has its own fixed image size and pretrained weights, so it takes only dtype and device.
    `prompts` (sda_lib.method.prompts.item_prompts(style, dataset)) words the Qwen models' prompts; mini
    has its own.
    """
    name_or_path = str(name_or_path)
    name, _, variant = name_or_path.lower().partition(":")
    if layers is not None:
        if name != SHAPED:
            raise ValueError(f"layers={layers} applies only to the {SHAPED} preset, not to {name_or_path!r}")
        if variant and variant != str(layers):
            raise ValueError(f"{name_or_path!r} names {variant} layers but layers={layers}: give the count once")
        variant = str(layers)
    options = LoadOptions(
        getattr(torch, dtype) if isinstance(dtype, str) else dtype,
        torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")),
        seed,
        dict(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}),
        prompts,
        variant or None,
    )
    if name in BACKBONES:
        return BACKBONES[name](options)
    if "/" not in name_or_path and "\\" not in name_or_path and not Path(name_or_path).expanduser().exists():
        # Neither registered, a hub id (owner/name) nor an existing folder: refuse now rather than
        # after a hub lookup times out.
        raise ValueError(
            f"unknown backbone {name_or_path!r}: use a registered one ({', '.join(BACKBONES)}; {SHAPED}:layers), "
            f"a hub id such as {HUB_7B!r}, or a local model folder"
        )
    return _pretrained(name_or_path, options.dtype, options.device, options.image_processor_kwargs, prompts)


def backbone_name(backbone_id: str) -> tuple[str, int | None]:
    """The load_backbone name (and seed, for random weights) of a Backbone id: "tiny-random-seed3"
    gives ("tiny", 3), "mini-connector-<sha>" ("mini", None), a hub id or folder itself."""
    random = re.fullmatch(r"(.+)-random-seed(\d+)", backbone_id)
    if random:
        return random[1], int(random[2])
    if backbone_id.startswith(f"{MINI}-connector-"):
        return MINI, None
    return backbone_id, None


def trained_on(backbone_id: str, name: str, seed: int = 0) -> bool:
    """Whether a Backbone id (as manifests and adapter cards record it) is what load_backbone(name,
    seed=seed) gives, told without loading it."""
    recorded, recorded_seed = backbone_name(backbone_id)
    name = str(name)
    if name.lower() == "7b":
        name = HUB_7B
    elif name.lower() == SHAPED:
        name = f"{SHAPED}:{_shaped_layers(None)}"
    elif Path(name).expanduser().is_dir():
        name = str(Path(name).expanduser().resolve())
    return recorded.lower() == name.lower() and recorded_seed in (None, seed)


BACKBONES.register(SHAPED, qwen.load_shaped)
for _preset in PRESETS:
    BACKBONES.register(_preset, qwen.preset_loader(_preset))
BACKBONES.register("7b", qwen.load_7b)
BACKBONES.register(MINI, mini.load)

__all__ = [
    "BACKBONES",
    "Backbone",
    "LoadOptions",
    "PooledEncoder",
    "backbone_name",
    "load_backbone",
    "mean_pool",
    "trained_on",
]
