"""The paper's Table 1, its headline aggregates and Figure 3, on synthetic per-user results whose
numbers can be worked out by hand, plus one small end-to-end grid on toy-tiny."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sda_lib.features import FeatureTable, item_order_checksum
from sda_lib.recsys import (
    RunKey,
    TrainConfig,
    figure3,
    format_table1,
    headline,
    paper_table1,
    part_settings,
    results_table,
    tail_definition,
    train_grid,
)
from sda_lib.recsys.evaluate import metrics_from_ranks
from sda_lib.recsys.experiment import tidy_metrics
from sda_lib.recsys.published import ABSTRACT

N_USERS = 40
TAIL_USERS = range(10)  # users 0..9 have a tail target (on "beauty"; "toys" has none)
LOG3 = 1 / math.log2(3)  # NDCG@10 of a hit at rank 1


def frame(hits, dataset="beauty", rank_of_hit=0):
    """Per-user results: users in `hits` rank their target at `rank_of_hit`, the rest at 50."""
    ranks = np.full(N_USERS, 50)
    ranks[list(hits)] = rank_of_hit
    is_tail = np.isin(np.arange(N_USERS), list(TAIL_USERS)) if dataset == "beauty" else np.zeros(N_USERS, bool)
    return pd.DataFrame(
        {
            "user": np.arange(N_USERS),
            "target": np.arange(N_USERS) % 7,
            "is_tail": is_tail,
            "popularity": np.arange(N_USERS),
            "rank": ranks,
            **metrics_from_ranks(ranks),
        }
    )


def hits(head: int, tail: int) -> list[int]:
    """The first `tail` tail users and the first `head` head users (10, 11, ...)."""
    return list(range(tail)) + list(range(10, 10 + head))


# (dataset, model) -> feature label -> per-seed (head hits, tail hits[, rank of the hits])
GRID = {
    ("beauty", "sasrec"): {
        "id": [(8, 2)],
        "clip": [(10, 3)],
        "zero-shot": [(7, 4)],
        "pretrained": [(5, 0)],
        "sda": [(20, 6), (22, 6)],
    },
    ("beauty", "slmrec"): {"id": [(10, 0)], "clip": [(11, 0)], "zero-shot": [(13, 0)], "sda": [(12, 2, 1)]},
    ("toys", "sasrec"): {"id": [(8, 2)], "clip": [(10, 3)], "zero-shot": [(7, 4)], "sda": [(20, 6)]},
}


@pytest.fixture(scope="module")
def grid():
    """(tidy results, per-user results) of GRID; settings with one entry have it for both seeds."""
    frames, per_user = [], {}
    for (dataset, model), settings in GRID.items():
        for label, seeds in settings.items():
            for seed in (0, 1):
                head, tail, *rank = seeds[min(seed, len(seeds) - 1)]
                users = {p: frame(hits(head, tail), dataset, *rank) for p in ("full", "sampled")}
                key = RunKey(dataset, model, label, "id" if label == "id" else "id+features", seed)
                per_user[key] = users
                frames.append(tidy_metrics(key._asdict(), users))
    return pd.concat(frames, ignore_index=True), per_user


def test_table1_rows_in_the_papers_order(grid):
    table = paper_table1(*grid)
    assert list(table.index.get_level_values("model").unique()) == ["SLMRec", "SASRec"]  # paper order
    assert list(table.loc[("beauty", "SASRec")].index) == ["Base", "CLIP", "QwenVL", "pretrained", "SDA"]
    assert list(table.loc[("beauty", "SLMRec")].index) == ["Base", "CLIP", "QwenVL", "SDA"]
    assert [c for c in table.columns if c[1] in ("H@10", "N@10")] == [
        ("overall", "H@10"),
        ("overall", "N@10"),
        ("tail", "H@10"),
        ("tail", "N@10"),
    ]
    # seed means: SDA hits 26 and 28 of 40 users overall, 6 of the 10 tail users in both seeds
    assert table.loc[("beauty", "SASRec", "SDA"), ("overall", "H@10")] == pytest.approx(27 / 40)
    assert table.loc[("beauty", "SASRec", "CLIP"), ("overall", "H@10")] == pytest.approx(13 / 40)
    assert table.loc[("beauty", "SASRec", "SDA"), ("tail", "N@10")] == pytest.approx(0.6)
    assert table.loc[("beauty", "SLMRec", "SDA"), ("overall", "N@10")] == pytest.approx(14 * LOG3 / 40)


def test_table1_gains_over_the_best_other_row_and_marks(grid):
    table = paper_table1(*grid)
    sda = table.loc[("beauty", "SASRec", "SDA")]
    # overall: best other row is CLIP (13/40; QwenVL 11/40, Base 10/40, pretrained 5/40)
    assert sda[("overall", "H@10 vs")] == "CLIP"
    assert sda[("overall", "H@10 gain")] == pytest.approx((27 / 40) / (13 / 40) - 1)
    # tail: best other row is QwenVL (4 of 10)
    assert sda[("tail", "H@10 vs")] == "QwenVL"
    assert sda[("tail", "H@10 gain")] == pytest.approx(0.6 / 0.4 - 1)
    # p: paired t-test of SDA (seed-averaged per user) against that row
    _, per_user = grid
    sda_users = (
        per_user[RunKey("beauty", "sasrec", "sda", "id+features", 0)]["sampled"]["HR@10"].to_numpy()
        + per_user[RunKey("beauty", "sasrec", "sda", "id+features", 1)]["sampled"]["HR@10"].to_numpy()
    ) / 2
    clip = per_user[RunKey("beauty", "sasrec", "clip", "id+features", 0)]["sampled"]["HR@10"].to_numpy()
    assert sda[("overall", "H@10 p")] == pytest.approx(stats.ttest_rel(sda_users, clip).pvalue)
    zero_shot = per_user[RunKey("beauty", "sasrec", "zero-shot", "id+features", 0)]["sampled"]["HR@10"].to_numpy()
    tail_p = stats.ttest_rel(sda_users[:10], zero_shot[:10]).pvalue  # differences: 2 users of 10 gain a hit
    assert sda[("tail", "H@10 p")] == pytest.approx(tail_p) and tail_p > 0.05
    # baselines carry no gain; a negative gain stays negative (SLMRec's N@10: hits at rank 1)
    assert (
        table.loc[("beauty", "SASRec", "CLIP"), ("overall", "H@10 gain")]
        != table.loc[("beauty", "SASRec", "CLIP"), ("overall", "H@10 gain")]
    )  # NaN
    slm = table.loc[("beauty", "SLMRec", "SDA")]
    assert slm[("overall", "N@10 vs")] == "QwenVL"
    assert slm[("overall", "N@10 gain")] == pytest.approx((14 * LOG3 / 40) / (13 / 40) - 1)
    # every baseline has 0 tail hits: no gain over a zero (NaN, not inf)
    assert np.isnan(slm[("tail", "H@10 gain")])
    # formatted: "*" where p < 0.05, an Improv. row after SDA naming the reference when it varies
    shown = format_table1(table)
    assert shown.loc[("beauty", "SASRec", "SDA"), ("overall", "H@10")] == f"{27 / 40:.4f}*"
    assert shown.loc[("beauty", "SASRec", "SDA"), ("tail", "H@10")] == "0.6000"  # p > 0.05: no mark
    rows = list(shown.loc[("beauty", "SASRec")].index)
    assert rows[-2:] == ["SDA", "Improv."]
    assert shown.loc[("beauty", "SASRec", "Improv."), ("tail", "H@10")] == "+50.00% vs QwenVL"
    assert shown.loc[("beauty", "SLMRec", "Improv."), ("tail", "H@10")] == "—"
    assert "best other row" in shown[("", "note")].iloc[0]


def test_table1_fixed_reference_and_adapter_name(grid):
    results, per_user = grid
    table = paper_table1(results, per_user, reference="zero-shot")
    sda = table.loc[("beauty", "SASRec", "SDA")]
    assert sda[("overall", "H@10 vs")] == "QwenVL"
    assert sda[("overall", "H@10 gain")] == pytest.approx((27 / 40) / (11 / 40) - 1)
    assert "SDA / QwenVL" in table.attrs["notes"][0]
    # the adapter under another name: that label is the SDA row
    renamed = results.replace({"features": {"sda": "sda-e8"}})
    table = paper_table1(renamed, sda="sda-e8")
    assert "SDA" in table.loc[("beauty", "SASRec")].index


def test_table1_says_when_a_dataset_has_no_tail_items(grid):
    table = paper_table1(*grid, tail=tail_definition({"params": {"tail_threshold": 4, "tail_count_on": "train"}}))
    toys = table.loc[("toys", "SASRec")]
    assert toys[("tail", "H@10")].isna().all() and toys[("overall", "H@10")].notna().all()
    notes = " ".join(table.attrs["notes"])
    assert "toys: no test target is a tail item" in notes and "(not zero)" in notes
    assert "fewer than 4 training interactions" in notes
    assert format_table1(table).loc[("toys", "SASRec", "SDA"), ("tail", "N@10")] == "—"
    generic = results_table(grid[0])  # the generic table says so too
    assert (
        generic.loc[("toys", "sasrec", "sda"), ("tail", "HR@10")]
        != generic.loc[("toys", "sasrec", "sda"), ("tail", "HR@10")]
    )
    assert any("toys: no test target is a tail item" in n for n in generic.attrs["notes"])


def test_headline_aggregates_by_hand(grid):
    table = paper_table1(*grid)
    out = headline(table)
    # overall H@10 gains over the best other row: beauty/SASRec 27/13 - 1, beauty/SLMRec 14/13 - 1,
    # toys/SASRec 26/13 - 1 (toys has no tail users, so all 26 SDA hits and 13 CLIP hits count as head)
    h = [27 / 13 - 1, 14 / 13 - 1, 26 / 13 - 1]
    assert out.loc["average H@10 gain", "workbench"] == pytest.approx(np.mean(h))
    n = [27 / 13 - 1, 14 * LOG3 / 13 - 1, 26 / 13 - 1]
    assert out.loc["average N@10 gain", "workbench"] == pytest.approx(np.mean(n))
    assert out.loc["average H@10 gain", "cells"] == 3
    # tail: only beauty/SASRec has a defined gain (SLMRec's baselines score 0, toys has no tail)
    assert out.loc["largest tail H@10 gain", "workbench"] == pytest.approx(0.5)
    assert out.loc["largest tail N@10 gain", "where"] == "beauty/SASRec"
    assert out.loc["largest tail H@10 gain", "cells"] == 1
    assert out["published"].to_dict() == ABSTRACT
    assert "best other row" in out.loc["average H@10 gain", "definition"]
    assert any("does not define" in note for note in out.attrs["notes"])


def test_figure3_bars_by_hand():
    per_user = {}
    for label, (head, tail) in {"id": (8, 2), "sda-text": (10, 2), "sda-image": (9, 2), "sda": (14, 4)}.items():
        for seed in (0, 1):
            per_user[RunKey("toys", "slmrec", label, "id+features", seed)] = {"sampled": frame(hits(head, tail))}
    table, fig = figure3(per_user)
    hr = table[table["metric"] == "HR@10"].set_index("bar")
    assert list(hr.index) == ["Base", "Text", "Image", "Both"]
    assert hr["value"].tolist() == pytest.approx([10 / 40, 12 / 40, 11 / 40, 18 / 40])
    assert hr.loc["Both", "gain"] == pytest.approx(18 / 10 - 1) and hr.loc["Both", "seeds"] == 2
    both, base = (np.isin(range(40), hits(*h)).astype(float) for h in ((14, 4), (8, 2)))
    assert hr.loc["Both", "p"] == pytest.approx(stats.ttest_rel(both, base).pvalue)
    assert np.isnan(hr.loc["Base", "gain"])
    assert [t.name for t in fig.data] == ["HR@10", "NDCG@10"] and list(fig.data[0].x) == [
        "Base",
        "Text",
        "Image",
        "Both",
    ]
    tail, _ = figure3(per_user, subset="tail")
    assert tail[tail["metric"] == "HR@10"]["value"].tolist() == pytest.approx([0.2, 0.2, 0.2, 0.4])
    del per_user[RunKey("toys", "slmrec", "sda-image", "id+features", 0)]
    del per_user[RunKey("toys", "slmrec", "sda-image", "id+features", 1)]
    partial, _ = figure3(per_user)
    assert "Image" not in set(partial["bar"]) and "Image (sda-image)" in partial.attrs["notes"][0]


def test_grid_of_feature_parts_end_to_end(toy_tiny, tmp_path):
    """SLMRec on the text part, the image part and both, trained for one epoch on toy-tiny; named
    keys survive the grid and feed Figure 3 and Table 1."""
    rng = np.random.default_rng(0)
    text, image = rng.normal(size=(toy_tiny.n_items, 6)), rng.normal(size=(toy_tiny.n_items, 4))
    manifest = {
        "dataset": toy_tiny.name,
        "item_order": item_order_checksum(toy_tiny.items["item_id"]),
        "extractor": "random",
        "dims": {"text": 6, "image": 4, "features_text": 6, "features_image": 4},
    }
    table = FeatureTable(text, image, np.concatenate([text, image], 1), manifest)
    settings = {"id": None, **part_settings(table, toy_tiny)}
    train = TrainConfig(epochs=1, batch_size=256, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        results, per_user = train_grid(
            toy_tiny, ["slmrec"], settings, train=train, out=tmp_path, model_params={"slmrec": {"dim": 8}}
        )
    assert [k.features for k in per_user] == ["id", "sda-text", "sda-image", "sda"]
    config = pd.read_json(tmp_path / "slmrec" / "sda-text" / "seed0" / "config.json", typ="series")
    assert config["parts"] == ["text"] and config["train"]["lr"] == 1e-4
    bars, fig = figure3(per_user)
    assert list(bars["bar"].unique()) == ["Base", "Text", "Image", "Both"] and len(fig.data) == 2
    table = paper_table1(results, per_user)
    assert list(table.index.get_level_values("row")) == ["Base", "sda-image", "sda-text", "SDA"]
