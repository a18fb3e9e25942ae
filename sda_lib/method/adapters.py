"""Adapter kinds, registered by name (peft's pattern: each kind binds a config, a layer class and
an injector), so training, export and the analyses never branch on the kind:

    moda         MoDA: E gated low-rank experts per layer (sda_lib.method.moda), the SDA adapter
    independent  one LoRA per modality, hard-routed (MoDA's routing="hard"): the ablation
    lora         one shared LoRA of the same rank through peft: "w/o MoDA"

A new kind subclasses `AdapterKind` and registers an instance: `KINDS.register("name", MyKind())`
(see docs/extending.md). The kind of an adapted model is read from its layers, so
nothing is stashed on the model.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils.io import atomic_dir, digest_problem, file_sha256, save_with_digest
from ..utils.registry import Registry
from . import moda
from .backbones.targets import LANGUAGE_TARGETS, VISION_TARGETS

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # where PeftModel.save_pretrained puts the wrapped model's keys


@dataclass(frozen=True)
class AdapterSettings:
    """What every kind is given: total rank, experts (kinds without experts ignore it), LoRA's
    alpha and dropout, whether the vision tower is adapted, and the regex of the target linears."""

    r: int = 8
    experts: int = moda.EXPERTS
    alpha: float = 32
    dropout: float = 0.1
    adapt_vision: bool = False
    targets: str = LANGUAGE_TARGETS
    dropout_masks: str = "per-expert"

    @property
    def pattern(self) -> str:
        return self.targets + (f"|{VISION_TARGETS}" if self.adapt_vision else "")


class AdapterKind:
    """The contract of an adapter kind. `attach`, `owns`, `save`, `saved_in`, `load` and
    `weights_file` are required; routing by modality, merging, checkpoint replay and the gradient
    probe's B matrix default to "shared by both modalities"."""

    def attach(self, model: nn.Module, settings: AdapterSettings) -> moda.AdapterReport:
        """Freeze `model` and add this kind's trainable layers to the linears matching settings.pattern."""
        raise NotImplementedError

    def owns(self, model: nn.Module) -> bool:
        """Whether `model` carries an adapter of this kind."""
        raise NotImplementedError

    def save(self, model: nn.Module, folder: Path, backbone_id: str) -> Path:
        raise NotImplementedError

    def saved_in(self, folder: Path) -> bool:
        """Whether `folder` holds an adapter this kind saved."""
        raise NotImplementedError

    def load(self, model: nn.Module, folder: Path, backbone_id: str) -> None:
        raise NotImplementedError

    def weights_file(self, folder: Path) -> Path:
        raise NotImplementedError

    def modality(self, model: nn.Module, m):
        """Route the rows of the next forwards to modality m (one id, or one per row)."""
        return contextlib.nullcontext()

    def merged(self, model: nn.Module, m: int):
        """Run modality m's adapter as plain weights for inference, undone after."""
        return contextlib.nullcontext()

    def checkpoint_context_fn(self, model: nn.Module):
        """torch.utils.checkpoint's context_fn that keeps routing across recomputation, or None."""
        return None

    def last_b(self, module: nn.Module) -> tuple[nn.Parameter, int | None] | None:
        """For the gradient-conflict probe: this module's B matrix [out, r] and the rank of each
        expert (None: no experts), or None when the module is not one of this kind's layers."""
        return None


KINDS: Registry[AdapterKind] = Registry("adapter kind")


class MoDAKind(AdapterKind):
    """Soft-gated experts (routing "soft") or one hard-routed LoRA per modality ("hard")."""

    def __init__(self, routing: str):
        self.routing = routing

    def attach(self, model, settings):
        if settings.adapt_vision and not any(
            isinstance(m, nn.Linear) and re.fullmatch(VISION_TARGETS, name) for name, m in model.named_modules()
        ):
            raise ValueError(
                "adapt_vision=True, but no linear layer of this model matches the vision-tower pattern "
                f"{VISION_TARGETS!r} (a Qwen2.5-VL vision tower): this backbone's vision encoder "
                "has nothing to adapt; train with adapt_vision=False"
            )
        config = moda.MoDAConfig(
            r=settings.r,
            num_experts=settings.experts,
            alpha=settings.alpha,
            dropout=settings.dropout,
            target_modules=settings.targets,
            adapt_vision=settings.adapt_vision,
            routing=self.routing,
            dropout_masks=settings.dropout_masks,
        )
        return moda.inject_moda(model, config)

    def owns(self, model):
        state = moda.state_of(model)
        return state is not None and state.config.routing == self.routing

    def save(self, model, folder, backbone_id):
        return moda.save_moda(model, folder, backbone_id)

    def saved_in(self, folder):
        if not (folder / moda.CONFIG_FILE).is_file():
            return False
        return moda.read_card(folder)["config"].get("routing", "soft") == self.routing

    def load(self, model, folder, backbone_id):
        moda.load_moda(model, folder, backbone_id)

    def weights_file(self, folder):
        return folder / moda.WEIGHTS_FILE

    def modality(self, model, m):
        return moda.modality(model, m)

    @contextlib.contextmanager
    def merged(self, model, m):
        moda.merge_moda(model, m)
        try:
            yield
        finally:
            moda.unmerge_moda(model)

    def checkpoint_context_fn(self, model):
        return moda.checkpoint_context_fn(model)

    def last_b(self, module):
        return (module.lora_B, module.expert_rank) if isinstance(module, moda.MoDALinear) else None


