"""A backbone in one file: the tiny Qwen2.5-VL preset read at each prompt's last token (where a
decoder LLM summarises what it has read) instead of the paper's masked mean, with adapters in the
attention projections only, as `backbone="tiny-last-token"`.

A backbone is a loader registered by name that returns a `Backbone`: the model and processor, and
the spec fields that differ per architecture (`targets`, `attention`, `pooling`, `prompts`).
"""

import dataclasses

import torch

from sda_lib.method.backbones import BACKBONES, LoadOptions

ATTENTION_ONLY = r"(?:.*\.)?language_model\.layers\.\d+\.self_attn\.(?:q|k|v|o)_proj"


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's final state at its last unmasked position (padding on either side)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.bool() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()


@BACKBONES.register("tiny-last-token")
def load_tiny_last_token(options: LoadOptions):
    tiny = BACKBONES["tiny"](options)
    return dataclasses.replace(
        tiny, id=tiny.id.replace("tiny", "tiny-last-token", 1), pooling=last_token_pool, targets=ATTENTION_ONLY
    )
