"""Export: merged adapter == routed adapter, resumable chunks, manifests that refuse the wrong data."""

import dataclasses

import numpy as np
import pytest
import torch

from sda_lib.method import adapters, export
from sda_lib.method.adapt import embed_rows, load_image
from sda_lib.method.backbones import load_backbone
from sda_lib.method.features import FeatureError, FeatureTable
from sda_lib.method.moda import IMAGE, TEXT


def _trained(kind, folder):
    """A backbone whose adapter has non-zero B (as after training), saved to `folder`."""
    lvlm = load_backbone("tiny")
    adapters.attach(lvlm.model, kind)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lvlm.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    adapters.save(lvlm.model, folder, lvlm.id)
    return lvlm


@pytest.mark.parametrize("kind", ["moda", "lora", "independent"])
def test_merged_export_equals_routed_forward(toy_tiny, tmp_path, kind):
    lvlm = _trained(kind, tmp_path / "a")
    items = np.arange(6)
    text, image = export.embed_items(lvlm, toy_tiny, items, progress=False)
    fields, paths = toy_tiny.item_fields(), toy_tiny.image_paths()
    lvlm.model.eval()
    with torch.no_grad():
        ref_t = embed_rows(lvlm, TEXT, texts=[fields[i] for i in items]).numpy()
        ref_v = embed_rows(lvlm, IMAGE, images=[load_image(paths[i]) for i in items]).numpy()
    np.testing.assert_allclose(text, ref_t, atol=1e-4)
    np.testing.assert_allclose(image, ref_v, atol=1e-4)
    bare = load_backbone("tiny")
    assert not np.allclose(text, bare.embed(toy_tiny.item_fields()[:6], progress=False), atol=1e-3)

    fresh = load_backbone("tiny")
    assert adapters.load(fresh.model, tmp_path / "a", fresh.id) == kind
    np.testing.assert_allclose(export.embed_items(fresh, toy_tiny, items, progress=False)[0], text, atol=1e-6)


@pytest.mark.parametrize("kind", ["moda", "independent"])
def test_moda_as_two_stock_peft_adapters(toy_tiny, tmp_path, kind):
    """Exported per modality, the adapter runs in stock peft (PeftModel, load_adapter, set_adapter)
    and gives the embeddings of the workbench's merged path."""
    from peft import PeftModel

    lvlm = _trained(kind, tmp_path / "a")
    folders = adapters.export_peft(lvlm.model, tmp_path / "peft", lvlm.id)
    assert sorted(p.name for p in folders["text"].iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapter_model.safetensors.sha256",  # the workbench's checksum, which stock peft ignores
    ]
    items = np.arange(6)
    want_t, want_v = export.embed_items(lvlm, toy_tiny, items, progress=False)

    base = load_backbone("tiny")
    peft_model = PeftModel.from_pretrained(base.model, folders["text"], adapter_name="text")
    peft_model.load_adapter(folders["image"], adapter_name="image")
    fields, paths = toy_tiny.item_fields(), toy_tiny.image_paths()
    peft_model.set_adapter("text")
    got_t = base.embed([fields[i] for i in items], progress=False)
    peft_model.set_adapter("image")
    got_v = base.embed(
        [fields[i] for i in items], images=[load_image(paths[i]) for i in items], modality="image", progress=False
    )
    np.testing.assert_allclose(got_t, want_t, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got_t, load_backbone("tiny").embed([fields[i] for i in items], progress=False), atol=1e-3)


def test_shared_lora_saves_in_peft_layout(toy_tiny, tmp_path):
    from peft import PeftModel

    lvlm = _trained("lora", tmp_path / "a")
    saved = {p.name for p in (tmp_path / "a").iterdir()}
    peft_files = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.safetensors.sha256"}
    assert saved == peft_files | {"README.md"}
    want = export.embed_items(lvlm, toy_tiny, np.arange(4), progress=False)[0]
    stock = load_backbone("tiny")
    PeftModel.from_pretrained(stock.model, tmp_path / "a")
    np.testing.assert_allclose(stock.embed(toy_tiny.item_fields()[:4], progress=False), want, rtol=1e-5, atol=1e-5)
    ours = load_backbone("tiny")
    assert adapters.load(ours.model, tmp_path / "a", ours.id) == "lora"
    np.testing.assert_allclose(export.embed_items(ours, toy_tiny, np.arange(4), progress=False)[0], want, atol=1e-6)


