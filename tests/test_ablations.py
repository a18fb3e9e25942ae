"""Table 2 as the paper defines it: its rows, then further variants below a rule, and Δ."""

import numpy as np
import pandas as pd
import pytest

from sda_lib.analysis.ablations import FULL, ID_ONLY, VARIANTS, name_rows, run_ablations, table2, variant_features
from sda_lib.recsys.published import beside_table2
from sda_lib.recsys.report import lvlm_tag
from sda_lib.recsys.train import TrainConfig


def tidy(values: dict[str, tuple[float, float]], seed=0) -> pd.DataFrame:
    """values: variant -> (overall HR@10, overall NDCG@10); tail = half of them."""
    rows = []
    for variant, (hr, ndcg) in values.items():
        for subset, scale in (("overall", 1.0), ("tail", 0.5)):
            for metric, value in (("HR@10", hr), ("NDCG@10", ndcg)):
                rows.append(
                    {
                        "dataset": "toy",
                        "model": "sasrec",
                        "features": variant,
                        "item_repr": "features",
                        "seed": seed,
                        "protocol": "sampled",
                        "subset": subset,
                        "metric": metric,
                        "value": value * scale,
                        "users": 10,
                    }
                )
    return pd.DataFrame(rows)


def test_table2_rows_and_delta_by_hand():
    results = tidy(
        {
            FULL: (0.50, 0.30),
            "w/o MoDA": (0.45, 0.24),
            "2 experts": (0.55, 0.30),
            ID_ONLY: (0.40, 0.21),
            "w/o CMSA": (0.48, 0.27),
        }
    )
    table = table2(results)
    assert list(table.index) == [FULL, "w/o CMSA", "w/o MoDA", ID_ONLY, "further variants", "2 experts"]
    # Δ = mean of (0.45 / 0.50 - 1, 0.24 / 0.30 - 1) = mean(-0.10, -0.20)
    assert table.loc["w/o MoDA", ("overall", "Δ")] == pytest.approx(-0.15)
    assert table.loc["2 experts", ("overall", "Δ")] == pytest.approx(0.05)
    assert table.loc[FULL, ("overall", "Δ")] == pytest.approx(0.0)
    assert table.loc[ID_ONLY, ("tail", "H@10")] == pytest.approx(0.20)
    assert table.loc["further variants"].isna().all()
    assert "Δ: mean relative change of H@10 and N@10 against SDA" in table.attrs["notes"][0]


def test_table2_beside_the_paper_with_rows_named_after_what_ran():
    results = tidy({FULL: (0.50, 0.30), "w/o CMSA": (0.48, 0.27), ID_ONLY: (0.40, 0.21), "2 experts": (0.5, 0.3)})
    results["dataset"] = "beauty"
    table = beside_table2(table2(results), "beauty", "sasrec")
    assert table.loc[FULL, ("overall", "H@10 paper")] == 0.5752
    assert table.loc["w/o CMSA", ("overall", "N@10 vs paper")] == pytest.approx(0.27 / 0.3612 - 1)
    # the ID-only tail in Table 1's order (0.0462 / 0.0229), not as Table 2 prints it
    assert table.loc[ID_ONLY, ("tail", "H@10 paper")] == 0.0462
    assert np.isnan(table.loc["2 experts", ("overall", "H@10 paper")])  # not in the paper
    assert table.loc[ID_ONLY, ("overall", "Δ paper")] == pytest.approx(-0.2908)
    tiny = name_rows(table, lvlm_tag("tiny"))
    assert list(tiny.index[:3]) == ["SDA (tiny)", "w/o CMSA (zero-shot tiny)", "w/o CMSA & MoDA (ID only)"]
    assert list(tiny.index[-2:]) == ["further variants", "2 experts (tiny)"] and tiny.attrs == table.attrs
    paper = name_rows(table, lvlm_tag("7b"))
    assert list(paper.index[:3]) == ["SDA", "w/o CMSA (zero-shot)", "w/o CMSA & MoDA (ID only)"]
    assert lvlm_tag("Qwen/Qwen2.5-VL-7B-Instruct") is None and lvlm_tag("mini-connector-01ab") == "mini"


def test_table2_spread_over_seeds():
    results = pd.concat(
        [
            tidy({FULL: (0.50, 0.30), "w/o MoDA": (0.40, 0.20)}, seed=0),
            tidy({FULL: (0.60, 0.30), "w/o MoDA": (0.40, 0.20)}, seed=1),
        ]
    )
    table = table2(results)
    assert table.loc[FULL, ("overall", "H@10")] == pytest.approx(0.55)
    assert table.loc[FULL, ("overall", "H@10 std")] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert table.loc["w/o MoDA", ("overall", "H@10 std")] == pytest.approx(0.0)


def test_id_only_row_has_no_features_and_unknown_variants_are_named(tmp_path):
    assert variant_features(ID_ONLY, None, "tiny", None, tmp_path, seed=0) is None
    with pytest.raises(ValueError, match="unknown ablation variant 'w/o everything'"):
        variant_features("w/o everything", None, "tiny", None, tmp_path, seed=0)
    assert VARIANTS["w/o CMSA"] is None and VARIANTS["w/o MoDA"] == {"adapter": "lora"}


def test_results_file_holds_every_seed(toy_tiny, tmp_path):
    """The grid is trained seed by seed; the results file the runner fingerprints has them all."""
    results, _ = run_ablations(
        toy_tiny, "tiny", tmp_path, variants=[ID_ONLY], seeds=(0, 1), train=TrainConfig(epochs=1, progress=False)
    )
    written = pd.read_parquet(tmp_path / "ablations" / "recsys" / "results.parquet")
    assert sorted(written["seed"].unique()) == [0, 1]
    pd.testing.assert_frame_equal(written, results, check_dtype=False)
