import copy
import functools
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sda_lib.analysis import gradients
from sda_lib.method import adapters, moda
from sda_lib.method.adapt import AdaptConfig, embed_rows, train_adapter
from sda_lib.method.backbones import load_backbone
from sda_lib.method.cmsa import cmsa_loss
from sda_lib.method.moda import IMAGE, TEXT

TEXTS = [
    {"title": f"{colour} {noun}", "brand": brand}
    for colour, noun, brand in [
        ("red", "mug", "Acme"),
        ("blue", "vase", "Borel"),
        ("green", "lamp", "Acme"),
        ("red", "plate", "Corto"),
        ("white", "cushion", "Borel"),
    ]
]


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(n)]


@functools.cache
def tiny():
    return load_backbone("tiny")


def fresh_backbone():
    """A copy of one tiny backbone (loading one costs a second, copying it milliseconds)."""
    return replace(tiny(), model=copy.deepcopy(tiny().model))


def adapted(kind, dropout=0.0):
    backbone = fresh_backbone()
    adapters.attach(backbone.model, kind, r=8, experts=4, dropout=dropout)
    backbone.model.eval()
    return backbone


@pytest.mark.parametrize("kind", ["moda", "lora"])
def test_path_gradients_equal_hand_computed_vector_jacobian_products(kind):
    backbone = adapted(kind)
    targets = gradients.last_layer_b(backbone.model)
    weights = [b.weight for b in targets]
    torch.manual_seed(1)
    with torch.no_grad():  # leave the B = 0 start, so both paths also flow through B
        for p in backbone.model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    pics = images(len(TEXTS))
    text_path, image_path = gradients.path_gradients(backbone, TEXTS, pics, 0.7, weights)

    # By hand: dL/de_t and dL/de_v on leaf copies, pulled back through each forward separately.
    e_t = embed_rows(backbone, TEXT, texts=TEXTS)
    e_v = embed_rows(backbone, IMAGE, images=pics)
    t_leaf, v_leaf = e_t.detach().requires_grad_(), e_v.detach().requires_grad_()
    cmsa_loss(t_leaf, v_leaf, 0.7).backward()
    by_hand_t = torch.autograd.grad(e_t, weights, grad_outputs=t_leaf.grad)
    by_hand_v = torch.autograd.grad(e_v, weights, grad_outputs=v_leaf.grad)
    for got, want in zip(text_path + image_path, by_hand_t + by_hand_v):
        assert got.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-10)

    # The two paths add up to the gradient of the whole loss.
    full = torch.autograd.grad(
        cmsa_loss(embed_rows(backbone, TEXT, texts=TEXTS), embed_rows(backbone, IMAGE, images=pics), 0.7), weights
    )
    for t, v, f in zip(text_path, image_path, full):
        torch.testing.assert_close(t + v, f, rtol=1e-4, atol=1e-10)


def test_b_gets_gradient_at_init_while_a_does_not():
    backbone = adapted("moda")
    layer = backbone.model.get_submodule("model.language_model.layers.1.self_attn.q_proj")
    assert torch.count_nonzero(layer.lora_B) == 0
    text_path, image_path = gradients.path_gradients(
        backbone, TEXTS, images(len(TEXTS)), 3.0, [layer.lora_B, layer.lora_A]
    )
    # dL/dB = dL/dy (A x)^T is non-zero through A x; dL/dA = B^T dL/dy vanishes with B = 0.
    assert text_path[0].norm() > 0 and image_path[0].norm() > 0
    assert torch.count_nonzero(text_path[1]) == 0 and torch.count_nonzero(image_path[1]) == 0


def test_cosine():
    a = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    assert gradients.cosine(a, a.clone()) == pytest.approx(1.0)
    assert gradients.cosine(a, -2 * a) == pytest.approx(-1.0)
    assert gradients.cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0])) == pytest.approx(0.0)
    by_hand = 5 / (5**0.5 * 10**0.5)  # (1*3 + 2*1) / (|(1, 2)| |(3, 1)|)
    assert gradients.cosine(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])) == pytest.approx(by_hand)
    assert np.isnan(gradients.cosine(a, torch.zeros_like(a)))


