"""Train an adapter on a frozen LVLM so its text and image item embeddings align (CMSA), on
Accelerate: AdamW with linear decay, clipping, accumulation, fp32 on CPU and bf16 on GPU.

A batch of N items gives N text rows and N image rows. Batches are a pure function of the step
(seeded epoch permutations) and every checkpoint stores the RNG state, so a resumed run reaches
the same adapter as an uninterrupted one.
"""

from __future__ import annotations

import csv
import functools
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from accelerate import Accelerator
from accelerate.utils import (
    DistributedType,
    InitProcessGroupKwargs,
    ProjectConfiguration,
    parse_flag_from_env,
    set_seed,
)
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import get_linear_schedule_with_warmup

from ..utils.choices import check_fields
from ..utils.frontend import tqdm
from ..utils.io import atomic_path, ensure_writable, file_sha256, read_json, write_json
from ..utils.locks import folder_lock, reading
from ..utils.preempt import Preempted, on_sigterm
from . import adapters
from .cmsa import CMSAForm, Temperature, cmsa_loss, infonce_loss
from .features import item_order_checksum
from .memory import GiB, saved_for_backward
from .moda import EXPERTS, IMAGE, TEXT, DropoutMasks

log = logging.getLogger(__spec__.name)  # not __name__, which is "__main__" under python -m
Loss = Literal["cmsa", "infonce", "text-views"]
Precision = Literal["auto", "bf16", "no"]
KEEP_CHECKPOINTS = 2
CHECKPOINT_STATE = "state.json"  # written last: a checkpoint folder without it is incomplete


@dataclass
class AdaptConfig:
    """Defaults follow the authors' released configuration (rank, experts, alpha, dropout with a mask
    per expert, tau learnable from 3, AdamW lr 2e-4, 32 items a step: the values below); steps are
    sized for the toy data. gradient_checkpointing: True, False, or None to decide from memory: on a
    GPU, on only where the estimate of a step without it does not fit the GPU (plan_checkpointing);
    off on CPU."""

    adapter: str = "moda"  # moda | lora (shared, "w/o MoDA") | independent (per-modality LoRAs)
    loss: Loss = "cmsa"  # cmsa | infonce ("w/o soft target") | text-views ("w/o CMSA")
    r: int = 8
    experts: int = EXPERTS
    alpha: float = 32.0
    dropout: float = 0.1
    # MoDA: each expert its own dropout mask, as the authors; "shared": one mask, so the experts' A
    # run as one matmul (faster on CPU, docs/results.md#mini-backbone-speed; the teaching profile's choice)
    dropout_masks: DropoutMasks = "per-expert"
    adapt_vision: bool = False
    tau: float = 3.0
    learn_tau: bool = True
    cmsa_form: CMSAForm = "authors"  # authors | paper (equation 3 as printed) | stable (see sda_lib.method.cmsa)
    steps: int = 200
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50
    gradient_checkpointing: bool | None = None
    precision: Precision = "auto"  # "auto": bf16 autocast on a GPU, fp32 on CPU; "bf16" or "no" to force
    view_drop: float = 0.4  # text-views: share of attributes dropped per view (LLMEmb recipe)
    seed: int = 0

    def __post_init__(self):
        check_fields(self)
        if self.gradient_checkpointing not in (True, False, None):
            raise ValueError(
                f"gradient_checkpointing must be True, False or None (decide from memory), "
                f"got {self.gradient_checkpointing!r}"
            )
        adapters.KINDS[self.adapter]  # an unknown name is refused here, naming the registered kinds
        if min(self.steps, self.batch_size, self.grad_accum, self.checkpoint_every) < 1:
            raise ValueError("steps, batch_size, grad_accum and checkpoint_every must be >= 1")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: the loss contrasts items within a batch")


def batch_items(step: int, n_items: int, batch_size: int, seed: int) -> np.ndarray:
    """The items of micro-batch `step`: consecutive slices of seeded per-epoch permutations."""
    batch_size = min(batch_size, n_items)
    per_epoch = n_items // batch_size
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    return order[k * batch_size : (k + 1) * batch_size]


