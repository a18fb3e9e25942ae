"""Training loop shared by all recommenders: seeded, early stopping on validation metrics,
progress bars, atomic checkpoints and resumption.

A checkpoint folder holds `best.pt` (the best model so far; `best-<rule>.pt` per rule of
`fit_rules`) and `last.pt` (model, optimiser, RNG states, early-stopping state and best weights
after the last finished epoch), with `previous.pt` the epoch before; all are written to a temporary
file and renamed, with their SHA-256 in `<file>.sha256`, so an interrupted run leaves the previous
complete checkpoint. They hold tensors only (the rest travels as one JSON string) and are read
back with `weights_only=True`: a checkpoint never runs code. Starting again with the same folder
and configuration resumes after the last finished epoch, or, when `last.pt` is damaged (its
checksum differs or is missing, or it does not load), after the one before, with a warning naming
it. On SIGTERM training stops after the current epoch's checkpoint and raises `Preempted`
(sda_lib.utils.preempt).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ..utils.choices import check_fields
from ..utils.frontend import tqdm
from ..utils.io import digest_problem, jsonable, save_with_digest
from ..utils.preempt import Preempted, on_sigterm
from .base import InteractionData, Recommender
from .evaluate import METRICS, RankingProtocol, draw_negatives, evaluate, summarize

log = logging.getLogger(__name__)
ImproveRule = Literal["any", "all"]
CHECKPOINTS = ("last.pt", "previous.pt")  # newest first


@dataclass
class TrainConfig:
    """How `fit` trains and when it stops.

    Early stopping watches `monitor` on the validation split: one metric, or a tuple of metrics
    compared with the vector saved at the last improvement. `improve="any"`: an epoch improves
    if any monitored metric is strictly higher than in that vector (S3-Rec's first code, which
    produced its published full-ranking table); "all": only if every one is. Either way the whole
    vector is replaced on improvement. With one metric both rules are "strictly higher".

    Sampled validation ranks the target against `monitor_negatives` candidates per user (None:
    all stored ones): the dataset's stored negatives, or with `fresh_negatives` new ones drawn at
    every validation pass outside the user's items up to the validation target (the SDA authors).
    """

    epochs: int = 200
    patience: int = 10  # stop after this many validations without improvement
    batch_size: int | None = None  # None: the model's default (users or interactions per batch)
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    monitor: str | tuple[str, ...] = "NDCG@10"  # validation metric(s) for early stopping
    improve: ImproveRule = "any"  # with several monitored metrics: "any" or "all" must beat the saved vector
    monitor_protocol: RankingProtocol = "full"  # "full" or "sampled"
    monitor_negatives: int | None = None  # sampled validation: candidates per user (None: all stored)
    fresh_negatives: bool = False  # sampled validation: redraw the candidates at every pass
    eval_every: int = 1  # validate every this many epochs
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.monitor, list):  # e.g. read back from JSON
            self.monitor = tuple(self.monitor)
        unknown = [m for m in self.monitored if m not in METRICS]
        if unknown or not self.monitored:
            raise ValueError(f"monitor must name one or more of {METRICS}; {self.monitor!r} has {unknown or 'none'}")
        check_fields(self)
        if self.monitor_protocol == "full" and (self.monitor_negatives or self.fresh_negatives):
            raise ValueError(
                "monitor_negatives and fresh_negatives apply to monitor_protocol='sampled', "
                f"got monitor_protocol={self.monitor_protocol!r}"
            )
        for name in ("epochs", "patience", "batch_size", "eval_every", "monitor_negatives"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")

    @property
    def monitored(self) -> tuple[str, ...]:
        return (self.monitor,) if isinstance(self.monitor, str) else tuple(self.monitor)

    def improves(self, scores: np.ndarray, saved: np.ndarray) -> bool:
        """Whether validation `scores` (in `monitored` order) improve on the `saved` vector."""
        better = np.asarray(scores) > np.asarray(saved)
        return bool(better.any() if self.improve == "any" else better.all())


@dataclass
class FitResult:
    best_epoch: int  # 1-based; 0 if no epoch improved on the untrained model
    best_score: float  # the first monitored metric at best_epoch
    history: pd.DataFrame  # epoch, loss, seconds, valid_<metric> for every metric
    stopped_early: bool


def seed_everything(seed: int) -> None:
    """Seed the global RNGs that parameter init and dropout draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_epoch(
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    rng: np.random.Generator,
    desc: str = "train",
) -> float:
    """One pass over the model's training batches; returns the mean batch loss."""
    model.train()
    device = torch.device(config.device)
    losses = []
    batches = model.train_batches(config.batch_size or model.batch_size, rng)
    for batch in tqdm(batches, desc=desc, leave=False, disable=not config.progress):
        loss = model.loss(*(b.to(device) for b in batch))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{model.name}: training loss became {loss.item()} "
                f"(after {len(losses)} batches); lower the learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


