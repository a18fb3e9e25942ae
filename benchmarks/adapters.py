"""Adapter training cost: MoDA's step against a LoRA of the same rank, and against the authors' loop over experts."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from .core import (
    CPU_ROUNDS,
    Measurement,
    Options,
    _hygiene_note,
    _input_note,
    _ms,
    _timing_row,
    _verdict,
    interleaved,
    synthetic_inputs,
)

MODA_VS_LORA_TARGET = 1.10
MODA_VS_LORA_TARGET_7B = 1.15  # at the 7B's widths (the 7b-shaped presets and the 7B)


def moda_vs_lora_target(preset: str) -> float:
    return MODA_VS_LORA_TARGET_7B if preset.startswith("7b") else MODA_VS_LORA_TARGET


def moda_vs_lora(options: Options) -> Measurement:
    """MoDA training step vs a peft LoRA of the same total rank on the same layers (target <= 1.10; 7b-shaped 1.15)."""
    from sda_lib.method import adapters
    from sda_lib.method.adapt import AdaptConfig
    from sda_lib.method.backbones import load_backbone
    from sda_lib.method.cmsa import Temperature, cmsa_loss
    from sda_lib.method.moda import IMAGE, TEXT

    options = options.defaults(**CPU_ROUNDS)
    preset = options.preset or "small"
    config = AdaptConfig()  # the training defaults: r, experts, alpha, dropout, tau, loss options
    backbones, reports = {}, {}
    for kind in ("moda", "lora"):
        backbones[kind] = load_backbone(preset, seed=config.seed)
        reports[kind] = adapters.attach(
            backbones[kind].model, kind, config.r, config.experts, config.alpha, config.dropout
        )
        backbones[kind].model.train()
    if set(reports["moda"].layers) != set(reports["lora"].layers):
        raise RuntimeError(
            "MoDA and LoRA adapt different layers, so their steps are not comparable: "
            f"{sorted(set(reports['moda'].layers) ^ set(reports['lora'].layers))[:3]}"
        )
    text, image = synthetic_inputs(backbones["moda"], options.batch_size)
    temperature = Temperature(config.tau, config.learn_tau)

    def training_step(backbone):
        """Forward + backward of one CMSA batch, as adapt.batch_loss does."""

        def step():
            with adapters.modality(backbone.model, TEXT):
                e_t = backbone.embed_batch(text)
            with adapters.modality(backbone.model, IMAGE):
                e_v = backbone.embed_batch(image)
            cmsa_loss(e_t, e_v, temperature(), config.cmsa_form).backward()
            backbone.model.zero_grad(set_to_none=True)
            temperature.zero_grad(set_to_none=True)

        return step

    cpu = {}
    samples = interleaved(
        {kind: training_step(b) for kind, b in backbones.items()}, options.repeats, options.warmup, cpu
    )
    moda_s, lora_s = (statistics.median(samples[k]) for k in ("moda", "lora"))
    cpu_ratio = statistics.median(cpu["moda"]) / statistics.median(cpu["lora"])
    paired = statistics.median(m / lo for m, lo in zip(cpu["moda"], cpu["lora"]))
    verdict, headline = _verdict(moda_s / lora_s, moda_vs_lora_target(preset), "MoDA / LoRA")
    headline += f"; in CPU time {cpu_ratio:.3f}, paired by repetition {paired:.3f}"
    rows = [
        _timing_row(
            f"{kind} step",
            samples[kind],
            layers=len(reports[kind].layers),
            trainable=reports[kind].trainable,
            **{"median CPU ms": _ms(statistics.median(cpu[kind]))},
        )
        for kind in ("moda", "lora")
    ]
    values = {
        **verdict,
        "preset": preset,
        "moda_ms": _ms(moda_s),
        "lora_ms": _ms(lora_s),
        "r": config.r,
        "experts": config.experts,
        "layers": len(reports["moda"].layers),
        "batch_items": options.batch_size,
        "repeats": options.repeats,
        "warmup": options.warmup,
        "moda_samples_ms": [_ms(s) for s in samples["moda"]],
        "lora_samples_ms": [_ms(s) for s in samples["lora"]],
        "cpu_ratio": round(cpu_ratio, 4),
        "cpu_ratio_paired": round(paired, 4),
        "moda_cpu_samples_ms": [_ms(s) for s in cpu["moda"]],
        "lora_cpu_samples_ms": [_ms(s) for s in cpu["lora"]],
    }
    notes = [
        _hygiene_note(options, preset),
        _input_note(text, image, options.batch_size),
        f"both adapters: r={config.r} on the same {len(reports['moda'].layers)} language-model "
        f"projections, MoDA with {config.experts} experts; step = text + image forward, CMSA, backward",
        "the ratio is of wall-clock medians; the CPU-time ratio (the process's CPU seconds, one torch thread) "
        "leaves out waiting for a core, and its median of the two steps' ratio in each repetition leaves out "
        "the load drifting between repetitions: the steadier ones on a shared machine",
    ]
    return Measurement(rows, values, headline, notes)


MODA_VS_LOOP_TARGET = 2.0  # at 8 experts: the fused layer at least twice as fast as the loop
LAYER_SHAPES = ((3584, 3584), (3584, 18944))  # Qwen2.5-VL-7B: attention projection and MLP up/gate
EXPERT_COUNTS = (2, 4, 8)


def expert_loop(layer) -> tuple[Callable, list]:
    """The SDA authors' MOELoraLinear update, for comparison: one A, B pair per expert (copies of
    the MoDA `layer`'s slices of its fused A and B, trainable), each expert under its own dropout
    mask, its full-width output weighted and summed in a loop; the gate is the layer's own. Returns
    (update function of x, the per-expert weights)."""
    import torch.nn.functional as F

    pairs = [
        (a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_())
        for a, b in zip(layer.lora_A.split(layer.expert_rank), layer.lora_B.split(layer.expert_rank, dim=1))
    ]

    def update(x):
        weights = layer.modality_weights()[layer._row_modalities(x)] * layer.scaling  # [rows, experts]
        weights = weights.view(weights.shape[0], *([1] * (x.dim() - 1)), weights.shape[1])
        result = 0.0
        for i, (a, b) in enumerate(pairs):
            result = result + F.linear(F.linear(layer.dropout(x), a), b) * weights[..., i]
        return result

    return update, [w for pair in pairs for w in pair]


def moda_vs_loop(options: Options) -> Measurement:
    """A MoDA layer's update at the 7B's shapes vs the authors' loop over experts (target >= 2x at E=8).

    Forward + backward at E = 2, 4, 8, outputs and input gradients asserted equal first."""
    import torch

    from sda_lib.method.moda import IMAGE, TEXT, MoDAConfig, MoDALinear, MoDAState

    options = options.defaults(repeats=5, warmup=1, batch_size=2048)
    ids = torch.tensor([TEXT, IMAGE, TEXT, IMAGE])  # four sequences, alternating modality
    shape = (len(ids), max(1, options.batch_size // len(ids)))
    rows, base_ms, samples_ms = [], {}, {}
    generator = torch.Generator().manual_seed(0)
    for d_in, d_out in LAYER_SHAPES:
        base = torch.nn.Linear(d_in, d_out)
        x = torch.randn(*shape, d_in, generator=generator, requires_grad=True)
        grad_out = torch.randn(*shape, d_out, generator=generator)
        base_s = _base_seconds(base, x, grad_out)
        units, checks = {}, {}
        for experts in EXPERT_COUNTS:
            config = MoDAConfig(num_experts=experts)  # the defaults: r 8, alpha 32, dropout 0.1, per-expert masks
            layer = MoDALinear(base, config, MoDAState(config), f"{d_in}->{d_out}")
            with torch.no_grad():
                for p in (layer.lora_B, layer.gate.weight):
                    p.normal_(0, 0.02, generator=generator)
            layer.state.ids = ids
            loop, loop_weights = expert_loop(layer)
            checks[experts] = _same_update(layer, loop, x, grad_out)
            units[f"moda E={experts}"] = _step(layer.update, x, grad_out, list(layer.parameters()))
            units[f"loop E={experts}"] = _step(loop, x, grad_out, loop_weights)
        samples = interleaved(units, options.repeats, options.warmup)
        label = f"{d_in}->{d_out}"
        for experts in EXPERT_COUNTS:
            ours, theirs = (statistics.median(samples[f"{k} E={experts}"]) for k in ("moda", "loop"))
            rows.append(
                {
                    "layer": label,
                    "experts": experts,
                    "moda ms": _ms(ours),
                    "loop ms": _ms(theirs),
                    "loop / moda": round(theirs / ours, 2),
                    "with base: loop / moda": round((base_s + theirs) / (base_s + ours), 3),
                    "max |diff|": checks[experts],
                }
            )
        base_ms[label] = _ms(base_s)
        samples_ms[label] = {k: [_ms(s) for s in v] for k, v in samples.items()}
    at_target = [r["loop / moda"] for r in rows if r["experts"] == max(EXPERT_COUNTS)]
    status = "PASS" if min(at_target) >= MODA_VS_LOOP_TARGET else "BELOW"
    values = {
        "speedup_at_8": min(at_target),
        "target": MODA_VS_LOOP_TARGET,
        "status": status,
        "tokens": shape[0] * shape[1],
        "rows": rows,
        "base_ms_estimated": base_ms,
        "samples_ms": samples_ms,
    }
    headline = (
        f"loop / MoDA at E={max(EXPERT_COUNTS)}: {', '.join(f'{s:.2f}x' for s in at_target)} "
        f"(target >= {MODA_VS_LOOP_TARGET:.0f}x: {status}); outputs and gradients equal"
    )
    notes = [
        f"{shape[0]} sequences x {shape[1]} tokens, modalities alternating; r 8, alpha 32, dropout 0.1 with "
        f"per-expert masks (the defaults); torch threads {options.threads}, {options.repeats} repeats after "
        f"{options.warmup} warm-up, interleaved; medians",
        "timed: the adapter's update y - W0 x, forward + backward (gradients for x and every adapter weight); "
        "the frozen base product W0 x is the same in both forms and is left out of the ratio. 'with base' adds "
        "its forward + backward, timed once on an eighth of the tokens and scaled (an estimate)",
        "equal outputs: with dropout off, both forms' updates and input gradients agree (max |diff| column)",
    ]
    return Measurement(rows, values, headline, notes)


def _step(update: Callable, x, grad_out, weights: list) -> Callable[[], None]:
    """A timed unit: forward + backward of `update` on `x`, gradients cleared after."""

    def step():
        update(x).backward(grad_out)
        x.grad = None
        for w in weights:
            w.grad = None

    return step


def _same_update(layer, loop: Callable, x, grad_out) -> float:
    """Largest difference between the two forms' updates and input gradients with dropout off
    (eval mode); raises when they differ beyond float32 rounding (relative to the largest value)."""
    import torch

    layer.eval()
    try:
        ours, theirs = layer.update(x), loop(x)
        grads = zip(torch.autograd.grad(ours, x, grad_out), torch.autograd.grad(theirs, x, grad_out))
        pairs = [(a.detach(), b.detach()) for a, b in [(ours, theirs), *grads]]
    finally:
        layer.train()
    for a, b in pairs:
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max())):
            raise AssertionError(f"{layer.name}: MoDA and the expert loop differ by {(a - b).abs().max():.3g}")
    return float(max((a - b).abs().max() for a, b in pairs))


def _base_seconds(base, x, grad_out) -> float:
    """Forward + backward (input gradient) of the frozen product W0 x, timed once (after a warm-up)
    on an eighth of the tokens and scaled up: the part of a full layer step both forms share."""
    import torch.nn.functional as F

    rows = max(1, x.shape[1] // 8)
    part = x[:, :rows].detach().requires_grad_()
    weight = base.weight.detach()
    seconds = interleaved({"base": lambda: F.linear(part, weight).backward(grad_out[:, :rows])}, repeats=1, warmup=1)
    return seconds["base"][0] * x.shape[1] / rows


MODA_MEMORY_TARGET = 1.25  # MoDA with per-expert masks against the LoRA of the same total rank
PAPER_TOKENS = 6080  # padded tokens of a 32-item step on the synthetic items (the gpu check's count)
PAPER_WEIGHTS = 8_292_166_656 * 2  # Qwen2.5-VL-7B in bf16
PAPER_TRAINABLE = 20_300_000  # MoDA's float32 parameters on the 7B (r 8, 8 experts, 196 projections)
GPUS_GIB = {"80 GB": 80e9 / 2**30, "141 GB": 141e9 / 2**30}


def moda_memory(options: Options) -> Measurement:
    """Saved-for-backward bytes per token per decoder layer at the 7B's widths: MoDA vs LoRA (target <= 1.25).

    Counted exactly with saved-tensor hooks on one decoder layer, then the estimate (docs/gpu.md) of the
    7B at 32 items a step, with and without gradient checkpointing, against 80 GB and 141 GB GPUs
    (--preset tiny or small counts one of their layers instead, without the estimate)."""
    from sda_lib.method.adapt import AdaptConfig
    from sda_lib.method.backbones.qwen import PRESETS, SHAPED, preset_config, shaped_config
    from sda_lib.method.memory import GiB, decoder_layer_saved_per_token, language_adapter_settings, step_bytes

    options = options.defaults(batch_size=64)  # tokens of the counted forward
    preset = options.preset or SHAPED
    if preset not in PRESETS and preset.partition(":")[0] != SHAPED:
        raise ValueError(f"moda-memory counts a layer of {SHAPED} (the default) or of {', '.join(PRESETS)}")
    seven_b = preset not in PRESETS
    shape = shaped_config(1) if seven_b else preset_config(preset)
    config, text = AdaptConfig(), shape.text_config
    units = {
        "moda, per-expert masks": ("moda", "per-expert"),
        "moda, shared mask": ("moda", "shared"),
        "lora (peft), same rank": ("lora", "per-expert"),
    }
    counted = {
        (label, autocast): decoder_layer_saved_per_token(
            shape, kind, language_adapter_settings(config.r, config.experts, masks), autocast, options.batch_size
        )
        for label, (kind, masks) in units.items()
        for autocast in (True, False)
    }

    def estimate_gib(label: str, checkpointing: bool) -> float:
        layers, hidden = shaped_config().text_config.num_hidden_layers, text.hidden_size
        saved = step_bytes(
            counted[label, True], PAPER_TOKENS, layers, hidden, PAPER_WEIGHTS, PAPER_TRAINABLE, checkpointing
        )
        return round(saved / GiB, 1)

    rows = [
        {
            "unit": label,
            "MiB/token/layer bf16 autocast": round(counted[label, True] / 2**20, 4),
            "fp32 adapter": round(counted[label, False] / 2**20, 4),
            **(
                {"7B step GiB": estimate_gib(label, False), "with checkpointing": estimate_gib(label, True)}
                if seven_b
                else {}
            ),
        }
        for label in units
    ]
    moda, lora = (counted[label, True] for label in ("moda, per-expert masks", "lora (peft), same rank"))
    ratio = moda / lora
    status = "PASS" if ratio <= MODA_MEMORY_TARGET else "ABOVE"
    values = {
        "ratio": round(ratio, 4),
        "target": MODA_MEMORY_TARGET,
        "status": status,
        "preset": preset,
        "moda_mib_per_token_layer": round(moda / 2**20, 4),
        "lora_mib_per_token_layer": round(lora / 2**20, 4),
        "rows": rows,
        "tokens_counted": options.batch_size,
        "r": config.r,
        "experts": config.experts,
    }
    headline = f"ratio MoDA / LoRA saved per token = {ratio:.3f} (target <= {MODA_MEMORY_TARGET:.2f}): {status}"
    notes = [
        f"one decoder layer of {preset} (hidden {text.hidden_size}, MLP {text.intermediate_size}), random bf16 "
        f"weights, {options.batch_size} text tokens, its input requiring grad; r {config.r}, {config.experts} experts, "
        f"dropout {config.dropout}; distinct storages saved for backward, parameters left out; counted on CPU, whose "
        "dropout keeps its noise in the input's dtype where CUDA's keeps a one-byte mask (LoRA and the shared mask)",
    ]
    if seven_b:
        plain_gib = estimate_gib("moda, per-expert masks", False)
        fits = {gpu: plain_gib <= gib for gpu, gib in GPUS_GIB.items()}
        values |= {"estimate_tokens": PAPER_TOKENS, "moda_fits_without_checkpointing": fits}
        headline += f"; 7B at 32 items without checkpointing: {plain_gib} GiB, " + "; ".join(
            f"{gpu}: {'fits' if ok else 'does not fit'}" for gpu, ok in fits.items()
        )
        notes.append(
            f"7B estimate (memory.step_bytes, bf16 autocast column): weights {PAPER_WEIGHTS / GiB:.1f} GiB + the "
            f"adapter with gradients and AdamW states {16 * PAPER_TRAINABLE / GiB:.1f} GiB + saved per token x "
            f"{PAPER_TOKENS} tokens (32 synthetic items) x 28 layers; with checkpointing each layer's bf16 input "
            "+ one layer's saved activations; transients (one layer's working tensors, the allocator's slack) "
            "come on top"
        )
    return Measurement(rows, values, headline, notes)
