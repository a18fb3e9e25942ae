"""The ablation grid of the paper's Table 2: each adaptation variant is adapted, exported and fed
to a recommender, and compared with full SDA.

Every variant lives in `<run>/ablations/<variant>/` (adapter, feature table, recommender runs), so
an interrupted grid resumes where it stopped and a finished one is only read back.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pandas as pd

from .adapt import AdaptConfig, train_adapter
from .backbone import load_backbone
from .export import export_embeddings
from .recsys import table1, train_grid
from .recsys.train import TrainConfig

FULL = "SDA (full)"
ZERO_SHOT = "w/o CMSA & MoDA (zero-shot)"
# Variant -> changes to the full SDA configuration (None: the bare backbone, no adaptation).
VARIANTS: dict[str, dict | None] = {
    FULL: {},
    "w/o soft target (InfoNCE)": {"loss": "infonce"},
    "w/o CMSA (text views)": {"loss": "text-views"},
    "w/o MoDA (shared LoRA)": {"adapter": "lora"},
    ZERO_SHOT: None,
    "independent adapters": {"adapter": "independent"},
    "2 experts": {"experts": 2},
    "4 experts": {"experts": 4},
    "tau fixed 1": {"tau": 1.0, "learn_tau": False},
    "tau fixed 3": {"tau": 3.0, "learn_tau": False},
    "tau fixed 10": {"tau": 10.0, "learn_tau": False},
}
CORE = [FULL, "w/o soft target (InfoNCE)", "w/o CMSA (text views)", "w/o MoDA (shared LoRA)", ZERO_SHOT]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def variant_features(name: str, dataset, backbone: str, base: AdaptConfig, folder: Path, seed: int,
                     d: int = 768, progress: bool = True) -> Path:
    """Adapt (unless zero-shot) and export one variant for one seed; returns its feature folder."""
    if name not in VARIANTS:
        raise ValueError(f"unknown ablation variant {name!r}; choose from: {', '.join(VARIANTS)}")
    folder = folder / slug(name) / f"seed{seed}"
    features = folder / "embeddings"
    if (features / "manifest.json").exists():
        return features
    changes = VARIANTS[name]
    adapter = None
    if changes is not None:
        config = replace(base, seed=seed, **changes)
        if not (folder / "adapt.json").exists():
            train_adapter(load_backbone(backbone, seed=seed), dataset, config, folder, progress=progress)
        adapter = folder / "adapter"
    export_embeddings(load_backbone(backbone, seed=seed), dataset, features, adapter=adapter, d=d,
                      progress=progress, name=slug(name))
    return features


def run_ablations(dataset, backbone: str, run_dir: str | Path, variants=CORE, base: AdaptConfig = AdaptConfig(),
                  seeds=(0,), model: str = "sasrec", train: TrainConfig | None = None, d: int = 768,
                  progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Tidy recommender results (features column = variant) and per-user frames, for every
    variant and seed. Each seed seeds both the adaptation and the recommender."""
    folder = Path(run_dir) / "ablations"
    frames, per_user = [], {}
    for seed in seeds:
        tables = {name: variant_features(name, dataset, backbone, base, folder, seed, d, progress)
                  for name in variants}
        results, users = train_grid(dataset, models=(model,), features=tables, seeds=(seed,), train=train,
                                    out=folder / "recsys")
        frames.append(results)
        per_user |= users
    return pd.concat(frames, ignore_index=True), per_user


def table2(results: pd.DataFrame, protocol: str = "sampled", reference: str = FULL) -> pd.DataFrame:
    """Paper Table 2 layout: overall and tail H@10 / N@10 per variant, the relative change against
    full SDA, and the spread over seeds when there are several."""
    table = table1(results, baseline=reference, protocol=protocol, metrics=("HR@10", "NDCG@10"))
    table = table.droplevel(["dataset", "model"]).rename(columns=lambda c: c.replace("gain", "vs full SDA"),
                                                          level=1)
    rows = results[(results["protocol"] == protocol) & results["metric"].isin(["HR@10", "NDCG@10"])]
    if rows["seed"].nunique() > 1:
        spread = rows.groupby(["features", "subset", "metric"])["value"].std().unstack(["subset", "metric"])
        for subset, metric in spread.columns:
            table[(subset, f"{metric} std")] = spread[(subset, metric)]
    order = [v for v in VARIANTS if v in table.index]
    return table.loc[order].sort_index(axis=1, level=0, sort_remaining=False)