def test_adapter_for_another_backbone(tmp_path):
    _trained("moda", tmp_path / "a")
    other = load_backbone("tiny", seed=1)
    with pytest.raises(ValueError, match="trained on backbone 'tiny-random-seed0', not on 'tiny-random-seed1'"):
        adapters.load(other.model, tmp_path / "a", other.id)
    with pytest.raises(FileNotFoundError, match="no adapter in"):
        adapters.load(other.model, tmp_path / "missing", other.id)


def test_interrupted_export_resumes_without_recomputing(toy_tiny, tmp_path, monkeypatch):
    lvlm = _trained("moda", tmp_path / "a")
    out = tmp_path / "emb"
    full = export.export_embeddings(
        load_backbone("tiny"), toy_tiny, tmp_path / "full", adapter=tmp_path / "a", chunk=32, progress=False
    )
    real, calls, fail_at = export.embed_items, [], {"start": 32}

    def flaky(backbone, dataset, items, *a, **kw):
        calls.append(int(items[0]))
        if calls[-1] == fail_at["start"]:
            raise KeyboardInterrupt
        return real(backbone, dataset, items, *a, **kw)

    monkeypatch.setattr(export, "embed_items", flaky)
    with pytest.raises(KeyboardInterrupt):
        export.export_embeddings(load_backbone("tiny"), toy_tiny, out, adapter=tmp_path / "a", chunk=32, progress=False)
    assert not out.exists() and len(list(out.with_name("emb.parts").glob("*.npz"))) == 1
    calls.clear()
    fail_at["start"] = None
    table = export.export_embeddings(
        load_backbone("tiny"), toy_tiny, out, adapter=tmp_path / "a", chunk=32, progress=False
    )
    assert calls == [32, 64], "finished chunks were recomputed"
    assert not out.with_name("emb.parts").exists()
    np.testing.assert_allclose(table.text, full.text, atol=1e-6)
    np.testing.assert_allclose(table.features, full.features, atol=1e-4)
    m = FeatureTable.load(out, toy_tiny).manifest
    assert m["adapter"]["kind"] == "moda" and m["backbone"] == lvlm.id and m["n_items"] == toy_tiny.n_items
    assert m["dims"] == {"text": 64, "image": 64, "features_text": 64, "features_image": 64}


