import json

import numpy as np
import pytest
import torch
from PIL import Image

from sda_lib.method.backbones import load_backbone, mean_pool
from sda_lib.method.backbones.qwen import text_prompt
from sda_lib.method.prompts import IMAGE_INSTRUCTION, TEXT_INSTRUCTION, authors_attributes, describe, item_prompts

IMAGE_PAD, VISION_START = 151655, 151652
ITEMS = [
    {"title": "Red running shoe", "brand": "Acme"},
    {"title": "Trail shoe with a long name " * 3, "brand": "", "category": "Shoes > Running > Trail"},
]


def noise_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny", device="cpu")


def pad(batch, extra, side):
    """The same batch with `extra` more padding positions on `side`."""
    out = dict(batch)
    rows = batch["input_ids"].shape[0]
    fills = {"input_ids": 151643, "attention_mask": 0, "mm_token_type_ids": 0}
    for key, fill in fills.items():
        block = torch.full((rows, extra), fill, dtype=batch[key].dtype)
        out[key] = torch.cat([batch[key], block] if side == "right" else [block, batch[key]], dim=1)
    return out


@pytest.mark.parametrize("preset, hidden, layers", [("tiny", 64, 2), ("small", 256, 4)])
def test_presets_build_offline_and_are_seeded(preset, hidden, layers):
    rng_before = torch.random.get_rng_state()
    a = load_backbone(preset, device="cpu", seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    b = load_backbone(preset, device="cpu", seed=0)
    assert (a.hidden_size, a.model.config.text_config.num_hidden_layers) == (hidden, layers)
    assert a.id == f"{preset}-random-seed0" and a.dtype == torch.float32
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    if preset == "tiny":
        c = load_backbone(preset, device="cpu", seed=1)
        assert not torch.equal(
            a.model.model.language_model.layers[0].self_attn.q_proj.weight,
            c.model.model.language_model.layers[0].self_attn.q_proj.weight,
        )


def test_processor_gives_one_image_token_per_merged_patch(tiny):
    # 112x112 -> 8x8 patches of 14 px -> 4x4 merged tokens; 56x112 -> 4x8 patches -> 2x4 tokens.
    batch = tiny.inputs(images=[noise_image(112, 112), noise_image(56, 112)])
    assert {"input_ids", "attention_mask", "pixel_values", "image_grid_thw"} <= set(batch)
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 4, 8]]
    assert (batch["input_ids"] == IMAGE_PAD).sum(dim=1).tolist() == [16, 8]
    assert (batch["input_ids"] == VISION_START).sum(dim=1).tolist() == [1, 1]
    # One row per 14x14 patch, each holding 3 channels x 2 frames x 14 x 14 values.
    assert tuple(batch["pixel_values"].shape) == (64 + 32, 3 * 2 * 14 * 14)


def test_describe_caps_values_and_skips_empty_fields():
    assert describe({"title": "X", "brand": "Y"}) == "title is X; brand is Y; "
    assert describe({"title": " X ", "brand": "", "category": "   "}) == "title is X; "
    assert describe({"title": "a" * 150, "brand": "b" * 100}) == f"title is {'a' * 100}; brand is {'b' * 100}; "
    assert describe({"title": "abcdef"}, cap=3) == "title is abc; "
    workbench = item_prompts("workbench")
    assert text_prompt({"title": "X"}, workbench)[0]["content"][0]["text"] == "title is X; " + TEXT_INSTRUCTION
    with pytest.raises(TypeError, match="'brand' is float"):
        describe({"title": "X", "brand": float("nan")})


def test_authors_prompts_as_released():
    fields = {
        "title": "Nail; polish\nred",
        "brand": "",
        "categories": "Beauty > Makeup > Nails | Beauty > Tools",
        "description": "d" * 150,
    }
    assert authors_attributes(fields) == (
        f"title is Nail. polish red; categories is Beauty, Makeup, Nails; description is {'d' * 100}"
    )
    beauty = item_prompts("authors", "beauty")
    assert beauty.text({"title": "X"}) == "The beauty item has the following attributes: \n title is X"
    assert beauty.image_sentence == "The beauty product has the image: "
    assert item_prompts("authors", "toys").head == "The beauty product has the following attributes: "  # as released
    assert item_prompts("authors", "toy").text({"title": "X"}) == "The item has the following attributes: \n title is X"
    with pytest.raises(ValueError, match="prompt style must be one of authors, workbench, got 'short'"):
        item_prompts("short")


