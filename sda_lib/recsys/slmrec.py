"""SLMRec (Tao et al., IEEE TMM 2022): self-supervised multimedia recommendation on a LightGCN
backbone, as MMRec implements it.

Channels: the item ID embedding and each content part (text, image) through its own adapter. Each
channel is propagated with the shared user embedding over the normalised user-item training graph
(D^-1/2 A D^-1/2, `n_layers` layers, layer mean); the channels' user (item) outputs are
concatenated and fused by a linear map to the user (item) vector.

Loss: in-batch InfoNCE between each training interaction's user and item (cosine, temperature
`temperature`) plus `ssl_weight` times the self-supervised task: two views of the graph output,
each with dropout `ssl_dropout` on every propagated layer and, with two or more channels, one
randomly chosen channel zeroed (MMRec's "FD+FM", feature dropout and feature masking); InfoNCE
(temperature `ssl_temperature`) pulls a batch's users, and items, together across the two views.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureAdapter, InteractionData, Recommender, Tables, shuffled_chunks


class SLMRec(Recommender):
    name = "slmrec"
    batch_size = 2048  # training interactions per batch

    def __init__(self, data: InteractionData, item_repr: str = "id", channels: list[np.ndarray] = (),
                 dim: int = 64, n_layers: int = 2, temperature: float = 0.2, ssl_weight: float = 0.1,
                 ssl_temperature: float = 0.2, ssl_dropout: float = 0.3):
        super().__init__(data)
        self.n_layers, self.temperature = n_layers, temperature
        self.ssl_weight, self.ssl_temperature, self.ssl_dropout = ssl_weight, ssl_temperature, ssl_dropout
        self.users = nn.Embedding(data.n_users, dim)
        self.ids = nn.Embedding(data.n_items, dim) if "id" in item_repr.split("+") else None
        self.adapters = nn.ModuleList(FeatureAdapter(c, dim) for c in channels) if "features" in item_repr else None
        n_channels = (self.ids is not None) + (len(self.adapters) if self.adapters is not None else 0)
        self.fuse_users = nn.Linear(n_channels * dim, dim)
        self.fuse_items = nn.Linear(n_channels * dim, dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.pairs = data.train_pairs()
        self.register_buffer("graph", _normalised_graph(*self.pairs, data.n_users, data.n_items), persistent=False)

    def channel_inputs(self) -> list[torch.Tensor]:
        return ([self.ids.weight] if self.ids is not None else []) + [a() for a in self.adapters or []]

    def propagate(self, item_inputs: list[torch.Tensor], dropout: float = 0.0,
                  masked: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) after LightGCN on every channel, channels side by side (not yet fused);
        channel `masked` enters as zeros."""
        n_users = self.data.n_users
        user_parts, item_parts = [], []
        for c, items in enumerate(item_inputs):
            if c == masked:
                items = torch.zeros_like(items)
            x = torch.cat([self.users.weight, items])
            layers = [x]
            for _ in range(self.n_layers):
                x = F.dropout(_SymmetricProduct.apply(self.graph, x), dropout, self.training and dropout > 0)
                layers.append(x)
            mean = torch.stack(layers).mean(0)
            user_parts.append(mean[:n_users])
            item_parts.append(mean[n_users:])
        return torch.cat(user_parts, 1), torch.cat(item_parts, 1)

    def tables(self) -> Tables:
        users, items = self.propagate(self.channel_inputs())
        return Tables(items=self.fuse_items(items), users=self.fuse_users(users))

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        users, items = self.pairs
        for rows in shuffled_chunks(len(users), batch_size, rng):
            yield torch.from_numpy(users[rows]), torch.from_numpy(items[rows])

    def loss(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # The fusing maps run on the batch's rows only: that, not propagation, dominates otherwise.
        def fused(view):
            return self.fuse_users(view[0][users]), self.fuse_items(view[1][items])

        inputs = self.channel_inputs()
        main = _info_nce(*fused(self.propagate(inputs)), self.temperature)
        if self.ssl_weight == 0:
            return main
        masked = torch.randperm(len(inputs))[:2].tolist() if len(inputs) > 1 else [None, None]
        (u1, i1), (u2, i2) = (fused(self.propagate(inputs, self.ssl_dropout, m)) for m in masked)
        ssl = _info_nce(u1, u2, self.ssl_temperature) + _info_nce(i1, i2, self.ssl_temperature)
        return main + self.ssl_weight * ssl

    def user_vectors(self, users: torch.Tensor, context: torch.Tensor, tables: Tables) -> torch.Tensor:
        return tables.users[users]


def _info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row i of `a` should match row i of `b` among all rows of `b` (cosine / temperature)."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


def _normalised_graph(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """Sparse (CSR) D^-1/2 A D^-1/2 of the bipartite training graph, users first then items."""
    rows = np.concatenate([users, items + n_users])
    cols = np.concatenate([items + n_users, users])
    degree = np.bincount(rows, minlength=n_users + n_items).astype(np.float32)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1)), 0.0).astype(np.float32)
    values = inv_sqrt[rows] * inv_sqrt[cols]
    n = n_users + n_items
    coo = torch.sparse_coo_tensor(np.stack([rows, cols]), values, (n, n), check_invariants=True).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": products are all we use
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()


class _SymmetricProduct(torch.autograd.Function):
    """graph @ x for a constant symmetric sparse graph. The gradient graph^T @ grad is graph @ grad;
    torch's own sparse backward transposes the matrix on every call, which costs more than the
    product itself."""

    @staticmethod
    def forward(ctx, graph: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.graph = graph
        return graph @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.graph @ grad
