"""What an adaptation step keeps for backward, counted exactly, and whether a GPU then needs
gradient checkpointing.

The count: torch's saved-tensor hooks see every tensor autograd saves; `saved_for_backward` sums
the distinct storages among them (a saved view keeps its whole storage alive; a storage saved
twice is kept once), leaving out the model's parameters and buffers, which are held anyway.

The estimate (docs/gpu.md, what to expect): without checkpointing a step keeps the weights, the
trainable parameters with their gradients and AdamW's two moments, and what every decoder layer
saves per token times the step's tokens; with checkpointing each layer's input instead, plus one
layer's activations while it is recomputed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from . import adapters
from .backbones.targets import LANGUAGE_TARGETS
from .moda import TEXT

GiB = 2**30


@dataclass
class SavedTally:
    """Bytes and distinct storages autograd has saved so far."""

    bytes: int = 0
    storages: int = 0


@contextlib.contextmanager
def saved_for_backward(*held: nn.Module) -> Iterator[SavedTally]:
    """Count what forwards inside the block save for backward, leaving out the parameters and
    buffers of `held` (the model's weights, kept whatever the step saves)."""
    tally, seen = SavedTally(), {t.untyped_storage()._cdata for m in held for t in (*m.parameters(), *m.buffers())}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in seen:
            seen.add(storage._cdata)
            tally.bytes += storage.nbytes()
            tally.storages += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield tally


def decoder_layer_saved_per_token(
    config, adapter: str, settings: adapters.AdapterSettings, bf16_autocast: bool, tokens: int = 64
) -> float:
    """Bytes one decoder layer of a Qwen2.5-VL text model shaped by `config` (its text_config)
    keeps for backward per token, with `adapter` attached as training attaches it: one layer of
    random bf16 weights on CPU, its input requiring grad as a middle layer's does. Counted on
    `tokens` and on twice as many tokens of text, per token the difference: what grows with the
    tokens, without the layer's fixed share (the adapter weights' casts under autocast)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VLDecoderLayer,
        Qwen2_5_VLRotaryEmbedding,
    )

    text = config.text_config
    text._attn_implementation = "sdpa"
    holder = nn.Module()  # named as in the model, so the adapter's target pattern finds the projections
    holder.language_model = nn.Module()
    holder.language_model.layers = nn.ModuleList([Qwen2_5_VLDecoderLayer(text, layer_idx=0).to(torch.bfloat16)])
    adapters.KINDS[adapter].attach(holder, settings)
    holder.train()
    rotary = Qwen2_5_VLRotaryEmbedding(config=text)
    counts = []
    for length in (tokens, 2 * tokens):
        x = torch.randn(1, length, text.hidden_size, dtype=torch.bfloat16, requires_grad=True)
        positions = torch.arange(length).view(1, 1, -1).expand(3, 1, -1)  # mrope: (time, height, width) ids
        with (
            adapters.modality(holder, TEXT),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast),
            saved_for_backward(holder) as tally,
        ):
            holder.language_model.layers[0](x, position_embeddings=rotary(x, positions), position_ids=positions)
        counts.append(tally.bytes)
    return (counts[1] - counts[0]) / tokens


def step_bytes(
    saved_per_token_layer: float,
    tokens: int,
    layers: int,
    hidden: int,
    weights: int,
    trainable: int,
    checkpointing: bool,
) -> float:
    """The estimate (docs/gpu.md) of a step's memory: the weights (bytes), the float32 trainable
    parameters with their gradients and AdamW's two moments, and the saved activations of every
    layer, or with checkpointing every layer's bf16 input plus one layer's saved activations."""
    held = weights + 16 * trainable
    if not checkpointing:
        return held + saved_per_token_layer * tokens * layers
    return held + (2 * hidden * layers + saved_per_token_layer) * tokens


def language_adapter_settings(r: int, experts: int, dropout_masks: str) -> adapters.AdapterSettings:
    return adapters.AdapterSettings(r=r, experts=experts, targets=LANGUAGE_TARGETS, dropout_masks=dropout_masks)
