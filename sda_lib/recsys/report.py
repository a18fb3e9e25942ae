"""Result tables, figures and tests over the tidy results and per-user frames of `experiment`.

Per-user results are `{RunKey(dataset, model, features, item_repr, seed): {protocol: frame}}`, as
`train_grid` returns them. Where several seeds exist, paired tests use each user's metric averaged
over the seeds.

- `paired_ttest`: two runs on the same users (scipy.stats.ttest_rel on per-user values).
- `results_table` (also `table1`, its former name): rows dataset x model x feature setting,
  overall and tail metrics, each with its relative gain and paired-test p over one baseline
  setting of the same model (Table 2 is built on it).
- `paper_table1` / `format_table1`: the paper's Table 1: rows Base, CLIP, QwenVL, SDA per model
  (SLMRec, VBPR, SASRec, BERT4Rec), overall and tail H@10 and N@10, SDA's gain over the best other
  row and a significance mark. `headline` turns it into the abstract's aggregates.
- `figure3`: SLMRec on the text part, the image part and both parts of the SDA features.
- `gains_by_popularity` / `popularity_gains`: gains from head to tail by target popularity.

Tables carry their caveats in `table.attrs["notes"]` (a list of sentences; `format_table1` also
puts them in a `note` column), e.g. that a dataset has no tail item among its test targets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .experiment import RunKey
from .published import ABSTRACT, SOURCE

TABLE_METRICS = ("HR@10", "NDCG@10")
SUBSETS = ("overall", "tail")
PAPER_METRICS = {"HR@10": "H@10", "NDCG@10": "N@10"}  # workbench name -> the paper's column name
PAPER_MODELS = {"slmrec": "SLMRec", "vbpr": "VBPR", "sasrec": "SASRec", "bert4rec": "BERT4Rec"}  # paper order
PAPER_ROWS = {"id": "Base", "clip": "CLIP", "zero-shot": "QwenVL", "sda": "SDA"}  # feature label -> row
BASELINE_ROWS = ("Base", "CLIP", "QwenVL")
SDA_ROW = "SDA"
FEW_TAIL_USERS = 30  # below this many tail test users, a table says the tail numbers are noisy


def _aligned(per_user_a: pd.DataFrame, per_user_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    a, b = per_user_a.set_index("user").sort_index(), per_user_b.set_index("user").sort_index()
    if not a.index.equals(b.index) or not np.array_equal(a["target"].to_numpy(), b["target"].to_numpy()):
        raise ValueError(
            "the two runs were not evaluated on the same users and targets "
            "(different datasets or splits); a paired test needs the same ones"
        )
    return a, b


def paired_ttest(
    per_user_a: pd.DataFrame, per_user_b: pd.DataFrame, metric: str = "NDCG@10", tail_only: bool = False
) -> dict:
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
    return {
        "n": len(x),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "gain": mean_b / mean_a - 1 if mean_a else np.nan,
        "t": float(t),
        "p": float(p),
    }


def _keys(per_user: dict) -> dict[RunKey, dict]:
    """Per-user results with every key as a RunKey (plain 5-tuples are accepted too)."""
    return {RunKey.of(k): v for k, v in per_user.items()}


def seed_averaged(
    per_user: dict, dataset: str, model: str, features: str, protocol: str, metrics=TABLE_METRICS
) -> pd.DataFrame | None:
    """One run's per-user frame with `metrics` averaged over every seed of (dataset, model,
    features); None when there is no such run."""
    frames = [
        runs[protocol]
        for key, runs in _keys(per_user).items()
        if (key.dataset, key.model, key.features) == (dataset, model, features)
    ]
    if not frames:
        return None
    mean = frames[0].copy()
    for metric in metrics:
        mean[metric] = np.mean([f.set_index("user").loc[mean["user"], metric].to_numpy() for f in frames], axis=0)
    return mean


def _p_value(
    per_user: dict, dataset: str, model: str, a: str, b: str, protocol: str, metric: str, subset: str
) -> float:
    """Paired-test p of feature setting b against a (seed-averaged), NaN when either is missing."""
    if a == b:
        return np.nan
    runs = [seed_averaged(per_user, dataset, model, f, protocol, (metric,)) for f in (a, b)]
    if runs[0] is None or runs[1] is None:
        return np.nan
    return paired_ttest(*runs, metric, tail_only=subset == "tail")["p"]


def _mean_table(results: pd.DataFrame, protocol: str, metrics) -> tuple[pd.DataFrame, list[str]]:
    """Seed means as a frame indexed (dataset, model, features), columns (subset, metric); tail
    values of datasets without tail test users set to NaN; and the notes that go with it."""
    rows = results[(results["protocol"] == protocol) & results["metric"].isin(metrics)]
    if rows.empty:
        raise ValueError(f"no {protocol!r} results for metrics {list(metrics)} in the table given")
    notes = []
    if "users" in rows:
        tail = rows[rows["subset"] == "tail"]
        for dataset, users in tail.groupby("dataset")["users"].max().items():
            if users == 0:
                rows = rows[~((rows["dataset"] == dataset) & (rows["subset"] == "tail"))]
                notes.append(
                    f"{dataset}: no test target is a tail item under the dataset's tail definition, "
                    "so the tail columns are empty (not zero)."
                )
            elif users < FEW_TAIL_USERS:
                notes.append(f"{dataset}: only {int(users)} test users have a tail target; tail numbers are noisy.")
    means = rows.groupby(["dataset", "model", "features", "subset", "metric"])["value"].mean()
    table = means.unstack(["subset", "metric"])
    for subset in SUBSETS:  # keep the tail columns (NaN) even where no dataset has tail users
        for metric in metrics:
            if (subset, metric) not in table:
                table[(subset, metric)] = np.nan
    return table, notes


def results_table(
    results: pd.DataFrame,
    baseline: str = "id",
    protocol: str = "full",
    per_user: dict | None = None,
    metrics=TABLE_METRICS,
) -> pd.DataFrame:
    """Rows (dataset, model, features); columns (subset, metric) with the mean over seeds, plus
    (subset, "<metric> gain"), the relative gain over the `baseline` feature setting of the same
    dataset and model, and with `per_user` ({RunKey: {protocol: frame}}, as `train_grid` returns)
    (subset, "<metric> p"), the paired t-test p-value of the seed-averaged per-user values.
    A dataset without tail test users has empty (NaN) tail columns; `attrs["notes"]` says so."""
    table, notes = _mean_table(results, protocol, metrics)
    columns = {}
    for subset in SUBSETS:
        for metric in metrics:
            values = table[(subset, metric)]
            has_base = baseline in values.index.get_level_values("features")
            base = values.xs(baseline, level="features") if has_base else None
            columns[(subset, metric)] = values
            if base is not None:
                base_values = base.reindex(values.index.droplevel("features")).to_numpy()
                # no gain is defined over a baseline of 0 (e.g. no tail hit at all): NaN, not inf
                columns[(subset, f"{metric} gain")] = values / np.where(base_values == 0, np.nan, base_values) - 1
            if per_user is not None and base is not None:
                columns[(subset, f"{metric} p")] = pd.Series(
                    [_p_value(per_user, d, m, baseline, f, protocol, metric, subset) for d, m, f in values.index],
                    index=values.index,
                )
    out = pd.DataFrame(columns)
    out.attrs["notes"] = notes
    return out


table1 = results_table  # the former name, kept for callers (sda_lib/ablations.py)


def tail_definition(card: dict) -> str:
    """The tail definition of a prepared dataset, in words, from its data card."""
    params = card.get("params", {})
    counted = {"train": "training interactions", "all": "interactions (train, valid and test)"}
    return (
        f"tail items: fewer than {params.get('tail_threshold', '?')} "
        f"{counted.get(params.get('tail_count_on'), 'interactions')}"
    )


def paper_table1(
    results: pd.DataFrame,
    per_user: dict | None = None,
    protocol: str = "sampled",
    sda: str = "sda",
    rows: dict | None = None,
    reference: str = "best",
    alpha: float = 0.05,
    tail: str | None = None,
) -> pd.DataFrame:
    """The paper's Table 1 from tidy results.

    Rows (dataset, model, row): models in the paper's order (SLMRec, VBPR, SASRec, BERT4Rec, then
    any other), rows Base (feature label "id"), CLIP ("clip"), QwenVL ("zero-shot"), then any other
    feature setting under its own label, then SDA (label `sda`). `rows` adds or overrides
    label -> row names. Columns: (subset, "H@10"), (subset, "N@10") for subsets overall and tail,
    means over seeds; on the SDA row also (subset, "<metric> gain"), the relative gain over the
    reference row, (subset, "<metric> vs"), that row's name, and with `per_user`
    (subset, "<metric> p"), the two-sided paired t-test p of SDA against it over the same users
    (seed-averaged per-user values).

    reference: "best" (default): per model, subset and metric, the best other row of the same
               model (the paper's improvement definition could not be read; "best baseline" is
               the common convention); or a row name / feature label ("QwenVL", "zero-shot",
               "Base", ...) for a fixed one.
    alpha:     significance level of the "*" mark (`format_table1`), kept in attrs["alpha"].
    tail:      the tail definition in words (`tail_definition(card)`), added to the notes.
    """
    names = {label: row for label, row in PAPER_ROWS.items() if row != SDA_ROW}
    names = {**names, sda: SDA_ROW, **(rows or {})}
    means, notes = _mean_table(results, protocol, TABLE_METRICS)
    means = means.rename(columns=PAPER_METRICS, level="metric")
    labels = means.index.get_level_values("features").unique()
    row_of = {f: names.get(f, f) for f in labels}
    clash = pd.Series(list(row_of)).groupby(pd.Series(list(row_of.values()))).agg(list)
    clash = clash[clash.map(len) > 1]
    if len(clash):
        raise ValueError(
            f"feature labels {clash.iloc[0]} would all be row {clash.index[0]!r}; keep one or rename rows with `rows=`"
        )
    if SDA_ROW not in row_of.values():
        notes.append(f"no SDA row: no results with feature label {sda!r}; gains are not computed.")
    reference_row = names.get(reference, reference)
    extras = sorted({r for r in row_of.values() if r not in BASELINE_ROWS + (SDA_ROW,)})
    order = list(BASELINE_ROWS) + extras + [SDA_ROW]
    model_order = list(PAPER_MODELS) + sorted(set(means.index.get_level_values("model")) - set(PAPER_MODELS))
    label_of = {r: f for f, r in row_of.items()}

    records = []
    for (dataset, model), block in means.groupby(level=["dataset", "model"]):
        block = block.droplevel(["dataset", "model"]).rename(index=row_of)
        for row in block.index:
            record = {("", "dataset"): dataset, ("", "model"): PAPER_MODELS.get(model, model), ("", "row"): row}
            for subset in SUBSETS:
                for metric, short in PAPER_METRICS.items():
                    value = block.loc[row, (subset, short)]
                    record[(subset, short)] = value
                    if row != SDA_ROW:
                        continue
                    others = block.drop(index=SDA_ROW)[(subset, short)].dropna()
                    if reference == "best":
                        ref = others.idxmax() if len(others) else None
                    else:
                        ref = reference_row if reference_row in others.index else None
                    base = others.get(ref, np.nan) if ref is not None else np.nan
                    record[(subset, f"{short} gain")] = value / base - 1 if base and np.isfinite(base) else np.nan
                    record[(subset, f"{short} vs")] = ref
                    if per_user is not None:
                        record[(subset, f"{short} p")] = (
                            _p_value(
                                per_user, dataset, model, label_of[ref], label_of[SDA_ROW], protocol, metric, subset
                            )
                            if ref is not None
                            else np.nan
                        )
            records.append(record)
    table = pd.DataFrame.from_records(records)
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    key = {
        ("", "model"): lambda s: s.map({PAPER_MODELS.get(m, m): i for i, m in enumerate(model_order)}),
        ("", "row"): lambda s: s.map({r: i for i, r in enumerate(order)}),
    }
    table = table.sort_values(
        [("", "dataset"), ("", "model"), ("", "row")], key=lambda s: key.get(s.name, lambda x: x)(s)
    )
    table = table.set_index([("", "dataset"), ("", "model"), ("", "row")]).rename_axis(["dataset", "model", "row"])
    table.index = _ordered(table.index)
    value_columns = [(s, m) for s in SUBSETS for m in PAPER_METRICS.values()]
    extra = [
        c
        for s in SUBSETS
        for m in PAPER_METRICS.values()
        for c in ((s, f"{m} gain"), (s, f"{m} p"), (s, f"{m} vs"))
        if c in table.columns
    ]
    table = table[value_columns + extra]
    if reference == "best":
        definition = "gain = SDA / best other row of the same model (per subset and metric) - 1"
    else:
        definition = f"gain = SDA / {reference_row} of the same model - 1"
    notes = (
        [f"{protocol} protocol; means over seeds; {definition}; * = paired t-test p < {alpha} against that row."]
        + ([tail] if tail else [])
        + notes
    )
    table.attrs.update(notes=notes, reference=reference, alpha=alpha, protocol=protocol)
    return table


def _ordered(index: pd.MultiIndex) -> pd.MultiIndex:
    """The same index with each level's values ordered as they first appear, so the index is
    sorted (fast `.loc` on a prefix, no PerformanceWarning) while keeping the table's row order."""
    arrays = [
        pd.Categorical(index.get_level_values(i), categories=pd.unique(index.get_level_values(i)))
        for i in range(index.nlevels)
    ]
    return pd.MultiIndex.from_arrays(arrays, names=index.names)


