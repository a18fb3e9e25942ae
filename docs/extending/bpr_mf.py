"""A recommender in one file: matrix factorisation trained with BPR (Rendle et al. 2009) as
`models=["bpr-mf"]`. Its item vectors come from ID embeddings, the frozen item features through
the authors' adapter, or both (`ItemEncoder`), so it runs on every feature setting.

The contract (sda_lib.recsys.base.Recommender): build from (data, item_repr, features, **params);
yield training batches, give a batch's loss, all item (and user) vectors, and one vector per user.
"""

import torch
import torch.nn.functional as F
from torch import nn

from sda_lib.recsys.base import RECOMMENDERS, ItemEncoder, Recommender, Tables, features_for, shuffled_chunks


@RECOMMENDERS.register("bpr-mf")
class BPRMF(Recommender):
    batch_size = 1024  # training interactions per batch

    def __init__(self, data, item_repr="id", features=None, dim=64, reg=1e-4):
        super().__init__(data)
        table = features_for(self.name, item_repr, features)
        self.items = ItemEncoder(data.n_items, dim, item_repr, None if table is None else table.features)
        self.users = nn.Embedding(data.n_users, dim)
        nn.init.normal_(self.users.weight, std=0.1)
        self.reg, self.pairs = reg, data.train_pairs()

    def train_batches(self, batch_size, rng):
        users, items = self.pairs
        negatives = self.data.sample_unseen(users, rng)
        for rows in shuffled_chunks(len(users), batch_size, rng):
            yield tuple(torch.from_numpy(a[rows]) for a in (users, items, negatives))

    def loss(self, users, positives, negatives):
        tables = self.tables()
        u, i, j = tables.users[users], tables.items[positives], tables.items[negatives]
        bpr = F.softplus((u * j).sum(1) - (u * i).sum(1)).mean()
        return bpr + self.reg * (u.square().sum() + i.square().sum() + j.square().sum()) / len(u)

    def tables(self):
        return Tables(items=self.items(), users=self.users.weight)

    def user_vectors(self, users, context, tables):
        return tables.users[users]
