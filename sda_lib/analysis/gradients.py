"""Gradient conflict between the text and the image path of an adapter (the SDA paper's analysis).

On one batch, the CMSA loss is differentiated with respect to the adapter's B matrices in the query
and key projections (q_proj and k_proj; a Backbone's `attention` names them) of the last layer
twice: once with the image embeddings detached (only the text forward passes gradient) and once
with the text embeddings detached. The cosine of the two gradients says whether the modalities
pull the shared weights the same way (near 1) or against each other (near -1). A shared LoRA has
one B for both; MoDA's B is E column blocks, one per expert.

For a MoDA expert j both gradients are (alpha/r) w_m,j times a gate-free term, so the gate weights
rescale them but cannot turn them: the cosine of one expert moves only through what training does to
the rest of the network.

The paper (section 3.3.3) reports the cosine per projection, q_proj and k_proj, for LoRA's B and
MoDA's first expert; `paper_conflict_table` lays the measurements out that way (q+k together as
an extra row). The authors took the gradients inside their training forward (`analyze_gradient`
in their `llm/qwen_vl.py`, which computes the loss only in training mode), so `mode="train"`
measures with dropout on, as they did; "eval" (the default) is deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import plotly.express as px
import torch

from ..method import adapters, moda
from ..method.adapt import AdaptConfig, embed_rows, load_image, train_adapter
from ..method.backbones.targets import QWEN_ATTENTION
from ..method.cmsa import CMSAForm, cmsa_loss
from ..recsys.published import GRADIENT_COSINES, comparable
from ..utils.choices import check_choice
from ..utils.display import number

PROJECTIONS = ("q_proj", "k_proj")  # the labels of the query and key projections, whatever their names
BOTH = "+".join(PROJECTIONS)
ProbeMode = Literal["eval", "train"]  # the model's mode while the probe measures
PAPER_PARTS = {"lora": "B", "moda": "expert 0"}  # what section 3.3.3 reports for each adapter


@dataclass
class AdapterB:
    """One adapted projection's B [out, r] and the rank of each of its experts (None: shared LoRA)."""

    projection: str
    weight: torch.nn.Parameter
    expert_rank: int | None


def last_layer_b(model: torch.nn.Module, attention: tuple[str, str] = QWEN_ATTENTION) -> list[AdapterB]:
    """The B matrices of the query and key projections (labelled PROJECTIONS) in the last layer, for
    any adapter kind that exposes them (AdapterKind.last_b). `attention` holds a Backbone's regexes
    of the two projections."""
    patterns = dict(zip(PROJECTIONS, map(re.compile, attention)))
    name = adapters.kind_of(model)
    if name is None:
        raise ValueError("the model has no adapter: attach one first (sda_lib.method.adapters.attach)")
    kind, found = adapters.KINDS[name], {}
    for name, module in model.named_modules():
        for projection, pattern in patterns.items():
            match = pattern.fullmatch(name)
            b = match and kind.last_b(module)
            if b:
                found[int(match[1]), projection] = AdapterB(projection, *b)
    if not found and not any(kind.last_b(m) for m in model.modules()):
        raise ValueError(
            f"adapter kind {name!r} exposes no B matrix (AdapterKind.last_b), so the gradient-"
            "conflict probe does not apply to it; turn the probe off (conflict_every=0)"
        )
    if not found:
        raise ValueError(
            f"no adapter on the attention's query or key projections ({attention}): "
            "attach one first (sda_lib.method.adapters.attach)"
        )
    last = max(layer for layer, _ in found)
    missing = [p for p in PROJECTIONS if (last, p) not in found]
    if missing:
        raise ValueError(f"layer {last} has no adapter on {missing}; the analysis needs all of {PROJECTIONS}")
    return [found[last, p] for p in PROJECTIONS]