def format_table1(table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """`paper_table1` as the paper prints it: values as strings with a "*" on SDA values whose
    paired test against the reference row has p < alpha, an "Improv." row after each model's SDA
    row (relative gains, with the reference row when it is not the same for every column), and a
    `note` column holding the table's notes on the first row."""
    alpha = table.attrs.get("alpha", 0.05)
    values = [(s, m) for s in SUBSETS for m in PAPER_METRICS.values()]
    out_rows, index = [], []
    for (dataset, model, row), r in table.iterrows():
        cells = {}
        for s, m in values:
            v = r[(s, m)]
            mark = "*" if row == SDA_ROW and (s, f"{m} p") in r and r[(s, f"{m} p")] < alpha else ""
            cells[(s, m)] = "—" if pd.isna(v) else f"{v:.{digits}f}{mark}"
        out_rows.append(cells)
        index.append((dataset, model, row))
        if row == SDA_ROW and (values[0][0], f"{values[0][1]} gain") in r:
            refs = {r[(s, f"{m} vs")] for s, m in values if pd.notna(r[(s, f"{m} vs")])}
            improv = {}
            for s, m in values:
                g, ref = r[(s, f"{m} gain")], r[(s, f"{m} vs")]
                text = "—" if pd.isna(g) else f"{g:+.2%}"
                improv[(s, m)] = text + (f" vs {ref}" if len(refs) > 1 and pd.notna(g) else "")
            out_rows.append(improv)
            index.append((dataset, model, "Improv." + (f" vs {refs.pop()}" if len(refs) == 1 else "")))
    out = pd.DataFrame(out_rows, index=_ordered(pd.MultiIndex.from_tuples(index, names=["dataset", "model", "row"])))
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    notes = table.attrs.get("notes", [])
    out[("", "note")] = [" ".join(notes)] + [""] * (len(out) - 1) if len(out) else []
    out.attrs["notes"] = notes
    return out


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The abstract's aggregates from `paper_table1`, beside the published ones.

    Rows: the average over every (dataset, model) of SDA's relative gain in overall H@10 and in
    overall N@10 (mean of the per-cell gains, not the gain of the means), and the largest gain in
    tail H@10 and tail N@10 over the same cells. Gains are the table's (its reference row: the
    best other row by default). Columns: workbench, published (the abstract's number), cells (how
    many dataset x model cells entered), where (the cell of a largest gain), definition."""
    reference = table.attrs.get("reference", "best")
    against = "the best other row of the same model" if reference == "best" else f"the {reference} row"
    sda = table.xs(SDA_ROW, level="row") if SDA_ROW in table.index.get_level_values("row") else table.iloc[:0]
    rows = []
    for kind, subset, metric in (
        ("average", "overall", "H@10"),
        ("average", "overall", "N@10"),
        ("largest", "tail", "H@10"),
        ("largest", "tail", "N@10"),
    ):
        column = (subset, f"{metric} gain")
        gains = sda[column].dropna() if column in sda.columns else pd.Series(dtype=float)
        name = f"{kind} {'tail ' if subset == 'tail' else ''}{metric} gain"
        if kind == "average":
            value, where = (float(gains.mean()) if len(gains) else np.nan), ""
            definition = f"mean over dataset x model cells of SDA's relative {subset} {metric} gain over {against}"
        else:
            value = float(gains.max()) if len(gains) else np.nan
            where = "/".join(map(str, gains.idxmax())) if len(gains) else ""
            definition = f"largest {subset} {metric} gain of SDA over {against}, over dataset x model cells"
        rows.append(
            {
                "aggregate": name,
                "workbench": value,
                "published": ABSTRACT[name],
                "cells": len(gains),
                "where": where,
                "definition": definition,
            }
        )
    out = pd.DataFrame(rows).set_index("aggregate")
    notes = [f"published: {SOURCE}; the abstract does not define the baseline or the averaging."]
    if not len(sda):
        notes.append("the table has no SDA row: nothing to aggregate.")
    out.attrs["notes"] = notes + list(table.attrs.get("notes", []))
    return out


def figure3(
    per_user: dict,
    settings: dict | None = None,
    base: str | None = "id",
    model: str = "slmrec",
    protocol: str = "sampled",
    metrics=TABLE_METRICS,
    subset: str = "overall",
    dataset: str | None = None,
):
    """Paper Figure 3: `model` (SLMRec) on the text part, the image part and both parts of the SDA
    features, beside its ID-only base. Returns (table, plotly bar figure).

    settings: {bar name: feature label}, default {"Text": "sda-text", "Image": "sda-image",
              "Both": "sda"} (the labels `experiment.part_settings` makes); `base` ("id") is shown
              first as "Base" unless None.
    Table: one row per dataset, bar and metric: mean over seeds and users (`subset` users only),
    seeds, gain over Base and the paired-test p against Base (seed-averaged per-user values).
    Bars missing from `per_user` are left out, and the table's attrs["notes"] says which."""
    import plotly.express as px

    settings = dict(settings or {"Text": "sda-text", "Image": "sda-image", "Both": "sda"})
    if base is not None:
        settings = {"Base": base, **settings}
    runs = _keys(per_user)
    datasets = [dataset] if dataset is not None else sorted({k.dataset for k in runs if k.model == model})
    if not datasets:
        raise ValueError(f"no {model} runs in the per-user results")
    rows, notes = [], []
    for d in datasets:
        available = {
            bar: label
            for bar, label in settings.items()
            if any((k.dataset, k.model, k.features) == (d, model, label) for k in runs)
        }
        missing = [f"{bar} ({label})" for bar, label in settings.items() if bar not in available]
        if missing:
            notes.append(f"{d}: no {model} runs for {', '.join(missing)}.")
        frames = {bar: seed_averaged(per_user, d, model, label, protocol, metrics) for bar, label in available.items()}
        for bar, frame in frames.items():
            users = frame[frame["is_tail"]] if subset == "tail" else frame
            seeds = sum((k.dataset, k.model, k.features) == (d, model, available[bar]) for k in runs)
            for metric in metrics:
                row = {
                    "dataset": d,
                    "bar": bar,
                    "features": available[bar],
                    "metric": metric,
                    "value": float(users[metric].mean()) if len(users) else np.nan,
                    "users": len(users),
                    "seeds": seeds,
                    "gain": np.nan,
                    "p": np.nan,
                }
                if "Base" in frames and bar != "Base":
                    test = paired_ttest(frames["Base"], frame, metric, tail_only=subset == "tail")
                    row["gain"], row["p"] = test["gain"], test["p"]
                rows.append(row)
        if subset == "tail" and frames and not next(iter(frames.values()))["is_tail"].any():
            notes.append(f"{d}: no test target is a tail item; the tail bars are empty.")
    table = pd.DataFrame(rows)
    table.attrs["notes"] = notes
    figure = px.bar(
        table,
        x="bar",
        y="value",
        color="metric",
        barmode="group",
        facet_col="dataset" if len(datasets) > 1 else None,
        category_orders={"bar": list(settings)},
        hover_data=["features", "gain", "p", "seeds"],
        labels={"bar": "", "value": f"{subset} value ({protocol} protocol)"},
        title=f"{PAPER_MODELS.get(model, model)} on parts of the SDA features ({subset} users)",
    )
    return table, figure


