"""BERT4Rec (Sun et al., CIKM 2019): bidirectional attention trained by cloze.

Training: each epoch, every position of a user's training window (its last `max_len` training
items) is chosen with probability `mask_prob`, at least one per window (the last item when the draw
chose none). A chosen position shows the mask token, or with probabilities `random_prob` and
`keep_prob` a uniformly drawn item or the item itself (BERT's 80/10/10 with 0.1 and 0.1). With
`last_item_copies` every window is trained a second time with only its last item masked (the SDA
authors' training set, which mimics prediction). The chosen items are predicted with softmax
cross-entropy over all items (`loss="ce"`) or with binary cross-entropy against one sampled
negative each (`loss="bce"`, the SDA authors').

Prediction: the mask token appended after the user's last `max_len - 1` items, read out through
the head (dense, GELU, LayerNorm; `head=False` scores the hidden state directly, as the SDA
authors do) and scored against the item table.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..method.features import FeatureTable
from ..utils.choices import check_choice
from .base import PAD, RECOMMENDERS, InteractionData, ItemRepr, ItemReprName, Tables, shuffled_chunks
from .sequential import LN_EPS, Negatives, SequenceLoss, SequentialRecommender, _init_weights, sampled_bce


@RECOMMENDERS.register("bert4rec")
class BERT4Rec(SequentialRecommender):
    causal = False
    n_special = 1  # the mask token

    def __init__(
        self,
        data: InteractionData,
        item_repr: ItemReprName | ItemRepr = "id",
        features: FeatureTable | None = None,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        max_len: int = 50,
        dropout: float = 0.2,
        mask_prob: float = 0.2,
        random_prob: float = 0.0,
        keep_prob: float = 0.0,
        last_item_copies: bool = False,
        loss: SequenceLoss = "ce",
        head: bool = True,
        negatives: Negatives = "train",
        **alignment,
    ):
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask_prob must lie in (0, 1), got {mask_prob}")
        if not (0 <= random_prob and 0 <= keep_prob and random_prob + keep_prob < 1):
            raise ValueError(
                f"random_prob and keep_prob must be >= 0 and leave some chosen positions masked "
                f"(sum < 1), got {random_prob} and {keep_prob}"
            )
        check_choice(loss, SequenceLoss, "loss")
        super().__init__(data, item_repr, features, dim, n_layers, n_heads, max_len, dropout, negatives, **alignment)
        self.mask_prob, self.random_prob, self.keep_prob = mask_prob, random_prob, keep_prob
        self.last_item_copies, self.loss_type = last_item_copies, loss
        self.mask_token = data.n_items + 1
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=LN_EPS)) if head else None
        if head:
            self.head.apply(_init_weights)
        windows = data.windows(data.target_index("train"), max_len)
        keep = (windows != PAD).any(1)
        self.train_users, self.train_windows = np.flatnonzero(keep), windows[keep]

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        windows, users = self.train_windows, self.train_users
        real = windows != PAD
        chosen = real & (rng.random(windows.shape) < self.mask_prob)
        chosen[~chosen.any(1), -1] = True  # the last column is always a real item
        shown = np.full_like(windows, self.mask_token)
        if self.random_prob or self.keep_prob:  # drawn only when asked: the plain stream stays as it was
            draw = rng.random(windows.shape)
            shown = np.where(
                draw < self.random_prob,
                rng.integers(1, self.data.n_items + 1, windows.shape),
                np.where(draw < self.random_prob + self.keep_prob, windows, shown),
            )
        inputs = np.where(chosen, shown, windows)
        labels = np.where(chosen, windows, PAD)
        if self.last_item_copies:
            last = np.zeros_like(chosen)
            last[:, -1] = True
            inputs = np.concatenate([inputs, np.where(last, self.mask_token, windows)])
            labels = np.concatenate([labels, np.where(last, windows, PAD)])
            users = np.concatenate([users, users])
        batch = [inputs, labels]
        if self.loss_type == "bce":
            negatives = self.sample_negatives(np.broadcast_to(users[:, None], labels.shape), rng)
            batch.append(np.where(labels != PAD, negatives, PAD))
        for rows in shuffled_chunks(len(inputs), batch_size, rng):
            yield tuple(torch.from_numpy(b[rows]) for b in batch)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        items = self.item_encoder()
        real = inputs != PAD
        chosen = labels[real] != PAD
        hidden = self.readout(self.encode(inputs, items)[chosen])
        positives = labels[real][chosen] - 1
        if self.loss_type == "ce":
            loss = F.cross_entropy(hidden @ items.T, positives)
        else:
            loss = sampled_bce(hidden, items, positives, negatives[real][chosen] - 1)
        return self.with_alignment(loss, items, positives)

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.head is None else self.head(hidden)

    def user_vectors(self, users: torch.Tensor, context: torch.Tensor, tables: Tables) -> torch.Tensor:
        tokens = torch.cat([context[:, 1:], torch.full_like(context[:, :1], self.mask_token)], dim=1)
        return self.readout(self.encode_last(tokens, tables.items))
