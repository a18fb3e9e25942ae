"""MoDA: a mixture of low-rank experts whose gate reads a learned per-layer modality embedding.

Laid out like PEFT's LoRA tuner (config dataclass, layer class, functions that inject it) so the two
adapters are used the same way. Each adapted projection keeps its frozen weight W0 and adds

    y = W0 x + (alpha / r) * sum_i w_m,i B_i A_i dropout(x),    w_m = softmax(gate(embedding[m]))

where m is the modality of the row (0 = text, 1 = image). The experts are fused: all A_i are the
rows of one A [r, in] and all B_i the columns of one B [out, r], and the expert weights scale the
rank-r activation in between, so a forward costs what a rank-r LoRA costs.

The modality is per sequence and is set for the whole model around a forward with
`with modality(model, ids):`; layers of the vision tower always see image patches. Under gradient
checkpointing a block is recomputed during backward, after that block has closed: enabling it with
`checkpoint_context_fn(model)` as torch's `context_fn` replays, in each recomputation, the ids its
forward saw (sda_lib.method.adapters.enable_gradient_checkpointing does this).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils.choices import check_fields
from ..utils.io import atomic_dir, file_sha256, write_json
from .backbones.targets import LANGUAGE_TARGETS, VISION_TARGETS, VISION_TOWER
from .expert_dropout import ExpertDropoutDown, expert_keep_bits

TEXT, IMAGE = 0, 1


WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "moda_config.json"


DropoutMasks = Literal["per-expert", "shared"]
Routing = Literal["soft", "hard"]
Init = Literal["normal", "kaiming"]


EXPERTS = 8  # the default number of experts everywhere: the authors' final scripts (CAMEL_qwen.bash); 4 in earlier runs


@dataclass
class MoDAConfig:
    """Hyper-parameters of a MoDA adapter.

    routing="soft" is MoDA (num_experts experts of rank r/num_experts, gated by modality);
    routing="hard" is the ablation of independent per-modality LoRAs: num_modalities experts of
    rank r each, one-hot by modality, no gate (num_experts is then unused).
    """

    r: int = 8
    num_experts: int = EXPERTS
    alpha: float = 32
    dropout: float = 0.1
    modality_dim: int = 64
    num_modalities: int = 2
    target_modules: str = LANGUAGE_TARGETS
    adapt_vision: bool = False
    routing: Routing = "soft"
    # As the authors' MOELoraLinear: A ~ N(0, 0.01), a gate without bias, one dropout mask per expert.
    # "kaiming" (peft's LoRA init), gate_bias=True and "shared" masks are the workbench's options;
    # a shared mask lets the experts' A run as one matmul.
    init: Init = "normal"
    gate_bias: bool = False
    dropout_masks: DropoutMasks = "per-expert"

    def __post_init__(self):
        check_fields(self)
        for name in ("r", "num_experts", "modality_dim", "num_modalities"):
            if getattr(self, name) < 1:
                raise ValueError(f"MoDAConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_modalities <= IMAGE:
            raise ValueError(
                f"MoDAConfig.num_modalities must be >= {IMAGE + 1} (0 = text, 1 = image), got {self.num_modalities}"
            )
        if self.routing == "soft" and self.r % self.num_experts:
            raise ValueError(
                f"MoDAConfig.r={self.r} is not divisible by num_experts={self.num_experts}: "
                "each expert has rank r / num_experts; pick r as a multiple of num_experts"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"MoDAConfig.dropout must be in [0, 1), got {self.dropout}")
        try:
            re.compile(self.target_modules)
        except re.error as err:
            raise ValueError(f"MoDAConfig.target_modules is not a valid regex: {err}") from err

    @property
    def pattern(self) -> str:
        """The regex (full match on module names) of every linear layer to adapt."""
        if self.adapt_vision:
            return f"(?:{self.target_modules})|(?:{VISION_TARGETS})"
        return self.target_modules


class MoDAState:
    """The adapter config and the modality ids of the next forward, shared by every MoDA layer of
    one model.

    One object per model (made at injection and held by its layers, as peft's layers hold their
    config) rather than a global, so two adapted models never read each other's modality.
    """

    def __init__(self, config: MoDAConfig):
        self.config = config
        self.ids: torch.Tensor | None = None


class MoDALinear(nn.Module):
    """A frozen nn.Linear plus a fused mixture of low-rank experts gated by modality.

    fixed_modality: for layers whose rows always have one modality (the vision tower's patches);
    such layers ignore the modality set on the model (their other embedding rows stay in place so
    every layer has one shape, and never receive a gradient).
    """

    def __init__(
        self,
        base: nn.Linear,
        config: MoDAConfig,
        state: MoDAState,
        name: str,
        fixed_modality: int | None = None,
    ):
        super().__init__()
        self.base = base
        self.state = state
        self.name = name
        self.fixed_modality = fixed_modality
        self.merged_modality: int | None = None
        self.merged_weight: torch.Tensor | None = None  # W0 + update while merged; W0 itself never changes
        hard = config.routing == "hard"
        self.num_experts = config.num_modalities if hard else config.num_experts
        self.expert_rank = config.r if hard else config.r // config.num_experts
        rank = self.num_experts * self.expert_rank
        self.scaling = config.alpha / config.r
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        # Float32 adapter whatever the base dtype (as peft does), so small updates are not lost in bf16.
        kw = dict(device=base.weight.device, dtype=torch.float32)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **kw))
        if config.init == "normal":
            nn.init.normal_(self.lora_A, std=0.01)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as peft; either way B = 0 starts at W0
        self.per_expert_masks = config.dropout_masks == "per-expert" and config.dropout > 0
        if hard:
            self.modality_embedding = self.gate = None
            self.register_buffer("one_hot", torch.eye(config.num_modalities, **kw), persistent=False)
        else:
            self.modality_embedding = nn.Embedding(config.num_modalities, config.modality_dim, **kw)
            self.gate = nn.Linear(config.modality_dim, config.num_experts, bias=config.gate_bias, **kw)

    def modality_weights(self) -> torch.Tensor:
        """Expert weights for every modality, [num_modalities, num_experts]: they depend on the
        modality only, so one small softmax per forward serves every row."""
        if self.gate is None:
            return self.one_hot
        return torch.softmax(self.gate(self.modality_embedding.weight), dim=-1)

    def _rank_scale(self) -> torch.Tensor:
        """(alpha/r) * expert weights repeated over each expert's rank: [num_modalities, r]."""
        return (self.modality_weights() * self.scaling).repeat_interleave(self.expert_rank, dim=-1)

    def _row_modalities(self, x: torch.Tensor) -> torch.Tensor | int:
        if self.fixed_modality is not None:
            return self.fixed_modality
        ids = self.state.ids
        if ids is None:
            raise RuntimeError(
                f"MoDA layer {self.name} has no modality for this forward: run the model inside "
                "`with sda_lib.method.moda.modality(model, ids):` (0 = text, 1 = image, one id per batch row); "
                "under gradient checkpointing, enable it with sda_lib.method.adapters.enable_gradient_checkpointing"
            )
        if ids.dim() == 1 and ids.shape[0] != x.shape[0]:
            raise ValueError(
                f"MoDA layer {self.name}: {ids.shape[0]} modality ids for a batch of {x.shape[0]} rows; "
                "give one id per batch row"
            )
        return ids.to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged_weight is not None:
            return F.linear(x, self.merged_weight, self.base.bias)
        result = self.base(x)
        return result + self.update(x).to(result.dtype)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution for `x` in float32, every expert at once: one rank-r product
        down, the expert weights scaling the rank-r activation, one product up."""
        scale = self._rank_scale()[self._row_modalities(x)]  # [r] or [rows, r]
        if scale.dim() == 2:
            scale = scale.view(scale.shape[0], *([1] * (x.dim() - 2)), scale.shape[1])
        hidden = self._project_down(x) * scale
        return F.linear(hidden, self.lora_B)

    def _project_down(self, x: torch.Tensor) -> torch.Tensor:
        """A dropout(x) for all experts: one matmul with a shared mask, or, when training with
        per-expert masks, each expert's product under its own mask (ExpertDropoutDown)."""
        if not (self.per_expert_masks and self.training):
            return F.linear(self.dropout(x.to(self.lora_A.dtype)), self.lora_A)
        bits, scale = expert_keep_bits(self.num_experts, x, self.dropout.p)
        return ExpertDropoutDown.apply(x, self.lora_A, bits, scale, self.num_experts)

    def delta_weight(self, modality: int) -> torch.Tensor:
        """(alpha/r) * B diag(repeat(w_m)) A: the weight update this layer applies to `modality`."""
        return self.lora_B @ (self._rank_scale()[modality, :, None] * self.lora_A)

    @torch.no_grad()
    def merge(self, modality: int) -> None:
        """Run as one plain linear layer with `modality`'s update folded in: W0 + update, summed in
        float32 and held beside W0 rather than written into it, so unmerging restores W0 bit for
        bit in any precision (subtracting the update again drifts in bf16). The price is one copy
        of each adapted weight while merged, for inference only."""
        if self.merged_modality is not None:
            raise RuntimeError(
                f"MoDA layer {self.name} is already merged for modality {self.merged_modality}; call unmerge_moda first"
            )
        modality = self.fixed_modality if self.fixed_modality is not None else modality
        weight = self.base.weight
        self.merged_weight = (weight.float() + self.delta_weight(modality)).to(weight.dtype)
        self.merged_modality = modality

    def unmerge(self) -> None:
        self.merged_weight = self.merged_modality = None

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, expert_rank={self.expert_rank}, scaling={self.scaling:g}, "
            f"fixed_modality={self.fixed_modality}, merged_modality={self.merged_modality}"
        )


