"""Uniform negative items outside a per-user exclusion set, vectorised.

Exclusion sets are sorted keys user * n_items + item. Which set a protocol excludes matters for
reproductions: S3-Rec draws training negatives outside the user's whole sequence (validation and
test items included), the SDA authors outside the training items, and their evaluation negatives
outside everything up to the evaluated target.
"""

from __future__ import annotations

import numpy as np

from ..utils.choices import check_choice
from .base import InteractionData, Split


def sequence_keys(data: InteractionData, upto: Split = "test") -> np.ndarray:
    """Sorted keys of each user's items up to and including `upto`'s target: "train" the training
    items, "valid" those and the validation item, "test" the whole sequence."""
    check_choice(upto, Split, "upto")
    starts = data.offsets[:-1]
    ends = data.target_index(upto) + (upto != "train")  # "train" already ends one past the training part
    lengths = ends - starts
    users = np.repeat(np.arange(data.n_users), lengths)
    rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    return np.unique(users * data.n_items + data.items[rows])


def sample_outside(keys: np.ndarray, n_items: int, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly drawn item per entry of `users` (any shape) whose key is not in `keys`; redraws
    only the collisions. Draws are independent, so one user's draws may repeat an item."""
    out = rng.integers(0, n_items, size=users.shape)
    bad = np.isin(users * n_items + out, keys)
    while bad.any():
        out[bad] = rng.integers(0, n_items, size=int(bad.sum()))
        bad[bad] = np.isin(users[bad] * n_items + out[bad], keys)
    return out


def sample_distinct_outside(
    keys: np.ndarray, n_items: int, n_users: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """[n_users, n]: for every user n distinct items outside its keys, uniformly, as the SDA authors
    draw evaluation candidates (each draw joins the excluded set). Every user needs at least n
    items outside its keys. Only rows with a collision or a repeat are redrawn."""
    out = rng.integers(0, n_items, size=(n_users, n))
    rows = np.arange(n_users)
    while len(rows):
        sub = out[rows]
        bad = np.isin(rows[:, None] * n_items + sub, keys) | _repeats(sub)
        hit = bad.any(1)
        rows, sub, bad = rows[hit], sub[hit], bad[hit]
        sub[bad] = rng.integers(0, n_items, size=int(bad.sum()))
        out[rows] = sub
    return out


def _repeats(rows: np.ndarray) -> np.ndarray:
    """Mask of the entries equal to an earlier entry of the same row."""
    order = np.argsort(rows, axis=1, kind="stable")
    ranked = np.take_along_axis(rows, order, 1)
    later = np.zeros(rows.shape, dtype=bool)
    later[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    out = np.empty_like(later)
    np.put_along_axis(out, order, later, 1)
    return out