@pytest.mark.parametrize("style", ["authors", "workbench"])
def test_prompts_go_through_the_qwen_chat_template(style):
    lvlm = load_backbone("tiny", device="cpu", prompts=item_prompts(style, "beauty"))
    text = lvlm.inputs(texts=[{"title": "X", "brand": "Y"}])
    image = lvlm.inputs(images=[noise_image(56, 56)])
    decode = lvlm.processor.tokenizer.decode
    head = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    tail = "<|im_end|>\n<|im_start|>assistant\n"
    pads = "<|image_pad|>" * 4
    if style == "workbench":
        want_text, want_image = f"title is X; brand is Y; {TEXT_INSTRUCTION}", IMAGE_INSTRUCTION
    else:
        want_text = "The beauty item has the following attributes: \n title is X; brand is Y"
        want_image = "The beauty product has the image: "
    assert decode(text["input_ids"][0]) == f"{head}{want_text}{tail}"
    assert decode(image["input_ids"][0]) == f"{head}<|vision_start|>{pads}<|vision_end|>{want_image}{tail}"


def test_pixel_bounds_set_the_number_of_image_tokens():
    small_images = load_backbone("tiny", device="cpu", max_pixels=60 * 60)
    batch = small_images.inputs(images=[noise_image(112, 112), noise_image(300, 300)])
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]
    big = load_backbone("tiny", device="cpu", min_pixels=224 * 224).inputs(images=[noise_image(56, 56)])
    assert big["image_grid_thw"].tolist() == [[1, 16, 16]]


def test_mean_pool_is_the_mean_over_kept_positions():
    hidden = torch.randn(2, 5, 3)
    hidden[1, 0] = float("nan")  # whatever a padded position holds must not leak
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :3].mean(dim=0))
    torch.testing.assert_close(pooled[1], hidden[1, 2:].mean(dim=0))


