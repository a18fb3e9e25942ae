"""What every recommender shares: the interaction arrays it trains and is ranked on, the item
representation (learnable ID embeddings, frozen features through a learned adapter, or both) and
the small interface the trainer and the evaluator rely on.

Item indices are the prepared dataset's 0..n_items-1. Sequence tensors shift them by one so that 0
can be padding (`PAD`); models that need more special tokens add them above n_items.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import numpy as np
import torch
from torch import nn

from ..data.catalogue import DataError
from ..method.features import FeatureError, FeatureTable
from ..utils.choices import check_choice
from ..utils.registry import Registry

PAD = 0
ItemReprName = Literal["id", "features", "id+features"]
ITEM_REPRS = get_args(ItemReprName)
Split = Literal["train", "valid", "test"]
HeldOut = Literal["valid", "test"]  # the splits with a leave-one-out target
# How VBPR and SLMRec map each content part: MMRec's linear map, or the authors' FeatureAdapter
Content = Literal["linear", "adapters"]
ADAPTER_HIDDEN = 768  # the authors' adapter: features -> 768 -> model width, no activation


@dataclass
class InteractionData:
    """A prepared dataset as the arrays the models need, checked once.

    `items[offsets[u]:offsets[u+1]]` is user u's time-ordered sequence; its last item is the test
    target and the one before it the validation target (leave-one-out), everything earlier is train.
    """

    name: str
    n_users: int
    n_items: int
    items: np.ndarray  # int64 [interactions]
    offsets: np.ndarray  # int64 [n_users + 1]
    is_tail: np.ndarray  # bool [n_items]
    popularity: np.ndarray  # int64 [n_items], training interactions per item
    negatives: np.ndarray  # int64 [n_users, K], stored sampled-evaluation candidates

    @classmethod
    def from_prepared(cls, dataset) -> InteractionData:
        """Build from a `PreparedDataset`; raise DataError if a split is empty or not leave-one-out."""
        inter = dataset.interactions
        where = f"dataset {dataset.name!r} ({dataset.folder})"
        if dataset.n_users == 0 or inter.empty:
            raise DataError(f"{where} has no interactions; prepare it again")
        split = inter["split"].astype(str).to_numpy()
        for name in ("train", "valid", "test"):
            count = int((split == name).sum())
            if count == 0:
                raise DataError(
                    f"{where}: the {name!r} split is empty; prepare the dataset again "
                    "(every user needs train, valid and test interactions)"
                )
        offsets = np.asarray(dataset.user_offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        if (lengths < 3).any():
            user = int(np.flatnonzero(lengths < 3)[0])
            raise DataError(f"{where}: user {user} has {lengths[user]} interactions; leave-one-out needs 3")
        expected = np.full(len(split), "train", dtype=object)
        expected[offsets[1:] - 1] = "test"
        expected[offsets[1:] - 2] = "valid"
        wrong = np.flatnonzero(split != expected)
        if len(wrong):
            row = int(wrong[0])
            raise DataError(
                f"{where}: interaction row {row} is in split {split[row]!r}, expected "
                f"{expected[row]!r} (last item test, second-to-last valid); prepare it again"
            )
        negatives = np.asarray(dataset.negatives, dtype=np.int64)
        if negatives.shape[0] != dataset.n_users:
            raise DataError(f"{where}: negatives.npy has {negatives.shape[0]} rows for {dataset.n_users} users")
        items = dataset.items
        return cls(
            name=dataset.name,
            n_users=dataset.n_users,
            n_items=dataset.n_items,
            items=inter["item"].to_numpy(dtype=np.int64),
            offsets=offsets,
            is_tail=items["is_tail"].to_numpy(dtype=bool),
            popularity=items["popularity"].to_numpy(dtype=np.int64),
            negatives=negatives,
        )

    def first_users(self, n: int) -> InteractionData:
        """The same data restricted to users 0..n-1 (item statistics unchanged), for quick passes."""
        n = min(n, self.n_users)
        return replace(self, n_users=n, offsets=self.offsets[: n + 1], negatives=self.negatives[:n])

    def target_index(self, split: Split) -> np.ndarray:
        """Row of each user's held-out item for `split`; for "train", one past the training part."""
        back = {"train": 2, "valid": 2, "test": 1}[split]
        return self.offsets[1:] - back

    def targets(self, split: HeldOut) -> np.ndarray:
        check_choice(split, HeldOut, "split")
        return self.items[self.target_index(split)]

    def windows(self, ends: np.ndarray, length: int) -> np.ndarray:
        """[n_users, length] of each user's last `length` items before row `ends[u]`, shifted by one
        and left-padded with PAD (the most recent item is always in the last column)."""
        rows = ends[:, None] - length + np.arange(length)[None, :]
        inside = rows >= self.offsets[:-1, None]
        return np.where(inside, self.items[np.maximum(rows, 0)] + 1, PAD)

    def context(self, split: Split, length: int) -> np.ndarray:
        """What a sequential model sees when predicting `split`'s target: the items before it."""
        return self.windows(self.target_index(split), length)

    def history(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        """(items, offsets) of every item each user interacted with before `split`'s target; full
        ranking excludes them. `split="train"` gives the training part."""
        ends = self.target_index(split)
        lengths = ends - self.offsets[:-1]
        rows = np.repeat(ends - np.cumsum(lengths), lengths) + np.arange(lengths.sum())
        return self.items[rows], np.concatenate([[0], np.cumsum(lengths)])

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of all training interactions, for the collaborative-filtering models."""
        items, offsets = self.history("train")
        return np.repeat(np.arange(self.n_users), np.diff(offsets)), items

    def sample_unseen(self, users: np.ndarray, rng: np.random.Generator, pool: np.ndarray | None = None) -> np.ndarray:
        """One uniformly drawn item per entry of `users` (any shape) outside that user's training
        items, from `pool` (default: every item); redraws only the collisions, so it stays
        vectorised."""
        seen = self.seen_keys

        def draw(size):
            return rng.integers(0, self.n_items, size=size) if pool is None else pool[rng.integers(0, len(pool), size)]

        out = draw(users.shape)
        bad = np.isin(users * self.n_items + out, seen)
        while bad.any():
            out[bad] = draw(int(bad.sum()))
            bad[bad] = np.isin(users[bad] * self.n_items + out[bad], seen)
        return out

    @cached_property
    def train_items(self) -> np.ndarray:
        """The items that occur in the training split, sorted."""
        return np.unique(self.train_pairs()[1])

    @cached_property
    def seen_keys(self) -> np.ndarray:
        """Sorted user * n_items + item of every training interaction."""
        users, items = self.train_pairs()
        return np.unique(users * self.n_items + items)


def resolve_features(dataset, features) -> FeatureTable | None:
    """None, a FeatureTable or a feature folder -> a table checked against `dataset`'s items
    (row count, item order, dataset name, finiteness; FeatureError otherwise)."""
    if features is None:
        return None
    if isinstance(features, (str, Path)):
        return FeatureTable.load(features, dataset)
    features.check(dataset)
    return features


@dataclass(frozen=True)
class ItemRepr:
    """How a recommender represents items: learnable ID embeddings (`ids`), the frozen features
    through a learned adapter (`features`), or both. Parsed once from its text ("id", "features",
    "id+features"), which `str` gives back, so results and run keys keep that text."""

    ids: bool
    features: bool

    def __post_init__(self):
        if not (self.ids or self.features):
            raise ValueError("an item representation needs ID embeddings, features or both")

    @classmethod
    def parse(cls, text: ItemReprName | ItemRepr) -> ItemRepr:
        if isinstance(text, ItemRepr):
            return text
        parts = check_choice(text, ItemReprName, "item_repr").split("+")
        return cls(ids="id" in parts, features="features" in parts)

    def __str__(self) -> str:
        return "+".join(name for name, used in (("id", self.ids), ("features", self.features)) if used)


def resolve_item_repr(item_repr: ItemReprName | ItemRepr | None, features: FeatureTable | None) -> ItemRepr:
    """Default: ID embeddings without features, features beside ID embeddings with them."""
    if item_repr is None:
        return ItemRepr(ids=True, features=features is not None)
    item_repr = ItemRepr.parse(item_repr)
    if item_repr.features and features is None:
        raise ValueError(f"item_repr='{item_repr}' needs a feature table; pass features or use item_repr='id'")
    return item_repr


class FeatureAdapter(nn.Module):
    """Frozen item features mapped to the model width by two linear maps (in -> 768 -> dim, no
    activation), the authors' adapter.

    The table is first divided by its mean row norm (one scalar, so its geometry is kept): LVLM
    hidden states and unit-norm sentence embeddings differ in scale by orders of magnitude, and
    this gives every extractor's features the same starting scale under the same initialisation.

    With no activation in between, the two maps compose: F W1^T W2^T + (W2 b1 + b2) = F (W2 W1)^T +
    b. Evaluating it in that order gives the same values and gradients for W1, W2 but costs
    in*dim instead of in*768 per item, which is what keeps a whole-table forward per batch cheap.
    """

    def __init__(self, features: np.ndarray, dim: int, hidden: int = ADAPTER_HIDDEN):
        super().__init__()
        table = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        scale = table.norm(dim=1).mean().clamp(min=1e-12)
        # Not persistent: checkpoints hold the learned maps, not the (large) frozen table.
        self.register_buffer("features", table / scale, persistent=False)
        self.inner = nn.Linear(table.shape[1], hidden)
        self.outer = nn.Linear(hidden, dim)

    def forward(self) -> torch.Tensor:
        weight = self.outer.weight @ self.inner.weight
        bias = self.outer.weight @ self.inner.bias + self.outer.bias
        return torch.addmm(bias, self.features, weight.T)


class ItemEncoder(nn.Module):
    """The [n_items, dim] item table: ID embeddings, adapted features, or their sum ("id+features";
    summed rather than concatenated so the width, and thus the model, stays the same)."""

    def __init__(self, n_items: int, dim: int, item_repr: ItemReprName | ItemRepr, features: np.ndarray | None = None):
        super().__init__()
        item_repr = ItemRepr.parse(item_repr)
        self.ids = nn.Embedding(n_items, dim) if item_repr.ids else None
        self.adapter = FeatureAdapter(features, dim) if item_repr.features else None

    def forward(self) -> torch.Tensor:
        parts = [m.weight if m is self.ids else m() for m in (self.ids, self.adapter) if m is not None]
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def content_channels(features: FeatureTable | None) -> dict[str, np.ndarray]:
    """{"text": ..., "image": ...}: the parts of the recommender-ready table (VBPR's and SLMRec's
    content channels), text first; a part of width zero (e.g. a dataset without images, or a
    `FeatureTable.part` view) is left out."""
    if features is None:
        return {}
    d_text, d_image = features.split_dims
    if d_text + d_image != features.features.shape[1]:
        raise FeatureError(
            f"feature table for {features.manifest.get('dataset')!r}: manifest dims say "
            f"{d_text} text + {d_image} image columns, features.npy has "
            f"{features.features.shape[1]}; export the table again"
        )
    parts = {"text": features.features[:, :d_text], "image": features.features[:, d_text : d_text + d_image]}
    return {name: p for name, p in parts.items() if p.shape[1] > 0}


def features_for(model: str, item_repr: ItemReprName | ItemRepr, features: FeatureTable | None) -> FeatureTable | None:
    """The table a model uses for `item_repr`: None for "id", else `features` (ValueError when
    item_repr is unknown or needs a table that is missing)."""
    item_repr = ItemRepr.parse(item_repr)
    if not item_repr.features:
        return None
    if features is None:
        raise ValueError(
            f"{model} with item_repr='{item_repr}' needs a feature table; pass features or use item_repr='id'"
        )
    return features


def check_item_repr(
    model: str, item_repr: ItemReprName | ItemRepr, features: FeatureTable | None
) -> dict[str, np.ndarray]:
    """The content channels a collaborative-filtering model gets for `item_repr`: none for "id",
    else the table's non-empty parts (ValueError when there is no table or it has no part)."""
    features = features_for(model, item_repr, features)
    if features is None:
        return {}
    channels = content_channels(features)
    if not channels:
        raise ValueError(
            f"{model} with item_repr='{item_repr}': the feature table has neither a text "
            "nor an image part (both widths are 0)"
        )
    return channels


class Tables(NamedTuple):
    """Everything an evaluation pass needs from a model, computed once: all item vectors and, for
    models that keep one vector per user, all user vectors."""

    items: torch.Tensor
    users: torch.Tensor | None = None


class Recommender(nn.Module):
    """Interface of every model (RecBole's pattern: one abstract contract, looked up by name in
    RECOMMENDERS). Scores are dot products of a user vector and an item vector, so evaluation is
    one matrix product per batch of users.

    Every model is built as `Model(data, item_repr="id", features=None, **params)`: `item_repr` is
    one of ITEM_REPRS (parsed once into an ItemRepr) and `features` a checked FeatureTable (or
    None), from which each model takes what it needs (sequential models the whole table, VBPR and
    SLMRec its text and image parts). A model's name is its key in RECOMMENDERS.

    - `train_batches(batch_size, rng)`: one epoch of training batches (tuples of tensors).
    - `loss(*batch)`: the scalar training loss of one batch.
    - `tables()`: all item vectors (and user vectors, for models that have them).
    - `user_vectors(users, context, tables)`: one vector per user; `context` is the [B, L] window of
      items before the target (shifted by one, PAD-padded), which sequential models encode.
    """

    context_length = 1  # how many preceding items `user_vectors` looks at
    batch_size = 256  # default training batch size (users for sequential models)
    # TrainConfig settings this model is trained with when the caller leaves them at TrainConfig's
    # defaults (see experiment.model_train_config), e.g. the authors' optimiser for SLMRec.
    train_defaults: dict = {}

    def __init__(self, data: InteractionData):
        super().__init__()
        self.data = data

    @property
    def name(self) -> str:
        """The model's name: its key in RECOMMENDERS (the class name for a class not registered)."""
        return RECOMMENDERS.name_of(type(self), default=type(self).__name__)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def loss(self, *batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tables(self) -> Tables:
        raise NotImplementedError

    def user_vectors(self, users: torch.Tensor, context: torch.Tensor, tables: Tables) -> torch.Tensor:
        raise NotImplementedError


RECOMMENDERS: Registry[type[Recommender]] = Registry(
    "recommender", builtins=tuple(f"sda_lib.recsys.{m}" for m in ("sasrec", "bert4rec", "vbpr", "slmrec"))
)


def shuffled_chunks(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