def validate(model: Recommender, data: InteractionData, config: TrainConfig, epoch: int) -> dict[str, float]:
    """Every metric on the validation split under `config.monitor_protocol`. Fresh candidates
    come from an RNG seeded by (seed, epoch), so a resumed run draws what it would have drawn."""
    candidates = None
    if config.monitor_protocol == "sampled" and config.fresh_negatives:
        n = config.monitor_negatives or data.negatives.shape[1]
        candidates = draw_negatives(data, "valid", n, np.random.default_rng([config.seed, epoch]))
    per_user = evaluate(model, data, "valid", config.monitor_protocol, config.monitor_negatives, candidates=candidates)
    return summarize(per_user)["overall"]


def fit(
    model: Recommender, data: InteractionData, config: TrainConfig, checkpoint_dir: str | Path | None = None
) -> FitResult:
    """Train `model` in place with early stopping; on return it holds the best validated weights.

    The model should be built after `seed_everything(config.seed)` so its initialisation is seeded
    too; `run_experiment` does both.
    """
    result, weights = fit_rules(model, data, {"best": config}, checkpoint_dir)["best"]
    model.load_state_dict(weights)
    return result


def fit_rules(
    model: Recommender, data: InteractionData, rules: dict[str, TrainConfig], checkpoint_dir: str | Path | None = None
) -> dict[str, tuple[FitResult, dict]]:
    """Train once and select the model under several early-stopping rules: {name: (result, best
    weights)}. The configurations may differ only in their STOPPING fields. Validation draws no
    training randomness, so each rule's result and weights are exactly those of a separate `fit`
    with its configuration (S3-Rec fine-tuned separately for its full-ranking and sampled
    tables); training goes on until every rule has stopped. `model` is left in its last state.
    """
    with on_sigterm(f"{model.name} training") as stop:
        return _fit_rules(model, data, rules, checkpoint_dir, stop)


def _fit_rules(model: Recommender, data: InteractionData, rules: dict[str, TrainConfig], checkpoint_dir, stop):
    config = _common_training(rules)
    if config.threads:
        torch.set_num_threads(config.threads)
    model.to(config.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    state = {
        "epoch": 0,
        "rules": {
            name: {
                "best_score": [-np.inf] * len(rule.monitored),
                "best_epoch": 0,
                "bad": 0,
                "stopped": False,
                "history": [],
            }
            for name, rule in rules.items()
        },
    }
    best = {name: copy.deepcopy(model.state_dict()) for name in rules}
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resumed = _resume(ckpt, model, optimizer, rules) if ckpt is not None else None
    if resumed is not None:
        state, rng, best = resumed

    shown = next(iter(rules))  # the progress bar follows the first rule
    bar = tqdm(total=config.epochs, initial=state["epoch"], desc=f"{model.name} epochs", disable=not config.progress)
    while state["epoch"] < config.epochs and not all(r["stopped"] for r in state["rules"].values()):
        epoch = state["epoch"] + 1
        start = time.perf_counter()
        loss = train_epoch(model, optimizer, config, rng, desc=f"epoch {epoch}")
        common = {"epoch": epoch, "loss": loss, "seconds": time.perf_counter() - start}
        validations = {}  # one pass per distinct validation protocol
        for name, rule in rules.items():
            track = state["rules"][name]
            if track["stopped"]:
                continue
            row = dict(common)
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                key = (rule.monitor_protocol, rule.monitor_negatives, rule.fresh_negatives)
                if key not in validations:
                    validations[key] = validate(model, data, rule, epoch)
                metrics = validations[key]
                row.update({f"valid_{m}": metrics[m] for m in METRICS})
                scores = [metrics[m] for m in rule.monitored]
                if rule.improves(scores, track["best_score"]):
                    track.update(best_score=scores, best_epoch=epoch, bad=0)
                    best[name] = copy.deepcopy(model.state_dict())
                    if ckpt is not None:
                        _save(best[name], ckpt / _best_file(name))
                else:
                    track["bad"] += 1
                    track["stopped"] = track["bad"] >= rule.patience
                if name == shown:
                    bar.set_postfix(
                        loss=f"{loss:.4f}",
                        **{rule.monitored[0]: f"{scores[0]:.4f}"},
                        best=f"{track['best_score'][0]:.4f}@{track['best_epoch']}",
                    )
            track["history"].append(row)
        state["epoch"] = epoch
        if ckpt is not None:
            _rotate(ckpt)
            _save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "best": best,
                    "meta": _plain(
                        {
                            "state": state,
                            "rng": rng.bit_generator.state,
                            "configs": {name: asdict(rule) for name, rule in rules.items()},
                        }
                    ),
                },
                ckpt / "last.pt",
            )
        bar.update(1)
        if stop and epoch < config.epochs and not all(r["stopped"] for r in state["rules"].values()):
            raise Preempted(
                f"{model.name} training stopped on SIGTERM after epoch {epoch}; "
                + (
                    f"checkpoint {ckpt / 'last.pt'}: run it again with the same folder to resume"
                    if ckpt is not None
                    else "it had no checkpoint folder, so a rerun starts afresh"
                )
            )
    bar.close()
    return {
        name: (
            FitResult(
                track["best_epoch"], float(track["best_score"][0]), pd.DataFrame(track["history"]), track["stopped"]
            ),
            best[name],
        )
        for name, track in state["rules"].items()
    }


