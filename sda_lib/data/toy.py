"""A deterministic synthetic multimodal catalogue with users, for demos, teaching and tests.

Every item has latent attributes that reach the two modalities differently, so a notebook can
show what each modality carries and what adaptation gains:

    image only   shape, pattern                      (never named in any text field)
    text only    brand, material                     (never drawn)
    both         colour (title word + painted fill), category (category path + backdrop tint)

Both sides are noisy: colours, positions, sizes and rotations are jittered; a share of titles
drop or swap their colour word, drop the material or the brand; a few items have no image and a
few an empty title. Item popularity is Zipf-like, so a real long tail
exists. Each user prefers one value of each attribute; their sequence is drawn without
replacement from popularity x preference, so content predicts behaviour and tail items are
reached mainly through content. `preferences` moves the weight of those preferences between the
shared, the text-only and the image-only attributes (PREFERENCES); the default keeps the weights
below, and the data card records the setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from sda_lib.data.catalogue import Catalogue, DataError
from sda_lib.utils.choices import check_choice
from sda_lib.utils.io import atomic_path


@dataclass(frozen=True)
class ToySize:
    """How big one toy size is. 112 px images give Qwen2.5-VL 16 image tokens each."""

    n_items: int
    n_users: int
    image_px: int
    median_extra_length: float  # beyond the minimum of 3; lognormal, so a few users are long
    max_sequence_length: int


ToySizeName = Literal["toy-tiny", "toy"]
SIZES: dict[ToySizeName, ToySize] = {
    "toy-tiny": ToySize(n_items=80, n_users=150, image_px=112, median_extra_length=3.0, max_sequence_length=30),
    "toy": ToySize(n_items=700, n_users=1500, image_px=112, median_extra_length=5.0, max_sequence_length=60),
}

TEXT_FIELDS = ["title", "categories", "brand", "description"]


@dataclass(frozen=True)
class Category:
    path: str
    noun: str
    materials: tuple[str, ...]
    backdrop: tuple[int, int, int]  # the image-side cue of the category


CATEGORIES = (
    Category("Home > Kitchen > Mugs", "Mug", ("ceramic", "enamel", "stoneware"), (250, 240, 200)),
    Category("Home > Kitchen > Plates", "Plate", ("porcelain", "bamboo", "stoneware"), (200, 225, 250)),
    Category("Home > Decor > Vases", "Vase", ("glass", "ceramic", "porcelain"), (200, 240, 210)),
    Category("Home > Decor > Cushions", "Cushion", ("cotton", "linen", "velvet"), (250, 210, 220)),
    Category("Office > Desk > Lamps", "Desk Lamp", ("steel", "brass", "aluminium"), (225, 210, 245)),
    Category("Garden > Planters > Pots", "Plant Pot", ("terracotta", "concrete", "resin"), (215, 215, 215)),
)
COLOURS = {
    "red": (200, 30, 30),
    "orange": (240, 130, 20),
    "yellow": (235, 205, 30),
    "green": (40, 150, 60),
    "blue": (40, 80, 200),
    "purple": (130, 50, 170),
    "pink": (235, 100, 170),
    "brown": (120, 75, 40),
}
PATTERN_INK = {"light": (245, 245, 245), "dark": (35, 35, 35)}  # drawn over the fill
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
PATTERNS = ("plain", "stripes", "dots", "grid")
BRANDS = (
    "Northwind",
    "Acme",
    "Lumen",
    "Kestrel",
    "Marlow",
    "Tidewell",
    "Pinecraft",
    "Velora",
    "Harbor & Co",
    "Fenwick",
)
ADJECTIVES = (
    "a handmade",
    "a modern",
    "a rustic",
    "a minimalist",
    "a vintage",
    "a sturdy",
    "a lightweight",
    "an elegant",
)
SELLING_POINTS = (
    "Made for everyday use.",
    "A thoughtful gift for friends and family.",
    "Easy to clean.",
    "Built to last for years.",
    "Ships in recycled packaging.",
    "Designed in a small studio.",
    "Pairs well with the rest of the range.",
    "Lovingly finished by hand.",
)

# Noise rates, per item.
P_NO_IMAGE = 0.04
P_EMPTY_TITLE = 0.03
P_TITLE_COLOUR_DROPPED = 0.08
P_TITLE_COLOUR_SWAPPED = 0.05
P_TITLE_MATERIAL_DROPPED = 0.10
P_TITLE_BRAND_DROPPED = 0.25
P_NO_BRAND = 0.04
P_DESCRIPTION_NAMES_COLOUR = 0.4
P_EMPTY_DESCRIPTION = 0.03

# Behaviour: logit(user, item) = log(popularity) + the sum of the weights of the attributes where
# the item has the user's preferred value. Popularity is rank ** -ZIPF_EXPONENT; tastes are skewed
# too (the k-th most liked value of an attribute is preferred by a share ~ k ** -TASTE_SKEW of users),
# so the tail holds unpopular items of unfashionable looks, reached by the few users who like them.
ZIPF_EXPONENT = 1.5
PREFERENCE_WEIGHTS = {"category": 4.8, "colour": 3.6, "shape": 3.0, "brand": 3.0, "pattern": 2.4}
TASTE_SKEW = 1.0
# Where the preferences live: each named setting gives the share of PREFERENCE_WEIGHTS' total on each
# group of attributes (weights within a group keep their proportions). "default" is the weights as
# they are (shared 0.50, image-only 0.32, text-only 0.18 of the total); material carries no weight.
ATTRIBUTE_GROUPS = {"shared": ("category", "colour"), "image": ("shape", "pattern"), "text": ("brand",)}
Preferences = Literal["default", "shared", "specific", "image", "text"]
PREFERENCES: dict[Preferences, dict[str, float] | None] = {
    "default": None,
    "shared": {"shared": 1.0},
    "specific": {"image": 0.5, "text": 0.5},
    "image": {"image": 1.0},
    "text": {"text": 1.0},
}
MIN_SEQUENCE_LENGTH = 3
LENGTH_SIGMA = 0.8  # of the lognormal extra length: a long right tail
START_TIME = 1_600_000_000  # seconds; only the order within a user matters
MEAN_GAP_SECONDS = 2 * 86_400


Latent = dict[str, np.ndarray]  # attribute name -> one value per item


def generate_toy(size: ToySizeName, image_dir: Path, seed: int = 0, preferences: Preferences = "default") -> Catalogue:
    """Build the `size` toy catalogue and write its PNG images into `image_dir`.

    The same (size, seed, preferences) gives identical tables and pixels; another seed another
    catalogue. `preferences` (a name in PREFERENCES) only changes who buys what: items, texts and
    images stay those of the seed.
    """
    check_choice(size, ToySizeName, "toy size", DataError)
    weights = preference_weights(preferences)
    spec = SIZES[size]
    rng = np.random.Generator(np.random.PCG64(seed))
    image_dir = Path(image_dir)

    latent = _draw_latent_attributes(spec.n_items, rng)
    texts, counts = _write_texts(latent, rng)
    image_paths = _render_images(latent, spec.image_px, image_dir, rng)
    sequences, counts["interactions_added_for_coverage"] = _draw_sequences(latent, spec, weights, rng)

    item_ids = [f"i{i:04d}" for i in range(spec.n_items)]
    items = pd.DataFrame({"item_id": item_ids, **texts})
    items["image_path"] = pd.Series(image_paths, dtype=object)
    for name in ("category", "colour", "shape", "pattern", "brand", "material"):
        items[f"latent_{name}"] = latent[name]
    items["latent_popularity"] = latent["popularity"]
    interactions = _timed_interactions(sequences, item_ids, rng)
    setting = "" if preferences == "default" else f", preferences={preferences!r}"
    return Catalogue(
        name=size,
        items=items,
        interactions=interactions,
        text_fields=list(TEXT_FIELDS),
        counts=counts,
        source=f"synthetic: sda_lib.data.toy.generate_toy(size={size!r}, seed={seed}{setting})",
    )


def preference_weights(preferences: Preferences = "default") -> dict[str, float]:
    """The weight of each attribute in a user's choice under the named setting of PREFERENCES."""
    check_choice(preferences, Preferences, "toy preferences", DataError)
    shares = PREFERENCES[preferences]
    if shares is None:
        return dict(PREFERENCE_WEIGHTS)
    total = sum(PREFERENCE_WEIGHTS.values())
    weights = {}
    for group, names in ATTRIBUTE_GROUPS.items():
        in_group = sum(PREFERENCE_WEIGHTS[n] for n in names)
        for name in names:
            weights[name] = shares.get(group, 0.0) * total * PREFERENCE_WEIGHTS[name] / in_group
    return {name: weights[name] for name in PREFERENCE_WEIGHTS}


