"""The one shape every data source produces before preparation: items plus timed interactions.

Loaders (toy, amazon, custom) build a `Catalogue`; `prepare` turns any catalogue into the prepared
folder (split, tail flags, negatives, card). Keeping the hand-over this narrow is what lets a new
source be added without touching the split or the card.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


class DataError(ValueError):
    """Bad input data: the message names the file, line or item and says what to do."""


@dataclass
class Catalogue:
    """A dataset as loaded from its source, before splitting.

    items:        one row per item. Column `item_id` (str, unique); the text columns named in
                  `text_fields` (str, "" when absent; lists already joined into readable text);
                  `image_path` (str path to an image file, or None when the item has no image).
                  Any other column (e.g. toy latent attributes) is carried through untouched.
    interactions: columns `user_id` (str), `item_id` (str), `timestamp` (int64; only the order
                  matters, ties keep file order).
    counts:       recoveries made while loading, for the data card (e.g. {"missing_images": 3,
                  "html_unescaped_titles": 12, "corrupt_images": 1}).
    """

    name: str
    items: pd.DataFrame
    interactions: pd.DataFrame
    text_fields: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    source: str = ""