class SharedLoRA(AdapterKind):
    """peft's LoRA, one for both modalities; its config is the one peft keeps on the model
    (`model.peft_config`) and it saves in peft's own layout. A shared LoRA stays active as it is
    for inference: peft merges in place and unmerges by subtraction, which drifts in bf16."""

    def attach(self, model, settings):
        return moda.inject_lora(
            model, r=settings.r, alpha=settings.alpha, dropout=settings.dropout, target_modules=settings.pattern
        )

    def owns(self, model):
        return any(isinstance(m, LoraLayer) for m in model.modules())

    def save(self, model, folder, backbone_id):
        return save_peft(model, folder, backbone_id)

    def saved_in(self, folder):
        return peft_type(folder) == "LORA"

    def load(self, model, folder, backbone_id):
        load_peft(model, folder, backbone_id)

    def weights_file(self, folder):
        return folder / PEFT_WEIGHTS

    def last_b(self, module):
        return (module.lora_B["default"].weight, None) if isinstance(module, LoraLayer) else None


KINDS.register("moda", MoDAKind("soft"))
KINDS.register("independent", MoDAKind("hard"))
KINDS.register("lora", SharedLoRA())


def attach(
    model: nn.Module,
    kind: str,
    r: int = 8,
    experts: int = moda.EXPERTS,
    alpha: float = 32,
    dropout: float = 0.1,
    adapt_vision: bool = False,
    targets: str = LANGUAGE_TARGETS,
    dropout_masks: str = "per-expert",
) -> moda.AdapterReport:
    """Freeze `model` and add a trainable adapter of `kind` to the linears whose names fully match
    `targets` (a Backbone's `targets`; default Qwen2.5-VL's language model)."""
    settings = AdapterSettings(r, experts, alpha, dropout, adapt_vision, targets, dropout_masks)
    return KINDS[kind].attach(model, settings)


def kind_of(model: nn.Module) -> str | None:
    """The registered name of the adapter on `model`, or None."""
    return next((name for name in KINDS if KINDS[name].owns(model)), None)


def _kind(model: nn.Module) -> AdapterKind | None:
    name = kind_of(model)
    return None if name is None else KINDS[name]


def modality(model: nn.Module, m):
    """Route the rows of the next forwards to modality m (a no-op for a shared adapter or none)."""
    kind = _kind(model)
    return kind.modality(model, m) if kind else contextlib.nullcontext()


def merged(model: nn.Module, m: int):
    """Run modality m's adapter as plain weights for fast inference, and undo it after; MoDA's base
    weights come back bit for bit (see MoDALinear.merge)."""
    kind = _kind(model)
    return kind.merged(model, m) if kind else contextlib.nullcontext()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing whose recomputation keeps each row's modality."""
    kwargs = {"use_reentrant": False}
    kind = _kind(model)
    context_fn = kind.checkpoint_context_fn(model) if kind else None
    if context_fn is not None:
        kwargs["context_fn"] = context_fn
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)


def save(model: nn.Module, folder: str | Path, backbone_id: str, dataset: str | None = None, training=None) -> Path:
    """The adapter, written atomically: MoDA in its own format (safetensors + a JSON card with the
    backbone, layer shapes and checksum), the shared LoRA in peft's own layout; beside it a hub
    model card (README.md, sda_lib.method.model_card) naming `dataset` and the `training` record."""
    from .model_card import write_model_card

    name = kind_of(model)
    if name is None:
        raise ValueError("the model has no adapter to save")
    saved = KINDS[name].save(model, Path(folder), backbone_id)
    write_model_card(saved, backbone_id, name, dataset, training)
    return saved


def saved_kind(folder: Path) -> str:
    """The registered adapter kind saved in `folder`."""
    name = next((name for name in KINDS if KINDS[name].saved_in(folder)), None)
    if name is None:
        raise FileNotFoundError(
            f"no adapter in {folder}: expected {moda.CONFIG_FILE} (MoDA) or {PEFT_CONFIG} (peft "
            "LoRA); train one with notebooks/03_adapt.ipynb"
        )
    return name


