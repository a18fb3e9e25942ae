"""The ablation grid of the paper's Table 2: each adaptation variant is adapted, exported and fed
to a recommender, and compared with full SDA.

Every variant lives in `<run>/ablations/<variant>/` (adapter, feature table, recommender runs), so
an interrupted grid resumes where it stopped and a finished one is only read back.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..method.adapt import AdaptConfig, train_adapter
from ..method.backbones import load_backbone, trained_on
from ..method.export import export_embeddings
from ..method.features import FeatureError
from ..method.prompts import Prompts
from ..recsys import published, results_table, train_grid
from ..recsys.base import ItemReprName
from ..recsys.experiment import write_results
from ..recsys.report import PAPER_MODELS
from ..recsys.train import TrainConfig
from ..utils.display import gain
from ..utils.io import read_json, slug

FULL = "SDA"
ZERO_SHOT = "w/o CMSA"
ID_ONLY = "w/o CMSA & MoDA"
# The paper's Table 2 rows, then further variants shown below a rule. Each maps to changes of the
# full SDA configuration; ZERO_SHOT exports the bare backbone (the authors' "w/o CMSA" script ranks
# zero-shot features, experiments/beauty/rat/sasrec_ablation_zeroshot.bash) and ID_ONLY uses no
# features at all (the ID-only base).
PAPER_ROWS: dict[str, dict | None] = {
    FULL: {},
    ZERO_SHOT: None,
    "w/o MoDA": {"adapter": "lora"},
    ID_ONLY: None,
    "w/o soft target": {"loss": "infonce"},
}
EXTRA_ROWS: dict[str, dict] = {
    "w/o CMSA (text views)": {"loss": "text-views"},
    "independent adapters": {"adapter": "independent"},
    "2 experts": {"experts": 2},
    "4 experts": {"experts": 4},
    "tau fixed 1": {"tau": 1.0, "learn_tau": False},
    "tau fixed 3": {"tau": 3.0, "learn_tau": False},
    "tau fixed 10": {"tau": 10.0, "learn_tau": False},
}
VARIANTS = {**PAPER_ROWS, **EXTRA_ROWS}
CORE = list(PAPER_ROWS)


def variant_features(
    name: str,
    dataset,
    backbone: str,
    base: AdaptConfig,
    folder: Path,
    seed: int,
    d: int = 768,
    progress: bool = True,
    prompts: Prompts = Prompts(),
) -> Path | None:
    """Adapt (unless zero-shot) and export one variant for one seed; returns its feature folder
    (None for the ID-only row)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown ablation variant {name!r}; choose from: {', '.join(VARIANTS)}")
    if name == ID_ONLY:
        return None
    folder = folder / slug(name) / f"seed{seed}"
    features = folder / "embeddings"
    if (features / "manifest.json").exists():
        made_by = read_json(features / "manifest.json").get("backbone", "")
        if not trained_on(made_by, backbone, seed):
            raise FeatureError(
                f"the finished {name!r} variant in {features} was embedded by backbone {made_by!r}, not by "
                f"{backbone!r}: run the ablations in another run folder, or delete {folder.parent.parent} first"
            )
        return features
    changes = VARIANTS[name]
    adapter = None
    if changes is not None:
        config = replace(base, seed=seed, **changes)
        if not (folder / "adapt.json").exists():
            train_adapter(
                load_backbone(backbone, seed=seed, prompts=prompts), dataset, config, folder, progress=progress
            )
        adapter = folder / "adapter"
    export_embeddings(
        load_backbone(backbone, seed=seed, prompts=prompts),
        dataset,
        features,
        adapter=adapter,
        d=d,
        progress=progress,
        name=slug(name),
    )
    return features


