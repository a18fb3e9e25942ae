"""One interface over the three adapter kinds the workbench compares, so training, export and the
analyses never branch on the kind:

    moda         MoDA: E gated low-rank experts per layer (sda_lib.moda), the SDA adapter
    independent  one LoRA per modality, hard-routed (MoDA's routing="hard"): the ablation
    lora         one shared LoRA of the same rank through peft: "w/o MoDA"
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from . import moda
from .io import atomic_dir

KINDS = ("moda", "independent", "lora")
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # where PeftModel.save_pretrained puts the wrapped model's keys


def attach(model: nn.Module, kind: str, r: int = 8, experts: int = 8, alpha: float = 32,
           dropout: float = 0.1, adapt_vision: bool = False,
           targets: str = moda.LANGUAGE_TARGETS) -> moda.AdapterReport:
    """Freeze `model` and add a trainable adapter of `kind` to the linears whose names fully match
    `targets` (a Backbone's `targets`; default Qwen2.5-VL's language model)."""
    if kind not in KINDS:
        raise ValueError(f"unknown adapter {kind!r}; choose one of {', '.join(KINDS)}")
    if adapt_vision and not any(isinstance(m, nn.Linear) and re.fullmatch(moda.VISION_TARGETS, name)
                                for name, m in model.named_modules()):
        raise ValueError("adapt_vision=True, but no linear layer of this model matches the vision-tower pattern "
                         f"{moda.VISION_TARGETS!r} (a Qwen2.5-VL vision tower): this backbone's vision encoder has "
                         "nothing to adapt; train with adapt_vision=False")
    if kind == "lora":
        targets = targets + (f"|{moda.VISION_TARGETS}" if adapt_vision else "")
        report = moda.inject_lora(model, r=r, alpha=alpha, dropout=dropout, target_modules=targets)
        model._lora_config = dict(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
        return report
    routing = "soft" if kind == "moda" else "hard"
    config = moda.MoDAConfig(r=r, num_experts=experts, alpha=alpha, dropout=dropout, target_modules=targets,
                             adapt_vision=adapt_vision, routing=routing)
    return moda.inject_moda(model, config)


def kind_of(model: nn.Module) -> str | None:
    if getattr(model, "_moda_state", None) is not None:
        return "moda" if model._moda_state.config.routing == "soft" else "independent"
    if any(isinstance(m, LoraLayer) for m in model.modules()):
        return "lora"
    return None


def modality(model: nn.Module, m: int):
    """Route the rows of the next forwards to modality m (a no-op for a shared LoRA or no adapter)."""
    return moda.modality(model, m) if kind_of(model) in ("moda", "independent") else contextlib.nullcontext()


@contextlib.contextmanager
def merged(model: nn.Module, m: int):
    """Run modality m's adapter as plain weights for fast inference, and undo it after; the base
    weights come back bit for bit (see MoDALinear.merge). A shared LoRA is the same for both
    modalities and stays active as it is: peft merges in place and unmerges by subtraction, which
    drifts in bf16."""
    if kind_of(model) not in ("moda", "independent"):
        yield
        return
    moda.merge_moda(model, m)
    try:
        yield
    finally:
        moda.unmerge_moda(model)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing whose recomputation keeps each row's modality."""
    kwargs = {"use_reentrant": False}
    if kind_of(model) in ("moda", "independent"):
        kwargs["context_fn"] = moda.checkpoint_context_fn(model)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)


def save(model: nn.Module, folder: str | Path, backbone_id: str) -> Path:
    """The adapter, written atomically: MoDA in its own format (safetensors + a JSON card with the
    backbone, layer shapes and checksum), the shared LoRA in peft's own layout."""
    kind = kind_of(model)
    if kind in ("moda", "independent"):
        return moda.save_moda(model, folder, backbone_id)
    if kind != "lora":
        raise ValueError("the model has no adapter to save")
    config = LoraConfig(**model._lora_config, base_model_name_or_path=backbone_id)
    return _save_peft(get_peft_model_state_dict(model), config, folder)


