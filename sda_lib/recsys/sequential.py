"""The transformer shared by SASRec and BERT4Rec, laid out as in S3-Rec's code (the implementation
behind the reference numbers): item + learned position embedding, LayerNorm, dropout, then
post-LayerNorm blocks of self-attention and a 4x GELU feed-forward; weights drawn from N(0, 0.02).

Both models can add the SDA authors' alignment loss (RaoZhongtao/SDA models/LLMEmb.py): the
adapted features of the batch's target items are pulled towards the same items' embeddings in a
separately trained ID model of the same kind and width, frozen, by the CMSA-style soft-target
loss with a fixed temperature (`align_items`, `align_weight`, `align_tau`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..method.cmsa import PROJECTED_DIM, cmsa_loss
from ..method.features import FeatureTable
from ..utils.choices import check_choice
from .base import PAD, InteractionData, ItemEncoder, ItemRepr, ItemReprName, Recommender, Split, Tables, features_for
from .sampling import sample_outside, sequence_keys

LN_EPS = 1e-12
INIT_STD = 0.02
# Where sampled training negatives come from: outside the user's training items (the SDA authors,
# BERT4Rec's and SASRec's papers) or outside the user's whole sequence, validation and test items
# included (S3-Rec's code; a mild leak of the held-out items into training).
Negatives = Literal["train", "sequence"]
NEGATIVES: dict[Negatives, Split] = {"train": "train", "sequence": "test"}
# The training objective of SASRec and BERT4Rec: binary cross-entropy against sampled negatives, or
# softmax cross-entropy over all items.
SequenceLoss = Literal["bce", "ce"]


class AttentionGroup(NamedTuple):
    """Rows of a batch whose windows fit in the same `width`: their packed tokens `tokens`, the
    slots those tokens take in the group's [rows, width] grid, and which keys each query sees."""

    tokens: slice
    rows: int
    width: int
    slots: torch.Tensor
    allowed: torch.Tensor  # [rows, 1, width, width] bool


