"""One interface over the three adapter kinds the workbench compares, so training, export and the
analyses never branch on the kind:

    moda         MoDA: E gated low-rank experts per layer (sda_lib.moda), the SDA adapter
    independent  one LoRA per modality, hard-routed (MoDA's routing="hard"): the ablation
    lora         one shared LoRA of the same rank through peft: "w/o MoDA"
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from . import moda
from .io import atomic_dir, write_json

KINDS = ("moda", "independent", "lora")
LORA_CONFIG = "lora_config.json"


def attach(model: nn.Module, kind: str, r: int = 8, experts: int = 8, alpha: float = 32,
           dropout: float = 0.1, adapt_vision: bool = False) -> moda.AdapterReport:
    """Freeze `model` and add a trainable adapter of `kind` to its (language-model) projections."""
    if kind not in KINDS:
        raise ValueError(f"unknown adapter {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "lora":
        targets = moda.LANGUAGE_TARGETS + (f"|{moda.VISION_TARGETS}" if adapt_vision else "")
        report = moda.inject_lora(model, r=r, alpha=alpha, dropout=dropout, target_modules=targets)
        model._lora_config = dict(r=r, alpha=alpha, dropout=dropout, adapt_vision=adapt_vision)
        return report
    routing = "soft" if kind == "moda" else "hard"
    config = moda.MoDAConfig(r=r, num_experts=experts, alpha=alpha, dropout=dropout,
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
    """Adapter weights (safetensors) and a JSON config beside them, written atomically."""
    kind = kind_of(model)
    if kind in ("moda", "independent"):
        return moda.save_moda(model, folder, backbone_id)
    if kind != "lora":
        raise ValueError("the model has no adapter to save")
    folder = Path(folder)
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if "lora_" in n}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / moda.WEIGHTS_FILE))
        write_json(tmp / LORA_CONFIG, {"config": model._lora_config, "backbone_id": backbone_id,
                                       "sha256": checksum(tmp)})
    return folder


def load(model: nn.Module, folder: str | Path, backbone_id: str) -> str:
    """Attach the adapter saved in `folder` to a fresh `model`; returns its kind."""
    folder = Path(folder)
    if (folder / moda.CONFIG_FILE).exists():
        moda.load_moda(model, folder, backbone_id)
        return kind_of(model)
    if not (folder / LORA_CONFIG).exists():
        raise FileNotFoundError(f"no adapter in {folder}: expected {moda.CONFIG_FILE} or {LORA_CONFIG} "
                                "(train one with notebooks/03_adapt.ipynb)")
    card = json.loads((folder / LORA_CONFIG).read_text())
    if card["backbone_id"] != backbone_id:
        raise ValueError(f"the LoRA adapter in {folder} was trained on backbone {card['backbone_id']!r}, "
                         f"not on {backbone_id!r}; load it into the backbone it was trained on")
    attach(model, "lora", **{k: card["config"][k] for k in ("r", "alpha", "dropout", "adapt_vision")})
    state = load_file(str(folder / moda.WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [n for n in missing if "lora_" in n]
    if missing or unexpected:
        raise ValueError(f"the LoRA adapter in {folder} does not fit this backbone: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return "lora"


def checksum(folder: str | Path) -> str:
    """SHA-256 of the saved adapter weights (recorded in export manifests)."""
    return hashlib.sha256((Path(folder) / moda.WEIGHTS_FILE).read_bytes()).hexdigest()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