def run_ablations(
    dataset,
    backbone: str,
    run_dir: str | Path,
    variants=CORE,
    base: AdaptConfig = AdaptConfig(),
    seeds=(0,),
    model: str = "sasrec",
    train: TrainConfig | None = None,
    d: int = 768,
    progress: bool = True,
    prompts: Prompts = Prompts(),
    model_params: dict | None = None,
    item_repr: ItemReprName | dict[str, ItemReprName] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Tidy recommender results (features column = variant) and per-user frames, for every
    variant and seed. Each seed seeds both the adaptation and the recommender; `model_params` and
    `item_repr` configure the recommender (see sda_lib.recsys.presets)."""
    folder = Path(run_dir) / "ablations"
    frames, per_user = [], {}
    for seed in seeds:
        tables = {
            name: variant_features(name, dataset, backbone, base, folder, seed, d, progress, prompts)
            for name in variants
        }
        results, users = train_grid(
            dataset,
            models=(model,),
            features=tables,
            seeds=(seed,),
            train=train,
            item_repr=item_repr,
            model_params={model: model_params or {}},
            out=folder / "recsys",
            results_name=None,
        )
        frames.append(results)
        per_user |= users
    results = pd.concat(frames, ignore_index=True)
    write_results(results, folder / "recsys")  # every seed's rows (one grid per seed above)
    return results, per_user


def table2(results: pd.DataFrame, protocol: str = "sampled", reference: str = FULL) -> pd.DataFrame:
    """The paper's Table 2: overall and tail H@10 / N@10 per variant (means over seeds, and their
    spread when there are several), and Δ as the paper defines it: the mean relative change of H@10
    and N@10 against full SDA (negative: the variant drops), per subset. The paper's rows come
    first; further variants follow below a rule row."""
    table = results_table(results, baseline=reference, protocol=protocol, metrics=("HR@10", "NDCG@10"))
    table = table.droplevel(["dataset", "model"])
    out = pd.DataFrame(index=table.index)
    for subset in ("overall", "tail"):
        out[(subset, "H@10")] = table[(subset, "HR@10")]
        out[(subset, "N@10")] = table[(subset, "NDCG@10")]
        gains = [table.get((subset, f"{m} gain")) for m in ("HR@10", "NDCG@10")]
        out[(subset, "Δ")] = pd.concat(gains, axis=1).mean(axis=1) if all(g is not None for g in gains) else np.nan
    rows = results[(results["protocol"] == protocol) & results["metric"].isin(["HR@10", "NDCG@10"])]
    if rows["seed"].nunique() > 1:
        spread = rows.groupby(["features", "subset", "metric"])["value"].std().unstack(["subset", "metric"])
        for subset, metric in spread.columns:
            out[(subset, f"{metric[0]}@10 std")] = spread[(subset, metric)]
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    paper = [v for v in PAPER_ROWS if v in out.index]
    extra = [v for v in VARIANTS if v in out.index and v not in PAPER_ROWS]
    if extra:
        rule = pd.DataFrame(np.nan, index=["further variants"], columns=out.columns)
        out = pd.concat([out.loc[paper], rule, out.loc[extra]])
    else:
        out = out.loc[paper]
    out.index.name = "variant"
    out.attrs["notes"] = [
        f"Δ: mean relative change of H@10 and N@10 against {reference} ({protocol} protocol)",
        *table.attrs.get("notes", []),
    ]
    return out.sort_index(axis=1, level=0, sort_remaining=False)


def name_rows(table: pd.DataFrame, tag: str | None = None) -> pd.DataFrame:
    """`table2`'s table with its rows named after what ran: the ID-only row and the zero-shot row
    say so, and with a backbone other than the paper's (`tag`, e.g. "tiny": recsys.report.lvlm_tag)
    every adapted row names it, e.g. "SDA (tiny)"."""
    names = {ID_ONLY: f"{ID_ONLY} (ID only)", ZERO_SHOT: f"{ZERO_SHOT} (zero-shot{' ' + tag if tag else ''})"}
    if tag:
        names |= {v: f"{v} ({tag})" for v in VARIANTS if v not in names}
    out = table.rename(index=names)
    out.attrs = dict(table.attrs)
    return out


SOFT_TARGET = "w/o soft target"  # CMSA's soft teacher replaced by InfoNCE's one-hot target


def soft_target_finding(table: pd.DataFrame, dataset: str, model: str) -> dict | None:
    """The report's one-line verdict on CMSA against InfoNCE (`report.save_finding`) from
    `table2`'s table: the Δ of the w/o soft target row (negative: InfoNCE drops against SDA's CMSA),
    with Table 2's on the paper's datasets (the paper's ablation is SASRec on Beauty only). None
    when that row did not run."""
    if SOFT_TARGET not in table.index or FULL not in table.index:
        return None
    overall, tail = (table.loc[SOFT_TARGET, (subset, "Δ")] for subset in ("overall", "tail"))
    shown = gain(overall)
    verdict = "CMSA ahead" if shown.startswith("-") else "InfoNCE ahead" if shown.startswith("+") else "tied"
    paper = None
    if not published.comparable([dataset]):
        row = published.table2(consistent=True).loc[published.TABLE2_ROWS[SOFT_TARGET]]
        spec = published.paper()["table2"]
        overall_paper, tail_paper = gain(row[("overall", "Δ")]), gain(row[("tail", "Δ")])
        paper = f"Δ {overall_paper} overall, {tail_paper} tail ({spec['model']} on {spec['dataset']})"
    return {
        "mechanism": "CMSA vs InfoNCE",
        "verdict": verdict,
        "measured": f"InfoNCE in place of CMSA's soft target: Δ {shown} overall, {gain(tail) or 'no tail users'} tail "
        f"(mean change of H@10 and N@10 against SDA; {PAPER_MODELS.get(model, model)})",
        "paper": paper,
    }
