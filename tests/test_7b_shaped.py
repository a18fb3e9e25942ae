"""The 7b-shaped preset (Qwen2.5-VL-7B-Instruct's layout, random weights) on CPU: every shape from
the processor to the recommender-ready table, through one adaptation step and a 16-item export.
Prints build time, step time and peak memory (run with -s to see them); asserts only generous
bounds, never times.

The precision follows the CPU: bf16 with 2 decoder layers where it multiplies bf16 natively
(AVX512-BF16 or AMX), else float32 with 1 decoder layer. Emulated bf16 made one adaptation step
take over 30 minutes on such a CPU; in float32, with one layer, the two backbones the test holds
peak at about 12 GiB (measured: 1.5 minutes on 2 shared cores). The widths are the 7B's either
way; the choice and its evidence are printed."""

import dataclasses
import gc
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import benchmarks as bench
from sda_lib.method import expert_dropout
from sda_lib.method.adapt import AdaptConfig, train_adapter
from sda_lib.method.backbones import load_backbone
from sda_lib.method.backbones.qwen import shaped_config
from sda_lib.method.export import export_embeddings

pytestmark = pytest.mark.slow  # about 1.5 minutes on 2 cores, 4 GiB of weights per backbone


@pytest.fixture(autouse=True)
def _eager_moda_kernels(monkeypatch):
    """MoDA's per-expert kernels run eagerly: compiling them (minutes cold on 2 cores) costs more
    than the one step here would save; tests/test_expert_dropout.py checks the compiled ones."""
    monkeypatch.setattr(expert_dropout, "COMPILE_FROM", float("inf"))


def native_bf16() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 natively, and the evidence: torch's CPU feature probe where
    it has one, else the flags of /proc/cpuinfo."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probes):
        found = [name for name, probe in zip(("avx512_bf16", "amx_tile"), probes) if probe()]
        return bool(found), f"torch.cpu reports {', '.join(found) or 'neither avx512_bf16 nor amx_tile'}"
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    found = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return bool(found), f"/proc/cpuinfo flags: {', '.join(found) or 'neither avx512_bf16 nor amx_bf16'}"


NATIVE_BF16, WHY = native_bf16()
DTYPE, LAYERS = (torch.bfloat16, 2) if NATIVE_BF16 else (torch.float32, 1)
PRECISION = "bf16" if NATIVE_BF16 else "no"
HIDDEN, INTERMEDIATE, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 3584, 18944, 152_064, 28, 4, 128
VISION_HIDDEN = 1280
IMAGE_PAD = 151655
FULL_7B_PARAMETERS = 8_292_166_656  # the real layout, checked on the meta device in test_backbone


@pytest.fixture(scope="module")
def shaped():
    """Built once; the last test exports with it, which attaches that test's adapter."""
    start = time.perf_counter()
    backbone = load_backbone("7b-shaped", layers=LAYERS, device="cpu", dtype=DTYPE)
    print(
        f"\n7b-shaped:{LAYERS} in {DTYPE} ({WHY}) built in {time.perf_counter() - start:.1f} s; "
        f"process RSS peak {bench.peak_rss_mb() / 2**10:.2f} GiB"
    )
    return backbone


def noise_image(px: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(px).integers(0, 256, (px, px, 3), dtype=np.uint8))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_layout_is_the_7b_with_fewer_layers(shaped):
    model, lm = shaped.model, shaped.model.model.language_model
    visual = shaped.model.model.visual
    assert (shaped.id, shaped.dtype, shaped.hidden_size) == (f"7b-shaped:{LAYERS}-random-seed0", DTYPE, HIDDEN)
    assert {p.dtype for p in model.parameters()} == {DTYPE}
    assert len(lm.layers) == LAYERS and len(visual.blocks) == LAYERS and visual.fullatt_block_indexes == [LAYERS - 1]
    assert lm.embed_tokens.weight.shape == model.lm_head.weight.shape == (VOCAB, HIDDEN)
    assert lm.embed_tokens.weight.data_ptr() != model.lm_head.weight.data_ptr()  # untied, as in the 7B
    attention, mlp = lm.layers[0].self_attn, lm.layers[0].mlp
    assert attention.head_dim == HEAD_DIM and HEADS * HEAD_DIM == HIDDEN
    assert (
        attention.q_proj.weight.shape,
        attention.k_proj.weight.shape,
        attention.v_proj.weight.shape,
        attention.o_proj.weight.shape,
    ) == ((HIDDEN, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN), (HIDDEN, HIDDEN))
    assert mlp.up_proj.weight.shape == mlp.gate_proj.weight.shape == (INTERMEDIATE, HIDDEN)
    assert visual.blocks[0].attn.qkv.weight.shape == (3 * VISION_HIDDEN, VISION_HIDDEN)
    # The full 7B less 26 decoder layers and 30 vision blocks: the widths are all the 7B's.
    vision_blocks = shaped_config(28).vision_config.depth - LAYERS
    removed = (28 - LAYERS) * count(lm.layers[0]) + vision_blocks * count(visual.blocks[0])
    assert count(model) == FULL_7B_PARAMETERS - removed
    # HF's init scheme, drawn once: normal(0, 0.02) matrices, zero biases, unit norms; the rotary
    # frequencies stay float32.
    weight = mlp.up_proj.weight.float()
    assert weight.std().item() == pytest.approx(0.02, rel=0.01) and abs(weight.mean().item()) < 1e-4
    assert not attention.q_proj.bias.any() and bool((lm.norm.weight == 1).all())
    assert lm.rotary_emb.inv_freq.dtype == torch.float32


