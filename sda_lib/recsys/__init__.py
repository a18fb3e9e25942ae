"""Recommenders that turn item features into the paper's measurements: SASRec and BERT4Rec
(sequential), VBPR and SLMRec (multimodal collaborative filtering), one module each over a shared
base; training with early stopping; sampled and full-ranking evaluation, overall and on the tail;
result tables and significance tests.
"""

from .base import ITEM_REPRS, InteractionData, Recommender
from .evaluate import METRICS, PROTOCOLS, evaluate, metrics_from_ranks, rank_targets, summarize
from .experiment import (MODELS, RunKey, RunResult, build_model, model_train_config, part_settings, read_run,
                         run_experiment, time_epoch, time_full_eval, train_grid)
from .report import gains_by_popularity, paired_ttest, table1
from .train import TrainConfig, fit

__all__ = ["ITEM_REPRS", "METRICS", "MODELS", "PROTOCOLS", "InteractionData", "Recommender", "RunKey", "RunResult",
           "TrainConfig", "build_model", "evaluate", "fit", "gains_by_popularity", "metrics_from_ranks",
           "model_train_config", "paired_ttest", "part_settings", "rank_targets", "read_run", "run_experiment",
           "summarize", "table1", "time_epoch", "time_full_eval", "train_grid"]