def path_gradients(
    backbone,
    texts: list[dict],
    images: list,
    tau: float | torch.Tensor,
    weights: list[torch.Tensor],
    form: CMSAForm = "authors",
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gradients of the CMSA loss on one batch w.r.t. `weights`, through the text path only (image
    embeddings detached) and through the image path only (text embeddings detached).

    The two forwards build disjoint graphs, so each gradient costs one backward; their sum is the
    gradient of the full loss. Leaves `.grad` untouched, so it can run between optimiser steps.
    """
    e_t = embed_rows(backbone, moda.TEXT, texts=texts)
    e_v = embed_rows(backbone, moda.IMAGE, images=images)
    text_path = torch.autograd.grad(cmsa_loss(e_t, e_v.detach(), tau, form), weights)
    image_path = torch.autograd.grad(cmsa_loss(e_t.detach(), e_v, tau, form), weights)
    return list(text_path), list(image_path)


def expert_blocks(b: torch.Tensor, expert_rank: int | None) -> dict[str, torch.Tensor]:
    """The whole B and, for MoDA, each expert's columns: {"B": b, "expert 0": b[:, 0:rank], ...}."""
    parts = {"B": b}
    if expert_rank is not None:
        for j in range(b.shape[1] // expert_rank):
            parts[f"expert {j}"] = b[:, j * expert_rank : (j + 1) * expert_rank]
    return parts


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two tensors read as flat vectors; NaN when either is zero (no direction)."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else float("nan")


def conflict(
    backbone,
    texts: list[dict],
    images: list,
    tau: float | torch.Tensor,
    form: CMSAForm = "authors",
    mode: ProbeMode = "eval",
) -> pd.DataFrame:
    """Text-path vs image-path gradient cosine on one batch, for q_proj, k_proj and both together,
    over the whole B and each expert. `mode` "eval" (no dropout) is deterministic; "train"
    measures with dropout on, as the authors did inside their training forward.

    Columns: projection, part, cosine, norm_text, norm_image.
    """
    check_choice(mode, ProbeMode, "mode")
    model = backbone.model
    targets = last_layer_b(model, backbone.attention)
    was_training = model.training
    model.train(mode == "train")
    try:
        grads_t, grads_v = path_gradients(backbone, texts, images, tau, [b.weight for b in targets], form)
    finally:
        model.train(was_training)
    text = {b.projection: expert_blocks(g, b.expert_rank) for b, g in zip(targets, grads_t)}
    image = {b.projection: expert_blocks(g, b.expert_rank) for b, g in zip(targets, grads_v)}
    for side in (text, image):
        side[BOTH] = {part: torch.cat([side[p][part].flatten() for p in PROJECTIONS]) for part in side[PROJECTIONS[0]]}
    return pd.DataFrame(
        [
            {
                "projection": projection,
                "part": part,
                "cosine": cosine(text[projection][part], image[projection][part]),
                "norm_text": float(text[projection][part].norm()),
                "norm_image": float(image[projection][part].norm()),
            }
            for projection in text
            for part in text[projection]
        ]
    )


class ConflictProbe:
    """`train_adapter`'s on_step hook that measures `conflict` on one fixed probe batch (the paper's
    debug batch) after the first optimiser step, every `every` steps and after the last, so the
    measurement rides along the main adaptation run.

    Measuring leaves `.grad` alone, so the adapter trains as it would unobserved (in "train" mode
    the probe's dropout draws advance the generator). `frame(losses)` gives the tidy result: adapter,
    step, loss (of that step), tau, projection, part, cosine, norm_text, norm_image.
    """

    COLUMNS = ["adapter", "step", "loss", "tau", "projection", "part", "cosine", "norm_text", "norm_image"]

    def __init__(
        self,
        backbone,
        dataset,
        config: AdaptConfig,
        every: int = 10,
        probe_size: int | None = None,
        mode: ProbeMode = "eval",
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.mode = check_choice(mode, ProbeMode, "mode")
        fields, paths = dataset.item_fields(), dataset.image_paths()
        probe = np.random.default_rng([config.seed, 7]).choice(
            dataset.n_items, size=min(probe_size or config.batch_size, dataset.n_items), replace=False
        )
        self.texts, self.images = [fields[i] for i in probe], [load_image(paths[i]) for i in probe]
        self.backbone, self.config, self.every, self.frames = backbone, config, every, []

    def __call__(self, step: int, objective) -> None:
        if step == 1 or step % self.every == 0 or step == self.config.steps:
            tau = objective.temperature().detach()
            frame = conflict(self.backbone, self.texts, self.images, tau, self.config.cmsa_form, self.mode)
            self.frames.append(frame.assign(adapter=self.config.adapter, step=step, tau=float(tau)))

    def frame(self, losses: pd.DataFrame) -> pd.DataFrame:
        """The measurements joined with the loss of their step (train_adapter's loss.csv)."""
        return pd.concat(self.frames, ignore_index=True).merge(losses[["step", "loss"]], on="step", how="left")[
            self.COLUMNS
        ]


def track_conflict(
    backbone,
    dataset,
    config: AdaptConfig,
    out: str | Path,
    every: int = 10,
    probe_size: int | None = None,
    progress: bool = True,
    mode: str = "eval",
) -> pd.DataFrame:
    """Train a fresh `config.adapter` with train_adapter (saved in `out`, from scratch) under a
    `ConflictProbe` measuring in `mode`; returns its frame."""
    probe = ConflictProbe(backbone, dataset, config, every, probe_size, mode)
    out = Path(out)
    train_adapter(backbone, dataset, config, out, resume=False, progress=progress, on_step=probe)
    return probe.frame(pd.read_csv(out / "loss.csv"))


def conflict_summary(df: pd.DataFrame, projection: str = BOTH) -> pd.DataFrame:
    """Per adapter and part: the cosine at the first and the last measured step and its mean over
    all of them, for one projection (default q_proj and k_proj together)."""
    rows = df[df["projection"] == projection].sort_values("step")
    grouped = rows.groupby(["adapter", "part"])["cosine"]
    return pd.DataFrame({"first": grouped.first(), "last": grouped.last(), "mean": grouped.mean()})


def paper_conflict_table(df: pd.DataFrame) -> pd.DataFrame:
    """Section 3.3.3's table from `track_conflict` frames: rows (projection, adapter) for q_proj
    and k_proj (as the paper prints them) and q+k together (an extra), adapter "lora" (its B) and
    "moda" (its first expert); columns first, last and mean cosine over the measured steps, and
    how many steps were measured."""
    rows = []
    for projection in (*PROJECTIONS, BOTH):
        for adapter, part in PAPER_PARTS.items():
            picked = df[(df["projection"] == projection) & (df["adapter"] == adapter) & (df["part"] == part)]
            picked = picked.sort_values("step")["cosine"]
            rows.append(
                {
                    "projection": projection,
                    "adapter": adapter,
                    "part": part,
                    "first": picked.iloc[0] if len(picked) else np.nan,
                    "last": picked.iloc[-1] if len(picked) else np.nan,
                    "mean": picked.mean() if len(picked) else np.nan,
                    "steps": len(picked),
                }
            )
    table = pd.DataFrame(rows).set_index(["projection", "adapter"])
    table.attrs["notes"] = [
        f"cosine of the text-path and image-path gradients of B in the last layer: LoRA's whole B, MoDA's first "
        f"expert; the paper reports {' and '.join(PROJECTIONS)} separately ({BOTH} together is an extra)."
    ]
    return table


def _moda_vs_lora(df: pd.DataFrame, projection: str) -> tuple[pd.Series, pd.Series, pd.Series, float]:
    """MoDA's first-expert and the shared LoRA's cosine per measured step, their paired difference
    and two standard errors of its mean (the margin a difference must exceed to count)."""
    rows = df[df["projection"] == projection]
    series = {}
    for adapter, part in (("moda", "expert 0"), ("lora", "B")):
        picked = rows[(rows["adapter"] == adapter) & (rows["part"] == part)]
        if picked.empty:
            raise ValueError(
                f"no {adapter} {part!r} rows for projection {projection!r}: track both adapters "
                "with track_conflict first"
            )
        series[adapter] = picked.set_index("step")["cosine"]
    diff = (series["moda"] - series["lora"]).dropna()
    margin = 2 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("inf")
    return series["moda"], series["lora"], diff, margin


def conflict_statement(df: pd.DataFrame, projection: str = BOTH) -> str:
    """One plain sentence comparing MoDA's first expert with the shared LoRA over the measured
    steps, computed from the numbers: MoDA counts as higher or lower only when the mean paired
    difference exceeds twice its standard error."""
    moda_cos, lora_cos, diff, margin = _moda_vs_lora(df, projection)
    numbers = (
        f"mean text/image gradient cosine over training ({projection}, last layer): MoDA first expert "
        f"{moda_cos.mean():.3f}, shared LoRA {lora_cos.mean():.3f}; MoDA higher at "
        f"{int((diff > 0).sum())} of {len(diff)} measured steps, mean difference {diff.mean():+.3f} "
        f"(± {margin:.3f}, two standard errors)"
    )
    if diff.mean() > margin:
        return (
            f"MoDA's first expert shows less gradient conflict than the shared LoRA, as the paper reports: {numbers}."
        )
    if diff.mean() < -margin:
        verdict = "MoDA's first expert shows MORE gradient conflict than the shared LoRA"
    else:
        verdict = "MoDA's first expert is NOT clearly higher than the shared LoRA (no difference beyond the noise)"
    return f"On this backbone {verdict}; the paper's finding does not reproduce here: {numbers}."


def conflict_finding(df: pd.DataFrame, dataset: str, projection: str = BOTH) -> dict:
    """The report's one-line verdict on gradient conflict (`report.save_finding`): MoDA's first
    expert against the shared LoRA as `conflict_statement` decides it, with section 3.3.3's
    cosines on the paper's datasets."""
    moda_cos, lora_cos, diff, margin = _moda_vs_lora(df, projection)
    if diff.mean() > margin:
        verdict = "less conflict with MoDA, as the paper"
    elif diff.mean() < -margin:
        verdict = "MORE conflict with MoDA, unlike the paper"
    else:
        verdict = "no clear difference, unlike the paper"
    published = GRADIENT_COSINES
    paper = (
        None
        if comparable([dataset])
        else "; ".join(
            f"{p}: MoDA {number(published['moda'][p])}, LoRA {number(published['lora'][p])}" for p in PROJECTIONS
        )
    )
    return {
        "mechanism": "gradient conflict",
        "verdict": verdict,
        "measured": f"mean text/image gradient cosine ({projection}, last layer): MoDA first expert "
        f"{number(moda_cos.mean())}, shared LoRA {number(lora_cos.mean())} over {len(diff)} steps",
        "paper": paper,
    }


def conflict_figure(df: pd.DataFrame):
    """Cosine vs step, one line per adapter and part, one panel per projection."""
    data = df.assign(series=df["adapter"] + " · " + df["part"])
    fig = px.line(
        data,
        x="step",
        y="cosine",
        color="series",
        facet_col="projection",
        markers=True,
        category_orders={"projection": [*PROJECTIONS, BOTH]},
        title="Cosine between the text-path and image-path gradients of B (last decoder layer)",
    )
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.for_each_annotation(lambda a: a.update(text=a.text.removeprefix("projection=")))
    return fig


def gate_heatmap(model: torch.nn.Module):
    """MoDA expert weights w_m of every adapted layer, one panel per modality."""
    gates = moda.gate_weights(model)
    if not gates:
        raise ValueError("the model has no MoDA layers, hence no gate weights")
    names = [n.removeprefix("model.").replace("language_model.", "") for n in gates]
    cube = torch.stack(list(gates.values()), dim=1).numpy()  # [modality, layer, expert]
    fig = px.imshow(
        cube,
        facet_col=0,
        zmin=0,
        zmax=1,
        color_continuous_scale="Viridis",
        aspect="auto",
        labels={"x": "expert", "y": "layer", "color": "weight"},
        y=names,
        x=[f"expert {j}" for j in range(cube.shape[2])],
        title="MoDA gate weights per layer",
    )
    for annotation, label in zip(fig.layout.annotations, ("text", "image", *map(str, range(2, len(cube))))):
        annotation.text = label
    fig.update_layout(height=max(300, 22 * len(names) + 120))
    return fig