class TransformerBlock(nn.Module):
    """Self-attention and feed-forward, each followed by dropout, residual and LayerNorm.

    S3-Rec applies dropout to the attention probabilities and to each sub-layer's output, but not
    inside the feed-forward (torch's TransformerEncoderLayer does, which differs at p = 0.5).

    Tokens arrive packed, [N, dim]: only real positions, so every per-token layer skips the padding
    (about nine tenths of a 50-long window on Amazon data). Attention unpacks them group by group
    into grids just wide enough for the group's windows; padding keys are masked, so the result is
    that of attention over the full padded batch at a fraction of the cost.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not a multiple of n_heads {n_heads}")
        self.n_heads, self.p = n_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, groups: list[AttentionGroup], last: torch.Tensor | None = None) -> torch.Tensor:
        """`last` (the packed index of each row's last token, rows in group order): only those
        tokens come out, the others serving as keys and values; what reading out the user vector
        needs from the final block, without its queries, projection and feed-forward elsewhere."""
        dim = x.shape[1]
        qkv = self.qkv(x)
        attended = []
        for g in groups:
            grid = qkv.new_zeros(g.rows * g.width, 3 * dim).index_copy(0, g.slots, qkv[g.tokens])
            q, k, v = grid.view(g.rows, g.width, 3, self.n_heads, dim // self.n_heads).permute(2, 0, 3, 1, 4)
            allowed = g.allowed
            if last is not None:  # the last query of every row (windows end in their last column)
                q, allowed = q[:, :, -1:], allowed[:, :, -1:]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.p if self.training else 0.0)
            out = out.transpose(1, 2).reshape(-1, dim)
            attended.append(out if last is not None else out[g.slots])
        if last is not None:
            x = x[last]
        x = self.norm1(x + self.drop(self.proj(torch.cat(attended))))
        return self.norm2(x + self.drop(self.ffn(x)))


class SequentialRecommender(Recommender):
    """A transformer over left-padded item windows; subclasses choose the attention direction, the
    training objective and how the user vector is read out. `negatives` names the exclusion set of
    sampled training negatives (see NEGATIVES).

    Alignment (off while `align_weight` is 0): `align_items` is the frozen [n_items, dim] item
    table of a pretrained ID model (an array or a .npy file, e.g. from `presets.pretrain_id_items`).
    """

    causal = True
    n_special = 0  # extra tokens above the items (BERT4Rec's mask)

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
        negatives: Negatives = "train",
        align_items: np.ndarray | str | Path | None = None,
        align_weight: float = 0.0,
        align_tau: float = 2.0,
    ):
        check_choice(negatives, Negatives, "negatives")
        item_repr = ItemRepr.parse(item_repr)
        super().__init__(data)
        self.max_len = max_len
        self.negatives = negatives
        self.excluded = sequence_keys(data, NEGATIVES[negatives])
        table = features_for(self.name, item_repr, features)
        self.item_encoder = ItemEncoder(data.n_items, dim, item_repr, None if table is None else table.features)
        self.special = nn.Parameter(torch.empty(self.n_special, dim))
        self.position = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, n_heads, dropout) for _ in range(n_layers))
        self.apply(_init_weights)
        nn.init.normal_(self.special, std=INIT_STD)
        self.align_weight, self.align_tau = align_weight, align_tau
        if align_weight:
            table = _alignment_table(align_items, data.n_items, dim, item_repr, align_weight, align_tau)
            self.register_buffer("align_items", table, persistent=False)  # data, not a learned weight

    @property
    def context_length(self) -> int:
        return self.max_len

    def tables(self) -> Tables:
        return Tables(items=self.item_encoder())

    def with_alignment(self, loss: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`loss` plus align_weight x the alignment loss over the batch's `targets` (0-based item
        indices, repeats kept as the authors keep them); `items` is this pass's item table."""
        if not self.align_weight:
            return loss
        adapted = items if self.item_encoder.ids is None else self.item_encoder.adapter()
        # The authors' Contrastive_Loss2(reference, adapted) is cmsa_loss "authors" with the two
        # sides in this order (widths up to 768 are not projected).
        aligned = cmsa_loss(adapted[targets], self.align_items[targets], self.align_tau, form="authors")
        return loss + self.align_weight * aligned

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One negative token (item + 1) per entry of `users`, outside the `negatives` set."""
        return sample_outside(self.excluded, self.data.n_items, users, rng) + 1

    def encode(self, tokens: torch.Tensor, items: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Hidden states of the real tokens of windows `tokens` [B, L] (PAD = 0, item i = i + 1,
        then the specials; left-padded), packed in row-major order: row j of the result belongs to
        `tokens[tokens != PAD][j]`. `last_only`: [B, dim], the state at each window's last position."""
        length = tokens.shape[1]
        lengths = (tokens != PAD).sum(1)
        order = torch.argsort(lengths, stable=True)  # short windows first, so groups are contiguous
        tokens, lengths = tokens[order], lengths[order]
        real = tokens != PAD
        where = real.flatten().nonzero().squeeze(1)
        table = torch.cat([items.new_zeros(1, items.shape[1]), items, self.special])
        positions = self.position.weight[self.max_len - length :]  # the latest item is always last
        x = self.drop(self.norm(table[tokens[real]] + positions[where % length]))
        groups = self._groups(real, lengths)
        for i, block in enumerate(self.blocks):
            final = last_only and i == len(self.blocks) - 1
            x = block(x, groups, last=torch.cumsum(lengths, 0) - 1 if final else None)
        if last_only:
            return x[torch.argsort(order)]
        # Back from length-sorted rows to the caller's row-major order.
        return x[torch.argsort(order.repeat_interleave(lengths) * length + where % length)]

    def _groups(self, real: torch.Tensor, lengths: torch.Tensor) -> list[AttentionGroup]:
        """Cut length-sorted rows into groups of window widths 4, 8, 16, ... (at most L)."""
        length = real.shape[1]
        widths = (2 ** torch.ceil(torch.log2(lengths.clamp(min=4).float()))).long().clamp(max=length)
        bounds = torch.cumsum(lengths, 0).tolist()
        groups, row = [], 0
        for width, rows in zip(*torch.unique_consecutive(widths, return_counts=True)):
            width, rows = int(width), int(rows)
            keys = real[row : row + rows, length - width :]
            allowed = keys[:, None, None, :] | torch.eye(width, dtype=torch.bool, device=real.device)
            if self.causal:
                allowed = allowed & torch.ones(width, width, dtype=torch.bool, device=real.device).tril()
            start = bounds[row - 1] if row else 0
            groups.append(
                AttentionGroup(
                    slice(start, bounds[row + rows - 1]), rows, width, keys.flatten().nonzero().squeeze(1), allowed
                )
            )
            row += rows
        return groups

    def encode_last(self, tokens: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Hidden state [B, dim] at the last position of each window (which must be real)."""
        if (tokens[:, -1] == PAD).any():
            raise ValueError("every window must end with a real token (an item or a special token)")
        return self.encode(tokens, items, last_only=True)


def sampled_bce(
    hidden: torch.Tensor, items: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy of each row of `hidden` against its positive item and one sampled
    negative (0-based indices into `items`), averaged over rows: -log σ(h·e_p) - log(1 - σ(h·e_n)),
    written stably. S3-Rec's and the SDA authors' objective for both models."""
    pos = (hidden * items[positives]).sum(-1)
    neg = (hidden * items[negatives]).sum(-1)
    return (F.softplus(-pos) + F.softplus(neg)).mean()


def _alignment_table(table, n_items: int, dim: int, item_repr: ItemRepr, weight: float, tau: float) -> torch.Tensor:
    """The frozen ID item table the alignment loss pulls the adapted features towards, checked."""
    where = f"alignment (align_weight={weight})"
    if not item_repr.features:
        raise ValueError(f"{where} aligns adapted features, but item_repr='{item_repr}' has none")
    if table is None:
        raise ValueError(
            f"{where} needs align_items: a pretrained ID model's item table "
            "(array or .npy file, e.g. presets.pretrain_id_items)"
        )
    if not tau > 0:
        raise ValueError(f"{where}: align_tau must be > 0, got {tau}")
    if dim > PROJECTED_DIM:
        raise ValueError(
            f"{where}: dim {dim} > {PROJECTED_DIM} would be group-averaged by cmsa_loss, "
            "which the authors' recommender-side loss does not do"
        )
    array = np.load(table) if isinstance(table, (str, Path)) else np.asarray(table)
    if array.shape != (n_items, dim):
        raise ValueError(
            f"{where}: align_items has shape {array.shape}, expected ({n_items}, {dim}) "
            "(one row per item, the model's width)"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: align_items has non-finite values")
    return torch.as_tensor(array, dtype=torch.float32)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