def load(model: nn.Module, folder: str | Path, backbone_id: str) -> str:
    """Attach the adapter saved in `folder` to a fresh `model`; returns its kind."""
    folder = Path(folder)
    name = saved_kind(folder)
    KINDS[name].load(model, folder, backbone_id)
    return name


def base_model(folder: str | Path) -> str:
    """The backbone id an adapter was trained on, as its files record it (MoDA's card, or peft's
    base_model_name_or_path)."""
    folder = Path(folder)
    saved_kind(folder)  # names the folder when it holds no adapter
    if (folder / moda.CONFIG_FILE).is_file():
        return moda.read_card(folder)["backbone_id"]
    return _peft_config(folder).base_model_name_or_path


def check_trained_on(folder: str | Path, backbone: str, seed: int = 0) -> None:
    """Refuse (ValueError), before any model is loaded, the adapter in `folder` when it was trained
    on another backbone than load_backbone(backbone, seed=seed), naming both."""
    from .backbones import backbone_name, trained_on  # heavy, and needed only here

    recorded = base_model(folder)
    if not trained_on(recorded, backbone, seed):
        raise ValueError(
            f"the adapter in {folder} was trained on backbone {recorded!r}, not on {backbone!r} (seed {seed}): "
            f"give backbone={backbone_name(recorded)[0]!r}, or adapt again on {backbone!r} (03_adapt)"
        )


def from_pretrained(name_or_folder: str | Path, revision: str | None = None, **load_kw):
    """The backbone the adapter in `name_or_folder` was trained on, loaded (load_backbone's keyword
    arguments in `load_kw`) with the adapter attached: a saved adapter alone is enough to embed.
    A folder is read as it is; anything else is a hub id (`revision` a branch, tag or commit),
    fetched into the hub cache, or read from it alone when HF_HUB_OFFLINE=1. Random presets are
    rebuilt from their id ("tiny-random-seed0": preset tiny, seed 0)."""
    from .backbones import backbone_name, load_backbone  # heavy, and needed only here

    folder = Path(name_or_folder).expanduser()
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(name_or_folder), revision=revision))
    name, seed = backbone_name(base_model(folder))
    backbone = load_backbone(name, **({"seed": seed} if seed is not None else {}), **load_kw)
    load(backbone.model, folder, backbone.id)
    return backbone


def export_peft(model: nn.Module, folder: str | Path, backbone_id: str) -> dict[str, Path]:
    """A MoDA adapter as two standard peft LoRA adapters, `folder/text` and `folder/image`.

    For a fixed modality m MoDA's update is an ordinary rank-r LoRA: (alpha/r) B diag(w_m) A, so
    each adapter keeps A and scales B's columns by m's expanded gate weights (vision-tower layers
    keep their image weights in both). They load with stock peft, e.g.
    `PeftModel.from_pretrained(base, folder / "text", adapter_name="text")`, then
    `load_adapter(folder / "image", adapter_name="image")` and `set_adapter(...)`."""
    if not isinstance(_kind(model), MoDAKind):
        raise ValueError("export_peft writes a MoDA adapter as per-modality LoRAs; a shared LoRA is already one")
    layers = moda.moda_layers(model)
    config = moda.state_of(model).config
    out = {}
    for m, label in ((moda.TEXT, "text"), (moda.IMAGE, "image")):
        state = {}
        with torch.no_grad():
            for name, layer in layers.items():
                weights = layer.modality_weights()[m if layer.fixed_modality is None else layer.fixed_modality]
                state[f"{name}.lora_A.weight"] = layer.lora_A.detach().cpu()
                state[f"{name}.lora_B.weight"] = (layer.lora_B * weights.repeat_interleave(layer.expert_rank)).cpu()
        rank = next(iter(layers.values())).lora_A.shape[0]
        peft_config = LoraConfig(
            r=rank,
            lora_alpha=config.alpha * rank / config.r,
            lora_dropout=config.dropout,
            target_modules=sorted(layers),
            base_model_name_or_path=backbone_id,
        )
        out[label] = _save_peft(state, peft_config, Path(folder) / label)
    return out


def peft_type(folder: Path) -> str | None:
    """The peft_type ("LORA", "IA3", ...) of the peft adapter saved in `folder`, or None."""
    return _peft_config(folder).peft_type if (folder / PEFT_CONFIG).is_file() else None


