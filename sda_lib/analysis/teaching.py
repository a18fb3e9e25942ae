"""The teaching demo's five measurements, read back from finished runs (one run per seed) and
summarized as mean and spread, so what a class is told about SDA comes with its noise.

    sda teaching --dataset toy --runs mini-seed0 mini-seed1 mini-seed2

1. `neighbourhoods`: the share of each item's 5 nearest zero-shot neighbours (text space, image
   space) that share a latent attribute, beside chance (the share of all item pairs that do): the
   structure CMSA's soft teacher carries. Needs a catalogue with latent attributes (toy, toy-tiny).
2. `alignment`: text-to-image Recall@10 and matched-pair cosine of all items, zero-shot vs SDA
   (`embeddings/zero-shot` and `embeddings/<adapter>`).
3. `structure kept`: how many of each item's 10 nearest zero-shot neighbours in one modality are
   still its neighbours after adaptation, CMSA (06's "SDA" row) vs InfoNCE ("w/o soft target"):
   the paper's argument for the soft target.
4. `gradient conflict`: the mean cosine between text-path and image-path gradients over training,
   MoDA's first expert vs the shared LoRA (07's summary; higher = less conflict).
5. `recommendation`: HR@10 and NDCG@10, overall and tail, of each recommender on ID, zero-shot and
   SDA features (05's results, sampled protocol as in the paper).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import load_prepared
from ..data.names import looks_like_path
from ..utils.io import atomic_path
from ..utils.paths import run_dir
from .alignment import alignment_report, knn, neighbourhood_overlap

ATTRIBUTES = ("brand", "category", "material", "colour", "shape", "pattern")
SURVIVAL = {"CMSA": "sda", "InfoNCE": "w-o-soft-target"}  # 06's folders (sda_lib.utils.io.slug of the rows)


def attribute_sharing(x: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Share of each row's k nearest rows (cosine, itself excluded) with the same label."""
    return float((labels[knn(x, k)] == labels[:, None]).mean())


def chance(labels: np.ndarray) -> float:
    """Share of pairs of distinct items with the same label: what random neighbours would share."""
    _, counts = np.unique(labels, return_counts=True)
    return float((counts * (counts - 1)).sum() / (len(labels) * (len(labels) - 1)))


def structure_kept(before: np.ndarray, after: np.ndarray, k: int = 10) -> float:
    """Mean share of each item's k nearest neighbours before adaptation that are still among its k
    nearest after it (same modality)."""
    return neighbourhood_overlap(knn(before, k), knn(after, k))


def _table(folder: Path) -> dict[str, np.ndarray]:
    return {m: np.load(folder / f"{m}.npy") for m in ("text", "image")}


def measure(run: str | Path, dataset, adapter_name: str = "sda") -> pd.DataFrame:
    """Tidy rows (measurement, setting, value) of one finished run; a measurement whose stage
    did not run is left out."""
    run = Path(run)
    rows = []

    def add(measurement, setting, value):
        rows.append({"measurement": measurement, "setting": setting, "value": float(value)})

    zero_shot = _table(run / "embeddings" / "zero-shot")
    items = dataset.items
    for attribute in ATTRIBUTES:
        column = f"latent_{attribute}"
        if column not in items:
            continue
        labels = items[column].to_numpy()
        for modality, x in zero_shot.items():
            add("neighbourhoods", f"{modality} space, {attribute}", attribute_sharing(x, labels))
        add("neighbourhoods", f"chance, {attribute}", chance(labels))

    adapted = run / "embeddings" / adapter_name
    if (adapted / "manifest.json").exists():
        for label, table in (("zero-shot", zero_shot), ("SDA", _table(adapted))):
            report = alignment_report(table["text"], table["image"])
            add("alignment", f"{label}, t2i Recall@10", report["t2i_recall@10"])
            add("alignment", f"{label}, matched cosine (centred)", report["matched_cosine_centred"])

    for label, variant in SURVIVAL.items():
        for folder in sorted((run / "ablations" / variant).glob("seed*/embeddings")):
            table = _table(folder)
            for modality in ("text", "image"):
                add("structure kept", f"{label}, {modality}", structure_kept(zero_shot[modality], table[modality]))

    conflict = run / "tables" / "07-gradient-conflict-summary.csv"
    if conflict.exists():
        summary = pd.read_csv(conflict)
        for adapter, part, label in (("moda", "expert 0", "MoDA first expert"), ("lora", "B", "shared LoRA")):
            picked = summary[(summary["adapter"] == adapter) & (summary["part"] == part)]
            if len(picked):
                add("gradient conflict", f"{label}, mean cosine", picked["mean"].iloc[0])

    finished = sorted((run / "recsys").glob("*/*/seed*/metrics.csv"))  # each finished recommender run
    if finished:
        frame = pd.concat([pd.read_csv(f) for f in finished], ignore_index=True)
        frame = frame[
            (frame["protocol"] == "sampled")
            & frame["metric"].isin(["HR@10", "NDCG@10"])
            & frame["features"].isin(["id", "zero-shot", adapter_name])
        ]
        for (model, features, subset, metric), value in (
            frame.groupby(["model", "features", "subset", "metric"])["value"].mean().items()
        ):
            add("recommendation", f"{model}, {features}, {subset} {metric}", value)
    return pd.DataFrame(rows)


def summarize(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean, sample standard deviation and number of runs of every (measurement, setting), in the
    order the measurements were taken."""
    tidy = pd.concat(frames, ignore_index=True)
    grouped = tidy.groupby(["measurement", "setting"], sort=False)["value"]
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1), "runs": grouped.size()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sda teaching", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="toy")
    parser.add_argument("--runs", nargs="+", required=True, help="run names under outputs/<dataset>/, or folders")
    parser.add_argument("--adapter-name", default="sda")
    parser.add_argument("--out", help="CSV to write the summary to")
    args = parser.parse_args(argv)
    # A name is a run under outputs/<dataset>/ even beside a folder of that name; a path (./x, a/b) is a folder.
    folders = [Path(r).expanduser() if looks_like_path(r) else run_dir(args.dataset, r) for r in args.runs]
    missing = [str(f) for f in folders if not (f / "embeddings" / "zero-shot" / "manifest.json").exists()]
    if missing:
        print(
            f"error: no finished zero-shot stage in {', '.join(missing)}: run the runner there first", file=sys.stderr
        )
        return 2
    dataset = load_prepared(args.dataset)
    summary = summarize([measure(f, dataset, args.adapter_name) for f in folders])
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(summary.round(4).to_string())
    if args.out:
        with atomic_path(args.out) as tmp:
            summary.reset_index().to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
