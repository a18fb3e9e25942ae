"""Adapters as the hub expects them: a model card beside every saved adapter, refreshed with the
run's measured figures; from_pretrained from a folder or a hub id (offline, from the hub cache)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from huggingface_hub import ModelCard

from sda_lib.method import adapters
from sda_lib.method.backbones import load_backbone
from sda_lib.method.moda import TEXT
from sda_lib.method.model_card import refresh_model_cards


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-looking tiny LoRA adapter saved as the adapt stage saves it."""
    root = tmp_path_factory.mktemp("run")
    lvlm = load_backbone("tiny", seed=5)
    adapters.attach(lvlm.model, "lora")
    with torch.no_grad():
        for p in lvlm.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    record = {
        "backbone": lvlm.id,
        "dataset": "toy-tiny",
        "final_loss": 1.25,
        "final_tau": 0.5,
        "config": {"steps": 7, "adapter": "lora", "r": 8, "experts": 8},
    }
    folder = adapters.save(
        lvlm.model, root / "adapters" / "sda" / "adapter", lvlm.id, dataset="toy-tiny", training=record
    )
    (root / "adapters" / "sda" / "adapt.json").write_text(json.dumps(record))
    return lvlm, root, folder


def test_card_beside_the_saved_adapter_names_base_library_and_dataset(saved):
    lvlm, _, folder = saved
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == lvlm.id == "tiny-random-seed5"
    assert card.data.library_name == "peft" and card.data.datasets == ["toy-tiny"]
    assert "adapter-lora" in card.data.tags and card.data.eval_results is None
    assert "- final loss: 1.25" in card.text and "Not yet measured" in card.text


def test_refresh_adds_the_runs_alignment_and_recommendation_figures(saved, tmp_path):
    _, root, _ = saved
    run = tmp_path / "run"
    shutil.copytree(root, run)
    (run / "tables").mkdir()
    pd.DataFrame(
        {"t2i_recall@10": [0.05, 0.12], "matched_cosine_centred": [0.1, 0.3], "cosine_gap": [0.02, 0.2]},
        index=["zero-shot", "adapted"],
    ).to_csv(run / "tables" / "08-alignment-zero-shot-vs-adapted.csv")
    (run / "recsys").mkdir()
    rows = [
        {
            "features": f,
            "model": "sasrec",
            "protocol": p,
            "subset": s,
            "metric": m,
            "value": v + seed / 100,
            "seed": seed,
        }
        for f in ("sda", "zero-shot")
        for p in ("full", "sampled")
        for s in ("overall", "tail")
        for m, v in (("HR@10", 0.2), ("NDCG@10", 0.1), ("MRR", 0.05))
        for seed in (0, 1)
    ]
    pd.DataFrame(rows).to_parquet(run / "recsys" / "results.parquet")
    (written,) = refresh_model_cards(run, adapters.saved_kind)
    card = ModelCard.load(written)
    found = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert found["t2i_recall@10"] == 0.12 and found["cosine_gap"] == 0.2
    assert found["sasrec HR@10"] == pytest.approx(0.205) and found["sasrec NDCG@10"] == pytest.approx(0.105)
    assert "sasrec MRR" not in found
    assert "| sasrec | 0.205 | 0.105 |" in card.text


def test_from_pretrained_takes_a_folder_or_a_hub_id_offline(saved, tmp_path, monkeypatch):
    import huggingface_hub.constants

    lvlm, _, folder = saved
    # the hub cache's layout, as snapshot_download leaves it: models--<org>--<name>/{refs,snapshots}
    repo = tmp_path / "hub" / "models--someone--sda-adapter"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    items = [{"title": "a red mug"}, {"title": "garden hose"}]
    with adapters.merged(lvlm.model, TEXT):
        expected = lvlm.embed(items, progress=False)
    for source in (folder, "someone/sda-adapter"):
        again = adapters.from_pretrained(source)
        assert again.id == lvlm.id and adapters.kind_of(again.model) == "lora"
        np.testing.assert_array_equal(again.embed(items, progress=False), expected)
