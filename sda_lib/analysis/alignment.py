"""How well text and image embeddings of the same items agree: retrieval, pair cosine and
neighbourhood overlap. Used by the zero-shot, adaptation and alignment notebooks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..utils.display import change


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cross_modal_ranks(e_t: np.ndarray, e_v: np.ndarray) -> np.ndarray:
    """0-based rank of each item's own image among all images, queried by its text (cosine).

    Ties count against the item (a strict rank would flatter a collapsed embedding).
    """
    sim = l2_normalise(e_t) @ l2_normalise(e_v).T
    own = np.diag(sim)[:, None]
    return (sim >= own).sum(axis=1) - 1


def knn(x: np.ndarray, k: int, queries: np.ndarray | None = None, exclude_self: bool = True) -> np.ndarray:
    """Indices of the k nearest rows of `x` (cosine) for each query row (default: x itself)."""
    xn = l2_normalise(x)
    qn = xn if queries is None else l2_normalise(queries)
    sim = qn @ xn.T
    if exclude_self and queries is None:
        np.fill_diagonal(sim, -np.inf)
    part = np.argpartition(-sim, kth=min(k, sim.shape[1] - 1) - 1, axis=1)[:, :k]
    order = np.take_along_axis(sim, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def neighbourhood_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of shared neighbours between two kNN index matrices of the same shape."""
    k = a.shape[1]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def alignment_report(e_t: np.ndarray, e_v: np.ndarray, k: int = 10) -> dict:
    """Text-to-image Recall@k, matched-pair cosine (raw, its gap over random pairs, and after
    centring each modality), and the overlap of intra-modal with cross-modal neighbourhoods.

    Mean-pooled LVLM states share one dominant direction, so raw cosines of all pairs, matched or
    not, sit close together; the gap and the centred cosine show what is specific to the pair.
    """
    t, v = l2_normalise(e_t), l2_normalise(e_v)
    n = len(t)
    pair_cos = (t * v).sum(axis=1)
    mean_all = float((t.sum(0) @ v.sum(0)) / (n * n))
    tc, vc = l2_normalise(e_t - e_t.mean(0)), l2_normalise(e_v - e_v.mean(0))
    ranks = cross_modal_ranks(t, v)
    nn_t, nn_v = knn(t, k), knn(v, k)
    nn_x = knn(v, k, queries=t, exclude_self=False)
    return {
        f"t2i_recall@{k}": float((ranks < k).mean()),
        "t2i_mean_rank": float(ranks.mean() + 1),
        "matched_cosine": float(pair_cos.mean()),
        "cosine_gap": float(pair_cos.mean() - mean_all),
        "matched_cosine_centred": float((tc * vc).sum(axis=1).mean()),
        f"overlap_text_image@{k}": neighbourhood_overlap(nn_t, nn_v),
        f"overlap_text_cross@{k}": neighbourhood_overlap(nn_t, nn_x),
        f"overlap_image_cross@{k}": neighbourhood_overlap(nn_v, nn_x),
    }


def compare(reports: dict[str, dict]) -> pd.DataFrame:
    """Side-by-side table of alignment reports, e.g. {"zero-shot": r0, "SDA": r1}."""
    return pd.DataFrame(reports).T


def pair_cosines(e_t: np.ndarray, e_v: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Cosines of matched (item i, item i) and random (item i, item j != i) text-image pairs."""
    t, v = l2_normalise(e_t), l2_normalise(e_v)
    n = len(t)
    other = (np.arange(n) + np.random.default_rng(seed).integers(1, n, size=n)) % n
    return pd.DataFrame(
        {
            "cosine": np.concatenate([(t * v).sum(1), (t * v[other]).sum(1)]),
            "pair": ["matched"] * n + ["random"] * n,
        }
    )


def _fixed(x: float) -> str:
    """Alignment numbers (cosines, recalls, overlaps in [-1, 1]) to 4 decimals; no "-0.0000"."""
    text = f"{x:.4f}"
    return text.removeprefix("-") if float(text) == 0 else text


HEADLINE = (
    ("t2i_recall@{k}", "text-to-image Recall@{k}"),
    ("matched_cosine_centred", "matched-pair cosine (centred)"),
    ("cosine_gap", "matched-minus-random cosine gap"),
    ("matched_cosine", "raw matched-pair cosine"),
)


def verdict(before: dict, after: dict, k: int = 10) -> str:
    """One sentence per headline metric saying plainly whether adaptation improved it; a change
    that does not show at the printed precision is "unchanged"."""
    lines = []
    for key, label in HEADLINE:
        key, label = key.format(k=k), label.format(k=k)
        b, a = before[key], after[key]
        word = {"improved": "improved", "worse": "did NOT improve", "unchanged": "unchanged"}[change(b, a, _fixed)]
        lines.append(f"{label}: {_fixed(b)} -> {_fixed(a)} ({word})")
    return "\n".join(lines)


def findings(before: dict, after: dict, k: int = 10) -> list[dict]:
    """The report's one-line verdicts on alignment and on structure (`report.save_finding`):
    whether adaptation brought each item's text closer to its own image (text-to-image Recall@k,
    and the matched-minus-random cosine gap), and whether cross-modal retrieval follows the items'
    structure (the share of an item's k nearest texts among the k images its text retrieves: what
    CMSA's soft teacher asks for). The paper reports neither as a number."""
    recall, overlap = f"t2i_recall@{k}", f"overlap_text_cross@{k}"
    unpublished = "not reported as a number (Figure 1(a) illustrates the gap)"
    return [
        {
            "mechanism": "alignment",
            "verdict": change(before[recall], after[recall], _fixed),
            "measured": f"text-to-image Recall@{k} {_fixed(before[recall])} -> {_fixed(after[recall])}; "
            f"matched-minus-random cosine gap {_fixed(before['cosine_gap'])} -> {_fixed(after['cosine_gap'])}",
            "paper": unpublished,
        },
        {
            "mechanism": "structure",
            "verdict": {"improved": "kept and strengthened", "unchanged": "kept", "worse": "weakened"}[
                change(before[overlap], after[overlap], _fixed)
            ],
            "measured": f"the {k} images an item's text retrieves share {_fixed(after[overlap])} of its {k} nearest "
            f"texts (zero-shot {_fixed(before[overlap])})",
            "paper": "not reported as a number (Table 2's w/o Soft Target row is its test)",
        },
    ]
