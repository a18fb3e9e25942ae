"""SDA's gain over another feature setting in each condition of a sweep, with paired significance.

A condition is a point's grid values without the seed; its points differ only in the seed. For each
condition, model, subset (overall, tail) and metric, `paired_gains` gives:

- the metric of the control (zero-shot) and of the treatment (SDA), averaged over users and seeds;
- the relative gain treatment / control - 1 and its 95% interval by a paired bootstrap over users
  (a user's results in every seed and both settings are resampled together);
- p of a paired t-test over users of the treatment-minus-control difference averaged over seeds (the
  users of one condition are the same in every seed: its catalogue is fixed);
- in how many seeds the treatment scored above the control;
- each model's best epoch in each seed against its cap, for both settings, so an unconverged model
  (best epoch at the cap) shows.

The per-user results are those 05 keeps for every run (`recsys/<model>/<features>/seed<k>/`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..utils.io import read_json
from .sweep import SEED, Sweep

BOOTSTRAP = 2000


def per_user(folder, model: str, features: str, seed: int, protocol: str = "sampled") -> pd.DataFrame:
    """One finished recommender run's per-user metrics, indexed by user."""
    return pd.read_parquet(
        folder / "recsys" / model / features / f"seed{seed}" / f"per_user_{protocol}.parquet"
    ).set_index("user")


def paired_gains(
    sweep: Sweep,
    treatment: str = "sda",
    control: str = "zero-shot",
    metrics=("HR@10", "NDCG@10"),
    protocol: str = "sampled",
    seed: int = 0,
) -> pd.DataFrame:
    """The gain table described in the module docstring, one row per condition, model, subset and
    metric (conditions in the sweep's order). `seed` seeds the bootstrap."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    conditions: dict[str, list] = {}
    for point in sweep.points:
        if point.state == "done":
            condition = {k: v for k, v in point.grid.items() if k != SEED}
            conditions.setdefault(repr(condition), [condition, []])[1].append(point)
    results = sweep.results()
    models = [m for m in results.get("model", pd.Series(dtype=object)).dropna().unique()]
    rows = []
    for condition, points in conditions.values():
        for model in models:
            runs = [(p, p.grid.get(SEED, 0)) for p in points]
            try:
                frames = {f: [per_user(p.folder, model, f, s, protocol) for p, s in runs] for f in (treatment, control)}
            except FileNotFoundError:
                continue
            users = frames[control][0][["target"]]
            if not all(f[["target"]].equals(users) for fs in frames.values() for f in fs):
                raise ValueError(
                    f"the points of condition {condition} test other users or targets in different seeds: a paired "
                    "comparison needs one catalogue per condition (fix data.seed, e.g. -p data.seed=0)"
                )
            epochs = {f: [_best_epoch(p.folder, model, f, s) for p, s in runs] for f in (treatment, control)}
            tail = frames[control][0]["is_tail"].to_numpy()
            for subset, mask in (("overall", np.ones_like(tail, dtype=bool)), ("tail", tail)):
                for metric in metrics:
                    t = np.stack([f[metric].to_numpy() for f in frames[treatment]], axis=1)[mask]
                    c = np.stack([f[metric].to_numpy() for f in frames[control]], axis=1)[mask]
                    row = {**condition, "model": model, "subset": subset, "metric": metric, "users": int(mask.sum())}
                    rows.append({**row, **_compare(t, c, rng, stats), **_epoch_cells(epochs, treatment, control)})
    table = pd.DataFrame(rows)
    table.attrs["notes"] = [
        f"gain: {treatment} / {control} - 1 of the metric averaged over users and seeds; 95% interval by a paired "
        f"bootstrap over users ({BOOTSTRAP} resamples); p: paired t-test over users of the difference averaged "
        "over seeds; best epoch per seed against the cap (epochs)",
    ]
    return table


def _compare(t: np.ndarray, c: np.ndarray, rng: np.random.Generator, stats) -> dict:
    """t, c: [users, seeds] of one metric."""
    n_users, n_seeds = t.shape
    if n_users == 0:
        return {"control": np.nan, "treatment": np.nan, "gain": np.nan, "low": np.nan, "high": np.nan, "p": np.nan}
    tu, cu = t.mean(axis=1), c.mean(axis=1)
    counts = rng.multinomial(n_users, np.full(n_users, 1 / n_users), size=BOOTSTRAP)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (counts @ tu) / (counts @ cu) - 1
        gain = tu.mean() / cu.mean() - 1
    diff = tu - cu
    p = float(stats.ttest_1samp(diff, 0.0).pvalue) if diff.std() > 0 else (1.0 if diff.mean() == 0 else 0.0)
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    above = int((t.mean(axis=0) > c.mean(axis=0)).sum())
    return {
        "control": float(cu.mean()),
        "treatment": float(tu.mean()),
        "gain": float(gain),
        "low": float(low),
        "high": float(high),
        "p": p,
        "seeds above": f"{above}/{n_seeds}",
    }


def _best_epoch(folder, model: str, features: str, seed: int) -> tuple[int | None, int | None]:
    config = read_json(folder / "recsys" / model / features / f"seed{seed}" / "config.json") or {}
    return config.get("best_epoch"), (config.get("train") or {}).get("epochs")


def _epoch_cells(epochs: dict, treatment: str, control: str) -> dict:
    def cell(values):
        caps = {cap for _, cap in values}
        return f"{', '.join(str(best) for best, _ in values)} of {'/'.join(map(str, sorted(caps)))}"

    return {f"best epoch {treatment}": cell(epochs[treatment]), f"best epoch {control}": cell(epochs[control])}


def gains_figure(table: pd.DataFrame, conditions: list[str], metric: str = "HR@10"):
    """The relative gain with its 95% interval per condition, one panel per model and subset."""
    import plotly.express as px

    rows = table[table["metric"] == metric].copy()
    rows["condition"] = rows[conditions].astype(str).agg(", ".join, axis=1)
    rows["plus"], rows["minus"] = rows["high"] - rows["gain"], rows["gain"] - rows["low"]
    fig = px.bar(
        rows,
        x="condition",
        y="gain",
        error_y="plus",
        error_y_minus="minus",
        facet_col="model",
        facet_row="subset",
        hover_data=["p", "seeds above", "control", "treatment"],
        title=f"Relative {metric} gain of SDA over zero-shot features (95% interval, paired bootstrap over users)",
    )
    fig.update_yaxes(tickformat=".0%", matches=None)
    fig.update_layout(height=700)
    return fig
