"""VBPR (He & McAuley, AAAI 2016): matrix factorisation whose item vector is an ID embedding
concatenated with content embeddings, trained with BPR.

Item vector: [ID embedding ; adapter(text part) ; adapter(image part)] (each part `dim` wide, parts
present per `item_repr` and per the feature table), user vector: one free embedding of the same
total width. Without features this is BPR-MF. Loss per training interaction (u, i) with one
uniformly drawn item j the user never trained on: -log sigmoid(s_ui - s_uj) + reg * (|u|^2 + |i|^2 +
|j|^2) / 2, averaged over the batch (as MMRec's VBPR).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureAdapter, InteractionData, Recommender, Tables, shuffled_chunks


class VBPR(Recommender):
    name = "vbpr"
    batch_size = 2048  # training interactions per batch

    def __init__(self, data: InteractionData, item_repr: str = "id", channels: list[np.ndarray] = (),
                 dim: int = 64, reg: float = 1e-4):
        super().__init__(data)
        self.reg = reg
        self.ids = nn.Embedding(data.n_items, dim) if "id" in item_repr.split("+") else None
        self.adapters = nn.ModuleList(FeatureAdapter(c, dim) for c in channels) if "features" in item_repr else None
        width = dim * ((self.ids is not None) + (len(self.adapters) if self.adapters is not None else 0))
        self.users = nn.Embedding(data.n_users, width)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        self.pairs = data.train_pairs()

    def tables(self) -> Tables:
        parts = ([self.ids.weight] if self.ids is not None else []) + [a() for a in self.adapters or []]
        return Tables(items=torch.cat(parts, dim=1), users=self.users.weight)

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        users, items = self.pairs
        negatives = self.data.sample_unseen(users, rng)
        for rows in shuffled_chunks(len(users), batch_size, rng):
            yield tuple(torch.from_numpy(a[rows]) for a in (users, items, negatives))

    def loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        tables = self.tables()
        u, i, j = tables.users[users], tables.items[positives], tables.items[negatives]
        bpr = F.softplus(-((u * i).sum(1) - (u * j).sum(1))).mean()
        return bpr + self.reg * (u.square().sum() + i.square().sum() + j.square().sum()) / (2 * len(users))

    def user_vectors(self, users: torch.Tensor, context: torch.Tensor, tables: Tables) -> torch.Tensor:
        return tables.users[users]