def test_expert_blocks_slice_columns():
    b = torch.arange(64 * 8, dtype=torch.float32).reshape(64, 8)
    parts = gradients.expert_blocks(b, expert_rank=2)
    assert list(parts) == ["B", "expert 0", "expert 1", "expert 2", "expert 3"]
    assert all(parts[f"expert {j}"].shape == (64, 2) for j in range(4))
    torch.testing.assert_close(parts["expert 1"], b[:, 2:4])
    torch.testing.assert_close(torch.cat([parts[f"expert {j}"] for j in range(4)], dim=1), b)
    assert list(gradients.expert_blocks(b, None)) == ["B"]


def test_last_layer_b_finds_the_last_decoder_layer():
    moda_b = gradients.last_layer_b(adapted("moda").model)
    layer = "model.language_model.layers.1.self_attn"
    model = adapted("lora").model
    lora_b = gradients.last_layer_b(model)
    assert [(b.projection, tuple(b.weight.shape), b.expert_rank) for b in moda_b] == [
        ("q_proj", (64, 8), 2),
        ("k_proj", (32, 8), 2),
    ]
    assert lora_b[0].weight is model.get_submodule(f"{layer}.q_proj").lora_B["default"].weight
    assert lora_b[1].expert_rank is None
    with pytest.raises(ValueError, match="attach one first"):
        gradients.last_layer_b(fresh_backbone().model)


def test_conflict_rows_per_projection_and_expert():
    frame = gradients.conflict(adapted("moda"), TEXTS, images(len(TEXTS)), 3.0)
    assert set(frame["projection"]) == {"q_proj", "k_proj", "q_proj+k_proj"}
    assert list(frame[frame["projection"] == "q_proj"]["part"]) == ["B"] + [f"expert {j}" for j in range(4)]
    assert frame["cosine"].between(-1, 1).all()
    # The joint norm is the root of the sum of squares of the two projections' norms.
    norms = frame[frame["part"] == "expert 0"].set_index("projection")["norm_text"]
    assert norms["q_proj+k_proj"] == pytest.approx(np.hypot(norms["q_proj"], norms["k_proj"]), rel=1e-5)


def frame(moda_cos, lora_cos):
    rows = []
    for adapter, part, values in (("moda", "expert 0", moda_cos), ("lora", "B", lora_cos)):
        rows += [
            {"adapter": adapter, "part": part, "projection": "q_proj+k_proj", "step": 10 * s, "cosine": c}
            for s, c in enumerate(values)
        ]
    return pd.DataFrame(rows)


def test_conflict_statement_follows_the_numbers():
    higher = gradients.conflict_statement(frame([0.2, 0.4, 0.6], [0.1, 0.2, 0.3]))  # differences .1, .2, .3
    assert higher.startswith("MoDA's first expert shows less gradient conflict than the shared LoRA")
    assert "MoDA first expert 0.400, shared LoRA 0.200" in higher and "higher at 3 of 3" in higher
    assert "mean difference +0.200 (± 0.115" in higher  # 2 * std([.1, .2, .3]) / sqrt(3)
    lower = gradients.conflict_statement(frame([-0.5, -0.1, 0.0], [0.1, 0.2, 0.25]))
    assert "MORE gradient conflict" in lower and "does not reproduce" in lower
    noise = gradients.conflict_statement(frame([0.3, -0.1, 0.2], [0.1, 0.2, 0.0]))
    assert "NOT clearly higher" in noise and "higher at 2 of 3" in noise
    summary = gradients.conflict_summary(frame([0.2, 0.4, 0.6], [0.1, 0.5, 0.2]))
    assert summary.loc[("moda", "expert 0")].tolist() == pytest.approx([0.2, 0.6, 0.4])


