"""CMSA: the structure-aware soft-target alignment loss between text and image item embeddings.

With S = e_t e_vᵀ / τ, the target of row i is not the one-hot "item i" of InfoNCE but a soft
teacher built from how items resemble each other within each modality:

    T = softmax_j(τ/2 · (e_t e_tᵀ + e_v e_vᵀ))
    L = 1/(2N) · Σ_i [ KL(T_i,: ‖ softmax(S)_i,:) + KL(T_:,i ‖ softmax(Sᵀ)_i,:) ]

so items that look or read alike are not pushed apart as false negatives. `cmsa_loss` computes it
as the authors' code does (the default), as equation 3 is printed, or in the workbench's
normalised, detached form; docs/FIDELITY.md compares the three.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.choices import check_choice

CMSAForm = Literal["authors", "paper", "stable"]
PROJECTED_DIM = 768


class Temperature(nn.Module):
    """τ, learnable or fixed, starting at 3 as in SDA. `log_space` stores log τ so that τ stays
    positive ("stable"); the authors train τ itself, a plain parameter."""

    def __init__(self, init: float = 3.0, learnable: bool = True, log_space: bool = False):
        super().__init__()
        if not init > 0:
            raise ValueError(f"Temperature init must be > 0, got {init}")
        self.log_space = log_space
        # 1-d, not a scalar: DeepSpeed broadcasts parameters viewed as bytes, which a 0-d tensor cannot be
        value = torch.tensor([math.log(init) if log_space else float(init)])
        if learnable:
            self.value = nn.Parameter(value)
        else:
            self.register_buffer("value", value)

    def forward(self) -> torch.Tensor:
        tau = self.value[0]
        return tau.exp() if self.log_space else tau


def group_mean(x: torch.Tensor, d: int = PROJECTED_DIM) -> torch.Tensor:
    """The authors' parameter-free projection to d_m = 768: contiguous feature groups averaged, the
    first groups one feature narrower when d does not divide the width (3584 -> 256 groups of 4,
    then 512 groups of 5, exactly their hard-coded split). Widths up to d pass unchanged."""
    width = x.shape[-1]
    if width <= d:
        return x
    q, wide = divmod(width, d)
    split = (d - wide) * q
    narrow = x[..., :split].unflatten(-1, (d - wide, q)).mean(-1)
    return torch.cat([narrow, x[..., split:].unflatten(-1, (wide, q + 1)).mean(-1)], dim=-1)


def cmsa_loss(
    e_t: torch.Tensor, e_v: torch.Tensor, tau: float | torch.Tensor, form: CMSAForm = "authors"
) -> torch.Tensor:
    """The CMSA loss of N paired embeddings e_t, e_v [N, D], in one of three forms.

    With S = e_t e_vᵀ / τ and the row-softmaxed teacher T = softmax_j(τ/2 (e_t e_tᵀ + e_v e_vᵀ)):

    "authors" (their Contrastive_Loss, the default): embeddings projected by `group_mean`, not
        normalised; the teacher stays in the graph; cross-entropy against soft targets, the image
        rows of Sᵀ against T and the text rows of S against Tᵀ (the plain transpose, whose rows
        need not sum to 1): L = -1/(2N) Σ_ij [T_ij log softmax(Sᵀ)_ij + T_ji log softmax(S)_ij].
    "paper" (equation 3 as printed): projected, not normalised, teacher in the graph,
        L = 1/(2N) Σ_i [KL(T_i,: ‖ softmax(S)_i,:) + KL(T_:,i ‖ softmax(Sᵀ)_i,:)], T_:,i read
        literally as column i of T.
    "stable" (the workbench's own): L2-normalised, so τ means the same on every backbone whatever
        the scale of its hidden states (unnormalised LVLM states make T nearly one-hot and S huge);
        teacher detached, so the encoder cannot lower the loss by moving its own target; the KL of
        equation 3 with T_:,i taken as the column softmax, a distribution (equal to T_i,: here,
        since the teacher logits are symmetric).
    """
    check_choice(form, CMSAForm, "CMSA form")
    e_t, e_v = _paired(e_t, e_v, normalize=form == "stable")
    if form != "stable":
        e_t, e_v = group_mean(e_t), group_mean(e_v)
    tau = torch.as_tensor(tau, dtype=e_t.dtype, device=e_t.device)
    scores = e_t @ e_v.T / tau
    teacher_logits = (tau / 2) * (e_t @ e_t.T + e_v @ e_v.T)
    log_text_rows, log_image_rows = F.log_softmax(scores, dim=1), F.log_softmax(scores.T, dim=1)
    if form == "stable":
        log_teacher = F.log_softmax(teacher_logits.detach(), dim=1)
        log_columns = F.log_softmax(teacher_logits.detach(), dim=0).T
        loss = F.kl_div(log_text_rows, log_teacher, reduction="sum", log_target=True) + F.kl_div(
            log_image_rows, log_columns, reduction="sum", log_target=True
        )
    else:
        teacher = torch.softmax(teacher_logits, dim=1)
        if form == "authors":
            loss = -((teacher * log_image_rows).sum() + (teacher.T * log_text_rows).sum())
        else:
            log_teacher = torch.log_softmax(teacher_logits, dim=1)
            loss = (teacher * (log_teacher - log_text_rows)).sum() + (
                teacher.T * (log_teacher.T - log_image_rows)
            ).sum()
    loss = loss / (2 * e_t.shape[0])
    _check_finite(loss, tau, "CMSA")
    return loss


def infonce_loss(
    e_t: torch.Tensor, e_v: torch.Tensor, tau: float | torch.Tensor, normalize: bool = True, project: bool = True
) -> torch.Tensor:
    """Symmetric InfoNCE (the "w/o soft target" ablation): item i's text matches item i's image,
    every other item is a negative; mean of the cross-entropies over S and Sᵀ. As the authors'
    InfoNCE_Loss is called, the embeddings are first projected by `group_mean` (`project`), then
    L2-normalised (`normalize`)."""
    if project:
        _paired(e_t, e_v, normalize=False)
        e_t, e_v = group_mean(e_t), group_mean(e_v)
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