# TrainConfig fields that only decide when to stop and which epoch to keep; `fit_rules` needs the
# rest equal across its rules, and a resumed run may change the last group.
STOPPING = ("patience", "monitor", "improve", "monitor_protocol", "monitor_negatives", "fresh_negatives")
RESUMABLE_CHANGES = ("epochs", "progress", "device", "threads")


def _common_training(rules: dict[str, TrainConfig]) -> TrainConfig:
    if not rules:
        raise ValueError("fit_rules needs at least one rule")
    names = list(rules)
    first = rules[names[0]]
    for name in names[1:]:
        differs = {
            k: (v, getattr(rules[name], k))
            for k, v in asdict(first).items()
            if k not in STOPPING and getattr(rules[name], k) != v
        }
        if differs:
            raise ValueError(
                f"rules {names[0]!r} and {name!r} train differently {differs}; only the "
                f"stopping fields {STOPPING} may differ"
            )
    return first


def _best_file(rule: str) -> str:
    return "best.pt" if rule == "best" else f"best-{rule}.pt"


def _save(obj, path: Path) -> None:
    save_with_digest(path, lambda tmp: torch.save(obj, tmp))


def _plain(obj) -> str:
    """The non-tensor part of a checkpoint as JSON text (numpy scalars as numbers, tuples as
    lists), so that loading it needs no unpickling of objects."""
    return json.dumps(obj, default=jsonable)


def _rotate(ckpt: Path) -> None:
    """last.pt becomes previous.pt: its digest is copied first, the file renamed, then the old
    digest removed. Stopped anywhere in between, the newest intact checkpoint is still found: a
    file without its digest, or with another's, is skipped."""
    last = ckpt / "last.pt"
    if not last.exists():
        return
    digest = Path(f"{last}.sha256")
    if digest.exists():
        shutil.copyfile(digest, ckpt / "previous.pt.sha256")
    os.replace(last, ckpt / "previous.pt")
    digest.unlink(missing_ok=True)


def _resume(ckpt: Path, model, optimizer, rules: dict[str, TrainConfig]):
    """Load the newest intact checkpoint of `ckpt` into `model` and `optimizer`: (state, rng,
    best weights or None), or None when there is none."""
    device = next(iter(rules.values())).device
    for name in CHECKPOINTS:
        path = ckpt / name
        if not path.exists():
            continue
        problem = digest_problem(path)
        if problem is None:
            try:
                saved = torch.load(path, map_location=device, weights_only=True)
                saved |= json.loads(saved.pop("meta"))
                break
            except Exception as err:  # e.g. written by an older version, which pickled objects
                problem = f"{path} does not load as tensors and JSON ({type(err).__name__}: {err})"
        log.warning(f"checkpoint {problem}: skipped, trying the one before")
    else:
        if any((ckpt / name).exists() for name in CHECKPOINTS):
            log.warning(f"no intact checkpoint in {ckpt}: training starts afresh")
        return None
    if "configs" not in saved or set(saved["configs"]) != set(rules):
        raise ValueError(
            f"{path} was written for other stopping rules "
            f"{sorted(saved.get('configs', {}))} (or by an older version), not {sorted(rules)}; "
            "use another checkpoint folder or delete this one"
        )
    for name, config in rules.items():
        now = json.loads(_plain(asdict(config)))
        differs = {
            k: (v, now.get(k))
            for k, v in saved["configs"][name].items()
            if k not in RESUMABLE_CHANGES and now.get(k) != v
        }
        if differs:
            raise ValueError(
                f"{path} was written with a different configuration {differs}; "
                "use another checkpoint folder or delete this one"
            )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    rng = np.random.default_rng()
    rng.bit_generator.state = saved["rng"]
    torch.set_rng_state(saved["torch_rng"])
    return saved["state"], rng, saved["best"]
