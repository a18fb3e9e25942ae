"""The transformer shared by SASRec and BERT4Rec, laid out as in S3-Rec's code (the implementation
behind the reference numbers): item + learned position embedding, LayerNorm, dropout, then
post-LayerNorm blocks of self-attention and a 4x GELU feed-forward; weights drawn from N(0, 0.02).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import PAD, InteractionData, ItemEncoder, Recommender, Tables

LN_EPS = 1e-12
INIT_STD = 0.02


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

    def forward(self, x: torch.Tensor, groups: list[AttentionGroup]) -> torch.Tensor:
        dim = x.shape[1]
        qkv = self.qkv(x)
        attended = []
        for g in groups:
            grid = qkv.new_zeros(g.rows * g.width, 3 * dim).index_copy(0, g.slots, qkv[g.tokens])
            q, k, v = grid.view(g.rows, g.width, 3, self.n_heads, dim // self.n_heads).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=g.allowed,
                                                 dropout_p=self.p if self.training else 0.0)
            attended.append(out.transpose(1, 2).reshape(g.rows * g.width, dim)[g.slots])
        x = self.norm1(x + self.drop(self.proj(torch.cat(attended))))
        return self.norm2(x + self.drop(self.ffn(x)))


class SequentialRecommender(Recommender):
    """A transformer over left-padded item windows; subclasses choose the attention direction, the
    training objective and how the user vector is read out."""

    causal = True
    n_special = 0  # extra tokens above the items (BERT4Rec's mask)

    def __init__(self, data: InteractionData, item_repr: str = "id", features: np.ndarray | None = None,
                 dim: int = 64, n_layers: int = 2, n_heads: int = 2, max_len: int = 50, dropout: float = 0.5):
        super().__init__(data)
        self.max_len = max_len
        self.item_encoder = ItemEncoder(data.n_items, dim, item_repr, features)
        self.special = nn.Parameter(torch.empty(self.n_special, dim))
        self.position = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, n_heads, dropout) for _ in range(n_layers))
        self.apply(_init_weights)
        nn.init.normal_(self.special, std=INIT_STD)

    @property
    def context_length(self) -> int:
        return self.max_len

    def tables(self) -> Tables:
        return Tables(items=self.item_encoder())

    def encode(self, tokens: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Hidden states of the real tokens of windows `tokens` [B, L] (PAD = 0, item i = i + 1,
        then the specials; left-padded), packed in row-major order: row j of the result belongs to
        `tokens[tokens != PAD][j]`."""
        length = tokens.shape[1]
        lengths = (tokens != PAD).sum(1)
        order = torch.argsort(lengths, stable=True)  # short windows first, so groups are contiguous
        tokens, lengths = tokens[order], lengths[order]
        real = tokens != PAD
        where = real.flatten().nonzero().squeeze(1)
        table = torch.cat([items.new_zeros(1, items.shape[1]), items, self.special])
        positions = self.position.weight[self.max_len - length:]  # the latest item is always last
        x = self.drop(self.norm(table[tokens[real]] + positions[where % length]))
        groups = self._groups(real, lengths)
        for block in self.blocks:
            x = block(x, groups)
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
            keys = real[row:row + rows, length - width:]
            allowed = keys[:, None, None, :] | torch.eye(width, dtype=torch.bool, device=real.device)
            if self.causal:
                allowed = allowed & torch.ones(width, width, dtype=torch.bool, device=real.device).tril()
            start = bounds[row - 1] if row else 0
            groups.append(AttentionGroup(slice(start, bounds[row + rows - 1]), rows, width,
                                         keys.flatten().nonzero().squeeze(1), allowed))
            row += rows
        return groups

    def encode_last(self, tokens: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Hidden state [B, dim] at the last position of each window (which must be real)."""
        if (tokens[:, -1] == PAD).any():
            raise ValueError("every window must end with a real token (an item or a special token)")
        hidden = self.encode(tokens, items)
        return hidden[(tokens != PAD).sum(1).cumsum(0) - 1]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