@pytest.mark.parametrize("side", ["right", "left"])
def test_text_embeddings_do_not_depend_on_padding(tiny, side):
    with torch.inference_mode():
        alone = torch.cat([tiny.embed_batch(tiny.inputs(texts=[item])) for item in ITEMS])
        together = tiny.inputs(texts=ITEMS)
        assert together["attention_mask"][0].sum() < together["input_ids"].shape[1]  # row 0 is padded
        torch.testing.assert_close(tiny.embed_batch(together), alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tiny.embed_batch(pad(together, 7, side)), alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_image_embeddings_do_not_depend_on_padding(tiny, side):
    images = [noise_image(112, 112, seed=1), noise_image(56, 168, seed=2)]
    with torch.inference_mode():
        alone = torch.cat([tiny.embed_batch(tiny.inputs(images=[im])) for im in images])
        together = pad(tiny.inputs(images=images), 5, side)
        torch.testing.assert_close(tiny.embed_batch(together), alone, atol=1e-5, rtol=1e-5)


def test_embed_batch_keeps_the_graph(tiny):
    weight = tiny.model.model.language_model.layers[0].self_attn.q_proj.weight
    weight.grad = None
    tiny.embed_batch(tiny.inputs(texts=ITEMS)).square().sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    weight.grad = None


def test_embed_returns_float32_rows_in_item_order(tiny):
    images = [noise_image(56, 56, seed=s) for s in range(3)]
    items = ITEMS + [{"title": "Blue sock"}]
    tiny.model.train()
    text = tiny.embed(items, modality="text", batch_size=2, progress=False)
    image = tiny.embed(items, images, modality="image", batch_size=2, progress=False)
    assert tiny.model.training  # mode restored
    tiny.model.eval()
    assert text.shape == image.shape == (3, 64) and text.dtype == image.dtype == np.float32
    with torch.inference_mode():
        np.testing.assert_allclose(text, tiny.embed_batch(tiny.inputs(texts=items)).numpy(), atol=1e-5)
        np.testing.assert_allclose(image[1], tiny.embed_batch(tiny.inputs(images=images[1:2]))[0].numpy(), atol=1e-5)
    assert tiny.embed([], modality="text", progress=False).shape == (0, 64)
    with pytest.raises(ValueError, match="one image per item: 3 items, 2 images"):
        tiny.embed(items, images[:2], modality="image")


def test_prompt_lengths_are_the_processors_unpadded_token_counts(tiny):
    """Counted without processing pixels, yet equal to what the processor builds row by row."""
    items = ITEMS + [{"title": "Blue sock"}]
    images = [noise_image(h, w) for h, w in ((56, 56), (28, 140), (90, 61))]
    for texts, imgs in ((items, None), (None, images)):
        one_by_one = [
            int(tiny.inputs(texts=[t] if texts else None, images=[t] if imgs else None)["attention_mask"].sum())
            for t in texts or imgs
        ]
        assert tiny.prompt_lengths(texts=texts, images=imgs).tolist() == one_by_one
    assert len(set(tiny.prompt_lengths(images=images).tolist())) == 3  # three sizes, three counts


@pytest.mark.parametrize("layout", ["save_pretrained", "hub"])
def test_a_saved_model_folder_loads_back_identically(tiny, tmp_path, layout):
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    if layout == "hub":
        # The layout of the Qwen2.5-VL hub checkpoints: preprocessor_config.json naming the
        # torchvision image processor, chat_template.json, no processor_config.json.
        # Its pixel bounds are the 7B's, which load_backbone's min_pixels/max_pixels override.
        image_processor = json.loads((tmp_path / "processor_config.json").read_text())["image_processor"]
        image_processor["size"] = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
        (tmp_path / "processor_config.json").unlink()
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(image_processor))
        template = (tmp_path / "chat_template.jinja").read_text()
        (tmp_path / "chat_template.jinja").unlink()
        (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    loaded = load_backbone(tmp_path, device="cpu")
    assert loaded.id == str(tmp_path.resolve()) and loaded.hidden_size == 64
    images = [noise_image(300, 300)]  # above max_pixels: resized to 252x252, 81 image tokens
    with torch.inference_mode():
        for kwargs in (dict(texts=ITEMS), dict(images=images)):
            want = tiny.embed_batch(tiny.inputs(**kwargs))
            assert torch.equal(loaded.inputs(**kwargs)["input_ids"], tiny.inputs(**kwargs)["input_ids"])
            if "images" in kwargs:
                assert loaded.inputs(**kwargs)["image_grid_thw"].tolist() == [[1, 18, 18]]
            torch.testing.assert_close(loaded.embed_batch(loaded.inputs(**kwargs)), want, atol=0, rtol=0)


def test_loading_errors_name_the_problem(tmp_path):
    from transformers import GPT2Config

    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*does not exist.*config.json"):
        load_backbone(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_backbone(str(tmp_path / "empty"))
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="model_type 'gpt2'.*qwen2_5_vl"):
        load_backbone(str(tmp_path / "gpt2"))
    with pytest.raises(ValueError, match="unknown backbone 'huge'.*tiny, small, 7b"):
        load_backbone("huge")


def test_7b_shaped_at_28_layers_is_the_released_7b():
    """Qwen2.5-VL-7B-Instruct's config.json values, and its parameter count built on the meta device."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from sda_lib.method.backbones.qwen import shaped_config

    config = shaped_config(28)
    text, vision = config.text_config, config.vision_config
    assert (
        text.hidden_size,
        text.intermediate_size,
        text.num_hidden_layers,
        text.num_attention_heads,
        text.num_key_value_heads,
        text.vocab_size,
        text.max_position_embeddings,
    ) == (3584, 18944, 28, 28, 4, 152064, 128000)
    assert (
        text.rms_norm_eps,
        text.hidden_act,
        text.rope_parameters["rope_theta"],
        text.rope_parameters["mrope_section"],
    ) == (1e-6, "silu", 1e6, [16, 24, 24])
    assert config.tie_word_embeddings is False and set(text.layer_types) == {"full_attention"}
    assert (
        vision.depth,
        vision.hidden_size,
        vision.intermediate_size,
        vision.num_heads,
        vision.out_hidden_size,
        vision.patch_size,
        vision.spatial_merge_size,
        vision.temporal_patch_size,
        vision.window_size,
        vision.hidden_act,
        vision.tokens_per_second,
    ) == (32, 1280, 3420, 16, 3584, 14, 2, 2, 112, "silu", 2)
    assert list(vision.fullatt_block_indexes) == [7, 15, 23, 31]
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == 8_292_166_656
    assert sum(p.numel() for p in model.model.visual.parameters()) == 676_550_144


@pytest.mark.parametrize(
    "layers, depth, full",
    [(1, 1, [0]), (2, 2, [1]), (3, 3, [2]), (7, 8, [7]), (14, 16, [7, 15]), (20, 23, [6, 14, 22])],
)
def test_7b_shaped_vision_tower_scales_with_the_layers(layers, depth, full):
    from sda_lib.method.backbones.qwen import shaped_config

    config = shaped_config(layers)
    assert config.text_config.num_hidden_layers == layers
    assert (config.vision_config.depth, list(config.vision_config.fullatt_block_indexes)) == (depth, full)
    assert config.text_config.hidden_size == config.vision_config.out_hidden_size == 3584


@pytest.mark.parametrize(
    "name, layers, message",
    [
        ("7b-shaped:two", None, "must be a whole number"),
        ("7b-shaped:0", None, "at least 1 decoder layer"),
        ("7b-shaped:2", 3, "names 2 layers but layers=3"),
        ("tiny", 2, "applies only to the 7b-shaped preset"),
    ],
)
def test_7b_shaped_layer_count_errors(name, layers, message):
    with pytest.raises(ValueError, match=message):
        load_backbone(name, layers=layers, device="cpu")
