"""Recommenders that turn item features into the paper's measurements: SASRec and BERT4Rec
(sequential), VBPR and SLMRec (multimodal collaborative filtering), one module each over a shared
base; training with early stopping; sampled and full-ranking evaluation, overall and on the tail;
result tables (the paper's Table 1 and its headline numbers, Figure 3) and significance tests.
"""

from .base import ITEM_REPRS, RECOMMENDERS, InteractionData, Recommender
from .evaluate import METRICS, PROTOCOLS, evaluate, metrics_from_ranks, rank_targets, summarize
from .experiment import (
    RunKey,
    RunResult,
    build_model,
    model_train_config,
    read_run,
    replacement_label,
    replacement_settings,
    run_experiment,
    time_epoch,
    time_full_eval,
    train_grid,
)
from .report import (
    figure3,
    format_table1,
    gains_by_popularity,
    headline,
    paired_ttest,
    paper_table1,
    popularity_gains,
    results_table,
    row_labels,
    table1,
    tail_definition,
)
from .train import TrainConfig, fit

__all__ = [
    "ITEM_REPRS",
    "METRICS",
    "PROTOCOLS",
    "RECOMMENDERS",
    "InteractionData",
    "Recommender",
    "RunKey",
    "RunResult",
    "TrainConfig",
    "build_model",
    "evaluate",
    "figure3",
    "fit",
    "format_table1",
    "gains_by_popularity",
    "headline",
    "metrics_from_ranks",
    "model_train_config",
    "paired_ttest",
    "paper_table1",
    "popularity_gains",
    "row_labels",
    "rank_targets",
    "read_run",
    "replacement_label",
    "replacement_settings",
    "results_table",
    "run_experiment",
    "summarize",
    "table1",
    "tail_definition",
    "time_epoch",
    "time_full_eval",
    "train_grid",
]