def _draw_latent_attributes(n_items: int, rng: np.random.Generator) -> Latent:
    category = rng.integers(len(CATEGORIES), size=n_items)
    material = [CATEGORIES[c].materials[rng.integers(len(CATEGORIES[c].materials))] for c in category]
    rank = rng.permutation(n_items) + 1  # popularity rank, unrelated to the item id
    return {
        "category": np.array([CATEGORIES[c].path for c in category]),
        "colour": np.array(list(COLOURS))[rng.integers(len(COLOURS), size=n_items)],
        "shape": np.array(SHAPES)[rng.integers(len(SHAPES), size=n_items)],
        "pattern": np.array(PATTERNS)[rng.integers(len(PATTERNS), size=n_items)],
        "brand": np.array(BRANDS)[rng.integers(len(BRANDS), size=n_items)],
        "material": np.array(material),
        "popularity": rank.astype(float) ** -ZIPF_EXPONENT,
    }


def _write_texts(latent: Latent, rng: np.random.Generator) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Readable text fields that carry brand, material, colour and category, with noise.

    Also returns how many of the (non-empty) titles name no colour or the wrong one: the card
    cannot see that from the table.
    """
    n = len(latent["category"])
    nouns = {c.path: c.noun for c in CATEGORIES}
    colour_names = list(COLOURS)
    empty_title = _exact_share(n, P_EMPTY_TITLE, rng)
    counts = {"title_colour_dropped": 0, "title_colour_swapped": 0}
    titles, brands, descriptions = [], [], []
    for i in range(n):
        brand, material, noun = latent["brand"][i], latent["material"][i], nouns[latent["category"][i]]
        colour = latent["colour"][i]
        u = rng.random(6)
        title_colour = colour
        if u[0] < P_TITLE_COLOUR_DROPPED:
            title_colour, noise = "", "title_colour_dropped"
        elif u[0] < P_TITLE_COLOUR_DROPPED + P_TITLE_COLOUR_SWAPPED:
            shift = rng.integers(1, len(colour_names))
            title_colour = colour_names[(colour_names.index(colour) + shift) % len(colour_names)]
            noise = "title_colour_swapped"
        words = [
            "" if u[1] < P_TITLE_BRAND_DROPPED else brand,
            title_colour.capitalize(),
            "" if u[2] < P_TITLE_MATERIAL_DROPPED else material.capitalize(),
            noun,
        ]
        if empty_title[i]:
            titles.append("")
        else:
            titles.append(" ".join(w for w in words if w))
            if title_colour != colour:
                counts[noise] += 1
        brands.append("" if u[3] < P_NO_BRAND else brand)
        adjective = ADJECTIVES[rng.integers(len(ADJECTIVES))]
        sentences = [f"{adjective.capitalize()} {material} {noun.lower()} by {brand}."]
        if u[4] < P_DESCRIPTION_NAMES_COLOUR:
            sentences.append(f"Finished in {colour}.")
        sentences += [SELLING_POINTS[k] for k in rng.choice(len(SELLING_POINTS), size=2, replace=False)]
        descriptions.append("" if u[5] < P_EMPTY_DESCRIPTION else " ".join(sentences))
    texts = {"title": titles, "categories": list(latent["category"]), "brand": brands, "description": descriptions}
    return texts, counts


def _render_images(latent: Latent, px: int, image_dir: Path, rng: np.random.Generator) -> list[str | None]:
    """Draw every item that has an image; return its PNG path, or None for items left without one."""
    backdrops = {c.path: c.backdrop for c in CATEGORIES}
    no_image = _exact_share(len(latent["category"]), P_NO_IMAGE, rng)
    paths: list[str | None] = []
    for i, missing in enumerate(no_image):
        if missing:
            paths.append(None)
            continue
        image = _draw_item(
            latent["shape"][i],
            latent["pattern"][i],
            COLOURS[latent["colour"][i]],
            backdrops[latent["category"][i]],
            px,
            rng,
        )
        path = image_dir / f"i{i:04d}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        paths.append(str(path))
    return paths


def _draw_item(
    shape: str,
    pattern: str,
    colour: tuple[int, int, int],
    backdrop: tuple[int, int, int],
    px: int,
    rng: np.random.Generator,
) -> Image.Image:
    """One product shot: a jittered coloured shape with its pattern, on the category's backdrop."""
    centre = px / 2 + rng.uniform(-0.08, 0.08, size=2) * px
    radius = px * rng.uniform(0.30, 0.40)
    rotation = rng.uniform(-12, 12)
    silhouette = Image.new("L", (px, px), 0)
    _draw_shape(ImageDraw.Draw(silhouette), shape, centre, radius, rotation)

    fill = tuple(int(v) for v in np.clip(np.array(colour) + rng.integers(-20, 21, size=3), 0, 255))
    image = Image.new("RGB", (px, px), backdrop)
    image.paste(fill, mask=silhouette)
    if pattern != "plain":
        marks = Image.new("L", (px, px), 0)
        _draw_pattern(ImageDraw.Draw(marks), pattern, px, rng)
        ink = PATTERN_INK["dark" if sum(colour) > 350 else "light"]
        inside = silhouette.filter(ImageFilter.MinFilter(3))  # keep the outline whole, so the shape reads
        image.paste(ink, mask=ImageChops.multiply(inside, marks))
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: np.ndarray, radius: float, rotation: float) -> None:
    cx, cy = centre
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        return
    # (radius factor, angle in degrees, 0 = up) for each corner
    corners = {
        "square": [(1.0, a) for a in (45, 135, 225, 315)],
        "diamond": [(1.0, 0), (0.65, 90), (1.0, 180), (0.65, 270)],
        "triangle": [(1.0, a) for a in (0, 120, 240)],
        "hexagon": [(1.0, a) for a in range(0, 360, 60)],
        "star": [(1.0 if k % 2 == 0 else 0.45, 36 * k) for k in range(10)],
    }[shape]
    points = []
    for factor, angle in corners:
        theta = math.radians(angle + rotation)
        points.append((cx + factor * radius * math.sin(theta), cy - factor * radius * math.cos(theta)))
    draw.polygon(points, fill=255)


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: str, px: int, rng: np.random.Generator) -> None:
    """Marks over the whole canvas; the caller keeps only those inside the shape."""
    period = px / 8
    offset = rng.uniform(0, period)
    steps = np.arange(-px, 2 * px, period) + offset
    if pattern == "stripes":
        width = max(2, round(period * 0.4))
        diagonal = rng.random() < 0.5
        for s in steps:
            end = (s + px, px) if diagonal else (s, px)
            draw.line([(s, 0), end], fill=255, width=width)
    elif pattern == "grid":
        for s in steps:
            draw.line([(s, 0), (s, px)], fill=255, width=1)
            draw.line([(0, s), (px, s)], fill=255, width=1)
    elif pattern == "dots":
        r = max(1.5, period * 0.22)
        for x in steps:
            for y in steps:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def _draw_sequences(
    latent: Latent, spec: ToySize, weights: dict[str, float], rng: np.random.Generator
) -> tuple[list[list[int]], int]:
    """Per user, item indices in time order; returns them and how many were added so every item is used.
    Every attribute's tastes are drawn, weighted or not, so the draws do not depend on `weights`.

    A user's sequence is a draw without replacement from softmax(logit) (Gumbel top-k: the k largest
    of logit + Gumbel noise, in decreasing order, are exactly such a draw).
    """
    affinity = np.zeros((spec.n_users, spec.n_items))
    for name, weight in weights.items():
        values, item_codes = np.unique(latent[name], return_inverse=True)
        share = (rng.permutation(len(values)) + 1.0) ** -TASTE_SKEW
        preferred = rng.choice(len(values), size=spec.n_users, p=share / share.sum())
        affinity += weight * (preferred[:, None] == item_codes[None, :])
    logits = affinity + np.log(latent["popularity"])[None, :]
    order = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1, kind="stable")

    extra = rng.lognormal(math.log(spec.median_extra_length), LENGTH_SIGMA, size=spec.n_users).astype(int)
    lengths = np.minimum(MIN_SEQUENCE_LENGTH + extra, spec.max_sequence_length)
    sequences = [order[u, :length].tolist() for u, length in enumerate(lengths)]

    # Items nobody drew go to a user who likes their content (drawn by affinity alone), at a random time.
    used = np.zeros(spec.n_items, dtype=bool)
    used[np.concatenate(sequences)] = True
    unused = np.flatnonzero(~used)
    for item in unused:
        user = int(np.argmax(affinity[:, item] + rng.gumbel(size=spec.n_users)))
        sequences[user].insert(int(rng.integers(len(sequences[user]) + 1)), int(item))
    return sequences, len(unused)


def _timed_interactions(sequences: list[list[int]], item_ids: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """Give each user a start time and strictly increasing timestamps (gaps of at least one second)."""
    user_ids, items, times = [], [], []
    for u, sequence in enumerate(sequences):
        start = START_TIME + int(rng.integers(0, 180 * 86_400))
        gaps = 1 + np.floor(rng.exponential(MEAN_GAP_SECONDS, size=len(sequence))).astype(np.int64)
        user_ids += [f"u{u:04d}"] * len(sequence)
        items += [item_ids[i] for i in sequence]
        times.append(start + np.cumsum(gaps))
    timestamps = np.concatenate(times).astype(np.int64)
    return pd.DataFrame({"user_id": user_ids, "item_id": items, "timestamp": timestamps})


def _exact_share(n: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with exactly max(1, round(share * n)) True entries, so even tiny sizes get some."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=max(1, round(share * n)), replace=False)] = True
    return mask
