r"""Established implementations run beside ours on the same data and protocol.

RecBole (1.2.1) needs old numpy and setuptools, so it lives in its own virtualenv and runs as a
subprocess; this module only writes its input and reads what it reports. Set it up once (the
interpreter is taken from $RECBOLE_PYTHON, default ~/recbole-venv/bin/python):

    python3 -m venv ~/recbole-venv && ~/recbole-venv/bin/pip install torch==2.13.0 && \
      ~/recbole-venv/bin/pip install "numpy<1.25" "setuptools<81" "scipy<1.12" "pandas<2.1" recbole==1.2.1

Protocol: the prepared dataset's sequences as one RecBole atomic file (position in the sequence as
timestamp), leave-one-out in time order (`LS: valid_and_test`, `order: TO`), no extra filtering;
SASRec with the S3-Rec sizes (hidden 64, 2 layers, 2 heads, inner 256, dropout 0.5, max length
50). RecBole's own full-sort evaluation does not mask a user's history for sequential models, so
the runner ranks with RecBole's model but by the workbench's rule (sda_lib.recsys.evaluate): every
item the user had before the target excluded, the target kept, ties counted against it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from sda_lib.data import load_prepared
from sda_lib.formats.recbole import write_inter as write_atomic_file

RECBOLE_PYTHON = os.environ.get("RECBOLE_PYTHON", str(Path.home() / "recbole-venv" / "bin" / "python"))

# Runs inside the RecBole virtualenv: imports nothing from this project. Trains epoch by epoch,
# validating after each with history masked, stops after `patience` epochs without a better
# validation NDCG@10, and tests the best epoch's weights.
_RUNNER = r"""
import copy, json, sys, time
import numpy as np
import pandas as pd
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer

args = json.loads(sys.stdin.read())  # not argv, which RecBole parses as its own options
torch.set_num_threads(args["threads"])
# Importing RecBole's sequential models runs sine.py's module-level set_detect_anomaly(True), a debugging
# mode that slows every model's training (SASRec's epoch 1.56x on Beauty, 1.8x on toy here); a fair
# comparison turns it off.
torch.autograd.set_detect_anomaly(False)
config = Config(model="SASRec", dataset=args["name"], config_dict=args["config"])
dataset = create_dataset(config)
train, valid, test = data_preparation(config, dataset)
model = SASRec(config, train.dataset).to(config["device"])
trainer = Trainer(config, model)

inter = pd.read_csv(args["inter"], sep="	", dtype=str)
users = dataset.token2id("user_id", inter["user_id:token"].to_numpy())
items = dataset.token2id("item_id", inter["item_id:token"].to_numpy())
starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
sequences = np.split(items, starts[1:])  # rows are in sequence order, users contiguous

@torch.no_grad()
def ranks(cut):
    # 0-based rank of each user's target sequence[-cut] among all items, earlier items excluded
    model.eval()
    out, length = [], config["MAX_ITEM_LIST_LENGTH"]
    for s in range(0, len(sequences), 1024):
        batch = sequences[s:s + 1024]
        seq = torch.zeros(len(batch), length, dtype=torch.long)
        lens = torch.zeros(len(batch), dtype=torch.long)
        target = torch.tensor([b[-cut] for b in batch])
        for row, b in enumerate(batch):
            context = b[:-cut][-length:]
            seq[row, :len(context)] = torch.from_numpy(context)
            lens[row] = len(context)
        scores = model.forward(seq, lens) @ model.item_embedding.weight.T
        scores[:, 0] = -torch.inf  # the padding item
        target_score = scores.gather(1, target[:, None])
        rows = np.repeat(np.arange(len(batch)), [len(b) - cut for b in batch])
        seen = np.concatenate([b[:-cut] for b in batch])
        scores[rows, seen] = -torch.inf
        scores.scatter_(1, target[:, None], target_score)
        out.append((scores >= target_score).sum(1) - 1)
    return torch.cat(out).numpy()

def metrics(r):
    hit = r < 10
    return {"HR@10": float(hit.mean()), "NDCG@10": float(np.where(hit, 1 / np.log2(r + 2), 0).mean())}

history, best, best_state, bad = [], -1.0, None, 0
for epoch in range(1, args["epochs"] + 1):
    start = time.perf_counter()
    model.train()
    trainer._train_epoch(train, epoch, show_progress=False)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    valid_metrics = metrics(ranks(2))
    history.append({"epoch": epoch, "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - start,
                    **{"valid_" + k: v for k, v in valid_metrics.items()}})
    print(json.dumps(history[-1]), file=sys.stderr, flush=True)
    if valid_metrics["NDCG@10"] > best:
        best, best_state, bad = valid_metrics["NDCG@10"], copy.deepcopy(model.state_dict()), 0
    else:
        bad += 1
        if bad >= args["patience"]:
            break
model.load_state_dict(best_state)
print(json.dumps({"history": history, "test": metrics(ranks(1)), "train_sequences": len(train.dataset),
                  "users": len(sequences)}))
"""


def recbole_sasrec(
    dataset="beauty",
    epochs: int = 200,
    patience: int = 10,
    threads: int = 1,
    loss: str = "CE",
    python: str | Path = RECBOLE_PYTHON,
    timeout: float | None = None,
) -> dict:
    """RecBole's SASRec trained on `dataset` with early stopping on validation NDCG@10 (history
    masked, see the module docstring), then tested at its best epoch.

    Returns {"history": one dict per epoch (epoch, train_seconds, eval_seconds, valid_HR@10,
    valid_NDCG@10), "test": {HR@10, NDCG@10} at the best epoch, "train_sequences", "users"}.
    `loss` "CE" (softmax over all items) or "BPR" (one sampled negative per prediction)."""
    if not Path(python).exists():
        raise FileNotFoundError(f"no RecBole interpreter at {python}; set it up as benchmarks.peers says")
    dataset = load_prepared(dataset) if isinstance(dataset, (str, Path)) else dataset
    with tempfile.TemporaryDirectory(prefix="recbole-") as tmp:
        name = dataset.name
        inter = Path(tmp) / name / f"{name}.inter"
        write_atomic_file(dataset, inter)
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
            "learning_rate": 1e-3,
            "train_neg_sample_args": None if loss == "CE" else {"distribution": "uniform", "sample_num": 1},
        }
        env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
        args = {"name": name, "inter": str(inter), "threads": threads, "epochs": epochs, "patience": patience}
        done = subprocess.run(
            [str(python), "-c", _RUNNER],
            input=json.dumps({**args, "config": config}),
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            timeout=timeout,
            cwd=tmp,
        )
    if done.returncode != 0:
        raise RuntimeError(f"RecBole run failed (exit {done.returncode}); its traceback is printed above")
    return json.loads(done.stdout.strip().splitlines()[-1])