def test_bf16_path_adapts_merges_and_exports(toy_tiny, tmp_path, monkeypatch):
    """The GPU host's precision on CPU: bf16 weights, bf16 autocast, a few steps, then the export
    with the adapter merged per modality; an interrupted bf16 export resumes to the same bytes."""
    from sda_lib.method.adapt import AdaptConfig, train_adapter

    config = AdaptConfig(steps=3, batch_size=8, lr=1e-2, precision="bf16", checkpoint_every=10)
    record = train_adapter(
        load_backbone("tiny", dtype=torch.bfloat16), toy_tiny, config, tmp_path / "a", progress=False
    )
    assert np.isfinite(record["final_loss"])
    adapter = tmp_path / "a" / "adapter"

    lvlm = load_backbone("tiny", dtype=torch.bfloat16)
    adapters.load(lvlm.model, adapter, lvlm.id)
    items = np.arange(16)
    merged_t, merged_v = export.embed_items(lvlm, toy_tiny, items, progress=False)
    lvlm.model.eval()
    with torch.no_grad():
        routed_t = embed_rows(lvlm, TEXT, texts=[toy_tiny.item_fields()[i] for i in items]).float().numpy()
    # bf16 rounds W0 + update once when merged, and each partial product when routed: they agree
    # to bf16 precision (measured: max relative difference of the embeddings about 1e-2)
    relative = np.abs(merged_t - routed_t).max() / np.abs(routed_t).max()
    assert relative < 3e-2, relative

    full = export.export_embeddings(
        load_backbone("tiny", dtype=torch.bfloat16),
        toy_tiny,
        tmp_path / "full",
        adapter=adapter,
        chunk=16,
        progress=False,
    )
    real = export.embed_items

    def interrupted(backbone, dataset, items, *a, **kw):
        if items[0] == 48:
            raise KeyboardInterrupt
        return real(backbone, dataset, items, *a, **kw)

    monkeypatch.setattr(export, "embed_items", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_embeddings(
            load_backbone("tiny", dtype=torch.bfloat16),
            toy_tiny,
            tmp_path / "cut",
            adapter=adapter,
            chunk=16,
            progress=False,
        )
    monkeypatch.setattr(export, "embed_items", real)
    resumed = export.export_embeddings(
        load_backbone("tiny", dtype=torch.bfloat16),
        toy_tiny,
        tmp_path / "cut",
        adapter=adapter,
        chunk=16,
        progress=False,
    )
    assert np.array_equal(resumed.text, full.text) and np.array_equal(resumed.image, full.image)
    assert full.features.shape == (toy_tiny.n_items, 128)


def test_an_image_that_fails_names_its_item_and_file(toy_tiny, tmp_path):
    """An image the processor rejects (aspect ratio over 200) and one that no longer decodes."""
    from PIL import Image

    paths = toy_tiny.image_paths()
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 300), "red").save(thin)
    items = toy_tiny.items.copy()
    items.loc[3, "image_path"] = str(thin)
    data = dataclasses.replace(toy_tiny, items=items)
    with pytest.raises(export.ImageError, match=rf"item '{items.loc[3, 'item_id']}'.*{thin}.*1x300 px.*aspect ratio"):
        export.embed_items(load_backbone("tiny"), data, np.arange(8), progress=False)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[2].read_bytes()[:40])
    items.loc[3, "image_path"] = str(broken)
    with pytest.raises(
        export.ImageError, match=rf"item '{items.loc[3, 'item_id']}': its image {broken} cannot be read"
    ):
        export.embed_items(
            load_backbone("tiny"), dataclasses.replace(toy_tiny, items=items), np.arange(8), progress=False
        )


def test_feature_table_refuses_wrong_data(toy_tiny, tmp_path):
    rng = np.random.default_rng(0)
    n = toy_tiny.n_items
    table = export.feature_table(rng.normal(size=(n, 12)), rng.normal(size=(n, 20)), toy_tiny, d=8)
    assert table.features.shape == (n, 16) and table.split_dims == (8, 8)
    table.save(tmp_path / "ok")
    FeatureTable.load(tmp_path / "ok", toy_tiny)

    short = FeatureTable(table.text[:-1], table.image[:-1], table.features[:-1], table.manifest)
    with pytest.raises(FeatureError, match=f"text.npy has {n - 1} rows, the dataset has {n} items"):
        short.check(toy_tiny)
    other = FeatureTable(table.text, table.image, table.features, {**table.manifest, "dataset": "beauty"})
    with pytest.raises(FeatureError, match="exported for dataset 'beauty', not 'toy-tiny'"):
        other.check(toy_tiny)
    nan = table.features.copy()
    nan[5, 3] = np.nan
    with pytest.raises(FeatureError, match="features.npy has non-finite values in 1 rows, first item 5"):
        FeatureTable(table.text, table.image, nan, table.manifest).check(toy_tiny)
    with pytest.raises(FeatureError, match="manifest.json missing"):
        FeatureTable.load(tmp_path / "nothing", toy_tiny)


@pytest.mark.parametrize("kind", ["moda", "lora"])
def test_from_pretrained_rebuilds_the_backbone_an_adapter_names(tmp_path, kind):
    lvlm = load_backbone("tiny", seed=3)
    adapters.attach(lvlm.model, kind)
    with torch.no_grad():
        for p in lvlm.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    adapters.save(lvlm.model, tmp_path / "a", lvlm.id)
    assert adapters.base_model(tmp_path / "a") == "tiny-random-seed3"
    again = adapters.from_pretrained(tmp_path / "a")
    assert again.id == lvlm.id and adapters.kind_of(again.model) == kind
    items = [{"title": "a red mug"}, {"title": "garden hose"}]
    with adapters.merged(lvlm.model, TEXT), adapters.merged(again.model, TEXT):
        np.testing.assert_array_equal(again.embed(items, progress=False), lvlm.embed(items, progress=False))
    with pytest.raises(FileNotFoundError, match="no adapter in"):
        adapters.from_pretrained(tmp_path)
