"""The teaching demo's measurements (sda_lib.analysis.teaching), checked by hand on small inputs."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sda_lib.analysis.teaching import attribute_sharing, chance, measure, structure_kept, summarize

# Two tight pairs: rows 0, 1 point one way, rows 2, 3 another.
PAIRS = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
# Rows 0 and 2 together, rows 1 and 3 together: every nearest neighbour changes.
SWAPPED = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])


def test_attribute_sharing_and_chance_by_hand():
    assert attribute_sharing(PAIRS, np.array(["a", "a", "b", "b"]), k=1) == 1.0
    assert attribute_sharing(PAIRS, np.array(["a", "b", "a", "b"]), k=1) == 0.0
    # k = 2: each row's second neighbour is from the other pair, so half are shared
    assert attribute_sharing(PAIRS, np.array(["a", "a", "b", "b"]), k=2) == 0.5
    assert chance(np.array(["a", "a", "b", "b"])) == pytest.approx(4 / 12)  # 4 of 12 ordered pairs
    assert chance(np.array(["a", "b", "c"])) == 0.0


def test_structure_kept_by_hand():
    assert structure_kept(PAIRS, PAIRS * 3.0, k=1) == 1.0  # cosine neighbours ignore scale
    assert structure_kept(PAIRS, SWAPPED, k=1) == 0.0


# 40 items on a circle; the second table sends every item to a different place on it.
ANGLES = 2 * np.pi * (np.arange(40) + np.random.default_rng(0).uniform(-0.2, 0.2, 40)) / 40
CIRCLE = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)
SHUFFLED = CIRCLE[np.random.default_rng(1).permutation(40)]
BRANDS = np.array(["a"] * 20 + ["b"] * 20)


def _write(folder, arrays: dict):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    for name, x in arrays.items():
        np.save(folder / f"{name}.npy", x)


def _run(tmp_path, name, hr_sda):
    run = tmp_path / name
    _write(run / "embeddings" / "zero-shot", {"text": CIRCLE, "image": CIRCLE})
    _write(run / "embeddings" / "sda", {"text": CIRCLE, "image": CIRCLE})
    _write(run / "ablations" / "sda" / "seed0" / "embeddings", {"text": CIRCLE, "image": SHUFFLED})
    _write(run / "ablations" / "w-o-soft-target" / "seed0" / "embeddings", {"text": SHUFFLED, "image": SHUFFLED})
    (run / "tables").mkdir()
    pd.DataFrame(
        {"adapter": ["lora", "moda"], "part": ["B", "expert 0"], "first": [0, 0], "last": [0, 0], "mean": [0.1, 0.3]}
    ).to_csv(run / "tables" / "07-gradient-conflict-summary.csv", index=False)
    for features, value in (("id", 0.2), ("sda", hr_sda), ("sda-text", 0.9)):
        folder = run / "recsys" / "sasrec" / features / "seed0"
        folder.mkdir(parents=True)
        rows = [("sampled", "HR@10", value), ("sampled", "NDCG@10", value / 2), ("full", "HR@10", 0.0)]
        pd.DataFrame(
            [
                {"model": "sasrec", "features": features, "protocol": p, "subset": "overall", "metric": m, "value": v}
                for p, m, v in rows
            ]
        ).to_csv(folder / "metrics.csv", index=False)
    return run


def test_measure_reads_every_stage_and_summarize_gives_mean_and_spread(tmp_path):
    dataset = SimpleNamespace(items=pd.DataFrame({"latent_brand": BRANDS, "title": ["t"] * 40}))
    frames = [measure(_run(tmp_path, "one", 0.5), dataset), measure(_run(tmp_path, "two", 0.7), dataset)]
    summary = summarize(frames)["mean"]
    # a circle's 5 nearest are the 2-3 items on either side: all of one brand but near the 2 borders
    assert summary[("neighbourhoods", "text space, brand")] == attribute_sharing(CIRCLE, BRANDS)
    assert 0.85 < summary[("neighbourhoods", "image space, brand")] < 1.0
    assert summary[("neighbourhoods", "chance, brand")] == pytest.approx(2 * 20 * 19 / (40 * 39))
    assert ("neighbourhoods", "text space, colour") not in summary  # no latent colour in this catalogue
    assert summary[("alignment", "SDA, t2i Recall@10")] == 1.0
    assert summary[("structure kept", "CMSA, text")] == 1.0
    assert summary[("structure kept", "CMSA, image")] == structure_kept(CIRCLE, SHUFFLED) < 0.5
    assert summary[("structure kept", "InfoNCE, text")] == structure_kept(CIRCLE, SHUFFLED)
    assert summary[("gradient conflict", "MoDA first expert, mean cosine")] == 0.3
    assert summary[("gradient conflict", "shared LoRA, mean cosine")] == 0.1
    recommendation = summarize(frames).loc["recommendation"]
    assert set(recommendation.index) == {
        f"sasrec, {f}, overall {m}" for f in ("id", "sda") for m in ("HR@10", "NDCG@10")
    }
    row = recommendation.loc["sasrec, sda, overall HR@10"]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert row["runs"] == 2


def test_runs_are_names_under_outputs_even_beside_a_folder_of_that_name(outputs, tmp_path, monkeypatch, capsys):
    from sda_lib.analysis.teaching import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "seed1").mkdir()  # a folder in the working directory with the run's name
    assert main(["--dataset", "toy", "--runs", "seed1", "./seed1"]) == 2
    err = capsys.readouterr().err
    assert str(outputs / "toy" / "seed1") in err and "seed1, seed1" in err.replace(str(outputs / "toy") + "/", "")
