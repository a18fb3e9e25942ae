"""Ranking evaluation, batched over users.

Two protocols, both on the leave-one-out target of split "valid" or "test":
- "full": the target ranked against every item, the user's earlier items (everything before the
  target) excluded; the target itself always stays in.
- "sampled": the target ranked against the dataset's stored negatives only (never in the user's
  history), optionally their first `n_negatives`, or against given `candidates` (e.g. drawn
  afresh by `draw_negatives`, as the SDA authors do at every evaluation pass).

Ties count against the target: its 0-based rank is the number of other candidates scoring at least
as high. A model that scores everything alike therefore ranks last, never first.

From rank r: HR@k = [r < k], NDCG@k = [r < k] / log2(r + 2), MRR = 1 / (r + 1). Per-user values are
kept (`evaluate` returns one row per user) so two runs can be compared with a paired t-test.
"""

from __future__ import annotations

import warnings
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch

from ..utils.choices import check_choice
from .base import HeldOut, InteractionData, Recommender
from .sampling import sample_distinct_outside, sequence_keys

KS = (5, 10, 20)
METRICS = tuple(f"{m}@{k}" for k in KS for m in ("HR", "NDCG")) + ("MRR",)
RankingProtocol = Literal["full", "sampled"]
PROTOCOLS = get_args(RankingProtocol)
# Scores held at once by full ranking (64 MiB of float32): bounds its memory on any catalogue, and
# a block this size still feeds the matrix product well.
MAX_SCORES = 2**24


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user HR@k, NDCG@k (k in 5, 10, 20) and MRR from 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in KS:
        hit = ranks < k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    out["MRR"] = 1.0 / (ranks + 1.0)
    return {m: out[m] for m in METRICS}


def sampled_candidates(data: InteractionData, n_negatives: int | None = None) -> np.ndarray:
    """The stored negatives of every user, or their first `n_negatives`."""
    stored = data.negatives.shape[1]
    if n_negatives is None:
        return data.negatives
    if not 1 <= n_negatives <= stored:
        raise ValueError(
            f"n_negatives={n_negatives}, but {data.name!r} stores {stored} negatives per user; "
            f"choose 1..{stored} or prepare the dataset with more (--n-negatives)"
        )
    return np.ascontiguousarray(data.negatives[:, :n_negatives])


