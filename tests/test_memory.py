"""What a step keeps for backward (sda_lib.method.memory), counted by hand, and the moda-memory benchmark."""

import json

import pytest
import torch
from torch import nn

import benchmarks as bench
from sda_lib.method.backbones.qwen import preset_config
from sda_lib.method.memory import (
    decoder_layer_saved_per_token,
    language_adapter_settings,
    saved_for_backward,
    step_bytes,
)


def test_saved_bytes_by_hand():
    """exp saves its float32 output (40 bytes); the product of two views of one storage saves
    both views, kept once (the storage, 40 bytes); the held weight is left out; a bf16 cast's
    backward saves nothing."""
    held = nn.Linear(10, 1, bias=False)
    x = torch.randn(10, requires_grad=True)
    with saved_for_backward(held) as tally:
        y = x.exp()
        (y[:5] * y[5:]).sum()
        held(x.to(torch.bfloat16).float())  # saves x as cast (40 bytes) and the held weight
    assert (tally.bytes, tally.storages) == (40 + 40, 2)


def test_step_bytes_by_hand():
    # weights 100 + 16 per trainable (float32 value, gradient, two AdamW moments) = 260;
    # saved 3 bytes per token per layer: 3 * 5 tokens * 2 layers = 30;
    # checkpointing: 2 bytes per hidden unit per layer input (4 * 2 * 2 = 16) + one layer's 3, per token
    assert step_bytes(3, tokens=5, layers=2, hidden=4, weights=100, trainable=10, checkpointing=False) == 290
    assert step_bytes(3, tokens=5, layers=2, hidden=4, weights=100, trainable=10, checkpointing=True) == 260 + 19 * 5


@pytest.mark.parametrize("adapter, masks", [("moda", "per-expert"), ("lora", "per-expert")])
def test_a_layer_saves_the_same_per_token_at_any_length(adapter, masks):
    """Flash attention saves per token, so what grows with the tokens grows linearly; at least
    the layer's input in bf16 is among it."""
    config, settings = preset_config("tiny"), language_adapter_settings(8, 8, masks)
    short, long = (decoder_layer_saved_per_token(config, adapter, settings, True, tokens) for tokens in (16, 48))
    assert short == pytest.approx(long, rel=1e-3) and short > 2 * config.text_config.hidden_size


def test_moda_memory_prints_its_counts_and_ratio(capsys):
    record = bench.run_benchmark("moda-memory", preset="tiny", batch_size=16)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == record and record["preset"] == "tiny" and "estimate_tokens" not in record
    by_unit = {row["unit"]: row for row in record["rows"]}
    moda, lora = (
        by_unit[u]["MiB/token/layer bf16 autocast"] for u in ("moda, per-expert masks", "lora (peft), same rank")
    )
    assert (record["moda_mib_per_token_layer"], record["lora_mib_per_token_layer"]) == (moda, lora)
    assert record["ratio"] == pytest.approx(moda / lora, rel=0.01)
    assert record["status"] == ("PASS" if record["ratio"] <= 1.25 else "ABOVE")
    with pytest.raises(ValueError, match="moda-memory counts a layer of 7b-shaped"):
        bench.run_benchmark("moda-memory", preset="mini")