@dataclass(frozen=True)
class AdapterReport:
    """Trainable-parameter count after an adapter is injected."""

    trainable: int
    total: int
    layers: tuple[str, ...]

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    def __str__(self) -> str:
        return (
            f"{self.trainable:,} trainable of {self.total:,} parameters ({self.percent:.4f}%), "
            f"{len(self.layers)} layers adapted"
        )


def adapter_report(model: nn.Module, layers) -> AdapterReport:
    params = list(model.parameters())
    return AdapterReport(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
        layers=tuple(layers),
    )


def _matching_linears(model: nn.Module, config: MoDAConfig) -> dict[str, nn.Linear]:
    pattern = re.compile(config.pattern)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and pattern.fullmatch(name)
    }


def moda_layers(model: nn.Module) -> dict[str, MoDALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MoDALinear)}


def _require_fresh(model: nn.Module) -> None:
    if moda_layers(model):
        raise ValueError("the model already has MoDA layers; inject or load into a fresh backbone")


def inject_moda(model: nn.Module, config: MoDAConfig) -> AdapterReport:
    """Freeze the whole model, then wrap every nn.Linear whose full name matches config.pattern."""
    _require_fresh(model)
    targets = _matching_linears(model, config)
    if not targets:
        raise ValueError(
            f"no nn.Linear module name fully matches the MoDA pattern {config.pattern!r}; "
            "check target_modules against model.named_modules()"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    state = MoDAState(config)
    for name, linear in targets.items():
        fixed = IMAGE if VISION_TOWER.fullmatch(name) else None
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = MoDALinear(linear, config, state, name, fixed_modality=fixed)
        setattr(parent, child, layer.train(linear.training))  # keep the model's train/eval mode
    return adapter_report(model, targets)


@contextlib.contextmanager
def modality(model: nn.Module, ids):
    """Set the modality of every row for the forwards inside the block.

    ids: one int for the whole batch, or one id per batch row (list or [B] long tensor) so a batch
    can mix text (0) and image (1) rows.
    """
    state = _state(model)
    num_modalities = state.config.num_modalities
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() > 1:
        raise ValueError(f"modality ids must be an int or a 1-D sequence, got shape {tuple(ids.shape)}")
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < num_modalities):
        raise ValueError(f"modality ids must be in [0, {num_modalities}), got {ids.tolist()}")
    with _routed(state, ids):
        yield


