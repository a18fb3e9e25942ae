"""One call per run and per grid: build a model on a dataset and a feature setting, train it with
early stopping, evaluate it on the test split under both protocols and return tidy results.

Tidy results have one row per (dataset, model, features, item_repr, seed, protocol, subset, metric)
with its value; per-user frames (one per run and protocol, keyed by `RunKey`) keep every user's
rank and metrics for paired t-tests and popularity breakdowns.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ..data import load_prepared
from ..method.features import PARTS, FeatureTable, Modality, check_comparable
from ..utils.frontend import tqdm
from ..utils.io import atomic_path, write_json
from .base import (
    RECOMMENDERS,
    InteractionData,
    ItemRepr,
    ItemReprName,
    Recommender,
    content_channels,
    resolve_features,
    resolve_item_repr,
)
from .evaluate import PROTOCOLS, evaluate, rank_targets, sampled_candidates, summarize
from .train import FitResult, TrainConfig, fit, seed_everything, train_epoch


class RunKey(NamedTuple):
    """Names one run in the per-user results: `train_grid` returns {RunKey: {protocol: frame}}.
    A tuple, so code that unpacks it by position keeps working."""

    dataset: str
    model: str
    features: str  # the feature setting's label ("id", "zero-shot", "sda", "sda-text", ...)
    item_repr: str
    seed: int

    @classmethod
    def of(cls, row) -> RunKey:
        """From a mapping (a run config, a tidy-results row) or a plain 5-tuple."""
        values = [row[f] for f in cls._fields] if not isinstance(row, tuple) else list(row)
        dataset, model, features, item_repr, seed = values
        return cls(str(dataset), str(model), str(features), str(item_repr), int(seed))


@dataclass
class RunResult:
    config: dict
    fit: FitResult
    metrics: pd.DataFrame  # tidy: one row per protocol x subset x metric
    per_user: dict[str, pd.DataFrame]  # protocol -> one row per user (see evaluate.evaluate)

    @property
    def key(self) -> RunKey:
        return RunKey.of(self.config)


def build_model(
    model: str,
    data: InteractionData,
    features: FeatureTable | None = None,
    item_repr: ItemReprName | ItemRepr = "id",
    parts: tuple[Modality, ...] | None = None,
    **params,
) -> Recommender:
    """A fresh model of the recommender registered as `model` (see Recommender for the contract).

    features:  a checked FeatureTable or None; every model takes what it needs from it: VBPR and
               SLMRec its text and image parts as content channels, SASRec and BERT4Rec the whole
               recommender-ready array.
    parts:     keep only these parts of the table, e.g. ("text",) (`FeatureTable.part`); default all.
    """
    cls = RECOMMENDERS[model]
    if features is not None and parts is not None:
        features = features.part(*parts)
    return cls(data, item_repr=item_repr, features=features, **params)


# TrainConfig fields that together make the early-stopping rule: a model's own monitor is used only
# when the caller left all of them at their defaults (fields a TrainConfig lacks are skipped).
STOPPING = ("monitor", "monitor_protocol", "monitor_negatives", "fresh_negatives", "improve")


def model_train_config(model: str, train: TrainConfig | None = None) -> TrainConfig:
    """`train` (default TrainConfig()) with the model's own settings (`train_defaults`: SLMRec's
    Adam lr 1e-4 and weight decay 1e-4, VBPR's and SLMRec's monitor HR@20 on full ranking, as the
    SDA author's MMRec fork) put in where `train` leaves TrainConfig's default value; a value the
    caller set stays, and a caller who set any part of the stopping rule (`STOPPING`) keeps the
    whole rule. (To keep a default value itself for such a model, pass `model_defaults=False` to
    run_experiment / train_grid.)"""
    train = train or TrainConfig()
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    own_rule = any(getattr(train, k) != defaults[k] for k in STOPPING if k in defaults)
    changes = {
        k: v
        for k, v in RECOMMENDERS[model].train_defaults.items()
        if getattr(train, k) == defaults[k] and not (own_rule and k in STOPPING)
    }
    return replace(train, **changes)


def features_label(features) -> str:
    """How a feature setting is named in result tables: "id" without features, else the
    extractor named in the table's manifest (or its folder), with "-<part>" for a part view."""
    if features is None:
        return "id"
    if isinstance(features, (str, Path)):
        return Path(features).name
    label = str(features.manifest.get("extractor") or features.manifest.get("name") or "features")
    parts = features.manifest.get("parts")
    return f"{label}-{'+'.join(parts)}" if parts and len(parts) < len(PARTS) else label


def replacement_label(text: str, image: str) -> str:
    """The feature label of a table with one setting's text part and another's image part."""
    return f"{text}-text+{image}-image"


