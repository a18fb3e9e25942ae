"""Result tables, figures and tests over the tidy results and per-user frames of `experiment`.

Per-user results are `{RunKey(dataset, model, features, item_repr, seed): {protocol: frame}}`, as
`train_grid` returns them. Where several seeds exist, paired tests use each user's metric averaged
over the seeds.

- `paired_ttest`: two runs on the same users (scipy.stats.ttest_rel on per-user values).
- `results_table` (also `table1`, its former name): rows dataset x model x feature setting,
  overall and tail metrics, each with its relative gain and paired-test p over one baseline
  setting of the same model (Table 2 is built on it).
- `paper_table1` / `format_table1`: the paper's Table 1: rows Base, CLIP, QwenVL, SDA per model
  (SLMRec, VBPR, SASRec, BERT4Rec), named after what ran (`row_labels`), overall and tail H@10
  and N@10, SDA's gain over the best other row and a significance mark; `published.beside_table1`
  adds the paper's numbers. `headline` turns it into the abstract's aggregates.
- `figure3`: the paper's modality replacement: SLMRec on Base features, on SDA text with Base
  image, on Base text with SDA image, and on SDA's features whole.
- `gains_by_popularity` / `popularity_gains`: gains from head to tail by target popularity.

Tables carry their caveats in `table.attrs["notes"]` (a list of sentences; `format_table1` also
puts them in a `note` column), e.g. that a dataset has no tail item among its test targets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ..utils.display import gain, number, p_value
from . import published
from .experiment import RunKey, replacement_label

TABLE_METRICS = ("HR@10", "NDCG@10")
SUBSETS = ("overall", "tail")
PAPER_METRICS = {"HR@10": "H@10", "NDCG@10": "N@10"}  # workbench name -> the paper's column name
PAPER_MODELS = {"slmrec": "SLMRec", "vbpr": "VBPR", "sasrec": "SASRec", "bert4rec": "BERT4Rec"}  # paper order
BASELINE_ROWS = ("Base", "CLIP", "QwenVL")
SDA_ROW = "SDA"
# The paper's Base row is each recommender's own features: learnable IDs for SASRec and BERT4Rec; for
# VBPR and SLMRec, which the SDA authors ran in the first author's MMRec fork, IDs beside MMRec's
# content features (all-MiniLM-L6-v2 text, 4096-d CNN image). The workbench has no MMRec feature
# files for these datasets; the closest stand-in is its "pretrained" table (all-MiniLM-L6-v2 text,
# EfficientNet-Lite0 image).
BASE_FEATURES = {"vbpr": "pretrained", "slmrec": "pretrained"}
EXTRA_LABELS = {"pretrained": "MiniLM + EfficientNet-Lite0", "id": "ID only"}  # rows not in the paper
NOT_IN_PAPER = "not in the paper"
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


table1 = results_table  # the former name, kept for callers (sda_lib/analysis/ablations.py)


def tail_definition(card: dict) -> str:
    """The tail definition of a prepared dataset, in words, from its data card."""
    params = card.get("params", {})
    counted = {"train": "training interactions", "all": "interactions (train, valid and test)"}
    return (
        f"tail items: fewer than {params.get('tail_threshold', '?')} "
        f"{counted.get(params.get('tail_count_on'), 'interactions')}"
    )


def row_names(model: str, labels, sda: str = "sda", rows: dict | None = None) -> dict[str, str]:
    """{feature label: Table 1 row} for `model`: the model's Base features ("id", or BASE_FEATURES)
    -> "Base", "clip" -> "CLIP", "zero-shot" -> "QwenVL", `sda` -> "SDA"; any other label is its own
    row (shown below a rule, not in the paper). `rows` adds or overrides label -> row names."""
    names = {BASE_FEATURES.get(model, "id"): "Base", "clip": "CLIP", "zero-shot": "QwenVL", sda: SDA_ROW}
    names.update(rows or {})
    return {label: names.get(label, label) for label in labels}


def row_labels(manifests: dict[str, dict], sda: str = "sda") -> dict[str, str]:
    """How Table 1 names its rows after what ran, from the feature tables' manifests ({feature label:
    manifest}): "QwenVL" and "SDA" only when the LVLM was Qwen2.5-VL-7B-Instruct, else "zero-shot
    (tiny)", "SDA (mini)" and so on; "CLIP" only for ViT-L/14, the checkpoint the authors' 768-wide
    CLIP features come from, else "CLIP (<checkpoint>)". Rows without a manifest keep their name."""
    labels = {}
    for label, row, shown in (("zero-shot", "QwenVL", "zero-shot"), (sda, SDA_ROW, SDA_ROW)):
        if label in manifests:
            tag = lvlm_tag(manifests[label].get("backbone", ""))
            labels[row] = f"{shown} ({tag})" if tag else row
    if "clip" in manifests:
        checkpoint = short_name(str(manifests["clip"].get("model", "")).removeprefix("clip:"))
        labels["CLIP"] = "CLIP" if checkpoint == short_name(published.CLIP) else f"CLIP ({checkpoint})"
    return labels


def lvlm_tag(backbone: str) -> str | None:
    """None when `backbone` (a Backbone id or a load_backbone name) is the paper's Qwen2.5-VL-7B-
    Instruct, else the short name a row label carries ("tiny", "mini", ...)."""
    name = short_name(published.LVLM if str(backbone).lower() == "7b" else backbone)
    return None if name.lower() == short_name(published.LVLM).lower() else name


def short_name(source: str) -> str:
    """The last part of a hub id or folder ("Qwen/Qwen2.5-VL-7B-Instruct" -> "Qwen2.5-VL-7B-Instruct"),
    and a preset's name without its seed or checksum ("tiny-random-seed0" -> "tiny",
    "mini-connector-<sha>" -> "mini")."""
    name = str(source).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    for marker in ("-random-seed", "-connector-"):
        name = name.split(marker)[0]
    return name


def paper_table1(
    results: pd.DataFrame,
    per_user: dict | None = None,
    protocol: str = "sampled",
    sda: str = "sda",
    rows: dict | None = None,
    reference: str = "best",
    alpha: float = 0.05,
    tail: str | None = None,
    labels: dict | None = None,
) -> pd.DataFrame:
    """The paper's Table 1 from tidy results.

    Rows (dataset, model, row): models in the paper's order (SLMRec, VBPR, SASRec, BERT4Rec, then
    any other), rows Base, CLIP, QwenVL and SDA as `row_names` maps the feature labels (Base is the
    model's own features: IDs, or for VBPR and SLMRec the stand-in for MMRec's content features),
    then any other feature setting under its own label (not in the paper). Columns: (subset,
    "H@10"), (subset, "N@10") for subsets overall and tail, means over seeds; on the SDA row also
    (subset, "<metric> gain"), the relative gain over the reference row, (subset, "<metric> vs"),
    that row's name, and with `per_user` (subset, "<metric> p"), the two-sided paired t-test p of
    SDA against it over the same users (seed-averaged per-user values).

    reference: "best" (default): per model, subset and metric, the best of the paper's other rows
               (Base, CLIP, QwenVL); or a row name / feature label ("CLIP", "zero-shot", ...) for
               a fixed one. (The abstract's aggregates are over CLIP: `headline`.)
    alpha:     significance level of the "*" mark (`format_table1`), kept in attrs["alpha"].
    tail:      the tail definition in words (`tail_definition(card)`), added to the notes.
    labels:    {row: the name shown for it} (`row_labels`), kept in attrs["labels"] for
               `format_table1`; the index keeps the paper's row names, so published numbers and
               aggregates line up with it.
    """
    means, data_notes = _mean_table(results, protocol, TABLE_METRICS)
    means = means.rename(columns=PAPER_METRICS, level="metric")
    models = set(means.index.get_level_values("model"))
    model_order = list(PAPER_MODELS) + sorted(models - set(PAPER_MODELS))
    records, extras_seen = [], set()
    for (dataset, model), block in means.groupby(level=["dataset", "model"]):
        block = block.droplevel(["dataset", "model"])
        row_of = row_names(model, block.index, sda, rows)
        clash = pd.Series(list(row_of)).groupby(pd.Series(list(row_of.values()))).agg(list)
        clash = clash[clash.map(len) > 1]
        if len(clash):
            raise ValueError(
                f"feature labels {clash.iloc[0]} would all be row {clash.index[0]!r}; "
                "keep one or rename rows with `rows=`"
            )
        block = block.rename(index=row_of)
        label_of = {r: f for f, r in row_of.items()}
        extras = sorted(r for r in block.index if r not in (*BASELINE_ROWS, SDA_ROW))
        extras_seen.update(label_of[r] for r in extras)
        reference_row = row_of.get(reference, reference)
        for row in block.index:
            record = {("", "dataset"): dataset, ("", "model"): PAPER_MODELS.get(model, model), ("", "row"): row}
            for subset in SUBSETS:
                for metric, short in PAPER_METRICS.items():
                    value = block.loc[row, (subset, short)]
                    record[(subset, short)] = value
                    if row != SDA_ROW:
                        continue
                    others = block.loc[[r for r in BASELINE_ROWS if r in block.index], (subset, short)].dropna()
                    if reference == "best":
                        ref = others.idxmax() if len(others) else None
                    else:
                        ref = reference_row if reference_row in others.index else None
                    base = others.get(ref, np.nan) if ref is not None else np.nan
                    record[(subset, f"{short} gain")] = value / base - 1 if base and np.isfinite(base) else np.nan
                    record[(subset, f"{short} vs")] = ref
                    if per_user is not None:
                        record[(subset, f"{short} p")] = (
                            _p_value(per_user, dataset, model, label_of[ref], label_of[row], protocol, metric, subset)
                            if ref is not None
                            else np.nan
                        )
            records.append(record)
    if not any(r[("", "row")] == SDA_ROW for r in records):
        data_notes.append(f"no SDA row: no results with feature label {sda!r}; gains are not computed.")
    paper_rows = [*BASELINE_ROWS, SDA_ROW]
    model_rank = {PAPER_MODELS.get(m, m): i for i, m in enumerate(model_order)}

    def order(record):
        row = record[("", "row")]
        paper_rank = paper_rows.index(row) if row in paper_rows else len(paper_rows)
        return record[("", "dataset")], model_rank[record[("", "model")]], paper_rank, row

    table = pd.DataFrame.from_records(sorted(records, key=order))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
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
        definition = "gain = SDA / best of the paper's other rows of the same model (per subset and metric) - 1"
    else:
        definition = f"gain = SDA / {reference_row} of the same model - 1"
    notes = [
        f"{protocol} protocol; means over seeds; {definition}; * = SDA higher than that row, paired t-test p < {alpha}."
    ]
    if models & set(BASE_FEATURES):
        notes.append(
            "Base: ID embeddings for SASRec and BERT4Rec; for "
            + " and ".join(PAPER_MODELS.get(m, m) for m in BASE_FEATURES if m in models)
            + " ID embeddings beside the MiniLM text + EfficientNet-Lite0 image features, the stand-in for "
            "MMRec's own content features (sentence-transformer text, CNN image) that the SDA author's MMRec "
            "fork gave them."
        )
    if extras_seen:
        notes.append(f"rows below the rule are not in the paper ({', '.join(sorted(extras_seen))} features).")
    notes += ([tail.rstrip(".") + "."] if tail else []) + data_notes
    table.attrs.update(notes=notes, reference=reference, alpha=alpha, protocol=protocol, labels=dict(labels or {}))
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
    """`paper_table1` as the paper prints it: values as strings (`digits` significant digits, gains as
    signed percentages: `display`) with a "*" on SDA values above the
    reference row by a paired test with p < alpha, an "Improv." row after each model's SDA
    row (relative gains, with the reference row when it is not the same for every column), the
    rows not in the paper below a rule row, rows named by attrs["labels"], and a `note` column
    holding the table's notes on the first row. Published columns (`published.beside_table1`)
    follow each value: the paper's number and the relative difference."""
    alpha = table.attrs.get("alpha", 0.05)
    labels = table.attrs.get("labels", {})
    values = [(s, m) for s in SUBSETS for m in PAPER_METRICS.values()]
    beside = [(s, f"{m} {kind}") for s, m in values for kind in ("paper", "vs paper")]
    beside = [c for c in beside if c in table.columns]
    columns = [c for s, m in values for c in ((s, m), (s, f"{m} paper"), (s, f"{m} vs paper")) if c in table.columns]
    out_rows, index = [], []
    for (dataset, model), block in table.groupby(level=["dataset", "model"], observed=True, sort=False):
        ruled = False
        for (_, _, row), r in block.iterrows():
            if row not in (*BASELINE_ROWS, SDA_ROW) and not ruled:
                out_rows.append(dict.fromkeys(columns, ""))
                index.append((dataset, model, f"— {NOT_IN_PAPER} —"))
                ruled = True
            cells = {}
            for s, m in values:
                v = r[(s, m)]
                better = row == SDA_ROW and (s, f"{m} p") in r and r[(s, f"{m} gain")] > 0
                mark = "*" if better and r[(s, f"{m} p")] < alpha else ""
                cells[(s, m)] = "—" if pd.isna(v) else f"{number(v, digits)}{mark}"
            for s, name in beside:
                v = r[(s, name)]
                shown_value = gain(v) if name.endswith("vs paper") else number(v, digits)
                cells[(s, name)] = "" if pd.isna(v) else shown_value
            out_rows.append(cells)
            shown = labels.get(row, row) if row in (*BASELINE_ROWS, SDA_ROW) else _extra_label(row)
            index.append((dataset, model, shown))
            if row == SDA_ROW and (values[0][0], f"{values[0][1]} gain") in r:
                refs = {r[(s, f"{m} vs")] for s, m in values if pd.notna(r[(s, f"{m} vs")])}
                improv = dict.fromkeys(columns, "")
                for s, m in values:
                    g, ref = r[(s, f"{m} gain")], r[(s, f"{m} vs")]
                    text = "—" if pd.isna(g) else gain(g)
                    improv[(s, m)] = text + (f" vs {labels.get(ref, ref)}" if len(refs) > 1 and pd.notna(g) else "")
                out_rows.append(improv)
                only = f" vs {labels.get(next(iter(refs)), next(iter(refs)))}" if len(refs) == 1 else ""
                index.append((dataset, model, "Improv." + only))
    out = pd.DataFrame(out_rows, index=_ordered(pd.MultiIndex.from_tuples(index, names=["dataset", "model", "row"])))
    out = out[columns] if len(out) else out
    out.columns = pd.MultiIndex.from_tuples(out.columns) if len(out) else out.columns
    notes = table.attrs.get("notes", [])
    out[("", "note")] = [" ".join(notes)] + [""] * (len(out) - 1) if len(out) else []
    out.attrs["notes"] = notes
    return out


def recommendation_finding(table: pd.DataFrame, subset: str = "overall", metric: str = "N@10") -> dict | None:
    """The report's one-line verdict on recommendation (`report.save_finding`) from `paper_table1`:
    per dataset and model, SDA's `subset` `metric` gain over the table's reference row (by default
    the best of Base, CLIP and QwenVL) with its paired-test p, and on the paper's datasets the same
    gain in the paper's Table 1. None when the table has no SDA row with a gain."""
    column, p_column = (subset, f"{metric} gain"), (subset, f"{metric} p")
    if column not in table.columns or SDA_ROW not in table.index.get_level_values("row"):
        return None
    sda = table.xs(SDA_ROW, level="row")
    reference = table.attrs.get("reference", "best")
    paper_table = published.table1()
    measured, paper, ahead = [], [], 0
    for (dataset, model), row in sda.iterrows():
        g = row[column]
        if pd.isna(g):
            continue
        ahead += gain(g).startswith("+")
        p = f", p {p_value(row[p_column])}" if p_column in row and pd.notna(row[p_column]) else ""
        measured.append(f"{model} {gain(g)}{p}")
        if (dataset, model, SDA_ROW) in paper_table.index:
            cell = paper_table.loc[(dataset, model)][(subset, metric)]
            base = cell[list(BASELINE_ROWS)].max() if reference == "best" else cell.get(reference)
            if base is not None and pd.notna(base):
                paper.append(f"{model} {gain(cell[SDA_ROW] / base - 1)}")
    if not measured:
        return None
    against = "the best other row" if reference == "best" else reference
    datasets = ", ".join(dict.fromkeys(sda.index.get_level_values("dataset")))
    return {
        "mechanism": "recommendation",
        "verdict": f"SDA ahead on {ahead} of {len(measured)} models",
        "measured": f"{subset} {metric} of SDA over {against} ({datasets}, {table.attrs.get('protocol', '')} "
        f"ranking): {'; '.join(measured)}",
        "paper": "; ".join(paper) or None,
    }


def _extra_label(row: str) -> str:
    return f"{EXTRA_LABELS.get(row, row)} ({NOT_IN_PAPER})"


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The abstract's four aggregates computed from `paper_table1` as they reproduce from the
    paper's own Table 1 (`published.aggregates`: per subset and metric, the mean over dataset x
    model cells of SDA's relative gain over the CLIP row), as fractions (0.0615 is the abstract's
    6.15%), beside the abstract's.

    Rows: overall H@10, overall N@10, tail H@10, tail N@10 (the abstract's order). Columns:
    gain, published gain and gain minus published (in the same unit) unless no dataset of the table
    is the paper's (then a note says why), cells (how many dataset x model cells entered),
    definition."""
    measured, cells = published.aggregates(table), published.aggregate_cells(table)
    reason = published.comparable(table.index.get_level_values("dataset"))
    rows = []
    for key, (subset, metric) in published.AGGREGATES.items():
        row = {"aggregate": f"{subset} {metric}", "gain": measured[key] / 100}
        if not reason:
            paper = published.ABSTRACT[key] / 100
            row |= {"published gain": paper, "gain minus published": measured[key] / 100 - paper}
        rows.append(
            row
            | {
                "cells": cells[key],
                "definition": f"mean over dataset x model cells of SDA / {published.REFERENCE} - 1 ({subset} {metric})",
            }
        )
    out = pd.DataFrame(rows).set_index("aggregate")
    notes = [
        f"the definition that reproduces the abstract's numbers from the paper's own Table 1 "
        f"({published.SOURCE}); the paper's are over its 12 dataset x model cells."
    ]
    if reason:
        notes.append(reason)
    rows_present = set(table.index.get_level_values("row"))
    if published.REFERENCE not in rows_present or SDA_ROW not in rows_present:
        notes.append(
            f"the table has no {published.REFERENCE if SDA_ROW in rows_present else SDA_ROW} row: nothing to "
            "aggregate (the abstract's gains are SDA's over CLIP; add the clip baseline)."
        )
    out.attrs["notes"] = notes
    return out


def figure3(
    per_user: dict,
    settings: dict | None = None,
    base: str = "pretrained",
    sda: str = "sda",
    model: str = "slmrec",
    protocol: str = "sampled",
    metrics=TABLE_METRICS,
    subsets=SUBSETS,
    dataset: str | None = None,
):
    """Paper Figure 3 as the paper's modality replacement: `model` (SLMRec) on its Base features
    (`base`, "pretrained": IDs beside the stand-in for MMRec's features), on SDA's text part with
    Base's image part, on Base's text part with SDA's image part, and on SDA's features whole
    (the labels `experiment.replacement_settings` makes). Returns (table, plotly bar figure).

    settings: {bar name: feature label}; the default is the four bars above, Base first.
    Table: one row per dataset, subset, bar and metric: mean over seeds and users of the subset,
    users, seeds, gain over the first bar and the paired-test p against it (seed-averaged per-user
    values). Bars missing from `per_user` are left out, and attrs["notes"] says which; the notes
    also say whether the paper's three findings (each SDA part alone beats Base, the image part by
    more, both together best) hold here."""
    import plotly.express as px

    settings = dict(settings or figure3_settings(sda, base))
    first = next(iter(settings))
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
        for subset in subsets:
            for bar, frame in frames.items():
                users = frame[frame["is_tail"]] if subset == "tail" else frame
                seeds = sum((k.dataset, k.model, k.features) == (d, model, available[bar]) for k in runs)
                for metric in metrics:
                    row = {
                        "dataset": d,
                        "subset": subset,
                        "bar": bar,
                        "features": available[bar],
                        "metric": metric,
                        "value": float(users[metric].mean()) if len(users) else np.nan,
                        "users": len(users),
                        "seeds": seeds,
                        "gain": np.nan,
                        "p": np.nan,
                    }
                    if first in frames and bar != first:
                        test = paired_ttest(frames[first], frame, metric, tail_only=subset == "tail")
                        row["gain"], row["p"] = test["gain"], test["p"]
                    rows.append(row)
            if subset == "tail" and frames and not next(iter(frames.values()))["is_tail"].any():
                notes.append(f"{d}: no test target is a tail item; the tail bars are empty.")
    table = pd.DataFrame(rows)
    table.attrs["notes"] = notes + figure3_findings(table, list(settings))
    figure = px.bar(
        table,
        x="bar",
        y="value",
        color="metric",
        barmode="group",
        facet_col="subset",
        facet_row="dataset" if len(datasets) > 1 else None,
        category_orders={"bar": list(settings), "subset": list(subsets)},
        hover_data=["features", "gain", "p", "seeds", "users"],
        labels={"bar": "", "value": f"value ({protocol} protocol)"},
        title=f"{PAPER_MODELS.get(model, model)}: modality replacement with SDA features",
    )
    return table, figure


def figure3_settings(sda: str = "sda", base: str = "pretrained") -> dict[str, str]:
    """Figure 3's bars: {bar name: feature label}, Base first (labels of `experiment.replacement_settings`)."""
    return {
        "Base": base,
        "SDA text + Base image": replacement_label(sda, base),
        "Base text + SDA image": replacement_label(base, sda),
        "SDA text + image": sda,
    }


def figure3_findings(table: pd.DataFrame, bars: list[str]) -> list[str]:
    """Whether the paper's Figure 3 findings hold in `figure3`'s table (bars in the order Base, SDA
    text, SDA image, both), one sentence per dataset and subset, over every metric."""
    if len(bars) != 4 or table.empty:
        return []
    base, text, image, both = bars
    findings = []
    for (d, subset), block in table.groupby(["dataset", "subset"], sort=False):
        value = block.pivot_table(index="bar", columns="metric", values="value")
        if not set(bars) <= set(value.index) or value.isna().any().any():
            continue
        above_base = (value.loc[text] > value.loc[base]) & (value.loc[image] > value.loc[base])
        checks = {
            "each SDA part alone beats Base": bool(above_base.all()),
            "the SDA image part gains more than the text part": bool((value.loc[image] > value.loc[text]).all()),
            "both SDA parts together score highest": bool((value.loc[both] >= value.drop(index=both).max()).all()),
        }
        said = "; ".join(f"{claim}: {'yes' if held else 'NO'}" for claim, held in checks.items())
        findings.append(f"{d}, {subset} ({', '.join(value.columns)}), the paper's findings on Toys: {said}.")
    return findings


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