@contextlib.contextmanager
def _routed(state: MoDAState, ids: torch.Tensor | None):
    previous, state.ids = state.ids, ids
    try:
        yield
    finally:
        state.ids = previous


def checkpoint_context_fn(model: nn.Module):
    """torch.utils.checkpoint's `context_fn` for a MoDA model: each checkpointed block records the
    modality ids in force when its forward runs and replays them when backward recomputes it, so
    the routing travels with the forward that uses it (non-reentrant checkpointing only)."""
    state = _state(model)

    def context_fn():
        return contextlib.nullcontext(), _routed(state, state.ids)

    return context_fn


def merge_moda(model: nn.Module, modality: int) -> None:
    """Fold the update for one modality into the base weights, so the model runs as a plain one
    with no modality set (vision-tower layers always fold the image update)."""
    for layer in moda_layers(model).values():
        layer.merge(modality)


def unmerge_moda(model: nn.Module) -> None:
    for layer in moda_layers(model).values():
        layer.unmerge()


def gate_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per adapted layer, the expert weights of each modality: {layer name: [num_modalities, E]}."""
    with torch.no_grad():
        return {name: layer.modality_weights().detach().cpu() for name, layer in moda_layers(model).items()}


def _adapter_state(layers: dict[str, MoDALinear]) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{pname}": p.detach().cpu().contiguous()
        for name, layer in layers.items()
        for pname, p in layer.named_parameters()
        if not pname.startswith("base.")
    }


def state_of(model: nn.Module) -> MoDAState | None:
    """The state its MoDA layers share, or None for a model without them."""
    return next((m.state for m in model.modules() if isinstance(m, MoDALinear)), None)


def _state(model: nn.Module) -> MoDAState:
    state = state_of(model)
    if state is None:
        raise ValueError("the model has no MoDA layers: call inject_moda (or load_moda) first")
    return state


def save_moda(model: nn.Module, folder, backbone_id: str) -> Path:
    """Write the adapter weights (safetensors) and a JSON card beside them, atomically."""
    config = _state(model).config
    layers = moda_layers(model)
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_file(_adapter_state(layers), str(tmp / WEIGHTS_FILE))
        write_json(
            tmp / CONFIG_FILE,
            {
                "config": asdict(config),
                "backbone_id": backbone_id,
                "layers": {name: [m.base.in_features, m.base.out_features] for name, m in layers.items()},
                "sha256": file_sha256(tmp / WEIGHTS_FILE),
            },
        )
    return folder


def read_card(folder) -> dict:
    """The JSON card of the MoDA adapter saved in `folder`, checked to hold what `load_moda` reads;
    a damaged or edited card is refused naming the file."""
    path = Path(folder) / CONFIG_FILE
    try:
        card = json.loads(path.read_text())
        MoDAConfig(**card["config"])
        kinds = {"backbone_id": str, "layers": dict, "sha256": str}
        wrong = [key for key, kind in kinds.items() if not isinstance(card[key], kind)]
        if wrong:
            raise TypeError(f"{wrong[0]} is a {type(card[wrong[0]]).__name__}")
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(
            f"{path} is not a MoDA adapter card that reads ({type(err).__name__}: {err}): it is damaged or was "
            "edited; train the adapter again (notebooks/03_adapt.ipynb)"
        ) from None
    return card


def load_moda(model: nn.Module, folder, backbone_id: str) -> AdapterReport:
    """Inject a saved adapter into a fresh backbone and load its weights.

    Refuses, before touching the model, an adapter saved for another backbone id or whose layer
    names or shapes differ from this model's, and a weights file whose checksum does not match.
    """
    _require_fresh(model)
    folder = Path(folder)
    card_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (card_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"no MoDA adapter at {folder}: {path.name} is missing (write it with save_moda)")
    card = read_card(folder)
    if card["backbone_id"] != backbone_id:
        raise ValueError(
            f"the MoDA adapter in {folder} was trained on backbone {card['backbone_id']!r}, "
            f"not on {backbone_id!r}; load it into the backbone it was trained on"
        )
    config = MoDAConfig(**card["config"])
    found = {n: [m.in_features, m.out_features] for n, m in _matching_linears(model, config).items()}
    if found != card["layers"]:
        diffs = [
            f"{n}: saved {card['layers'].get(n)}, model {found.get(n)}"
            for n in sorted(set(found) | set(card["layers"]))
            if found.get(n) != card["layers"].get(n)
        ]
        raise ValueError(
            f"the MoDA adapter in {folder} (backbone {card['backbone_id']!r}) does not fit this model "
            f"(backbone {backbone_id!r}): {len(diffs)} layers differ in name or (in, out) shape, e.g. "
            + "; ".join(diffs[:3])
        )
    if file_sha256(weights_path) != card["sha256"]:
        raise ValueError(f"{weights_path} does not match the checksum in {card_path}: the file is corrupt")
    report = inject_moda(model, config)
    missing, unexpected = model.load_state_dict(load_file(str(weights_path)), strict=False)
    expected = set(_adapter_state(moda_layers(model)))
    if unexpected or expected & set(missing):
        raise ValueError(
            f"{weights_path} does not hold exactly this adapter's tensors: "
            f"missing {sorted(expected & set(missing))[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return report


def inject_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 32,
    dropout: float = 0.1,
    target_modules: str | list[str] = LANGUAGE_TARGETS,
) -> AdapterReport:
    """The "shared LoRA" baseline through peft, in place: one rank-r LoRA for every modality.

    Give it MoDA's r (same total rank) and pattern (same layers). peft freezes every non-LoRA
    parameter; merging uses peft's own `merge()` / `unmerge()` on each LoraLayer.
    """
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    inject_adapter_in_model(config, model)
    return adapter_report(model, [n for n, m in model.named_modules() if isinstance(m, LoraLayer)])