@pytest.mark.parametrize("px, tokens", [(112, 16), (224, 64)])
def test_image_tokens_and_vision_widths(shaped, px, tokens):
    side = px // 14  # patches of 14 px; 2 x 2 patches merge into one image token
    batch = shaped.inputs(images=[noise_image(px)])
    assert batch["image_grid_thw"].tolist() == [[1, side, side]]
    assert int((batch["input_ids"] == IMAGE_PAD).sum()) == tokens == side * side // 4
    assert tuple(batch["pixel_values"].shape) == (side * side, 3 * 2 * 14 * 14)
    with torch.inference_mode():
        vision = shaped.model.model.visual(batch["pixel_values"].to(DTYPE), grid_thw=batch["image_grid_thw"])
        embedding = shaped.embed_batch(batch)
    assert tuple(vision.last_hidden_state.shape) == (side * side, VISION_HIDDEN)
    assert tuple(vision.pooler_output.shape) == (tokens, HIDDEN)  # the merger's output enters the decoder
    assert tuple(embedding.shape) == (1, HIDDEN) and embedding.dtype == torch.float32
    assert torch.isfinite(embedding).all()


def test_one_adaptation_step_then_a_16_item_export(shaped, toy_tiny, tmp_path):
    # Adaptation and export read only the items; the interactions are left as they are.
    items = dataclasses.replace(toy_tiny, card={**toy_tiny.card, "items": 16}, items=toy_tiny.items.iloc[:16])
    trained = load_backbone(f"7b-shaped:{LAYERS}", device="cpu", dtype=DTYPE)  # the name form of the fixture's
    for (name, a), b in zip(shaped.model.named_parameters(), trained.model.parameters()):
        assert torch.equal(a, b), name
    weights_gib = sum(p.numel() * p.element_size() for p in trained.model.parameters()) / 2**30

    bench.reset_peak_rss()
    before, cpu = bench.peak_rss_mb() / 2**10, time.process_time()
    record = train_adapter(
        trained, items, AdaptConfig(steps=1, batch_size=4, precision=PRECISION), tmp_path / "adapt", progress=False
    )
    step_peak, step_cpu = bench.peak_rss_mb() / 2**10, time.process_time() - cpu
    assert np.isfinite(record["final_loss"])
    assert 0 < record["trainable_parameters"] < 1e-3 * record["total_parameters"]
    del trained
    gc.collect()

    bench.reset_peak_rss()
    start = time.perf_counter()
    table = export_embeddings(
        shaped,
        items,
        tmp_path / "features",
        adapter=tmp_path / "adapt" / "adapter",
        batch_size=8,
        chunk=16,
        progress=False,
    )
    export_s = time.perf_counter() - start
    export_peak = bench.peak_rss_mb() / 2**10
    print(
        f"\n7b-shaped:{LAYERS} {DTYPE} on CPU ({WHY}; {torch.get_num_threads()} thread(s)), "
        f"weights {weights_gib:.2f} GiB: "
        f"adaptation step of 4 items {record['seconds']:.1f} s ({step_cpu:.1f} s of CPU for all of "
        f"train_adapter), RSS {before:.2f} GiB before it, peak "
        f"{step_peak:.2f} GiB; export of 16 items {export_s:.1f} s, peak {export_peak:.2f} GiB"
    )

    assert table.text.shape == table.image.shape == (16, HIDDEN) and table.text.dtype == np.float32
    assert np.isfinite(table.text).all() and np.isfinite(table.image).all()
    assert table.features.shape == (16, 2 * 16)  # PCA per modality, capped at min(d = 768, 16 items)
    assert table.manifest["dims"] == {"text": HIDDEN, "image": HIDDEN, "features_text": 16, "features_image": 16}
    assert table.manifest["backbone"] == f"7b-shaped:{LAYERS}-random-seed0"
    # Generous bounds: two backbones of ~3 GiB were alive during the step (the fixture and the trained one).
    assert step_peak < 4 * weights_gib + 6 and export_peak < 2 * weights_gib + 4
