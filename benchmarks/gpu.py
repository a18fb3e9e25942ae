"""The 7B-shaped check for a CUDA host: adaptation step time and memory, export speed."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from .adapters import moda_vs_lora_target
from .core import (
    GPU_ROUNDS,
    IMAGE_PX,
    Measurement,
    Options,
    Unavailable,
    _timing_row,
    _verdict,
    peak_rss_mb,
    reset_peak_rss,
    synthetic_dataset,
)

GPU_ITEMS = 256  # synthetic items the gpu check trains on and exports


def gpu_check(options: Options) -> Measurement:
    """The 7B on a GPU (7b-shaped, random weights): adaptation step time and memory, export speed.

    Each of MoDA (the authors' per-expert dropout, kept lean) and a shared LoRA without and with
    gradient checkpointing on a fresh model, each run without it beside the memory estimate that
    decides checkpointing (sda_lib.method.adapt.estimate_step), then the export of every synthetic item
    with the MoDA adapter (see docs/gpu.md)."""
    from sda_lib.method.adapt import AdaptConfig
    from sda_lib.method.backbones import SHAPED

    device = _check_device(options)
    options = options.defaults(**GPU_ROUNDS)
    if options.warmup < 1:
        raise ValueError(
            "the gpu check needs --warmup >= 1: step times are read between steps, so the first step is never timed"
        )
    preset = options.preset or SHAPED
    labels = {
        (adapter, checkpointing): f"{adapter} step" + (", checkpointing" if checkpointing else "")
        for adapter in ("moda", "lora")
        for checkpointing in (False, True)
    }
    runs, folders = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = synthetic_dataset(GPU_ITEMS, Path(tmp) / "items")

        def train(adapter: str, checkpointing: bool) -> dict:
            label = labels[adapter, checkpointing]
            print(
                f"[gpu] {label}: building {preset} on {device}, training {options.warmup} + {options.repeats} steps",
                flush=True,
            )
            config = AdaptConfig(
                adapter=adapter,
                gradient_checkpointing=checkpointing,
                batch_size=options.batch_size,
                steps=options.warmup + options.repeats,
            )
            folders[label] = Path(tmp) / f"run-{len(folders)}"
            runs[label], shape = _adaptation_run(preset, device, dataset, config, folders[label], options.warmup)
            print(f"[gpu] {label}: {json.dumps(runs[label])}", flush=True)  # kept should a later run crash
            return shape

        shape = train("moda", True)
        train("lora", True)
        train("lora", False)
        # Then MoDA without checkpointing, the paper profile's choice where the estimate says it fits:
        # a run out of memory is recorded, and it comes after the others, as it is the failure likeliest
        # to leave CUDA unusable.
        train("moda", False)
        trained = next(
            label for label in ("moda step", "moda step, checkpointing") if "out_of_memory" not in runs[label]
        )
        print(f"[gpu] export: {GPU_ITEMS} items, MoDA adapter ({trained}) merged per modality", flush=True)
        export = _export_run(
            preset, device, dataset, folders[trained] / "adapter", Path(tmp) / "features", options.batch_size
        )
        print(f"[gpu] export: {json.dumps(export)}", flush=True)

    rows = []
    for label in labels.values():
        run = runs[label]
        extra = {"peak GiB": run["peak_gib"], "estimate GiB": run.get("estimated_gib"), "build s": run["build_s"]}
        rows.append(
            {"unit": label, "out of memory": True, **extra}
            if "out_of_memory" in run
            else _timing_row(label, run["samples_s"], **extra)
        )
    rows.append(
        {
            "unit": "export",
            "items/s": export["items_per_s"],
            "seconds": export["seconds"],
            "peak GiB": export["peak_gib"],
        }
    )
    rows += [{"unit": f"embed {m}", "items/s": export[f"{m}_items_per_s"]} for m in ("text", "image")]

    runs = {label: runs[label] for label in labels.values()}  # in the table's order
    median = {label: run.get("median_s") for label, run in runs.items()}
    ratios = {
        checkpointing: median[f"moda step{suffix}"] / median[f"lora step{suffix}"]
        if median[f"moda step{suffix}"] and median[f"lora step{suffix}"]
        else None
        for checkpointing, suffix in ((False, ""), (True, ", checkpointing"))
    }
    # The verdict is on the configuration the paper profile trains: without checkpointing where it fits.
    checkpointed = ratios[False] is None
    verdict, ratio_line = _verdict(
        ratios[checkpointed],
        moda_vs_lora_target(preset),
        "MoDA / LoRA step" + (" (checkpointing)" if checkpointed else ""),
    )
    values = {
        **verdict,
        "ratio_without_checkpointing": ratios[False] and round(ratios[False], 4),
        "ratio_with_checkpointing": ratios[True] and round(ratios[True], 4),
        "preset": preset,
        "device": _device_name(device),
        **shape,
        "batch_items": options.batch_size,
        "warmup": options.warmup,
        "repeats": options.repeats,
        "runs": runs,
        "export": export,
    }

    def summary(label):
        run = runs[label]
        time_ = "out of memory" if "out_of_memory" in run else f"{run['median_s']:.2f} s"
        return time_ + ("" if run["peak_gib"] is None else f" (peak {run['peak_gib']} GiB)")

    headline = (
        f"MoDA step {summary('moda step')}, with checkpointing {summary('moda step, checkpointing')}; "
        f"{ratio_line}; export {export['items_per_s']:.1f} items/s"
    )
    notes = [
        f"preset {preset} ({shape['params_b']} B parameters, {shape['dtype']}, {shape['weights_gib']} GiB), "
        f"built on {_device_name(device)}; each run builds a fresh backbone",
        f"train_adapter with AdaptConfig's defaults, {options.batch_size} items a step = "
        f"{shape['tokens_per_step']} tokens ({shape['padded_tokens_per_step']} padded) + "
        f"{shape['image_patches_per_step']} image patches, {GPU_ITEMS} synthetic items ({IMAGE_PX} px images); "
        f"{options.warmup} warm-up + {options.repeats} timed steps, processor included",
        "estimate GiB: sda_lib.method.adapt.estimate_step of the step without checkpointing (rows as long as the "
        "longest "
        "text and the largest image), what gradient_checkpointing=None compares with the GPU's memory",
        "peak GiB of each run (model built, trained or exported): torch.cuda.max_memory_allocated on a GPU, "
        "the process's resident high-water mark (VmHWM) on CPU, reset before each run",
        f"export_embeddings of all {GPU_ITEMS} items (batch {options.batch_size}); embed text / image: "
        "the same items per modality, adapter merged",
    ]
    return Measurement(rows, values, headline, notes)


def _check_device(options: Options):
    """The device the gpu check runs on: CUDA unless --device names another; Unavailable without it."""
    import torch

    device = torch.device(options.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Unavailable(
            "no CUDA device here. The gpu check builds the full 7B shape (8.29 B parameters, 15.4 GiB in "
            "bf16) and is meant for a GPU host; to try the script on CPU, run "
            "`python -m benchmarks gpu --preset small --device cpu`"
        )
    return device


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> bool:
    """Start a fresh peak-memory window, with the previous run's model released first; False when
    this machine cannot (a CPU without /proc/self/clear_refs)."""
    import gc

    import torch

    gc.collect()
    if device.type != "cuda":
        return reset_peak_rss()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return True


def _peak_gib(device) -> float:
    """Peak since _reset_peak: tensors allocated on a CUDA device, the process's resident memory on CPU."""
    import torch

    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_mb() * 2**20
    return round(peak / 2**30, 2)


def _adaptation_run(preset: str, device, dataset, config, out: Path, warmup: int) -> tuple[dict, dict]:
    """A fresh backbone trained `config.steps` steps by train_adapter: (seconds of each step after
    the first `warmup`, read between consecutive on_step calls, or the out-of-memory error, with
    peak device memory and build time; the model's and the step's size)."""
    import torch

    from sda_lib.method.adapt import estimate_step, load_image, train_adapter
    from sda_lib.method.backbones import load_backbone

    windowed = _reset_peak(device)
    start = time.perf_counter()
    backbone = load_backbone(preset, device=device, seed=config.seed)
    _sync(device)
    build_s = time.perf_counter() - start
    params = list(backbone.model.parameters())
    fields, images = dataset.item_fields()[: config.batch_size], dataset.image_paths()[: config.batch_size]
    step = backbone.inputs(texts=fields, images=[load_image(p) for p in images])  # as train_adapter batches
    ends = []

    def mark(_step, _objective):
        _sync(device)
        ends.append(time.perf_counter())

    run = {"build_s": round(build_s, 2)}
    try:
        train_adapter(backbone, dataset, config, out, progress=False, on_step=mark)
    except RuntimeError as err:  # torch.OutOfMemoryError, or a CUDA library failing to allocate
        if not isinstance(err, torch.OutOfMemoryError) and "ALLOC_FAILED" not in str(err):
            raise
        run["out_of_memory"] = str(err).splitlines()[0]
    else:
        run["samples_s"] = [round(b - a, 4) for a, b in zip(ends[warmup - 1 :], ends[warmup:])]
        run["median_s"] = statistics.median(run["samples_s"])
        if not config.gradient_checkpointing:  # what decides checkpointing, beside what the run took
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                run["estimated_gib"] = round(
                    estimate_step(backbone, dataset, config, config.batch_size).total / 2**30, 2
                )
    run["peak_gib"] = _peak_gib(device) if windowed else None
    shape = {
        "params_b": round(sum(p.numel() for p in params) / 1e9, 3),
        "weights_gib": round(sum(p.numel() * p.element_size() for p in params) / 2**30, 2),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "tokens_per_step": int(step["attention_mask"].sum()),
        "padded_tokens_per_step": step["input_ids"].numel(),
        "image_patches_per_step": int(step["pixel_values"].shape[0]),
    }
    return run, shape


def _export_run(preset: str, device, dataset, adapter: Path, out: Path, batch_size: int) -> dict:
    """export_embeddings of every item with the trained adapter into a fresh backbone (time, peak
    memory, table shapes), then each modality's embedding alone for its items per second."""
    from sda_lib.method import adapters
    from sda_lib.method.adapt import load_image
    from sda_lib.method.backbones import load_backbone
    from sda_lib.method.export import export_embeddings
    from sda_lib.method.moda import IMAGE, TEXT

    windowed = _reset_peak(device)
    backbone = load_backbone(preset, device=device)
    start = time.perf_counter()
    table = export_embeddings(backbone, dataset, out, adapter=adapter, batch_size=batch_size, progress=False)
    _sync(device)
    seconds = time.perf_counter() - start
    n = dataset.n_items
    record = {
        "items": n,
        "seconds": round(seconds, 2),
        "items_per_s": round(n / seconds, 2),
        "peak_gib": _peak_gib(device) if windowed else None,
        "dims": table.manifest["dims"],
    }
    fields, images = dataset.item_fields(), [load_image(p) for p in dataset.image_paths()]
    for m, label in ((TEXT, "text"), (IMAGE, "image")):
        with adapters.merged(backbone.model, m):
            start = time.perf_counter()
            backbone.embed(
                fields, images if m == IMAGE else None, modality=label, batch_size=batch_size, progress=False
            )
            _sync(device)
        record[f"{label}_items_per_s"] = round(n / (time.perf_counter() - start), 2)
    return record