def _peft_config(folder: Path) -> PeftConfig:
    """peft's config of the adapter in `folder`; a damaged or edited one is refused naming the file."""
    try:
        return PeftConfig.from_pretrained(str(folder))
    except Exception as err:  # JSON, type and peft's own value errors alike
        raise ValueError(
            f"{folder / PEFT_CONFIG} is not a peft adapter config that reads ({type(err).__name__}: {err}): it is "
            "damaged or was edited; save the adapter again"
        ) from None


def save_peft(model: nn.Module, folder: str | Path, backbone_id: str) -> Path:
    """The peft adapter injected into `model` (inject_adapter_in_model), in peft's own layout, with
    the backbone it was trained on as base_model_name_or_path. Any peft tuner saves this way."""
    config = model.peft_config["default"]
    config.base_model_name_or_path = backbone_id
    # save_embedding_layers=False: the embeddings are frozen, and peft's check would look the base id up online
    return _save_peft(get_peft_model_state_dict(model, save_embedding_layers=False), config, folder)


def load_peft(model: nn.Module, folder: str | Path, backbone_id: str) -> None:
    """Inject the peft adapter saved in `folder` into `model` and load its weights. Refuses, naming
    the file: an adapter trained on another backbone, weights that do not match their recorded
    checksum (or have none), a weights file that does not read, a LoRA whose config and tensors do
    not fit this backbone (checked from the file's header, before anything is allocated), and
    non-finite weights."""
    folder = Path(folder)
    config, weights = _peft_config(folder), folder / PEFT_WEIGHTS
    if config.base_model_name_or_path != backbone_id:
        raise ValueError(
            f"the {config.peft_type} adapter in {folder} was trained on backbone "
            f"{config.base_model_name_or_path!r}, not on {backbone_id!r}; load it into the "
            "backbone it was trained on"
        )
    problem = digest_problem(weights)
    if problem:
        raise ValueError(f"the {config.peft_type} adapter in {folder} is not loaded: {problem}; save it again")
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k.removeprefix(PEFT_PREFIX): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error type on a damaged header
        raise ValueError(f"{weights} is not a safetensors file that reads ({err}); save the adapter again") from None
    if config.peft_type == "LORA":
        _check_lora_shapes(model, config, shapes, weights)
    inject_adapter_in_model(config, model)
    saved = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(weights)).items()}
    bad = [k for k, v in saved.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{weights} holds non-finite values (NaN or inf) in {len(bad)} tensors, e.g. {bad[0]}")
    missing = sorted(set(get_peft_model_state_dict(model, save_embedding_layers=False)) - set(saved))
    result = set_peft_model_state_dict(model, saved)
    if missing or result.unexpected_keys:
        raise ValueError(
            f"the {config.peft_type} adapter in {folder} does not fit this backbone: missing "
            f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )


def _check_lora_shapes(model: nn.Module, config, shapes: dict[str, tuple], weights: Path) -> None:
    """The LoRA tensors the config asks for on this backbone's layers ([r, in] and [out, r] per
    target linear) against those in the weights file's header, before peft allocates any."""
    expected = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and check_target_module_exists(config, name):
            r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), name), config.r)
            expected[f"{name}.lora_A.weight"] = (r, module.in_features)
            expected[f"{name}.lora_B.weight"] = (module.out_features, r)
    saved = {k: v for k, v in shapes.items() if re.search(r"\.lora_[AB]\.weight$", k)}
    differ = sorted(k for k in expected.keys() | saved.keys() if expected.get(k) != saved.get(k))
    if differ:
        k = differ[0]
        raise ValueError(
            f"the LoRA adapter in {weights.parent} does not fit this backbone: its config (r={config.r}) asks for "
            f"{k} of shape {expected.get(k, 'none')}, {weights.name} holds {saved.get(k, 'none')} "
            f"({len(differ)} tensors differ); it was saved for another backbone or its config was edited"
        )


def _save_peft(state: dict[str, torch.Tensor], config: PeftConfig, folder: str | Path) -> Path:
    """peft's file layout (what PeftModel.save_pretrained writes), so stock peft opens it."""
    folder = Path(folder)
    tensors = {PEFT_PREFIX + k: v.contiguous() for k, v in state.items()}
    with atomic_dir(folder) as tmp:
        config.save_pretrained(str(tmp))
        # the checksum beside the weights (stock peft ignores the extra file), as MoDA's card records one
        save_with_digest(tmp / PEFT_WEIGHTS, lambda path: save_file(tensors, str(path)))
    return folder


def checksum(folder: str | Path) -> str:
    """SHA-256 of the saved adapter weights (recorded in export manifests)."""
    folder = Path(folder)
    weights = KINDS[saved_kind(folder)].weights_file(folder)
    return file_sha256(weights)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
