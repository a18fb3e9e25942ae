"""Established implementations run beside ours on the same data and protocol, for speed ratios.

RecBole (1.2.1) needs old numpy and setuptools, so it lives in its own virtualenv and runs as a
subprocess; this module only writes its input and reads its timings. Set it up once:

    python3 -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install torch==2.13.0
    /tmp/recbole-venv/bin/pip install "numpy<1.25" "setuptools<81" "scipy<1.12" "pandas<2.1" recbole==1.2.1

Protocol: the prepared dataset's sequences as one RecBole atomic file (position in the sequence as
timestamp), leave-one-out in time order (`LS: valid_and_test`, `order: TO`), full ranking, no
extra filtering; SASRec with the S3-Rec sizes (hidden 64, 2 layers, 2 heads, inner 256, dropout
0.5, max length 50). RecBole trains on every prefix of every training sequence, so an epoch does
more work than ours (one pass per user predicting every next item); the ratio is per epoch as each
library defines it, and per full-ranking pass over all users.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..data import load_prepared

RECBOLE_PYTHON = "/tmp/recbole-venv/bin/python"

# Runs inside the RecBole virtualenv: imports nothing from this project.
_RUNNER = r"""
import json, sys, time
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
config = Config(model="SASRec", dataset=args["name"], config_dict=args["config"])
dataset = create_dataset(config)
train, valid, test = data_preparation(config, dataset)
model = SASRec(config, train.dataset).to(config["device"])
trainer = Trainer(config, model)
start = time.perf_counter()
for epoch in range(args["epochs"]):
    trainer._train_epoch(train, epoch, show_progress=False)
epoch_seconds = (time.perf_counter() - start) / args["epochs"]
start = time.perf_counter()
score, result = trainer._valid_epoch(valid, show_progress=False)
eval_seconds = time.perf_counter() - start
print(json.dumps({"epoch_seconds": epoch_seconds, "eval_seconds": eval_seconds,
                  "valid": {k: float(v) for k, v in result.items()},
                  "train_sequences": len(train.dataset), "users": int(valid.dataset.user_num) - 1}))
"""


def recbole_sasrec_timing(
    dataset="beauty",
    epochs: int = 1,
    threads: int = 2,
    loss: str = "CE",
    python: str | Path = RECBOLE_PYTHON,
    timeout: float = 3600,
) -> dict:
    """Seconds per RecBole SASRec training epoch and per full-ranking validation pass on `dataset`.

    Returns {"epoch_seconds", "eval_seconds", "valid" (RecBole's metrics after `epochs` epochs),
    "train_sequences", "users"}. `loss` "CE" (softmax over all items) or "BPR" (one sampled
    negative per prediction, the nearest to S3-Rec's sampled BCE).
    """
    if not Path(python).exists():
        raise FileNotFoundError(f"no RecBole interpreter at {python}; set it up as the module docstring shows")
    dataset = load_prepared(dataset) if isinstance(dataset, (str, Path)) else dataset
    with tempfile.TemporaryDirectory(prefix="recbole-") as tmp:
        name = dataset.name
        write_atomic_file(dataset, Path(tmp) / name / f"{name}.inter")
        config = {
            "data_path": tmp,
            "checkpoint_dir": str(Path(tmp) / "saved"),
            "device": "cpu",
            "use_gpu": False,
            "show_progress": False,
            "state": "WARNING",
            "seed": 0,
            "reproducibility": True,
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "user_inter_num_interval": "[0,inf)",
            "item_inter_num_interval": "[0,inf)",
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
            "MAX_ITEM_LIST_LENGTH": 50,
            "hidden_size": 64,
            "inner_size": 256,
            "n_layers": 2,
            "n_heads": 2,
            "hidden_dropout_prob": 0.5,
            "attn_dropout_prob": 0.5,
            "hidden_act": "gelu",
            "loss_type": loss,
            "train_batch_size": 256,
            "eval_batch_size": 1024,
            "learning_rate": 1e-3,
            "train_neg_sample_args": None if loss == "CE" else {"distribution": "uniform", "sample_num": 1},
            "metrics": ["Hit", "NDCG"],
            "topk": [10],
            "valid_metric": "NDCG@10",
        }
        env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
        args = json.dumps({"name": name, "threads": threads, "epochs": epochs, "config": config})
        done = subprocess.run(
            [str(python), "-c", _RUNNER, args], capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp
        )
    if done.returncode != 0:
        raise RuntimeError(f"RecBole run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_atomic_file(dataset, path: Path) -> None:
    """The sequences as a RecBole .inter file: user, item, position in the user's sequence."""
    inter = dataset.interactions
    position = np.arange(len(inter)) - np.repeat(dataset.user_offsets[:-1], np.diff(dataset.user_offsets))
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}\t{i}\t{p}" for u, i, p in zip(inter["user"], inter["item"], position)]
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(lines) + "\n")