def replacement_settings(sda, base, dataset, sda_label: str = "sda", base_label: str = "pretrained") -> dict:
    """The feature settings of the paper's Figure 3 (modality replacement) for `train_grid`: SDA's
    text part with Base's image part, Base's text part with SDA's image part, and SDA whole, keyed
    by label ("sda-text+pretrained-image", "pretrained-text+sda-image", "sda"). `sda` and `base` are
    FeatureTables or folders of the same dataset."""
    dataset = load_prepared(dataset) if isinstance(dataset, (str, Path)) else dataset
    sda, base = resolve_features(dataset, sda), resolve_features(dataset, base)
    return {
        replacement_label(sda_label, base_label): sda.with_part("image", base),
        replacement_label(base_label, sda_label): base.with_part("image", sda),
        sda_label: sda,
    }


def run_experiment(
    dataset,
    model: str = "sasrec",
    features=None,
    item_repr: ItemReprName | ItemRepr | None = None,
    seed: int = 0,
    model_params: dict | None = None,
    train: TrainConfig | None = None,
    n_negatives: int | None = None,
    out: str | Path | None = None,
    label: str | None = None,
    model_defaults: bool = True,
) -> RunResult:
    """Train and test one model.

    dataset:        a PreparedDataset, a dataset name or a prepared folder.
    features:       None (ID embeddings), a FeatureTable (or a `FeatureTable.part` view) or a
                    feature folder; checked against the items.
    item_repr:      "id", "features" or "id+features" (default: "id" without features, else
                    "id+features"; sequential models sum the two, VBPR and SLMRec concatenate).
    train:          TrainConfig (default TrainConfig()); its seed is replaced by `seed`.
    model_defaults: put the model's own training settings where `train` leaves TrainConfig's
                    defaults (`model_train_config`); the config written records what was used.
    n_negatives:    sampled protocol: use the first n stored negatives per user (default all).
    out:            folder for checkpoints (resumable) and the results (config.json, metrics.csv,
                    history.csv, per_user_<protocol>.parquet), written atomically.
    """
    dataset = load_prepared(dataset) if isinstance(dataset, (str, Path)) else dataset
    table = resolve_features(dataset, features)
    item_repr = resolve_item_repr(item_repr, table)
    data = InteractionData.from_prepared(dataset)
    sampled_candidates(data, n_negatives)  # a bad count fails now, not after training
    config = model_train_config(model, train) if model_defaults else (train or TrainConfig())
    config = replace(config, seed=seed)
    seed_everything(seed)
    recommender = build_model(model, data, table, item_repr, **(model_params or {}))
    out = Path(out) if out is not None else None
    result = fit(recommender, data, config, checkpoint_dir=out / "checkpoint" if out else None)
    per_user = {p: evaluate(recommender, data, "test", p, n_negatives if p == "sampled" else None) for p in PROTOCOLS}
    run = {
        "dataset": dataset.name,
        "model": model,
        "features": label or features_label(features),
        "item_repr": str(item_repr),
        "seed": seed,
        "parts": list(content_channels(table)) if table is not None and item_repr.features else [],
        "params": model_params or {},
        "train": asdict(config),
        "n_negatives": n_negatives or int(data.negatives.shape[1]),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "valid_score": result.best_score,
    }
    metrics = tidy_metrics(run, per_user)
    if out is not None:
        _write_run(out, run, result, metrics, per_user)
    return RunResult(run, result, metrics, per_user)


def tidy_metrics(run: dict, per_user: dict[str, pd.DataFrame]) -> pd.DataFrame:
    keys = RunKey.of(run)._asdict()
    rows = []
    for protocol, frame in per_user.items():
        for subset, values in summarize(frame).items():
            users = values.pop("users")
            rows += [
                {**keys, "protocol": protocol, "subset": subset, "metric": m, "value": v, "users": users}
                for m, v in values.items()
            ]
    return pd.DataFrame(rows)


