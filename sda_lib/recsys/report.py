"""Result tables and tests over the tidy results and per-user frames of `experiment`.

- `paired_ttest`: two runs on the same users (scipy.stats.ttest_rel on per-user values), the
  significance test the paper marks its gains with.
- `table1`: the paper's Table 1 layout: rows model x feature setting, columns overall and tail
  HR@10 and NDCG@10, each with its relative gain over a baseline setting of the same model.
- `gains_by_popularity`: per-user metrics of two runs by target-popularity bucket, for the plot of
  gains from head to tail.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

TABLE_METRICS = ("HR@10", "NDCG@10")
SUBSETS = ("overall", "tail")


def _aligned(per_user_a: pd.DataFrame, per_user_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    a, b = per_user_a.set_index("user").sort_index(), per_user_b.set_index("user").sort_index()
    if not a.index.equals(b.index) or not np.array_equal(a["target"].to_numpy(), b["target"].to_numpy()):
        raise ValueError("the two runs were not evaluated on the same users and targets "
                         "(different datasets or splits); a paired test needs the same ones")
    return a, b


def paired_ttest(per_user_a: pd.DataFrame, per_user_b: pd.DataFrame, metric: str = "NDCG@10",
                 tail_only: bool = False) -> dict:
    """Paired t-test of `metric` between run a and run b over the same users (only users with a
    tail target if `tail_only`). Returns n, mean_a, mean_b, gain (mean_b / mean_a - 1), t, p
    (two-sided; p is NaN when the two runs agree on every user)."""
    a, b = _aligned(per_user_a, per_user_b)
    if tail_only:
        a, b = a[a["is_tail"]], b[b["is_tail"]]
    x, y = a[metric].to_numpy(), b[metric].to_numpy()
    mean_a, mean_b = float(x.mean()) if len(x) else np.nan, float(y.mean()) if len(y) else np.nan
    if len(x) < 2 or np.array_equal(x, y):
        t, p = np.nan, np.nan
    else:
        t, p = stats.ttest_rel(y, x)
    return {"n": len(x), "mean_a": mean_a, "mean_b": mean_b,
            "gain": mean_b / mean_a - 1 if mean_a else np.nan, "t": float(t), "p": float(p)}


def table1(results: pd.DataFrame, baseline: str = "id", protocol: str = "full",
           per_user: dict | None = None, metrics=TABLE_METRICS) -> pd.DataFrame:
    """Rows (dataset, model, features); columns (subset, metric) with the mean over seeds, plus
    (subset, "<metric> gain"), the relative gain over the `baseline` feature setting of the same
    dataset and model, and with `per_user` ({run key: {protocol: frame}}, as `train_grid` returns)
    (subset, "<metric> p"), the paired t-test p-value of the seed-averaged per-user values."""
    rows = results[(results["protocol"] == protocol) & results["metric"].isin(metrics)]
    if rows.empty:
        raise ValueError(f"no {protocol!r} results for metrics {list(metrics)} in the table given")
    means = rows.groupby(["dataset", "model", "features", "subset", "metric"])["value"].mean()
    table = means.unstack(["subset", "metric"])
    columns = {}
    for subset in SUBSETS:
        for metric in metrics:
            if (subset, metric) not in table:
                continue
            values = table[(subset, metric)]
            base = values.xs(baseline, level="features") if baseline in values.index.get_level_values("features") else None
            columns[(subset, metric)] = values
            if base is not None:
                base_values = base.reindex(values.index.droplevel("features")).to_numpy()
                # no gain is defined over a baseline of 0 (e.g. no tail hit at all): NaN, not inf
                columns[(subset, f"{metric} gain")] = values / np.where(base_values == 0, np.nan, base_values) - 1
            if per_user is not None and base is not None:
                columns[(subset, f"{metric} p")] = pd.Series(
                    [_seed_averaged_p(per_user, key, baseline, protocol, metric, subset) for key in values.index],
                    index=values.index)
    return pd.DataFrame(columns)


def _seed_averaged_p(per_user: dict, key: tuple, baseline: str, protocol: str, metric: str, subset: str) -> float:
    dataset, model, features = key
    if features == baseline:
        return np.nan

    def averaged(label):
        frames = [runs[protocol] for (d, m, f, _r, _s), runs in per_user.items() if (d, m, f) == (dataset, model, label)]
        if not frames:
            return None
        mean = frames[0].copy()
        mean[metric] = np.mean([f.set_index("user").loc[mean["user"], metric].to_numpy() for f in frames], axis=0)
        return mean

    a, b = averaged(baseline), averaged(features)
    if a is None or b is None:
        return np.nan
    return paired_ttest(a, b, metric, tail_only=subset == "tail")["p"]


def gains_by_popularity(per_user_a: pd.DataFrame, per_user_b: pd.DataFrame, metric: str = "NDCG@10",
                        n_buckets: int = 5) -> pd.DataFrame:
    """Users split into `n_buckets` equal-sized buckets by their target's training popularity
    (least popular first); per bucket the popularity range, user count, tail share, both runs' mean
    `metric` and the relative gain of b over a."""
    a, b = _aligned(per_user_a, per_user_b)
    order = a["popularity"].rank(method="first")
    bucket = pd.qcut(order, n_buckets, labels=False)
    frame = pd.DataFrame({"bucket": bucket, "popularity": a["popularity"], "is_tail": a["is_tail"],
                          "a": a[metric], "b": b[metric]})
    out = frame.groupby("bucket").agg(popularity_min=("popularity", "min"), popularity_max=("popularity", "max"),
                                      users=("a", "size"), tail_share=("is_tail", "mean"),
                                      mean_a=("a", "mean"), mean_b=("b", "mean")).reset_index()
    out["gain"] = out["mean_b"] / out["mean_a"].replace(0, np.nan) - 1
    return out


def popularity_gains(per_user: dict, a: str, b: str, protocol: str = "sampled", metric: str = "NDCG@10",
                     n_buckets: int = 5) -> pd.DataFrame:
    """`gains_by_popularity` of feature setting b over a for every model (and seed) that has both,
    from the per-user frames `train_grid` returns; one frame with `model` and `seed` columns."""
    runs = {(k[1], k[2], k[4]): frames for k, frames in per_user.items()}
    frames = [gains_by_popularity(runs[(m, a, s)][protocol], runs[(m, b, s)][protocol], metric, n_buckets)
              .assign(model=m, seed=s)
              for (m, f, s) in runs if f == a and (m, b, s) in runs]
    if not frames:
        raise ValueError(f"no model has runs with both feature settings {a!r} and {b!r}")
    return pd.concat(frames, ignore_index=True)
