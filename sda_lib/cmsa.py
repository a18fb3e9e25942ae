"""CMSA: the structure-aware soft-target alignment loss between text and image item embeddings.

With S = e_t e_vᵀ / τ, the target of row i is not the one-hot "item i" of InfoNCE but a soft
teacher built from how items resemble each other within each modality:

    T = softmax_j(τ/2 · (e_t e_tᵀ + e_v e_vᵀ))
    L = 1/(2N) · Σ_i [ KL(T_i,: ‖ softmax(S)_i,:) + KL(T_:,i ‖ softmax(Sᵀ)_i,:) ]

so items that look or read alike are not pushed apart as false negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Temperature(nn.Module):
    """τ, learnable or fixed, stored as log τ so that it stays positive; starts at 3 as in SDA."""

    def __init__(self, init: float = 3.0, learnable: bool = True):
        super().__init__()
        if not init > 0:
            raise ValueError(f"Temperature init must be > 0, got {init}")
        log_tau = torch.tensor(math.log(init))
        if learnable:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    def forward(self) -> torch.Tensor:
        return self.log_tau.exp()


def cmsa_loss(
    e_t: torch.Tensor,
    e_v: torch.Tensor,
    tau: float | torch.Tensor,
    normalize: bool = True,
    detach_teacher: bool = True,
) -> torch.Tensor:
    """The CMSA loss of N paired embeddings e_t, e_v [N, D].

    normalize=True: L2-normalise first, so dot products lie in [-1, 1] and τ means the same on
    every backbone whatever the scale of its hidden states.
    detach_teacher=True: the teacher is a target, not a prediction; left in the graph, the encoder
    could lower the loss by moving the target towards the student (collapse) instead of learning.

    The second term's target is T_:,i, the column-wise softmax of the teacher logits read as a
    row. The teacher logits are symmetric, so this equals T_i,:; it is still computed as a column
    softmax so the code follows the formula and not an identity it relies on.
    """
    e_t, e_v = _paired(e_t, e_v, normalize)
    tau = torch.as_tensor(tau, dtype=e_t.dtype, device=e_t.device)
    scores = e_t @ e_v.T / tau
    teacher_logits = (tau / 2) * (e_t @ e_t.T + e_v @ e_v.T)
    if detach_teacher:
        teacher_logits = teacher_logits.detach()
    log_teacher_rows = F.log_softmax(teacher_logits, dim=1)  # row i: T_i,:
    log_teacher_cols = F.log_softmax(teacher_logits, dim=0).T  # row i: T_:,i
    text_to_image = F.kl_div(F.log_softmax(scores, dim=1), log_teacher_rows, reduction="sum", log_target=True)
    image_to_text = F.kl_div(F.log_softmax(scores.T, dim=1), log_teacher_cols, reduction="sum", log_target=True)
    loss = (text_to_image + image_to_text) / (2 * e_t.shape[0])
    _check_finite(loss, tau, "CMSA")
    return loss


def infonce_loss(
    e_t: torch.Tensor, e_v: torch.Tensor, tau: float | torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """Symmetric InfoNCE (the "w/o soft target" ablation): item i's text matches item i's image,
    every other item is a negative; mean of the cross-entropies over S and Sᵀ."""
    e_t, e_v = _paired(e_t, e_v, normalize)
    tau = torch.as_tensor(tau, dtype=e_t.dtype, device=e_t.device)
    scores = e_t @ e_v.T / tau
    targets = torch.arange(e_t.shape[0], device=e_t.device)
    loss = (F.cross_entropy(scores, targets) + F.cross_entropy(scores.T, targets)) / 2
    _check_finite(loss, tau, "InfoNCE")
    return loss


def _paired(e_t: torch.Tensor, e_v: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if e_t.dim() != 2 or e_t.shape != e_v.shape:
        raise ValueError(
            f"e_t and e_v must both be [N, D] with the same shape (row i = item i), "
            f"got {tuple(e_t.shape)} and {tuple(e_v.shape)}"
        )
    if normalize:
        return F.normalize(e_t, dim=-1), F.normalize(e_v, dim=-1)
    return e_t, e_v


def _check_finite(loss: torch.Tensor, tau: torch.Tensor, name: str) -> None:
    """Stop training at the step that went wrong rather than let NaN spread into the adapter."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"{name} loss is {loss.item()} at tau={tau.item():.6g}: check the embeddings for NaN/inf "
            "(e.g. a bf16 overflow), that tau stays in a sane range, or lower the learning rate"
        )