def draw_negatives(data: InteractionData, split: HeldOut, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n_users, n] distinct uniform candidates for the sampled protocol on `split`, outside each
    user's items up to and including that split's target. When some user has fewer than n items
    left, n is lowered to that count with a warning (as preparing the stored negatives does)."""
    keys = sequence_keys(data, split)
    room = data.n_items - int(np.bincount(keys // data.n_items, minlength=data.n_users).max())
    if room < n:
        warnings.warn(
            f"{data.name!r}: only {room} items lie outside the longest {split} sequence; "
            f"drawing {room} fresh negatives per user instead of {n}",
            stacklevel=2,
        )
    return sample_distinct_outside(keys, data.n_items, data.n_users, min(n, room), rng)


def masked_history(data: InteractionData, split: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    """(users, items), sorted by user, of the distinct items each user had before `split`'s target,
    the target itself left out: the pairs full ranking excludes. Sparse, so no users x items mask
    is ever built."""
    items, offsets = data.history(split)
    users = np.repeat(np.arange(data.n_users, dtype=np.int64), np.diff(offsets))
    users, items = np.divmod(np.unique(users * data.n_items + items), data.n_items)
    keep = items != data.targets(split)[users]
    return users[keep], items[keep]


def full_ranks(
    vectors: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, masked: torch.Tensor
) -> torch.Tensor:
    """0-based full-ranking rank of each row's target: the items scoring at least as high as it,
    less those among the masked (row, item) pairs (distinct, never the target).

    One matrix product, then one in-place comparison summed as floats (exact below 2**24 items;
    several times faster than a boolean mask plus an integer sum, and this pass dominates); the
    masked pairs are read back sparsely instead of being written into the scores first."""
    scores = vectors @ items.T
    target_score = scores.gather(1, targets[:, None])
    if torch.isnan(target_score).any():
        raise FloatingPointError("NaN scores: the training diverged; lower the learning rate")
    hits = scores.ge_(target_score)  # 1.0 where an item scores at least as high as the target
    masked_hits = hits.new_zeros(len(vectors)).index_add_(0, rows, hits[rows, masked])
    return (hits.sum(1) - masked_hits).long() - 1


@torch.no_grad()
def rank_targets(
    model: Recommender,
    data: InteractionData,
    split: HeldOut = "test",
    protocol: RankingProtocol = "full",
    n_negatives: int | None = None,
    batch_size: int = 1024,
    candidates: np.ndarray | None = None,
    max_scores: int = MAX_SCORES,
) -> np.ndarray:
    """0-based rank of every user's `split` target under `protocol` (see the module docstring).

    Users go `batch_size` at a time, fewer under "full" when `batch_size` x n_items would exceed
    `max_scores`: the score block is the pass's largest array, so `max_scores` bounds its memory."""
    check_choice(protocol, RankingProtocol, "protocol")
    if data.n_items >= 2**24 and protocol == "full":
        raise ValueError(f"full ranking counts in float32, exact below 2**24 items; {data.name!r} has {data.n_items}")
    was_training = model.training
    model.eval()
    device = model.device
    tables = model.tables()
    targets = torch.from_numpy(data.targets(split)).to(device)
    context = torch.from_numpy(data.context(split, model.context_length))
    if protocol == "full":
        batch_size = max(1, min(batch_size, max_scores // data.n_items))
        masked_users, masked_items = masked_history(data, split)
        bounds = np.searchsorted(masked_users, np.arange(0, data.n_users + batch_size, batch_size))
        masked_users, masked_items = (
            torch.from_numpy(masked_users).to(device),
            torch.from_numpy(masked_items).to(device),
        )
    else:
        if candidates is None:
            candidates = sampled_candidates(data, n_negatives)
        elif candidates.shape[0] != data.n_users:
            raise ValueError(f"candidates has {candidates.shape[0]} rows for {data.n_users} users")
        negatives = torch.from_numpy(np.ascontiguousarray(candidates)).to(device)
    ranks = torch.empty(data.n_users, dtype=torch.long)
    for batch, start in enumerate(range(0, data.n_users, batch_size)):
        stop = min(start + batch_size, data.n_users)
        users = torch.arange(start, stop, device=device)
        vectors = model.user_vectors(users, context[start:stop].to(device), tables)
        target = targets[start:stop]
        try:
            if protocol == "full":
                pairs = slice(bounds[batch], bounds[batch + 1])
                rank = full_ranks(vectors, tables.items, target, masked_users[pairs] - start, masked_items[pairs])
            else:
                rank = sampled_ranks(vectors, tables.items, target, negatives[start:stop])
        except FloatingPointError as err:
            raise FloatingPointError(f"{model.name}, users {start}..{stop - 1}: {err}") from None
        ranks[start:stop] = rank.cpu()
    model.train(was_training)
    return ranks.numpy()


def sampled_ranks(vectors: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor):
    """0-based rank of each row's target among its candidate `negatives` [B, K] (ties count against it)."""
    target_score = (vectors * items[targets]).sum(-1, keepdim=True)
    if torch.isnan(target_score).any():
        raise FloatingPointError("NaN scores: the training diverged; lower the learning rate")
    return (torch.einsum("bkd,bd->bk", items[negatives], vectors) >= target_score).sum(1)


def evaluate(
    model: Recommender,
    data: InteractionData,
    split: HeldOut = "test",
    protocol: RankingProtocol = "full",
    n_negatives: int | None = None,
    batch_size: int = 1024,
    candidates: np.ndarray | None = None,
    max_scores: int = MAX_SCORES,
) -> pd.DataFrame:
    """One row per user: user, target, is_tail, popularity (of the target, training count), rank
    and every metric in METRICS."""
    ranks = rank_targets(model, data, split, protocol, n_negatives, batch_size, candidates, max_scores)
    targets = data.targets(split)
    frame = pd.DataFrame(
        {
            "user": np.arange(data.n_users),
            "target": targets,
            "is_tail": data.is_tail[targets],
            "popularity": data.popularity[targets],
            "rank": ranks,
        }
    )
    return frame.assign(**metrics_from_ranks(ranks))


def summarize(per_user: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean of every metric over all users ("overall") and over users whose target is a tail item
    ("tail"; NaN when no target is a tail item), plus the user counts."""
    out = {}
    for subset, rows in (("overall", per_user), ("tail", per_user[per_user["is_tail"]])):
        out[subset] = {m: float(rows[m].mean()) if len(rows) else float("nan") for m in METRICS}
        out[subset]["users"] = len(rows)
    return out