def gains_by_popularity(
    per_user_a: pd.DataFrame, per_user_b: pd.DataFrame, metric: str = "NDCG@10", n_buckets: int = 5
) -> pd.DataFrame:
    """Users split into `n_buckets` equal-sized buckets by their target's training popularity
    (least popular first); per bucket the popularity range, user count, tail share, both runs' mean
    `metric` and the relative gain of b over a."""
    a, b = _aligned(per_user_a, per_user_b)
    order = a["popularity"].rank(method="first")
    bucket = pd.qcut(order, n_buckets, labels=False)
    frame = pd.DataFrame(
        {"bucket": bucket, "popularity": a["popularity"], "is_tail": a["is_tail"], "a": a[metric], "b": b[metric]}
    )
    out = (
        frame.groupby("bucket")
        .agg(
            popularity_min=("popularity", "min"),
            popularity_max=("popularity", "max"),
            users=("a", "size"),
            tail_share=("is_tail", "mean"),
            mean_a=("a", "mean"),
            mean_b=("b", "mean"),
        )
        .reset_index()
    )
    out["gain"] = out["mean_b"] / out["mean_a"].replace(0, np.nan) - 1
    return out


def popularity_gains(
    per_user: dict, a: str, b: str, protocol: str = "sampled", metric: str = "NDCG@10", n_buckets: int = 5
) -> pd.DataFrame:
    """`gains_by_popularity` of feature setting b over a for every dataset, model and seed that
    has both, from the per-user frames `train_grid` returns; one frame with `dataset`, `model` and
    `seed` columns."""
    runs = {(k.dataset, k.model, k.features, k.seed): frames for k, frames in _keys(per_user).items()}
    frames = [
        gains_by_popularity(runs[(d, m, a, s)][protocol], runs[(d, m, b, s)][protocol], metric, n_buckets).assign(
            dataset=d, model=m, seed=s
        )
        for (d, m, f, s) in runs
        if f == a and (d, m, b, s) in runs
    ]
    if not frames:
        raise ValueError(f"no model has runs with both feature settings {a!r} and {b!r}")
    return pd.concat(frames, ignore_index=True)