def train_grid(
    dataset,
    models=("sasrec",),
    features: dict | None = None,
    seeds=(0,),
    item_repr: ItemReprName | dict[str, ItemReprName] | None = None,
    model_params: dict | None = None,
    train: TrainConfig | dict[str, TrainConfig] | None = None,
    n_negatives: int | None = None,
    out: str | Path | None = None,
    model_defaults: bool = True,
    results_name: str | None = "results",
) -> tuple[pd.DataFrame, dict]:
    """Every model x feature setting x seed.

    features:       {label: None | FeatureTable | folder}; default {"id": None}.
                    `replacement_settings` makes Figure 3's settings.
    item_repr:      for the settings with a table: "features" or "id+features" (default), or
                    {model: repr} (a preset's; models it leaves out take the default).
    model_params:   {model: {param: value}}.
    train:          one TrainConfig for every model, or {model: TrainConfig} (a preset's
                    `Preset.training(model)`; models it leaves out get TrainConfig()).
    model_defaults: as in `run_experiment`.
    out:            if given, each run goes to out/<model>/<label>/seed<k>/ (finished runs are read
                    back instead of retrained) and the grid's tidy results to
                    out/<results_name>.parquet and .csv (None: not written; a second grid sharing
                    the runs, like 05's Figure 3, names its own so it does not replace the first).
    Returns (tidy results, {RunKey: {protocol: per-user frame}}). Tables of other datasets, item
    orders or backbones are refused before anything trains (features.check_comparable).
    """
    features = features or {"id": None}
    dataset = load_prepared(dataset) if isinstance(dataset, (str, Path)) else dataset
    check_comparable(
        {
            label: table.manifest if isinstance(table, FeatureTable) else FeatureTable.read_manifest(table)
            for label, table in features.items()
            if table is not None
        }
    )
    frames, per_user = [], {}
    bar = tqdm(total=len(models) * len(features) * len(seeds), desc="recommender runs")
    for model in models:
        model_repr = item_repr.get(model) if isinstance(item_repr, dict) else item_repr
        model_train = train.get(model) if isinstance(train, dict) else train
        for label, table in features.items():
            for seed in seeds:
                bar.set_postfix_str(f"{model} on {label}, seed {seed}")
                run_out = Path(out) / model / label / f"seed{seed}" if out is not None else None
                if run_out is not None and (run_out / "metrics.csv").exists():
                    metrics, users = read_run(run_out)
                else:
                    run = run_experiment(
                        dataset,
                        model,
                        table,
                        model_repr if table is not None else None,
                        seed=seed,
                        train=model_train,
                        n_negatives=n_negatives,
                        model_params=(model_params or {}).get(model),
                        out=run_out,
                        label=label,
                        model_defaults=model_defaults,
                    )
                    metrics, users = run.metrics, run.per_user
                frames.append(metrics)
                per_user[RunKey.of(metrics.iloc[0])] = users
                bar.update()
    bar.close()
    results = pd.concat(frames, ignore_index=True)
    if out is not None and results_name is not None:
        write_results(results, out, results_name)
    return results, per_user


def write_results(results: pd.DataFrame, folder: str | Path, name: str = "results") -> None:
    """Tidy results as folder/<name>.parquet (read back by the runner and notebooks) and .csv."""
    for suffix, write in ((".parquet", results.to_parquet), (".csv", results.to_csv)):
        with atomic_path(Path(folder) / f"{name}{suffix}") as tmp:
            write(tmp, index=False)


def read_run(folder: str | Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The tidy metrics and per-user frames a finished `run_experiment(out=folder)` wrote."""
    folder = Path(folder)
    per_user = {p: pd.read_parquet(folder / f"per_user_{p}.parquet") for p in PROTOCOLS}
    return pd.read_csv(folder / "metrics.csv"), per_user


def _write_run(out: Path, run: dict, result: FitResult, metrics: pd.DataFrame, per_user: dict) -> None:
    """Each file is written atomically; metrics.csv comes last, so its presence marks a finished run."""
    write_json(out / "config.json", run)
    files = [("history.csv", result.history.to_csv)]
    files += [(f"per_user_{p}.parquet", frame.to_parquet) for p, frame in per_user.items()]
    files += [("metrics.csv", metrics.to_csv)]
    for name, write in files:
        with atomic_path(out / name) as tmp:
            write(tmp, index=False)


def time_epoch(
    dataset="beauty",
    model: str = "sasrec",
    features=None,
    epochs: int = 1,
    batch_size: int | None = None,
    threads: int | None = None,
    seed: int = 0,
    **model_params,
) -> float:
    """Seconds per training epoch (mean over `epochs`, after one untimed warm-up batch)."""
    data, recommender = _timed_setup(dataset, model, features, threads, seed, model_params)
    config = TrainConfig(batch_size=batch_size or recommender.batch_size, progress=False, seed=seed)
    optimizer = torch.optim.Adam(recommender.parameters(), lr=config.lr)
    rng = np.random.default_rng(seed)
    recommender.loss(*next(iter(recommender.train_batches(config.batch_size, rng)))).backward()
    optimizer.zero_grad()
    start = time.perf_counter()
    for _ in range(epochs):
        train_epoch(recommender, optimizer, config, rng)
    return (time.perf_counter() - start) / epochs


def time_full_eval(
    dataset="beauty",
    model: str = "sasrec",
    features=None,
    split: str = "test",
    repeats: int = 1,
    threads: int | None = None,
    seed: int = 0,
    **model_params,
) -> float:
    """Seconds for one full-ranking pass over all users (untrained weights: the cost does not depend
    on them), mean over `repeats` after a warm-up pass over the first 256 users."""
    data, recommender = _timed_setup(dataset, model, features, threads, seed, model_params)
    rank_targets(recommender, data.first_users(256), split, "full")
    start = time.perf_counter()
    for _ in range(repeats):
        rank_targets(recommender, data, split, "full")
    return (time.perf_counter() - start) / repeats


def _timed_setup(dataset, model, features, threads, seed, model_params) -> tuple[InteractionData, Recommender]:
    dataset = load_prepared(dataset) if isinstance(dataset, (str, Path)) else dataset
    if threads:
        torch.set_num_threads(threads)
    table = resolve_features(dataset, features)
    data = InteractionData.from_prepared(dataset)
    seed_everything(seed)
    return data, build_model(model, data, table, resolve_item_repr(None, table), **model_params)
