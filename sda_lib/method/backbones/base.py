"""The backbone interface: what SDA needs of an LVLM (prompts in, one mean-pooled vector per item
and modality out), whatever the architecture. Qwen2.5-VL (`qwen.py`) and the small pretrained
`mini` (`mini.py`) implement it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature

from ...utils.choices import check_choice
from ...utils.frontend import tqdm
from ..features import Modality
from ..prompts import Prompts


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions the mask keeps, in float32; padding may sit on either side.

    Padded positions are zeroed with masked_fill rather than multiplied by the mask, so whatever they
    hold (even NaN from a fully masked attention row) cannot leak into the mean.
    """
    keep = attention_mask.bool().unsqueeze(-1)
    summed = hidden.float().masked_fill(~keep, 0.0).sum(dim=1)
    return summed / keep.sum(dim=1).clamp(min=1)


class PooledEncoder(nn.Module):
    """The base model (`model.model`, no vocabulary head, which on a small model costs more than
    everything else) followed by masked mean pooling, as one module, so that Accelerate (DDP,
    DeepSpeed) can wrap exactly the forward that training differentiates.

    A row's embedding does not depend on how much padding it got or on which side: padded keys are
    masked, pooling skips them, and rotary attention only sees position differences (image rows
    get mask-aware 3-D positions from the model).
    """

    def __init__(self, base: nn.Module, pooling: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mean_pool):
        super().__init__()
        self.base, self.pooling = base, pooling

    def forward(self, **inputs) -> torch.Tensor:
        hidden = self.base(**inputs, use_cache=False).last_hidden_state
        return self.pooling(hidden, inputs["attention_mask"])


@dataclass
class Backbone:
    """The interface every backbone implements: a loaded LVLM with its processor, its item prompts
    (`inputs`, `prompt_lengths`) and pooled item embeddings (`embed`). `id` names the weights
    (checked when adapters are reloaded). `targets` (the regex of the linears adapters go into) and
    `attention` (the last layer's query and key projections) come from `targets.TARGETS` by model
    type; `pooling` (final hidden states and attention mask -> one vector per row) defaults to the
    paper's masked mean. `dataclasses.replace(backbone, pooling=...)` gives the same model pooled
    another way."""

    model: nn.Module
    processor: object  # the architecture's processor (a Qwen2.5-VL processor, mini's own)
    id: str
    hidden_size: int
    dtype: torch.dtype
    device: torch.device
    targets: str
    attention: tuple[str, str]
    prompts: Prompts = Prompts()  # the authors' neutral template; sda_lib.method.prompts.item_prompts per dataset
    pooling: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mean_pool

    def __post_init__(self):
        self.encoder = PooledEncoder(self.model.model, self.pooling)

    def inputs(self, texts: list[dict] | None = None, images: list | None = None) -> BatchFeature:
        """A padded batch on the device: one row per item text-field dict, then one row per PIL image
        (both modalities may share a batch; the caller routes each row to its modality)."""
        raise NotImplementedError

    def prompt_lengths(self, texts: list[dict] | None = None, images: list | None = None) -> np.ndarray:
        """Tokens in each row `inputs` would build, unpadded, in its order: what batching by length
        sorts on."""
        raise NotImplementedError

    def embed_batch(self, inputs: BatchFeature) -> torch.Tensor:
        """[B, hidden] mean of the base model's final hidden states under the attention mask (see
        PooledEncoder). Keeps the graph, so training backpropagates through it; wrap inference in
        torch.inference_mode."""
        return self.encoder(**inputs)

    def embed(
        self,
        items: list[dict],
        images: list | None = None,
        modality: Modality = "text",
        batch_size: int = 16,
        progress: bool = True,
    ) -> np.ndarray:
        """[len(items), hidden] float32 embeddings of every item in one modality ("text" or "image"),
        in the order given; rows are batched in order of prompt length, so batches carry little
        padding (a row's embedding does not depend on its padding, see PooledEncoder).

        `items` are text-field dicts; for "image", `images` holds one PIL image per item (callers
        substitute a placeholder for a missing image). Runs in eval mode under inference_mode and
        restores the model's mode afterwards.
        """
        check_choice(modality, Modality, "modality")
        if modality == "image" and (images is None or len(images) != len(items)):
            got = "none" if images is None else len(images)
            raise ValueError(f"modality='image' needs one image per item: {len(items)} items, {got} images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = items if modality == "text" else images
        lengths = self.prompt_lengths(texts=rows) if modality == "text" else self.prompt_lengths(images=rows)
        order = np.argsort(lengths, kind="stable")  # batches of like lengths: little padding
        out = np.empty((len(rows), self.hidden_size), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in tqdm(range(0, len(rows), batch_size), desc=f"{modality} embeddings", disable=not progress):
                    which = order[start : start + batch_size]
                    chunk = [rows[i] for i in which]
                    batch = self.inputs(texts=chunk) if modality == "text" else self.inputs(images=chunk)
                    out[which] = self.embed_batch(batch).cpu().numpy()
        finally:
            self.model.train(was_training)
        return out


@dataclass(frozen=True)
class LoadOptions:
    """What load_backbone passes to a registered loader. `variant` is what follows the name's colon
    ("7b-shaped:2" gives "2"), None without one."""

    dtype: torch.dtype | None
    device: torch.device
    seed: int
    image_processor_kwargs: dict
    prompts: Prompts
    variant: str | None = None


def no_variant(name: str, options: LoadOptions) -> None:
    if options.variant is not None:
        raise ValueError(f"backbone {name!r} takes no ':{options.variant}' suffix")