def test_paper_table_per_projection_lora_b_and_moda_first_expert():
    rows = []
    for projection, offset in (("q_proj", 0.0), ("k_proj", 0.1), ("q_proj+k_proj", 0.2)):
        for adapter, part, values in (("moda", "expert 0", [0.2, 0.4, 0.6]), ("lora", "B", [0.1, 0.0, -0.4])):
            for step, cosine in zip((1, 10, 20), values):
                rows.append(
                    {
                        "adapter": adapter,
                        "part": part,
                        "projection": projection,
                        "step": step,
                        "cosine": cosine + offset,
                    }
                )
        rows.append({"adapter": "moda", "part": "B", "projection": projection, "step": 1, "cosine": 0.9})  # not shown
    table = gradients.paper_conflict_table(pd.DataFrame(rows).sample(frac=1, random_state=0))  # any row order
    assert table.index.tolist() == [(p, a) for p in ("q_proj", "k_proj", "q_proj+k_proj") for a in ("lora", "moda")]
    assert table.loc[("k_proj", "moda"), ["first", "last", "mean"]].tolist() == pytest.approx([0.3, 0.7, 0.5])
    assert table.loc[("q_proj", "lora"), ["first", "last", "mean", "steps"]].tolist() == pytest.approx(
        [0.1, -0.4, -0.1, 3]
    )
    assert table.loc[("q_proj", "moda"), "part"] == "expert 0" and table.loc[("q_proj", "lora"), "part"] == "B"
    per_projection = [gradients.conflict_statement(pd.DataFrame(rows), p) for p in ("q_proj", "k_proj")]
    assert (
        all("(q_proj, last layer)" in per_projection[0] for _ in (0,)) and "(k_proj, last layer)" in per_projection[1]
    )


def test_conflict_measured_in_training_mode_uses_dropout_and_restores_the_mode():
    backbone = adapted("moda", dropout=0.5)
    texts, pictures = TEXTS, images(len(TEXTS))
    evaluated = [gradients.conflict(backbone, texts, pictures, 3.0)["cosine"] for _ in range(2)]
    pd.testing.assert_series_equal(*evaluated)  # eval: no dropout, the same numbers
    torch.manual_seed(0)
    trained = gradients.conflict(backbone, texts, pictures, 3.0, mode="train")["cosine"]
    assert not np.allclose(trained, evaluated[0]) and not backbone.model.training  # dropout drew; mode restored
    torch.manual_seed(0)
    np.testing.assert_allclose(gradients.conflict(backbone, texts, pictures, 3.0, mode="train")["cosine"], trained)
    with pytest.raises(ValueError, match="mode must be one of"):
        gradients.conflict(backbone, texts, pictures, 3.0, mode="inference")


@pytest.fixture
def tiny_dataset(tmp_path):
    paths = []
    for i, img in enumerate(images(len(TEXTS), seed=3)):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    return SimpleNamespace(
        name="five",
        folder=tmp_path,
        checksum="five",
        check_current=lambda: None,
        n_items=len(TEXTS),
        item_fields=lambda: TEXTS,
        image_paths=lambda: paths,
        items=pd.DataFrame({"item_id": [f"i{k}" for k in range(len(TEXTS))]}),
    )


def test_track_conflict_does_not_disturb_training(tiny_dataset, tmp_path):
    config = AdaptConfig(adapter="moda", steps=5, batch_size=4, lr=1e-2, checkpoint_every=100)
    tracked = fresh_backbone()
    df = gradients.track_conflict(tracked, tiny_dataset, config, tmp_path / "tracked", every=2, progress=False)
    assert sorted(df["step"].unique()) == [1, 2, 4, 5]
    losses = pd.read_csv(tmp_path / "tracked" / "loss.csv").set_index("step")["loss"]
    assert (df.groupby("step")["loss"].first() == losses[[1, 2, 4, 5]]).all()
    assert set(df["part"]) == {"B", *(f"expert {j}" for j in range(config.experts))}
    assert len(df) == 4 * 3 * (1 + config.experts)  # steps x projections x parts (B and each expert)

    reference = fresh_backbone()
    train_adapter(reference, tiny_dataset, config, tmp_path / "reference", progress=False)
    b = gradients.last_layer_b(tracked.model)[0].weight
    assert torch.count_nonzero(b) == b.numel()  # trained away from B = 0
    for (name, got), (_, want) in zip(
        adapters.trainable_state(tracked.model).items(), adapters.trainable_state(reference.model).items()
    ):
        torch.testing.assert_close(got, want, msg=name)


def test_gate_heatmap_shows_every_layer_per_modality():
    model = adapted("moda").model
    gates = moda.gate_weights(model)
    fig = gradients.gate_heatmap(model)
    assert [a.text for a in fig.layout.annotations] == ["text", "image"]
    assert len(fig.data) == 2 and len(fig.data[0].y) == len(gates) == 14  # 2 layers x 7 projections
    first = next(iter(gates.values()))
    np.testing.assert_allclose(fig.data[1].z[0], first[1].numpy(), rtol=1e-6)  # image row of the first layer
    with pytest.raises(ValueError, match="no MoDA layers"):
        gradients.gate_heatmap(adapted("lora").model)
