"""Pre-training of mini's connector on generic synthetic captioned shapes (`sda pretrain-mini`,
`python -m sda_lib.method.backbones.pretrain_mini`): the recipe, the renders and the training loop
that made the committed weights (mini.py says why and what they reach)."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from transformers import AutoTokenizer

from ...utils.io import atomic_path, file_sha256, write_json
from ..extractors import efficientnet_pixels, minilm_folder
from .mini import CONNECTOR, MiniProcessor, MiniVLM, card_path

log = logging.getLogger(__spec__.name)  # not __name__, which is "__main__" under python -m


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
        "what": "connector of the mini backbone (sda_lib/method/backbones/mini.py): "
        "EfficientNet-Lite0 blocks 5/10/15 -> MiniLM",
        "command": " ".join(
            [
                "sda pretrain-mini",
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
    """`sda pretrain-mini [--out PATH] [--seed S] [--px 224] ...`: pre-train the connector on synthetic
    captioned shapes."""
    parser = argparse.ArgumentParser(prog="sda pretrain-mini", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=CONNECTOR, help=f"weights file (default {CONNECTOR})")
    for f in fields(Recipe):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    card = pretrain_connector(recipe, args.out)
    print(json.dumps({k: card[k] for k in ("held_out", "loss", "seconds", "cpu_seconds", "sha256")}, indent=1))
    print(f"wrote {args.out} and {card_path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