def text_view(fields: dict[str, str], rng: np.random.Generator, drop: float) -> dict[str, str]:
    """An augmented text view: attributes shuffled and a share `drop` of them dropped (keeps one)."""
    keys = [k for k, v in fields.items() if v]
    keys = [keys[i] for i in rng.permutation(len(keys))]
    keep = max(1, round(len(keys) * (1 - drop)))
    return {k: fields[k] for k in keys[:keep]}


def load_image(path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def embed_rows(backbone, m: int, texts=None, images=None) -> torch.Tensor:
    """Embeddings of one modality's rows, with the adapter routed to modality m."""
    with adapters.modality(backbone.model, m):
        return backbone.embed_batch(backbone.inputs(texts=texts, images=images))


def pair_batch(backbone, fields, paths, items, config: AdaptConfig, step: int):
    """The two halves of a step's batch for `items`, each with its modality: N text rows and N
    image rows (or, for text-views, two augmented text views). Each half is its own forward,
    padded to its own longest row: in one mixed batch the short rows of one modality were padded to
    the other's length (a third of a mini batch was padding)."""
    texts = [fields[i] for i in items]
    if config.loss == "text-views":
        rng = np.random.default_rng([config.seed, step, 1])
        views = [[text_view(f, rng, config.view_drop) for f in texts] for _ in range(2)]
        return [(backbone.inputs(texts=v), TEXT) for v in views]
    images = [load_image(paths[i]) for i in items]
    return [(backbone.inputs(texts=texts), TEXT), (backbone.inputs(images=images), IMAGE)]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows from every process, in rank order, keeping the gradient path to each process's share."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(dist_nn.all_gather(x.contiguous()))


class AlignmentObjective(nn.Module):
    """A training step's forward as one module (pooled encoder, temperature, loss), so that
    Accelerate's DDP or DeepSpeed wrapper sees every trainable parameter used in its forward.

    With `gather`, each process embeds its share of the step's items and the loss is computed on
    the rows of all processes: the structural teacher then spans every item of the step.
    """

    def __init__(self, backbone, config: AdaptConfig, gather: bool = True):
        super().__init__()
        self.encoder = backbone.encoder
        self.temperature = Temperature(config.tau, config.learn_tau, log_space=config.cmsa_form == "stable")
        self.config, self.gather = config, gather
        self._route = functools.partial(adapters.modality, backbone.model)  # not a submodule

    def forward(self, halves) -> torch.Tensor:
        """The loss of a `pair_batch`: [(inputs, modality), (inputs, modality)]."""
        a, b = (self._embed(inputs, m) for inputs, m in halves)
        if self.gather:
            a, b = gather_rows(a), gather_rows(b)
        tau, c = self.temperature(), self.config
        if c.loss == "infonce":
            return infonce_loss(a, b, tau, project=c.cmsa_form != "stable")
        return cmsa_loss(a, b, tau, c.cmsa_form)

    def _embed(self, inputs, m: int) -> torch.Tensor:
        with self._route(m):
            return self.encoder(**inputs)


def local_share(items: np.ndarray, accelerator) -> np.ndarray:
    """This process's contiguous share of the step's items (all of them with one process)."""
    return np.array_split(items, accelerator.num_processes)[accelerator.process_index]


def train_adapter(
    backbone,
    dataset,
    config: AdaptConfig,
    out: str | Path,
    resume: bool = True,
    progress: bool = True,
    gather: bool = True,
    on_step=None,
) -> dict:
    """Attach a fresh adapter to `backbone`, train it on `dataset`'s items and save it in `out`.

    Writes `out/adapter/` (weights + config), `out/loss.csv`, `out/adapt.json`; checkpoints under
    `out/checkpoints/` every `checkpoint_every` steps (see `_Checkpoints`). Under `accelerate
    launch` every process takes a share of each step's `batch_size` items; `gather=False` keeps the
    loss per process. `on_step(step, objective)` runs after each optimiser step (analyses hook in
    there). Returns the training record.

    Holds `out` for this process and the dataset's folder for reading (sda_lib.utils.locks: it is not
    prepared again meanwhile). On SIGTERM it writes a checkpoint after the current step and raises
    `Preempted`; calling it again resumes there (sda_lib.utils.preempt), unless the dataset was prepared
    again from other data since: then it starts afresh, saying so.
    """
    out = ensure_writable(out)  # now, not after the last step has been paid for
    with folder_lock(out, "adaptation"), reading(dataset.folder, "adaptation"), on_sigterm("adaptation") as stop:
        dataset.check_current()
        return _train(backbone, dataset, config, out, resume, progress, gather, on_step, stop)


def _train(backbone, dataset, config: AdaptConfig, out: Path, resume, progress, gather, on_step, stop) -> dict:
    set_seed(config.seed)
    model = backbone.model
    report = adapters.attach(
        model,
        config.adapter,
        config.r,
        config.experts,
        config.alpha,
        config.dropout,
        config.adapt_vision,
        targets=backbone.targets,
        dropout_masks=config.dropout_masks,
    )
    objective = AlignmentObjective(backbone, config, gather)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    accelerator = _accelerator(config, out)
    _fill_deepspeed_config(accelerator, config)
    checkpointing, why = config.gradient_checkpointing, None
    if checkpointing is None:
        checkpointing, why = _auto_checkpointing(backbone, dataset, config, accelerator)
        if accelerator.is_main_process:
            log.info(why)
    if checkpointing:
        adapters.enable_gradient_checkpointing(model)
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    plain = accelerator.unwrap_model(objective)

    run = {
        "config": asdict(config),
        "backbone": backbone.id,
        "dataset": dataset.name,
        "item_order": item_order_checksum(dataset.items["item_id"]),
        "data": dataset.checksum,
        "processes": accelerator.num_processes,
    }
    checkpoints = _Checkpoints(accelerator, out / "checkpoints", run)
    start, history = checkpoints.resume() if resume else checkpoints.clear()
    if start:
        if accelerator.is_main_process:
            log.info(f"resuming from step {start} of {config.steps} ({checkpoints.folder})")

    fields, paths = dataset.item_fields(), dataset.image_paths()
    model.train()
    begin = time.perf_counter()
    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        desc="adapt",
        disable=not (progress and accelerator.is_main_process),
    )
    for step in bar:
        total = 0.0
        for micro in range(config.grad_accum):
            items = batch_items(step * config.grad_accum + micro, dataset.n_items, config.batch_size, config.seed)
            halves = pair_batch(backbone, fields, paths, local_share(items, accelerator), config, step)
            with accelerator.accumulate(objective), accelerator.autocast():
                try:
                    loss = objective(halves)
                except FloatingPointError as err:
                    raise FloatingPointError(
                        f"step {step}: {err}. Lower lr (now {config.lr}) or fix tau (learn_tau=False)"
                    ) from None
                accelerator.backward(loss)  # divided by grad_accum there (by DeepSpeed under ZeRO)
            total += loss.item() / config.grad_accum
        accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(
            {
                "step": step + 1,
                "loss": total,
                "tau": float(plain.temperature().item()),
                "lr": scheduler.get_last_lr()[0],
            }
        )
        bar.set_postfix(loss=f"{total:.4f}", tau=f"{history[-1]['tau']:.3f}")
        if on_step is not None:
            on_step(step + 1, plain)
        if step + 1 < config.steps:
            stopping = _stop_agreed(stop, accelerator)
            if stopping or (step + 1) % config.checkpoint_every == 0:
                saved = checkpoints.save(step + 1, history)
            if stopping:
                raise Preempted(
                    f"adaptation stopped on SIGTERM after step {step + 1} of {config.steps}; checkpoint "
                    f"{saved}: run the same command again (or rerun the stage) to resume from it"
                )
    seconds = time.perf_counter() - begin

    record = {
        "config": asdict(config),
        "backbone": backbone.id,
        "dataset": dataset.name,
        "processes": accelerator.num_processes,
        "trainable_parameters": report.trainable,
        "total_parameters": report.total,
        "gradient_checkpointing": bool(checkpointing),
        **({"checkpointing_estimate": why} if why else {}),
        "final_loss": history[-1]["loss"] if history else None,
        "final_tau": float(plain.temperature().item()),
        "seconds": round(seconds, 2),
        "resumed_from_step": start,
    }
    if accelerator.is_main_process:
        adapters.save(model, out / "adapter", backbone.id, dataset=dataset.name, training=record)
        record["adapter_sha256"] = adapters.checksum(out / "adapter")
        with atomic_path(out / "loss.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "loss", "tau", "lr"])
            writer.writeheader()
            writer.writerows(history)
        write_json(out / "adapt.json", record)
    accelerator.wait_for_everyone()
    return record


@dataclass(frozen=True)
class StepEstimate:
    """The estimate (docs/gpu.md) of an adaptation step's memory without gradient checkpointing, bytes:
    `held`, the frozen weights and the float32 trainable parameters with their gradients and
    AdamW's two moments; `saved`, the activations saved for backward by rows of `lengths` tokens
    (text half, image half)."""

    items: int
    held: int
    saved: float
    lengths: tuple[int, int]

    @property
    def total(self) -> float:
        return self.held + self.saved


def estimate_step(backbone, dataset, config: AdaptConfig, items: int) -> StepEstimate:
    """StepEstimate for a step of `items` items (this process's share) of `dataset`: what a forward
    saves per token is counted with saved-tensor hooks on two items of each half, as training runs
    them (call it under training's autocast), and every row is taken as long as the run's longest
    can be: every text as long as the longest prompt, every image at the largest size the
    processor keeps. The probe leaves the random generators where it found them."""
    model = backbone.model.train()
    fields, paths = dataset.item_fields(), dataset.image_paths()
    probe = pair_batch(backbone, fields, paths, np.arange(min(2, dataset.n_items)), config, 0)
    device = next(model.parameters()).device
    per_token = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for inputs, m in probe:
            with saved_for_backward(model) as tally, adapters.modality(model, m):
                backbone.encoder(**inputs)
            per_token.append(tally.bytes / inputs["input_ids"].numel())
    longest_text = int(backbone.prompt_lengths(texts=fields).max())
    largest_image = int(backbone.prompt_lengths(images=[Image.new("RGB", (8192, 8192))])[0])
    lengths = (longest_text, longest_text if config.loss == "text-views" else largest_image)
    held = sum(p.numel() * (16 if p.requires_grad else p.element_size()) for p in model.parameters())
    return StepEstimate(items, held, items * sum(per * n for per, n in zip(per_token, lengths)), lengths)


# Share of a GPU's memory a step may be estimated to fill without checkpointing: the rest is for
# one layer's working tensors (at 32 items on the 7B the MLP's activations and their gradients, and
# the per-expert masks' uniforms, about 2 GiB) and the allocator's slack.
CHECKPOINTING_HEADROOM = 0.85


def plan_checkpointing(estimate: StepEstimate, memory_bytes: int) -> tuple[bool, str]:
    """Whether the step needs gradient checkpointing: its estimate without it exceeds
    CHECKPOINTING_HEADROOM of `memory_bytes`; and the reason in words."""
    needed = estimate.total > CHECKPOINTING_HEADROOM * memory_bytes
    return needed, (
        f"gradient checkpointing {'on' if needed else 'off'}: a step of {estimate.items} items without it is "
        f"estimated at {estimate.total / GiB:.1f} GiB (weights and optimizer {estimate.held / GiB:.1f}, saved "
        f"activations {estimate.saved / GiB:.1f} for rows of up to {estimate.lengths[0]} and {estimate.lengths[1]} "
        f"tokens), {'over' if needed else 'within'} {CHECKPOINTING_HEADROOM:.0%} of {memory_bytes / GiB:.1f} GiB"
    )


def _auto_checkpointing(backbone, dataset, config: AdaptConfig, accelerator) -> tuple[bool, str]:
    """gradient_checkpointing=None: off on CPU; on a GPU, plan_checkpointing of this process's share."""
    if accelerator.device.type != "cuda":
        return False, "gradient checkpointing off: on CPU (the memory estimate is a GPU's)"
    items = -(-min(config.batch_size, dataset.n_items) // accelerator.num_processes)
    with accelerator.autocast():
        estimate = estimate_step(backbone, dataset, config, items)
    return plan_checkpointing(estimate, torch.cuda.get_device_properties(accelerator.device).total_memory)


def _stop_agreed(stop, accelerator) -> bool:
    """Whether any process got SIGTERM: all must checkpoint the same step, or the save hangs."""
    if accelerator.num_processes == 1:
        return bool(stop)
    flag = torch.tensor([float(bool(stop))], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _accelerator(config: AdaptConfig, out: Path) -> Accelerator:
    """The run's Accelerator. Accumulation goes through accelerate, so that DeepSpeed (which steps in
    `backward`) knows which micro-batch ends a step. The scheduler steps once a step: `batch_size`
    is already global, so accelerate's default of one step per process would decay lr too fast.
    CPU-only hosts run gloo processes: plain ones in accelerate's CPU mode, which has no DeepSpeed;
    DeepSpeed ones with gloo named, as accelerate finds no backend there by itself."""
    cpu_only, deepspeed = not torch.cuda.is_available(), parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    return Accelerator(
        cpu=cpu_only and not deepspeed,
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if cpu_only and deepspeed else None,
        mixed_precision=_mixed_precision(config.precision),
        gradient_accumulation_steps=config.grad_accum,
        step_scheduler_with_optimizer=False,
        project_config=ProjectConfiguration(
            project_dir=str(out), automatic_checkpoint_naming=True, total_limit=KEEP_CHECKPOINTS
        ),
    )


def _mixed_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return precision


def _fill_deepspeed_config(accelerator, config: AdaptConfig) -> None:
    """DeepSpeed sizes its batches from the dataloader accelerate prepares; this loop prepares none
    (batches are a function of the step), so the configuration gets them from the run."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    per_process = max(1, config.batch_size // accelerator.num_processes)
    plugin.deepspeed_config.update(
        train_micro_batch_size_per_gpu=per_process,
        gradient_accumulation_steps=config.grad_accum,
        train_batch_size=per_process * config.grad_accum * accelerator.num_processes,
        gradient_clipping=config.max_grad_norm,
    )


class _Checkpoints:
    """Accelerate's own checkpoints (`save_state` / `load_state`: optimizer, scheduler and every
    generator of every process and device, loaded with weights_only) with four changes:

    - only the trainable tensors of the model are written (safetensors), not the frozen backbone;
    - `state.json` (step, loss history, the SHA-256 of every file, and what the run is: settings,
      backbone, dataset, item order, processes) is written last, so a checkpoint interrupted
      mid-write is never resumed;
    - a checkpoint whose files no longer match their checksums, or fail to load, is skipped with a
      warning naming it, and the previous one is resumed;
    - resuming a run with anything else is refused, naming what differs.
    """

    def __init__(self, accelerator: Accelerator, folder: Path, run: dict):
        self.accelerator, self.folder, self.run = accelerator, folder, run
        accelerator.register_save_state_pre_hook(_keep_trainable)
        accelerator.register_load_state_pre_hook(_load_trainable)

    def _complete(self) -> list[tuple[int, Path]]:
        found = [
            (int(m[1]), p)
            for p in self.folder.glob("checkpoint_*")
            if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)) and (p / CHECKPOINT_STATE).exists()
        ]
        return sorted(found)

    def _drop(self, keep) -> None:
        if self.accelerator.is_main_process and self.folder.exists():
            for path in self.folder.iterdir():
                if path not in keep:
                    shutil.rmtree(path, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def clear(self) -> tuple[int, list]:
        """Start afresh: earlier checkpoints of this folder are not this run's."""
        self._drop(keep=())
        return 0, []

    def resume(self) -> tuple[int, list]:
        complete = self._complete()
        if not complete:
            return self.clear()
        if not self._check_run(complete[-1][1]):
            return self.clear()
        self._drop(keep={p for _, p in complete})  # incomplete ones would block the next save's name
        self.accelerator.project_configuration.iteration = complete[-1][0] + 1  # after any damaged one too
        partly_loaded = None
        for _, folder in reversed(complete):
            meta = read_json(folder / CHECKPOINT_STATE)
            damaged = _damaged(folder, meta)
            if not damaged:
                try:
                    self.accelerator.load_state(
                        str(folder), **({"load_module_strict": False} if self._deepspeed else {})
                    )
                    return meta["step"], meta["history"]
                except Exception as err:  # e.g. a cut file in a checkpoint written before checksums
                    damaged = f"it does not load ({type(err).__name__}: {err})"
                    partly_loaded = folder
            log.warning(f"checkpoint {folder} is damaged ({damaged}): skipped, trying the one before")
        if partly_loaded:  # the model may hold some of its tensors: not a fresh start
            raise ValueError(
                f"no intact checkpoint in {self.folder}, and {partly_loaded} was partly loaded before it "
                f"failed: delete {self.folder} (or pass resume=False) to start afresh"
            )
        log.warning(f"no intact checkpoint in {self.folder}: adaptation starts afresh")
        return self.clear()

    def _check_run(self, latest: Path) -> bool:
        """Whether the checkpoints belong to this run. Made from other data of the same dataset (it
        was prepared again), they are not resumed: False, saying so. Any other difference is refused."""
        meta = read_json(latest / CHECKPOINT_STATE) or {}
        differs = {k: (v, meta.get(k)) for k, v in self.run.items() if k not in ("config", "data") and meta.get(k) != v}
        saved = meta.get("config", {})
        differs |= {k: (v, saved.get(k)) for k, v in self.run["config"].items() if saved.get(k) != v}
        if differs:
            raise ValueError(
                f"checkpoint {latest} belongs to another run ({differs}, now vs then): resume it "
                f"with what it was started with, or delete {self.folder} (or pass resume=False) "
                "to start afresh"
            )
        if meta.get("data") != self.run["data"]:
            log.warning(
                f"the checkpoints in {self.folder} were made from other data (the dataset was prepared again "
                "since, or they predate data checksums): adaptation starts afresh"
            )
            return False
        return True

    def save(self, step: int, history: list) -> Path:
        """Write a checkpoint; if the disk fills up, remove the partial one and say so (the
        previous checkpoints stay as they were)."""
        try:
            # DeepSpeed writes its engine itself: keep its checkpoints to the trainable tensors too.
            folder = Path(
                self.accelerator.save_state(**({"exclude_frozen_parameters": True} if self._deepspeed else {}))
            )
        except (OSError, RuntimeError) as err:
            partial = self.folder / f"checkpoint_{self.accelerator.project_configuration.iteration}"
            if self.accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)
            raise OSError(
                f"writing checkpoint {partial} failed ({err}); is the disk holding {self.folder} full? "
                f"The earlier checkpoints there are intact: free space and run again to resume from them"
            ) from err
        if self.accelerator.is_main_process:
            files = {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
            write_json(folder / CHECKPOINT_STATE, {**self.run, "step": step, "history": history, "files": files})
        self.accelerator.wait_for_everyone()
        return folder

    @property
    def _deepspeed(self) -> bool:
        return self.accelerator.distributed_type == DistributedType.DEEPSPEED


def _damaged(folder: Path, meta: dict | None) -> str | None:
    """What is wrong with a complete checkpoint's files, or None. Checkpoints written before
    checksums were recorded are taken as they are."""
    if meta is None:
        return f"{CHECKPOINT_STATE} does not read"
    for name, digest in meta.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None


def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _keep_trainable(models, weights, output_dir) -> None:
    for i, (model, state) in enumerate(zip(models, weights)):
        names = _trainable_names(model)
        weights[i] = {k: v for k, v in state.items() if k in names}


def _load_trainable(models, input_dir) -> None:
    """Load the trainable tensors ourselves and take the models off accelerate's list, which would
    otherwise expect every frozen weight in the file."""
    for i, model in enumerate(models):
        path = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
        saved, params = load_file(str(path)), dict(model.named_parameters())
        if saved.keys() != _trainable_names(model):
            raise ValueError(
                f"checkpoint {input_dir} does not fit this adapter ({len(saved)} tensors saved, "
                f"{len(_trainable_names(model))} trainable); delete it to start afresh"
            )
        with torch.no_grad():
            for name, tensor in saved.items():
                params[name].copy_(tensor)
    models.clear()
