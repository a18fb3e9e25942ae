"""The mini backbone (sda_lib.method.backbones.mini): real pretrained weights, offline, through the whole pipeline."""

import copy
import functools
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sda_lib.analysis import gradients
from sda_lib.method import adapters, moda
from sda_lib.method.adapt import AdaptConfig, train_adapter
from sda_lib.method.backbones import load_backbone, mini, pretrain_mini
from sda_lib.method.backbones.targets import MINI as MINI_TARGETS
from sda_lib.method.export import export_embeddings
from sda_lib.method.extractors import minilm_folder
from sda_lib.method.prompts import describe

ITEMS = [
    {"title": "Red ceramic mug", "brand": "Acme"},
    {"title": "Blue glass vase", "brand": "Lumen"},
    {"title": "", "categories": "Home > Decor"},
    {"title": "Striped cushion " * 80, "brand": "Marlow"},
]


@functools.cache
def backbone():
    return load_backbone("mini", device="cpu")


def fresh():
    """A copy of the loaded backbone (a copy costs milliseconds, a load seconds)."""
    return replace(backbone(), model=copy.deepcopy(backbone().model))


def pictures(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        pretrain_mini.render(*pretrain_mini.COMBINATIONS[int(c)], 112, rng)
        for c in rng.integers(len(pretrain_mini.COMBINATIONS), size=n)
    ]


