"""Extension by registration: the README's worked examples (docs/extending/) register an adapter
kind, a backbone, a recommender and a dataset kind, and the runner uses all four by name."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sda_lib.data import DATASETS
from sda_lib.formats import FORMATS
from sda_lib.method import adapters
from sda_lib.method.adapters import KINDS
from sda_lib.method.backbones import BACKBONES, load_backbone
from sda_lib.recsys.base import RECOMMENDERS
from sda_lib.utils import registry
from sda_lib.utils.registry import Registry

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "extending"
PLUGINS = "ia3_adapter,last_token_backbone,bpr_mf,shop_dataset"


@pytest.fixture
def plugins(monkeypatch):
    """The examples importable here and in every notebook kernel the runner starts; afterwards the
    registries hold only what they held before (a later test may use a name the examples take)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(registry.PLUGINS_ENV, PLUGINS)
    registries = [BACKBONES, KINDS, FORMATS, DATASETS, RECOMMENDERS]
    before = [dict(r._entries) for r in registries]
    loaded, seen = set(registry._loaded), registry._seen_env
    yield
    for r, entries in zip(registries, before):
        r._entries = entries
    registry._loaded, registry._seen_env = loaded, seen
    for name in PLUGINS.split(","):
        sys.modules.pop(name, None)


def write_shop_events(folder: Path, users: int = 40, items: int = 30, per_user: int = 6) -> Path:
    """A shop's event log in the example's format: each user buys a few items of one category."""
    rng = np.random.default_rng(0)
    categories = ["garden", "kitchen", "toys"]
    rows = []
    for u in range(users):
        category = u % len(categories)
        pool = [i for i in range(items) if i % len(categories) == category]
        for t, i in enumerate(rng.choice(pool, per_user, replace=False)):
            rows.append(
                {
                    "user": f"u{u}",
                    "item": f"i{i}",
                    "time": 1000 * u + t,
                    "title": f"{categories[i % 3]} thing number {i}",
                    "category": categories[i % 3],
                }
            )
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_json(folder / "events.jsonl", orient="records", lines=True)
    return folder


def test_a_name_is_registered_once_and_unknown_names_list_the_registered():
    things = Registry("thing")
    things.register("a", int)
    things.register("a", int)  # the same object again (a module imported twice) is fine
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        things.register("a", float)
    with pytest.raises(ValueError, match="unknown thing 'b'; registered: a"):
        things["b"]


def test_a_plugin_that_fails_to_import_is_named(monkeypatch):
    monkeypatch.setenv(registry.PLUGINS_ENV, "no_such_extension_module")
    with pytest.raises(ImportError, match="'no_such_extension_module' .*SDA_WORKBENCH_PLUGINS"):
        adapters.KINDS["moda"]


def test_example_adapter_and_backbone_round_trip(plugins, tmp_path):
    """The IA3 kind on the last-token backbone: trains, saves in peft's layout, loads back equal."""
    backbone = load_backbone("tiny-last-token", seed=0)
    report = adapters.attach(backbone.model, "ia3", targets=backbone.targets)
    assert adapters.kind_of(backbone.model) == "ia3"
    assert report.layers and all("self_attn" in name for name in report.layers)
    for p in backbone.model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, 1.0, 0.2)  # away from IA3's identity start
    adapters.save(backbone.model, tmp_path / "a", backbone.id)
    assert json.loads((tmp_path / "a" / adapters.PEFT_CONFIG).read_text())["peft_type"] == "IA3"
    fresh = load_backbone("tiny-last-token", seed=0)
    assert adapters.load(fresh.model, tmp_path / "a", fresh.id) == "ia3"
    items = [{"title": "a red mug"}, {"title": "garden hose, twenty metres"}]
    adapted, reloaded = (b.embed(items, progress=False) for b in (backbone, fresh))
    np.testing.assert_allclose(adapted, reloaded, rtol=1e-5, atol=1e-6)
    plain = load_backbone("tiny", seed=0).embed(items, progress=False)
    assert not np.allclose(adapted, plain, atol=1e-3)  # another pooling and an active adapter


@pytest.mark.slow
def test_runner_uses_each_registered_extension(plugins, outputs, tmp_path):
    from sda_lib.data import load_prepared
    from sda_lib.workbench import run as runner

    source = write_shop_events(tmp_path / "shop-files")
    params = {
        "source": str(source),
        "backbone": "tiny-last-token",
        "adapter": "ia3",
        "steps": 4,
        "conflict_every": 0,  # the gradient-conflict probe reads LoRA-style B matrices, which IA3 has not
        "models": ["bpr-mf"],
        "features": ["id", "zero-shot", "sda"],
        "baselines": [],
        "epochs": 2,
        "figure3": False,
    }
    out = runner.run_stages(
        "shop", ["data", "zero_shot", "adapt", "export", "recommend"], params=params, progress=False
    )
    data = load_prepared("shop")
    assert data.card["kind"] == "shop" and data.card["users"] == 40
    adapter = out / "adapters" / "sda" / "adapter"
    assert adapters.peft_type(adapter) == "IA3"
    manifest = json.loads((out / "embeddings" / "sda" / "manifest.json").read_text())
    assert manifest["adapter"]["kind"] == "ia3" and manifest["backbone"].startswith("tiny-last-token")
    results = pd.read_parquet(out / "recsys" / "results.parquet")
    assert set(results["model"]) == {"bpr-mf"}
    assert set(results["features"]) == {"id", "zero-shot", "sda"}
    overall = results[results["subset"] == "overall"]
    assert np.isfinite(overall["value"]).all() and (overall["users"] == 40).all()
    assert results.loc[results["subset"] == "tail", "users"].eq(0).all()  # no item of this log is in the tail
