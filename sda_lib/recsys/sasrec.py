"""SASRec (Kang & McAuley, ICDM 2018), trained as S3-Rec trains it: one pass over each user's
training sequence predicting every next item, causal attention.

Losses: "bce" (S3-Rec: binary cross-entropy of the next item against one uniformly sampled
negative per position, fresh each epoch; `negatives` says which items it avoids) or "ce" (softmax
cross-entropy over all items, usually stronger).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..method.features import FeatureTable
from ..utils.choices import check_choice
from .base import PAD, RECOMMENDERS, InteractionData, ItemRepr, ItemReprName, Tables, shuffled_chunks
from .sequential import Negatives, SequenceLoss, SequentialRecommender, sampled_bce


@RECOMMENDERS.register("sasrec")
class SASRec(SequentialRecommender):
    causal = True

    def __init__(
        self,
        data: InteractionData,
        item_repr: ItemReprName | ItemRepr = "id",
        features: FeatureTable | None = None,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        max_len: int = 50,
        dropout: float = 0.5,
        loss: SequenceLoss = "bce",
        negatives: Negatives = "train",
        **alignment,
    ):
        check_choice(loss, SequenceLoss, "loss")
        super().__init__(data, item_repr, features, dim, n_layers, n_heads, max_len, dropout, negatives, **alignment)
        self.loss_type = loss
        # Inputs are the training sequence without its last item, targets the same shifted by one.
        ends = data.target_index("train")
        inputs, targets = data.windows(ends - 1, max_len), data.windows(ends, max_len)
        keep = (inputs != PAD).any(axis=1)  # users with a single training item give no pair
        self.train_users = np.flatnonzero(keep)
        self.train_inputs, self.train_targets = inputs[keep], targets[keep]

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        negatives = None
        if self.loss_type == "bce":
            users = np.broadcast_to(self.train_users[:, None], self.train_inputs.shape)
            negatives = self.sample_negatives(users, rng)
        for rows in shuffled_chunks(len(self.train_users), batch_size, rng):
            batch = [self.train_inputs[rows], self.train_targets[rows]]
            if negatives is not None:
                batch.append(negatives[rows])
            yield tuple(torch.from_numpy(b) for b in batch)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        items = self.item_encoder()
        hidden = self.encode(inputs, items)
        real = inputs != PAD
        positives = targets[real] - 1
        if self.loss_type == "ce":
            loss = F.cross_entropy(hidden @ items.T, positives)
        else:
            loss = sampled_bce(hidden, items, positives, negatives[real] - 1)
        return self.with_alignment(loss, items, positives)

    def user_vectors(self, users: torch.Tensor, context: torch.Tensor, tables: Tables) -> torch.Tensor:
        return self.encode_last(context, tables.items)
