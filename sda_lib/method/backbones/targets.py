"""Where adapters go, per architecture (keyed by the config's model type, as peft's
TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING): full-match regexes over module names."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Targets:
    """`language`: the linears MoDA adapts; `vision`: the vision tower's linears (`adapt_vision`);
    `attention`: the last decoder layer's query and key projections, group 1 the layer index, which
    the gradient-conflict analysis reads."""

    language: str
    attention: tuple[str, str]
    vision: str | None = None


# Qwen2.5-VL: every linear projection of the language model; anchored on the full path because the
# vision MLP reuses the names gate/up/down_proj. The optional prefix accepts both the full model
# (`model.language_model...`) and the bare `Qwen2_5_VLModel` (`language_model...`).
QWEN2_5_VL = Targets(
    language=(
        r"(?:.*\.)?language_model\.layers\.\d+\."
        r"(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:gate_proj|up_proj|down_proj))"
    ),
    attention=(
        r"(?:.*\.)?language_model\.layers\.(\d+)\.self_attn\.q_proj",
        r"(?:.*\.)?language_model\.layers\.(\d+)\.self_attn\.k_proj",
    ),
    vision=r"(?:.*\.)?visual\.blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:gate_proj|up_proj|down_proj))",
)

# mini: every linear of MiniLM's encoder; `output.dense` right after the layer index is the FFN's
# down projection, so the attention's output.dense is not matched twice.
MINI = Targets(
    language=(
        r"(?:.*\.)?encoder\.layer\.\d+\."
        r"(?:attention\.self\.(?:query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
    ),
    attention=(
        r"(?:.*\.)?encoder\.layer\.(\d+)\.attention\.self\.query",
        r"(?:.*\.)?encoder\.layer\.(\d+)\.attention\.self\.key",
    ),
)

TARGETS = {"qwen2_5_vl": QWEN2_5_VL, "mini": MINI}

LANGUAGE_TARGETS, VISION_TARGETS, QWEN_ATTENTION = QWEN2_5_VL.language, QWEN2_5_VL.vision, QWEN2_5_VL.attention
# Anything inside Qwen2.5-VL's vision tower only ever sees image patches.
VISION_TOWER = re.compile(r"(?:.*\.)?visual\..*")
