"""Training loop shared by all recommenders: seeded, early stopping on a validation metric,
progress bars, atomic checkpoints and resumption.

A checkpoint folder holds `best.pt` (the best model so far) and `last.pt` (model, optimiser, RNG
states and early-stopping state after the last finished epoch); both are written to a temporary
file and renamed, so an interrupted run leaves the previous complete checkpoint. Starting `fit`
again with the same folder and configuration resumes after the last finished epoch.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..io import atomic_path
from .base import InteractionData, Recommender
from .evaluate import METRICS, evaluate, summarize


@dataclass
class TrainConfig:
    epochs: int = 200
    patience: int = 10  # stop after this many validations without improvement
    batch_size: int | None = None  # None: the model's default (users or interactions per batch)
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    monitor: str = "NDCG@10"  # validation metric for early stopping
    monitor_protocol: str = "full"  # "full" or "sampled"
    eval_every: int = 1  # validate every this many epochs
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    progress: bool = True

    def __post_init__(self):
        if self.monitor not in METRICS:
            raise ValueError(f"monitor must be one of {METRICS}, got {self.monitor!r}")
        for name in ("epochs", "patience", "batch_size", "eval_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")


@dataclass
class FitResult:
    best_epoch: int  # 1-based; 0 if no epoch improved on the untrained model
    best_score: float
    history: pd.DataFrame  # epoch, loss, seconds, valid_<monitor>
    stopped_early: bool


def seed_everything(seed: int) -> None:
    """Seed the global RNGs that parameter init and dropout draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_epoch(model: Recommender, optimizer: torch.optim.Optimizer, config: TrainConfig,
                rng: np.random.Generator, desc: str = "train") -> float:
    """One pass over the model's training batches; returns the mean batch loss."""
    model.train()
    device = torch.device(config.device)
    losses = []
    batches = model.train_batches(config.batch_size or model.batch_size, rng)
    for batch in tqdm(batches, desc=desc, leave=False, disable=not config.progress):
        loss = model.loss(*(b.to(device) for b in batch))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{model.name}: training loss became {loss.item()} "
                                     f"(after {len(losses)} batches); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


def validate(model: Recommender, data: InteractionData, config: TrainConfig) -> float:
    per_user = evaluate(model, data, "valid", config.monitor_protocol)
    return summarize(per_user)["overall"][config.monitor]


def fit(model: Recommender, data: InteractionData, config: TrainConfig,
        checkpoint_dir: str | Path | None = None) -> FitResult:
    """Train `model` in place with early stopping; on return it holds the best validated weights.

    The model should be built after `seed_everything(config.seed)` so its initialisation is seeded
    too; `run_experiment` does both.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    model.to(config.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    state = {"epoch": 0, "best_score": -np.inf, "best_epoch": 0, "bad": 0, "stopped": False, "history": []}
    best_weights = copy.deepcopy(model.state_dict())
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "last.pt").exists():
        state, rng = _resume(ckpt, model, optimizer, config)
        if (ckpt / "best.pt").exists():  # absent only if no validation ran yet
            best_weights = torch.load(ckpt / "best.pt", map_location=config.device)

    bar = tqdm(total=config.epochs, initial=state["epoch"], desc=f"{model.name} epochs",
               disable=not config.progress)
    while state["epoch"] < config.epochs and not state["stopped"]:
        epoch = state["epoch"] + 1
        start = time.perf_counter()
        loss = train_epoch(model, optimizer, config, rng, desc=f"epoch {epoch}")
        row = {"epoch": epoch, "loss": loss, "seconds": time.perf_counter() - start}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            score = validate(model, data, config)
            row[f"valid_{config.monitor}"] = score
            if score > state["best_score"]:
                state.update(best_score=score, best_epoch=epoch, bad=0)
                best_weights = copy.deepcopy(model.state_dict())
                if ckpt is not None:
                    _save(best_weights, ckpt / "best.pt")
            else:
                state["bad"] += 1
                state["stopped"] = state["bad"] >= config.patience
            bar.set_postfix(loss=f"{loss:.4f}", **{config.monitor: f"{score:.4f}"},
                            best=f"{state['best_score']:.4f}@{state['best_epoch']}")
        state["history"].append(row)
        state["epoch"] = epoch
        if ckpt is not None:
            _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                   "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                   "config": asdict(config)}, ckpt / "last.pt")
        bar.update(1)
    bar.close()
    model.load_state_dict(best_weights)
    return FitResult(state["best_epoch"], float(state["best_score"]), pd.DataFrame(state["history"]),
                     state["stopped"])


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _resume(ckpt: Path, model, optimizer, config: TrainConfig):
    saved = torch.load(ckpt / "last.pt", map_location=config.device, weights_only=False)
    differs = {k: (v, getattr(config, k)) for k, v in saved["config"].items()
               if k not in ("epochs", "progress", "device", "threads") and getattr(config, k) != v}
    if differs:
        raise ValueError(f"{ckpt / 'last.pt'} was written with a different configuration {differs}; "
                         "use another checkpoint folder or delete this one")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    rng = np.random.default_rng()
    rng.bit_generator.state = saved["rng"]
    torch.set_rng_state(saved["torch_rng"])
    return saved["state"], rng
