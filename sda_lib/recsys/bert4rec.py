"""BERT4Rec (Sun et al., CIKM 2019): bidirectional attention trained by cloze.

Training: each epoch, every position of a user's training window (its last `max_len` training
items) is replaced by a mask token with probability `mask_prob`, at least one per window (the last
item when the draw masked none); the masked items are predicted with softmax cross-entropy over all
items. Prediction: the mask token appended after the user's last `max_len - 1` items, read out
through the same head (dense, GELU, LayerNorm) and scored against the item table.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import PAD, InteractionData, Tables, shuffled_chunks
from .sequential import LN_EPS, SequentialRecommender, _init_weights


class BERT4Rec(SequentialRecommender):
    name = "bert4rec"
    causal = False
    n_special = 1  # the mask token

    def __init__(self, data: InteractionData, item_repr: str = "id", features: np.ndarray | None = None,
                 dim: int = 64, n_layers: int = 2, n_heads: int = 2, max_len: int = 50,
                 dropout: float = 0.2, mask_prob: float = 0.2):
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask_prob must lie in (0, 1), got {mask_prob}")
        super().__init__(data, item_repr, features, dim, n_layers, n_heads, max_len, dropout)
        self.mask_prob = mask_prob
        self.mask_token = data.n_items + 1
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=LN_EPS))
        self.head.apply(_init_weights)
        windows = data.windows(data.target_index("train"), max_len)
        self.train_windows = windows[(windows != PAD).sum(1) >= 1]

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        windows = self.train_windows
        real = windows != PAD
        masked = real & (rng.random(windows.shape) < self.mask_prob)
        masked[~masked.any(1), -1] = True  # the last column is always a real item
        inputs = np.where(masked, self.mask_token, windows)
        labels = np.where(masked, windows, PAD)
        for rows in shuffled_chunks(len(windows), batch_size, rng):
            yield torch.from_numpy(inputs[rows]), torch.from_numpy(labels[rows])

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        items = self.item_encoder()
        hidden = self.encode(inputs, items)
        labels = labels[inputs != PAD]
        chosen = labels != PAD
        return F.cross_entropy(self.head(hidden[chosen]) @ items.T, labels[chosen] - 1)

    def user_vectors(self, users: torch.Tensor, context: torch.Tensor, tables: Tables) -> torch.Tensor:
        tokens = torch.cat([context[:, 1:], torch.full_like(context[:, :1], self.mask_token)], dim=1)
        return self.head(self.encode_last(tokens, tables.items))