def load(model: nn.Module, folder: str | Path, backbone_id: str) -> str:
    """Attach the adapter saved in `folder` to a fresh `model`; returns its kind."""
    folder = Path(folder)
    if (folder / moda.CONFIG_FILE).exists():
        moda.load_moda(model, folder, backbone_id)
        return kind_of(model)
    if not (folder / PEFT_CONFIG).exists():
        raise FileNotFoundError(f"no adapter in {folder}: expected {moda.CONFIG_FILE} (MoDA) or {PEFT_CONFIG} (peft "
                                "LoRA); train one with notebooks/03_adapt.ipynb")
    config = LoraConfig.from_pretrained(str(folder))
    if config.base_model_name_or_path != backbone_id:
        raise ValueError(f"the LoRA adapter in {folder} was trained on backbone {config.base_model_name_or_path!r}, "
                         f"not on {backbone_id!r}; load it into the backbone it was trained on")
    inject_adapter_in_model(config, model)
    model._lora_config = _lora_settings(config)
    saved = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(folder / PEFT_WEIGHTS)).items()}
    result = set_peft_model_state_dict(model, saved)
    missing = [n for n in result.missing_keys if "lora_" in n]
    if missing or result.unexpected_keys:
        raise ValueError(f"the LoRA adapter in {folder} does not fit this backbone: missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")
    return "lora"


def export_peft(model: nn.Module, folder: str | Path, backbone_id: str) -> dict[str, Path]:
    """A MoDA adapter as two standard peft LoRA adapters, `folder/text` and `folder/image`.

    For a fixed modality m MoDA's update is an ordinary rank-r LoRA: (alpha/r) B diag(w_m) A, so
    each adapter keeps A and scales B's columns by m's expanded gate weights (vision-tower layers
    keep their image weights in both). They load with stock peft, e.g.
    `PeftModel.from_pretrained(base, folder / "text", adapter_name="text")`, then
    `load_adapter(folder / "image", adapter_name="image")` and `set_adapter(...)`."""
    if kind_of(model) not in ("moda", "independent"):
        raise ValueError("export_peft writes a MoDA adapter as per-modality LoRAs; a shared LoRA is already one")
    layers = moda.moda_layers(model)
    config = model._moda_state.config
    out = {}
    for m, label in ((moda.TEXT, "text"), (moda.IMAGE, "image")):
        state = {}
        with torch.no_grad():
            for name, layer in layers.items():
                weights = layer.modality_weights()[m if layer.fixed_modality is None else layer.fixed_modality]
                state[f"{name}.lora_A.weight"] = layer.lora_A.detach().cpu()
                state[f"{name}.lora_B.weight"] = (layer.lora_B * weights.repeat_interleave(layer.expert_rank)).cpu()
        rank = next(iter(layers.values())).lora_A.shape[0]
        peft_config = LoraConfig(r=rank, lora_alpha=config.alpha * rank / config.r, lora_dropout=config.dropout,
                                 target_modules=sorted(layers), base_model_name_or_path=backbone_id)
        out[label] = _save_peft(state, peft_config, Path(folder) / label)
    return out


def _save_peft(state: dict[str, torch.Tensor], config: LoraConfig, folder: str | Path) -> Path:
    """peft's file layout (what PeftModel.save_pretrained writes), so stock peft opens it."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        config.save_pretrained(str(tmp))
        save_file({PEFT_PREFIX + k: v.contiguous() for k, v in state.items()}, str(tmp / PEFT_WEIGHTS))
    return folder


def _lora_settings(config: LoraConfig) -> dict:
    return dict(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=config.target_modules)


def checksum(folder: str | Path) -> str:
    """SHA-256 of the saved adapter weights (recorded in export manifests)."""
    folder = Path(folder)
    weights = folder / (moda.WEIGHTS_FILE if (folder / moda.CONFIG_FILE).exists() else PEFT_WEIGHTS)
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