def test_loads_offline_from_the_committed_connector():
    code = (
        "from sda_lib.method.backbones import load_backbone; b = load_backbone('mini', device='cpu'); "
        "print(b.id, b.hidden_size, b.embed([{'title': 'mug'}], progress=False).shape)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    card = json.loads(mini.card_path(mini.CONNECTOR).read_text())
    assert result.stdout.split()[:2] == [f"mini-connector-{card['sha256'][:12]}", "384"]


def test_text_embedding_is_the_sentence_transformers_embedding():
    from sentence_transformers import SentenceTransformer

    ours = backbone().embed(ITEMS, modality="text", batch_size=3, progress=False)  # long row truncated at 256
    reference = SentenceTransformer(str(minilm_folder()), device="cpu").encode([describe(f) for f in ITEMS])
    assert np.abs(F.normalize(torch.from_numpy(ours), dim=-1).numpy() - reference).max() < 1e-5


def test_rows_do_not_depend_on_their_batch():
    b = backbone()
    images = pictures(2)
    with torch.inference_mode():
        mixed = b.embed_batch(b.inputs(texts=ITEMS[:2], images=images))
        alone = torch.cat([b.embed_batch(b.inputs(texts=ITEMS[:2])), b.embed_batch(b.inputs(images=images))])
    assert torch.allclose(mixed, alone, atol=1e-5)


def test_vision_trunk_remembers_each_image_once(monkeypatch):
    """The frozen trunk computes an image's features once; repeats and later batches read them back,
    equal to a fresh computation, and the memory keeps only the last MEMORY images."""
    trunk = fresh().model.vision
    trunk.store = None  # memory only (the store has its own test)
    pixels = torch.stack([mini.efficientnet_pixels(im, 64) for im in pictures(3, seed=1)])
    computed = []
    features = trunk.features
    monkeypatch.setattr(trunk, "features", lambda x: computed.append(len(x)) or features(x))
    first = trunk(pixels[[0, 1, 0]])
    again = trunk(pixels[[2, 1]])
    assert computed == [2, 1]
    assert torch.allclose(first, features(pixels[[0, 1, 0]]), atol=1e-5)
    assert torch.equal(first[1], again[1])
    monkeypatch.setattr(trunk, "MEMORY", 2)
    trunk(pixels[[0]])
    assert len(trunk.memory) == 2 and computed == [2, 1]


def test_vision_trunk_store_serves_a_new_process_and_heals(tmp_path, monkeypatch, caplog):
    """Features kept in the store are read back by a fresh trunk (another stage's process) instead
    of computed, equal to a computation; a damaged entry is computed and rewritten; a store that
    cannot be written only costs the caching, with a warning."""
    pixels = torch.stack([mini.efficientnet_pixels(im, 64) for im in pictures(2, seed=2)])
    writer = fresh().model.vision
    writer.store = tmp_path / "trunk"
    expected = writer(pixels)
    entries = sorted(writer.store.iterdir())
    assert len(entries) == 2 and all(e.name.endswith("-float32.safetensors") for e in entries)

    reader, computed = fresh().model.vision, []
    reader.store, reader.memory = writer.store, type(reader.memory)()
    features = reader.features
    monkeypatch.setattr(reader, "features", lambda x: computed.append(len(x)) or features(x))
    assert torch.equal(reader(pixels), expected) and computed == []

    entries[0].write_bytes(b"not safetensors")
    reader.memory.clear()
    healed = reader(pixels)
    assert torch.allclose(healed, expected, atol=1e-3) and computed == [1]  # computed alone, not in a pair
    reader.memory.clear()
    assert torch.equal(reader(pixels), healed) and computed == [1]  # rewritten whole

    blocked = tmp_path / "file"
    blocked.write_text("")
    reader.store, reader.memory = blocked / "trunk", type(reader.memory)()
    with caplog.at_level("WARNING"):
        assert torch.allclose(reader(pixels), expected, atol=1e-3)
    assert reader.store is None and "not keeping vision features" in caplog.text


def test_prompt_lengths_are_the_unpadded_rows():
    b = backbone()
    batch = b.inputs(texts=ITEMS, images=pictures(2))
    assert b.prompt_lengths(texts=ITEMS, images=pictures(2)).tolist() == batch["attention_mask"].sum(1).tolist()


def test_image_rows_must_match_the_images():
    b = backbone()
    batch = b.inputs(images=pictures(2))
    batch["pixel_values"] = batch["pixel_values"][:1]
    with pytest.raises(ValueError, match=r"32 \[IMG\] positions but 1 images"):
        b.embed_batch(batch)
    with pytest.raises(ValueError, match="0 items"):
        b.inputs()


def neighbour_share(x: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Share of each item's k nearest neighbours (cosine, itself excluded) with its label."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def base_rate(labels: np.ndarray) -> float:
    """Share of pairs of distinct items with one label."""
    _, counts = np.unique(labels, return_counts=True)
    return float((counts * (counts - 1)).sum() / (len(labels) * (len(labels) - 1)))


@pytest.mark.slow
def test_zero_shot_neighbourhoods_beat_chance(toy_tiny):
    from sda_lib.method.export import embed_items

    text, image = embed_items(backbone(), toy_tiny, progress=False)
    items = toy_tiny.items
    shares = {
        (space, a): (neighbour_share(x, items[f"latent_{a}"].to_numpy()), base_rate(items[f"latent_{a}"]))
        for space, x, attributes in (
            ("text", text, ("category", "colour", "brand", "material")),
            ("image", image, ("shape", "pattern")),
        )
        for a in attributes
    }
    for key, (share, base) in shares.items():
        assert share > 1.25 * base, (key, share, base, shares)


def test_moda_goes_into_the_36_encoder_linears_and_refuses_the_vision_tower():
    model = fresh().model
    report = adapters.attach(model, "moda", targets=MINI_TARGETS.language)
    assert len(report.layers) == 36 and all(".text.encoder.layer." in f".{n}" for n in report.layers)
    assert {n.rsplit("layer.", 1)[1].split(".", 1)[1] for n in report.layers} == {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    }
    with pytest.raises(ValueError, match="vision encoder has nothing to adapt"):
        adapters.attach(fresh().model, "moda", targets=MINI_TARGETS.language, adapt_vision=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["moda", "lora"])
def test_adapt_save_load_and_export(kind, toy_tiny, tmp_path):
    b = fresh()
    config = AdaptConfig(adapter=kind, steps=2, batch_size=4, lr=1e-2, checkpoint_every=100)
    record = train_adapter(b, toy_tiny, config, tmp_path / "adapter", progress=False)
    assert np.isfinite(record["final_loss"]) and record["backbone"] == b.id
    b.model.eval()
    reloaded = fresh()
    assert adapters.load(reloaded.model, tmp_path / "adapter" / "adapter", b.id) == kind
    reloaded.model.eval()  # peft's new modules start in training mode
    with torch.inference_mode(), adapters.modality(b.model, moda.IMAGE), adapters.modality(reloaded.model, moda.IMAGE):
        batch = b.inputs(images=pictures(2))
        assert torch.allclose(b.embed_batch(batch), reloaded.embed_batch(batch), atol=1e-6)
    table = export_embeddings(
        fresh(), toy_tiny, tmp_path / "features", adapter=tmp_path / "adapter" / "adapter", d=16, progress=False
    )
    assert table.text.shape == table.image.shape == (toy_tiny.n_items, 384)
    assert table.manifest["backbone"] == b.id and table.manifest["adapter"]["kind"] == kind


def test_gradient_checkpointing_trains_the_same_adapter(toy_tiny, tmp_path):
    states = []
    for checkpointing in (False, True):
        b = fresh()
        config = AdaptConfig(steps=1, batch_size=4, lr=1e-2, gradient_checkpointing=checkpointing)
        train_adapter(b, toy_tiny, config, tmp_path / str(checkpointing), progress=False)
        assert all(layer.gradient_checkpointing == checkpointing for layer in b.model.text.encoder.layer)
        states.append(adapters.trainable_state(b.model))
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        assert torch.allclose(states[0][name], states[1][name], atol=1e-6), name


@pytest.mark.parametrize("kind", ["moda", "lora"])
def test_gradient_conflict_probe_reads_the_last_layers_query_and_key(kind):
    b = fresh()
    adapters.attach(b.model, kind, r=8, experts=4, targets=b.targets)
    found = gradients.last_layer_b(b.model, b.attention)
    assert [t.projection for t in found] == list(gradients.PROJECTIONS)
    assert all(t.weight.shape[0] == 384 for t in found)
    frame = gradients.conflict(b, ITEMS[:3], pictures(3), tau=0.5)
    assert set(frame["projection"]) == {*gradients.PROJECTIONS, gradients.BOTH}
    assert frame["norm_text"].gt(0).all() and frame["norm_image"].gt(0).all()
    assert frame["cosine"].between(-1, 1).all()
    with pytest.raises(ValueError, match="query or key"):
        gradients.last_layer_b(b.model)  # Qwen's names are not mini's


TINY_RECIPE = pretrain_mini.Recipe(px=64, train_images=16, test_images=8, steps=2, batch_size=4)


def test_pretraining_is_reproducible(tmp_path):
    cards = [pretrain_mini.pretrain_connector(TINY_RECIPE, tmp_path / f"{run}.safetensors") for run in "ab"]
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert cards[0]["sha256"] == cards[1]["sha256"] and cards[0]["recipe"]["px"] == 64
    assert cards[0]["command"] == (
        "sda pretrain-mini --px 64 --train-images 16 --test-images 8 --steps 2 --batch-size 4"
    )
    loaded = load_backbone("mini", device="cpu").model.connector  # the committed weights
    assert mini.load_connector(loaded, tmp_path / "a.safetensors") == cards[0]["sha256"]


def test_committed_connector_card():
    card = json.loads(mini.card_path(mini.CONNECTOR).read_text())
    assert card["recipe"] == json.loads(json.dumps(vars(pretrain_mini.Recipe())))
    held_out, chance = card["held_out"]["pretrained"], card["held_out"]["chance"]
    assert held_out["caption_top1"] > 20 * chance["caption_top1"]
    assert min(held_out[a] / chance[a] for a in ("shape", "colour", "pattern")) > 2.5


def test_missing_or_corrupt_connector_names_the_file_and_the_rebuild(tmp_path):
    connector = mini.new_connector()
    with pytest.raises(
        FileNotFoundError,
        match=r"missing\.safetensors is missing: rebuild it with "
        r"`sda pretrain-mini --out",
    ):
        mini.load_connector(connector, tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(mini.CONNECTOR.read_bytes()[:-10])
    mini.card_path(corrupt).write_text(mini.card_path(mini.CONNECTOR).read_text())
    with pytest.raises(ValueError, match=r"corrupt\.safetensors do not match the checksum .*`sda pretrain-mini"):
        mini.load_connector(connector, corrupt)


def test_untrained_variant_is_mini_with_a_fixed_random_connector():
    """`mini:untrained`: the same trunks, the connector as initialised (one seed whatever the run's),
    loadable again from its id, as adapters reload their backbone."""
    from sda_lib.method.backbones import backbone_name

    untrained = load_backbone("mini:untrained", device="cpu", seed=3)
    assert untrained.id == "mini:untrained" and backbone_name(untrained.id) == ("mini:untrained", None)
    again = load_backbone(untrained.id, device="cpu")
    pretrained = backbone().model.connector.state_dict()
    for name, value in untrained.model.connector.state_dict().items():
        assert torch.equal(value, again.model.connector.state_dict()[name]), name
        if name.endswith("1.weight"):  # the first linear (index 1, after the LayerNorm)
            assert not torch.allclose(value, pretrained[name])
    assert torch.equal(
        untrained.model.text.embeddings.word_embeddings.weight, backbone().model.text.embeddings.word_embeddings.weight
    )
    texts = untrained.embed(ITEMS[:2], modality="text", progress=False)
    np.testing.assert_allclose(texts, backbone().embed(ITEMS[:2], modality="text", progress=False), atol=1e-5)
    images = pictures(2)
    assert not np.allclose(
        untrained.embed(ITEMS[:2], images, modality="image", progress=False),
        backbone().embed(ITEMS[:2], images, modality="image", progress=False),
        atol=1e-3,
    )
    with pytest.raises(ValueError, match="the only variant is 'mini:untrained'"):
        load_backbone("mini:big", device="cpu")
