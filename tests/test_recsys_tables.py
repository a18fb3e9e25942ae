"""The paper's Table 1, its headline aggregates and Figure 3, on synthetic per-user results whose
numbers can be worked out by hand, plus one small end-to-end grid on toy-tiny."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sda_lib.method.features import FeatureTable, item_order_checksum
from sda_lib.recsys import (
    RunKey,
    TrainConfig,
    figure3,
    format_table1,
    headline,
    paper_table1,
    published,
    replacement_settings,
    results_table,
    row_labels,
    tail_definition,
    train_grid,
)
from sda_lib.recsys.evaluate import metrics_from_ranks
from sda_lib.recsys.experiment import tidy_metrics

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
    # SLMRec's Base is the "pretrained" table (beside IDs); its ID-only run is a row not in the paper
    ("beauty", "slmrec"): {
        "pretrained": [(10, 0)],
        "clip": [(11, 0)],
        "zero-shot": [(13, 0)],
        "sda": [(12, 2, 1)],
        "id": [(3, 0)],
    },
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
    # the paper's rows, then those it does not have (below a rule when formatted)
    assert list(table.loc[("beauty", "SASRec")].index) == ["Base", "CLIP", "QwenVL", "SDA", "pretrained"]
    assert list(table.loc[("beauty", "SLMRec")].index) == ["Base", "CLIP", "QwenVL", "SDA", "id"]
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
    # SASRec's Base is its ID run; SLMRec's is the pretrained features beside IDs (MMRec's Base)
    assert table.loc[("beauty", "SASRec", "Base"), ("overall", "H@10")] == pytest.approx(10 / 40)
    assert table.loc[("beauty", "SLMRec", "Base"), ("overall", "H@10")] == pytest.approx(10 / 40)
    assert table.loc[("beauty", "SLMRec", "id"), ("overall", "H@10")] == pytest.approx(3 / 40)
    assert any("stand-in for MMRec's own content features" in n for n in table.attrs["notes"])


def test_table1_gains_over_the_best_other_row_and_marks(grid):
    table = paper_table1(*grid)
    sda = table.loc[("beauty", "SASRec", "SDA")]
    # overall: best of the paper's other rows is CLIP (13/40; QwenVL 11/40, Base 10/40)
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
    assert np.isnan(table.loc[("beauty", "SASRec", "CLIP"), ("overall", "H@10 gain")])
    slm = table.loc[("beauty", "SLMRec", "SDA")]
    assert slm[("overall", "N@10 vs")] == "QwenVL"
    assert slm[("overall", "N@10 gain")] == pytest.approx((14 * LOG3 / 40) / (13 / 40) - 1)
    # every baseline has 0 tail hits: no gain over a zero (NaN, not inf)
    assert np.isnan(slm[("tail", "H@10 gain")])
    # formatted: "*" where p < 0.05, an Improv. row after SDA naming the reference when it varies,
    # the rows not in the paper below a rule
    shown = format_table1(table)
    assert shown.loc[("beauty", "SASRec", "SDA"), ("overall", "H@10")] == f"{27 / 40:.4f}*"
    assert shown.loc[("beauty", "SASRec", "SDA"), ("tail", "H@10")] == "0.6000"  # p > 0.05: no mark
    lower = table.copy()  # a significant drop is not marked: "*" says SDA is better
    lower[("overall", "H@10 gain")] = -lower[("overall", "H@10 gain")]
    assert format_table1(lower).loc[("beauty", "SASRec", "SDA"), ("overall", "H@10")] == f"{27 / 40:.4f}"
    rows = list(shown.loc[("beauty", "SASRec")].index)
    assert rows[3:] == [
        "SDA",
        "Improv.",
        "— not in the paper —",
        "MiniLM + EfficientNet-Lite0 (not in the paper)",
    ]
    assert list(shown.loc[("beauty", "SLMRec")].index)[-1] == "ID only (not in the paper)"
    assert shown.loc[("beauty", "SASRec", "Improv."), ("tail", "H@10")] == "+50.0% vs QwenVL"
    assert shown.loc[("beauty", "SLMRec", "Improv."), ("tail", "H@10")] == "—"
    assert "best of the paper's other rows" in shown[("", "note")].iloc[0]


def test_table1_rows_are_named_after_what_ran(grid):
    tiny = {"zero-shot": {"backbone": "tiny-random-seed0"}, "sda": {"backbone": "tiny-random-seed0"}}
    labels = row_labels({**tiny, "clip": {"model": "clip:tiny-random-seed0"}})
    assert labels == {"QwenVL": "zero-shot (tiny)", "SDA": "SDA (tiny)", "CLIP": "CLIP (tiny)"}
    paper = {
        "zero-shot": {"backbone": "Qwen/Qwen2.5-VL-7B-Instruct"},
        "sda-e8": {"backbone": "/models/Qwen2.5-VL-7B-Instruct/"},  # a local copy of the 7B
        "clip": {"model": "clip:openai/clip-vit-large-patch14"},
    }
    assert row_labels(paper, sda="sda-e8") == {"QwenVL": "QwenVL", "SDA": "SDA", "CLIP": "CLIP"}
    mini = {
        "zero-shot": {"backbone": "mini-connector-0123abcd"},
        "clip": {"model": "clip:openai/clip-vit-base-patch32"},
    }
    assert row_labels(mini) == {"QwenVL": "zero-shot (mini)", "CLIP": "CLIP (clip-vit-base-patch32)"}
    shown = format_table1(paper_table1(*grid, labels=labels))
    rows = list(shown.loc[("beauty", "SASRec")].index)
    assert rows[:4] == ["Base", "CLIP (tiny)", "zero-shot (tiny)", "SDA (tiny)"]
    assert shown.loc[("beauty", "SASRec", "Improv."), ("tail", "H@10")] == "+50.0% vs zero-shot (tiny)"


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
    assert np.isnan(generic.loc[("toys", "sasrec", "sda"), ("tail", "HR@10")])
    assert any("toys: no test target is a tail item" in n for n in generic.attrs["notes"])


def test_table1_beside_the_published_numbers(grid):
    table = published.beside_table1(paper_table1(*grid))
    sda = table.loc[("beauty", "SASRec", "SDA")]
    assert sda[("overall", "H@10 paper")] == 0.5752  # Table 1, SASRec, SDA, Beauty
    assert sda[("overall", "H@10 vs paper")] == pytest.approx((27 / 40) / 0.5752 - 1)
    assert sda[("tail", "N@10 paper")] == 0.3118
    # SLMRec's Base is compared with the paper's SLMRec Base; a row the paper lacks has no number
    assert table.loc[("beauty", "SLMRec", "Base"), ("overall", "H@10 paper")] == 0.4258
    assert np.isnan(table.loc[("beauty", "SASRec", "pretrained"), ("overall", "H@10 paper")])
    # toys has no tail users: the published tail value is there, the difference is not
    toys = table.loc[("toys", "SASRec", "CLIP")]
    assert toys[("tail", "H@10 paper")] == 0.5292 and np.isnan(toys[("tail", "H@10 vs paper")])
    shown = format_table1(table)
    assert list(shown.columns[:3]) == [("overall", "H@10"), ("overall", "H@10 paper"), ("overall", "H@10 vs paper")]
    assert shown.loc[("beauty", "SASRec", "SDA"), ("overall", "H@10 paper")] == "0.5752"
    assert shown.loc[("beauty", "SASRec", "SDA"), ("overall", "H@10 vs paper")] == f"{(27 / 40) / 0.5752 - 1:+.1%}"
    assert "Table 1 of" in shown[("", "note")].iloc[0]
    # data the paper does not use: no published column, and a note saying why
    results, per_user = grid
    toy = published.beside_table1(paper_table1(results.replace({"dataset": {"beauty": "toy", "toys": "toy-tiny"}})))
    assert not [c for c in toy.columns if "paper" in c[1]]
    assert any("No published column: toy, toy-tiny is not one of the paper's datasets" in n for n in toy.attrs["notes"])


def test_headline_aggregates_by_hand(grid):
    out = headline(paper_table1(*grid))
    # SDA over CLIP, mean over the cells: beauty/SASRec 27/13, beauty/SLMRec 14/11, toys/SASRec 26/13
    h = [27 / 13 - 1, 14 / 11 - 1, 26 / 13 - 1]
    assert out.loc["overall H@10", "gain"] == pytest.approx(np.mean(h))
    n = [27 / 13 - 1, 14 * LOG3 / 11 - 1, 26 / 13 - 1]
    assert out.loc["overall N@10", "gain"] == pytest.approx(np.mean(n))
    assert out.loc["overall H@10", "cells"] == 3
    # tail: only beauty/SASRec has a defined gain (SLMRec's CLIP scores 0, toys has no tail), 0.6 / 0.3
    assert out.loc["tail H@10", "gain"] == pytest.approx(1.0)
    assert out.loc["tail N@10", "cells"] == 1
    assert out["published gain"].tolist() == pytest.approx([0.0615, 0.0864, 0.1283, 0.1870])
    assert out.loc["tail H@10", "gain minus published"] == pytest.approx(1.0 - 0.1283)
    assert "SDA / CLIP - 1" in out.loc["overall H@10", "definition"]
    results, per_user = grid
    toy = headline(paper_table1(results.replace({"dataset": {"beauty": "toy", "toys": "toy"}})))
    assert "published gain" not in toy.columns and any("No published column" in n for n in toy.attrs["notes"])
    no_clip = headline(paper_table1(results[results["features"] != "clip"]))
    assert no_clip["gain"].isna().all() and any("no CLIP row" in n for n in no_clip.attrs["notes"])


def test_figure3_modality_replacement_by_hand():
    per_user = {}
    bars = {  # label -> (head hits, tail hits)
        "pretrained": (8, 2),
        "sda-text+pretrained-image": (10, 2),
        "pretrained-text+sda-image": (11, 3),
        "sda": (14, 4),
    }
    for label, (head, tail) in bars.items():
        for seed in (0, 1):
            per_user[RunKey("toys", "slmrec", label, "id+features", seed)] = {"sampled": frame(hits(head, tail))}
    table, fig = figure3(per_user)
    hr = table[(table["metric"] == "HR@10") & (table["subset"] == "overall")].set_index("bar")
    assert list(hr.index) == ["Base", "SDA text + Base image", "Base text + SDA image", "SDA text + image"]
    assert hr["value"].tolist() == pytest.approx([10 / 40, 12 / 40, 14 / 40, 18 / 40])
    assert hr.loc["SDA text + image", "gain"] == pytest.approx(18 / 10 - 1) and hr.loc["SDA text + image", "seeds"] == 2
    both, base = (np.isin(range(40), hits(*h)).astype(float) for h in ((14, 4), (8, 2)))
    assert hr.loc["SDA text + image", "p"] == pytest.approx(stats.ttest_rel(both, base).pvalue)
    assert np.isnan(hr.loc["Base", "gain"])
    tail = table[(table["metric"] == "HR@10") & (table["subset"] == "tail")]
    assert tail["value"].tolist() == pytest.approx([0.2, 0.2, 0.3, 0.4])
    # the paper's findings, checked: all hold overall; on the tail the text part does not beat Base
    notes = " ".join(table.attrs["notes"])
    assert "toys, overall (HR@10, NDCG@10), the paper's findings on Toys: each SDA part alone beats Base: yes" in notes
    assert "toys, tail (HR@10, NDCG@10), the paper's findings on Toys: each SDA part alone beats Base: NO" in notes
    assert [t.name for t in fig.data][:2] == ["HR@10", "NDCG@10"]
    assert list(fig.data[0].x) == ["Base", "SDA text + Base image", "Base text + SDA image", "SDA text + image"]
    for seed in (0, 1):
        del per_user[RunKey("toys", "slmrec", "pretrained-text+sda-image", "id+features", seed)]
    partial, _ = figure3(per_user)
    assert "Base text + SDA image" not in set(partial["bar"])
    assert "Base text + SDA image (pretrained-text+sda-image)" in partial.attrs["notes"][0]


def random_table(dataset, text_width, image_width, seed, extractor):
    rng = np.random.default_rng(seed)
    text, image = rng.normal(size=(dataset.n_items, text_width)), rng.normal(size=(dataset.n_items, image_width))
    manifest = {
        "dataset": dataset.name,
        "item_order": item_order_checksum(dataset.items["item_id"]),
        "extractor": extractor,
        "dims": {"text": text_width, "image": image_width, "features_text": text_width, "features_image": image_width},
    }
    return FeatureTable(text, image, np.concatenate([text, image], 1), manifest)


def test_modality_replacement_grid_end_to_end(toy_tiny, tmp_path):
    """SLMRec on Base, the two replacements and SDA, one epoch on toy-tiny: the tables hold the
    right columns, each model trains as its own TrainConfig says, and the runs feed Figure 3."""
    sda, base = random_table(toy_tiny, 6, 4, 0, "lvlm"), random_table(toy_tiny, 5, 3, 1, "pretrained")
    replaced = replacement_settings(sda, base, toy_tiny)
    assert list(replaced) == ["sda-text+pretrained-image", "pretrained-text+sda-image", "sda"]
    mixed = replaced["sda-text+pretrained-image"]
    np.testing.assert_array_equal(mixed.features, np.concatenate([sda.features[:, :6], base.features[:, 5:]], 1))
    assert mixed.split_dims == (6, 3) and mixed.manifest["parts_from"] == {"text": "lvlm", "image": "pretrained"}
    np.testing.assert_array_equal(replaced["pretrained-text+sda-image"].image, sda.image)
    mixed.check(toy_tiny)  # still the dataset's items
    other = random_table(toy_tiny, 5, 3, 1, "pretrained")
    other.manifest["item_order"] = "0000"
    with pytest.raises(ValueError, match="another item order"):
        sda.with_part("image", other)

    train = {"slmrec": TrainConfig(epochs=1, batch_size=256, patience=7, progress=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        results, per_user = train_grid(
            toy_tiny, ["slmrec"], {"pretrained": base, **replaced}, train=train, out=tmp_path,
            model_params={"slmrec": {"dim": 8}},
        )  # fmt: skip
    assert [k.features for k in per_user] == ["pretrained", *replaced]
    config = pd.read_json(tmp_path / "slmrec" / "sda-text+pretrained-image" / "seed0" / "config.json", typ="series")
    assert config["parts"] == ["text", "image"] and config["train"]["patience"] == 7
    assert config["train"]["lr"] == 1e-4  # SLMRec's own where the TrainConfig leaves the default
    bars, fig = figure3(per_user)
    assert bars["bar"].unique().tolist() == list(published_bars()) and len(fig.data) >= 2
    table = paper_table1(results, per_user)
    assert list(table.index.get_level_values("row")) == ["Base", "SDA", *sorted(list(replaced)[:2])]


def published_bars():
    return ("Base", "SDA text + Base image", "Base text + SDA image", "SDA text + image")
