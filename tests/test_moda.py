"""MoDA on hand-checkable linear layers and on a tiny random Qwen2.5-VL; the peft LoRA baseline."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from sda_lib.method.moda import (
    IMAGE,
    TEXT,
    MoDAConfig,
    MoDALinear,
    MoDAState,
    gate_weights,
    inject_lora,
    inject_moda,
    load_moda,
    merge_moda,
    moda_layers,
    modality,
    save_moda,
    unmerge_moda,
)

IMAGE_TOKEN, VISION_START, VISION_END = 999, 998, 997
HIDDEN, INTERMEDIATE, KV_DIM, LAYERS = 64, 128, 32, 2


def tiny_qwen(intermediate=INTERMEDIATE):
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=intermediate,
            vocab_size=1000,
            bos_token_id=0,
            eos_token_id=1,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            num_heads=2,
            intermediate_size=64,
            out_hidden_size=HIDDEN,
            patch_size=14,
            spatial_merge_size=2,
        ),
        image_token_id=IMAGE_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        video_token_id=996,
        tie_word_embeddings=True,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


# (in, out) of every language-model projection of tiny_qwen, per layer.
LANGUAGE_SHAPES = [
    (HIDDEN, HIDDEN),
    (HIDDEN, KV_DIM),
    (HIDDEN, KV_DIM),
    (HIDDEN, HIDDEN),
    (HIDDEN, INTERMEDIATE),
    (HIDDEN, INTERMEDIATE),
    (INTERMEDIATE, HIDDEN),
]


def text_inputs(rows=2, length=9):
    return {"input_ids": torch.randint(2, 900, (rows, length), generator=torch.Generator().manual_seed(3))}


def image_inputs():
    """One item with a 4x4-patch image (4 image tokens after the 2x2 merge), two rows."""
    ids = torch.tensor([[5, VISION_START] + [IMAGE_TOKEN] * 4 + [VISION_END, 7, 8]] * 2)
    grid = torch.tensor([[1, 4, 4]] * 2)
    pixels = torch.randn(32, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(4))
    return {"input_ids": ids, "pixel_values": pixels, "image_grid_thw": grid}


def embed(model, inputs, ids=None):
    with torch.no_grad():
        if ids is None:
            return model.model(**inputs).last_hidden_state
        with modality(model, ids):
            return model.model(**inputs).last_hidden_state


def randomise_adapter(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in moda_layers(model).values():
            for name, p in layer.named_parameters():
                if not name.startswith("base."):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def np_softmax(a):
    e = np.exp(a - a.max())
    return e / e.sum()


def wrapped_linear(config, in_features=16, out_features=12, fixed_modality=None):
    torch.manual_seed(6)
    layer = MoDALinear(nn.Linear(in_features, out_features), config, MoDAState(config), "probe", fixed_modality)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if not name.startswith("base."):
                p.normal_(0, 0.3)
    return layer.eval()


def test_r_not_divisible_by_experts_is_refused():
    with pytest.raises(ValueError, match=r"r=6 is not divisible by num_experts=4"):
        MoDAConfig(r=6, num_experts=4)
    assert MoDAConfig(r=6, num_experts=4, routing="hard").r == 6  # hard routing has rank r per modality
    with pytest.raises(ValueError, match="routing"):
        MoDAConfig(routing="sparse")


@pytest.mark.parametrize("gate_bias", [False, True])
def test_fused_output_equals_per_expert_loop(gate_bias):
    config = MoDAConfig(r=8, num_experts=4, alpha=16, dropout=0.0, gate_bias=gate_bias)
    layer = wrapped_linear(config)
    x = torch.randn(3, 5, 16)
    ids = [TEXT, IMAGE, TEXT]
    state = layer.state
    state.ids = torch.tensor(ids)
    got = layer(x).detach().numpy()

    w0, b0 = layer.base.weight.detach().numpy(), layer.base.bias.detach().numpy()
    a, b = layer.lora_A.detach().numpy(), layer.lora_B.detach().numpy()
    emb = layer.modality_embedding.weight.detach().numpy()
    gw = layer.gate.weight.detach().numpy()
    gb = layer.gate.bias.detach().numpy() if gate_bias else 0.0
    k = config.r // config.num_experts
    for row, m in enumerate(ids):
        w = np_softmax(gw @ emb[m] + gb)
        for t in range(5):
            xv = x[row, t].numpy()
            want = w0 @ xv + b0
            for i in range(config.num_experts):
                want += config.alpha / config.r * w[i] * (b[:, i * k : (i + 1) * k] @ (a[i * k : (i + 1) * k] @ xv))
            np.testing.assert_allclose(got[row, t], want, rtol=1e-5, atol=1e-5)


def test_hard_routing_equals_per_modality_loras():
    config = MoDAConfig(r=4, alpha=8, dropout=0.0, routing="hard")
    layer = wrapped_linear(config)
    assert layer.gate is None and layer.lora_A.shape == (2 * 4, 16)
    x = torch.randn(2, 3, 16)
    layer.state.ids = torch.tensor([IMAGE, TEXT])
    got = layer(x).detach()
    for row, m in enumerate([IMAGE, TEXT]):
        a_m, b_m = layer.lora_A[m * 4 : (m + 1) * 4].detach(), layer.lora_B[:, m * 4 : (m + 1) * 4].detach()
        want = layer.base(x[row]).detach() + 8 / 4 * x[row] @ a_m.T @ b_m.T
        torch.testing.assert_close(got[row], want)


def test_vision_layer_always_uses_image_weights():
    config = MoDAConfig(dropout=0.0)
    layer = wrapped_linear(config, fixed_modality=IMAGE)
    patches = torch.randn(7, 16)  # vision rows are patches; no modality set on the model
    delta = layer.delta_weight(IMAGE).detach()
    torch.testing.assert_close(layer(patches).detach(), layer.base(patches).detach() + patches @ delta.T)
    assert not torch.allclose(delta, layer.delta_weight(TEXT).detach())


def test_injected_model_starts_equal_to_frozen_model():
    base = tiny_qwen()
    model = tiny_qwen()
    inject_moda(model, MoDAConfig(adapt_vision=True))
    for inputs in (text_inputs(), image_inputs()):
        want = embed(base, inputs)
        got = embed(model, inputs, [TEXT, IMAGE])
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_trainable_parameters_counted_by_hand():
    config = MoDAConfig(r=8, num_experts=4, modality_dim=64, num_modalities=2)
    model = tiny_qwen()
    frozen_total = sum(p.numel() for p in model.parameters())
    report = inject_moda(model, config)
    per_layer = sum(8 * (i + o) for i, o in LANGUAGE_SHAPES) + len(LANGUAGE_SHAPES) * (2 * 64 + 64 * 4)  # gate: no bias
    assert report.trainable == LAYERS * per_layer
    assert report.total == frozen_total + report.trainable
    assert report.percent == pytest.approx(100 * report.trainable / report.total)
    assert len(report.layers) == LAYERS * 7 and not any("visual" in n for n in report.layers)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".base." not in n and "visual" not in n for n in trainable)

    hard = tiny_qwen()
    report = inject_moda(hard, MoDAConfig(r=8, routing="hard"))
    assert report.trainable == LAYERS * sum(2 * 8 * (i + o) for i, o in LANGUAGE_SHAPES)


def test_authors_initialisation():
    layer = wrapped_linear(MoDAConfig(), in_features=512, out_features=64)
    fresh = MoDALinear(nn.Linear(512, 64), MoDAConfig(), MoDAState(MoDAConfig()), "fresh")
    assert fresh.lora_A.std().item() == pytest.approx(0.01, rel=0.05)  # N(0, 0.01), 8 x 512 draws
    assert fresh.lora_A.mean().abs().item() < 0.002
    assert torch.count_nonzero(fresh.lora_B) == 0 and fresh.gate.bias is None
    kaiming = MoDALinear(nn.Linear(512, 64), MoDAConfig(init="kaiming"), MoDAState(MoDAConfig()), "k")
    assert kaiming.lora_A.abs().max().item() == pytest.approx(1 / np.sqrt(512), rel=0.05)  # peft's bound
    assert layer.gate.bias is None


def test_each_expert_draws_its_own_dropout_mask():
    """With every expert's A the same row, a shared mask gives every expert the same activation and
    per-expert masks do not; in eval mode both are the plain product."""
    x = torch.ones(1, 64, 32)
    acts = {}
    for masks in ("per-expert", "shared"):
        config = MoDAConfig(r=4, num_experts=4, dropout=0.5, dropout_masks=masks)
        layer = MoDALinear(nn.Linear(32, 8), config, MoDAState(config), masks)
        with torch.no_grad():
            layer.lora_A.copy_(torch.ones(4, 32))
        torch.manual_seed(0)
        acts[masks] = layer.train()._project_down(x)
        assert torch.equal(layer.eval()._project_down(x), torch.full((1, 64, 4), 32.0))
    shared, per_expert = acts["shared"], acts["per-expert"]
    assert torch.equal(shared, shared[..., :1].expand_as(shared))
    assert not torch.equal(per_expert, per_expert[..., :1].expand_as(per_expert))
    assert per_expert.mean().item() == pytest.approx(32.0, rel=0.1)  # inverted dropout keeps the mean


def test_adapt_vision_adds_vision_block_linears_only():
    model = tiny_qwen()
    report = inject_moda(model, MoDAConfig(adapt_vision=True))
    vision = [n for n in report.layers if "visual" in n]
    assert len(vision) == 2 * 5 and not any("merger" in n for n in vision)
    assert len(report.layers) == len(vision) + LAYERS * 7
    for name, layer in moda_layers(model).items():
        assert (layer.fixed_modality == IMAGE) == ("visual" in name), name


def test_mixed_batch_rows_get_their_own_modality():
    model = tiny_qwen()
    inject_moda(model, MoDAConfig())
    randomise_adapter(model)
    inputs = text_inputs()
    mixed = embed(model, inputs, [TEXT, IMAGE])
    as_text = embed(model, inputs, TEXT)
    as_image = embed(model, inputs, IMAGE)
    torch.testing.assert_close(mixed[0], as_text[0])
    torch.testing.assert_close(mixed[1], as_image[1])
    assert (as_text - as_image).abs().max() > 1e-3


def test_forward_without_or_with_wrong_modality_is_refused():
    model = tiny_qwen()
    inject_moda(model, MoDAConfig())
    with pytest.raises(RuntimeError, match="no modality.*with sda_lib.method.moda.modality"):
        embed(model, text_inputs())
    with pytest.raises(ValueError, match="3 modality ids for a batch of 2 rows"):
        embed(model, text_inputs(rows=2), [TEXT, IMAGE, TEXT])
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        embed(model, text_inputs(), [TEXT, 2])
    with pytest.raises(ValueError, match="no MoDA layers"):
        embed(tiny_qwen(), text_inputs(), TEXT)


def test_no_matching_layer_names_the_pattern():
    with pytest.raises(ValueError, match=r"no nn.Linear.*'decoder\\\\.nothing'"):
        inject_moda(tiny_qwen(), MoDAConfig(target_modules=r"decoder\.nothing"))


def test_gate_weights_per_layer_and_modality():
    model = tiny_qwen()
    inject_moda(model, MoDAConfig(num_experts=2, r=4))
    weights = gate_weights(model)
    assert len(weights) == LAYERS * 7
    for w in weights.values():
        assert w.shape == (2, 2)
        torch.testing.assert_close(w.sum(dim=1), torch.ones(2))
    hard = tiny_qwen()
    inject_moda(hard, MoDAConfig(routing="hard"))
    for w in gate_weights(hard).values():
        torch.testing.assert_close(w, torch.eye(2))


def test_merge_matches_unmerged_and_unmerge_restores_weights():
    model = tiny_qwen()
    inject_moda(model, MoDAConfig(adapt_vision=True))
    randomise_adapter(model)
    original = {n: p.clone() for n, p in model.named_parameters()}
    for mod, inputs in ((TEXT, text_inputs()), (IMAGE, image_inputs())):
        unmerged = embed(model, inputs, mod)
        merge_moda(model, mod)
        merged = embed(model, inputs)  # no modality needed once merged
        torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
        with pytest.raises(RuntimeError, match="already merged"):
            merge_moda(model, mod)
        unmerge_moda(model)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p, original[n], rtol=0, atol=1e-6)
    assert (embed(model, text_inputs(), TEXT) - embed(model, text_inputs(), IMAGE)).abs().max() > 1e-3


def test_merge_cycles_leave_bf16_weights_bit_identical():
    """Export merges and unmerges once per chunk and modality: in bf16, subtracting the update
    again drifted the base weights; W0 must come back exactly however many cycles run."""
    model = tiny_qwen().to(torch.bfloat16)
    inject_moda(model, MoDAConfig(adapt_vision=True))
    randomise_adapter(model)
    original = {n: p.clone() for n, p in model.named_parameters()}
    first = embed(model, text_inputs(), TEXT)
    for cycle in range(48):
        merge_moda(model, cycle % 2)
        unmerge_moda(model)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    assert torch.equal(embed(model, text_inputs(), TEXT), first)


def test_save_load_round_trip(tmp_path):
    model = tiny_qwen()
    config = MoDAConfig(adapt_vision=True, num_experts=2, r=4)
    inject_moda(model, config)
    randomise_adapter(model)
    folder = save_moda(model, tmp_path / "adapter", "tiny-qwen")
    card = json.loads((folder / "moda_config.json").read_text())
    assert card["backbone_id"] == "tiny-qwen" and card["config"]["r"] == 4
    assert card["layers"]["model.language_model.layers.1.self_attn.k_proj"] == [HIDDEN, KV_DIM]

    fresh = tiny_qwen()
    report = load_moda(fresh, folder, "tiny-qwen")
    assert len(report.layers) == len(card["layers"])
    for inputs in (text_inputs(), image_inputs()):
        assert torch.equal(embed(fresh, inputs, [TEXT, IMAGE]), embed(model, inputs, [TEXT, IMAGE]))


def test_load_refuses_other_backbone_and_missing_folder(tmp_path):
    model = tiny_qwen()
    inject_moda(model, MoDAConfig())
    folder = save_moda(model, tmp_path / "adapter", "tiny-qwen")
    other = tiny_qwen()
    with pytest.raises(ValueError, match="'tiny-qwen'.*'qwen2.5-vl-7b'"):
        load_moda(other, folder, "qwen2.5-vl-7b")
    with pytest.raises(ValueError, match=r"mlp.gate_proj: saved \[64, 128\], model \[64, 96\]"):
        load_moda(tiny_qwen(intermediate=96), folder, "tiny-qwen")
    assert not moda_layers(other)  # a refused load leaves the model untouched
    with pytest.raises(FileNotFoundError, match="no MoDA adapter at"):
        load_moda(other, tmp_path / "missing", "tiny-qwen")
    with pytest.raises(ValueError, match="already has MoDA layers"):
        load_moda(model, folder, "tiny-qwen")
    (folder / "adapter.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="checksum"):
        load_moda(other, folder, "tiny-qwen")


def test_peft_lora_trains_only_lora_on_the_same_layers():
    model = tiny_qwen()
    frozen_total = sum(p.numel() for p in model.parameters())
    report = inject_lora(model, r=8, alpha=32, dropout=0.1)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert report.trainable == sum(trainable.values()) == LAYERS * sum(8 * (i + o) for i, o in LANGUAGE_SHAPES)
    assert report.total == frozen_total + report.trainable
    moda_report = inject_moda(tiny_qwen(), MoDAConfig(r=8))
    assert set(report.layers) == set(moda_report.layers)


def test_fused_update_equals_the_authors_loop_over_experts_with_gradients():
    """moda-vs-loop's reference (one A, B pair per expert, outputs summed in a loop) computes the
    fused layer's update, and its per-expert gradients are the slices of the fused gradients."""
    from benchmarks.adapters import expert_loop

    layer = wrapped_linear(MoDAConfig(r=8, num_experts=4, alpha=16, dropout=0.1))  # eval mode: dropout off
    layer.state.ids = torch.tensor([TEXT, IMAGE])
    loop, weights = expert_loop(layer)
    x = torch.randn(2, 3, 16)
    ours, theirs = layer.update(x), loop(x)
    assert torch.allclose(ours, theirs, atol=1e-6)
    ours.sum().backward()
    theirs.sum().backward()
    a_grads, b_grads = weights[0::2], weights[1::2]
    assert torch.allclose(layer.lora_A.grad, torch.cat([a.grad for a in a_grads]), atol=1e-6)
    assert torch.allclose(layer.lora_B.grad, torch.cat([b.grad for b in b_grads], dim=1), atol=1e-6)
