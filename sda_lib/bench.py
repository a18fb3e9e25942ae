"""Benchmarks that tell whether the workbench is fast.

    python -m sda_lib.bench NAME [--preset P] [--repeats N] [--threads N] ...   one benchmark
    python -m sda_lib.bench                                                     all of them
    python -m sda_lib.bench --list
    python -m sda_lib.bench gpu                           the 7B-shaped check, on a CUDA host

One benchmark prints a table and, as its last line, one JSON object with the measured numbers
(ratio, target and status for the comparisons, the raw samples too). The all-run gives every
benchmark its own fresh interpreter, so each peak memory is that benchmark's own and no benchmark
inherits another's allocator or thread state, then writes outputs/bench/<timestamp>.json with the
machine, the versions and every result.

Timing hygiene: the two sides of a comparison live in one process and run interleaved, their order
swapped every repetition, after warm-up runs; inputs are built once beforehand, so processor
(tokeniser, image resizing) time does not blur the ratio; medians of time.perf_counter; torch
threads fixed by --threads (default 1: the machine may be shared).

A benchmark is a function Options -> Measurement; registering one is one line in BENCHMARKS. One
whose hardware is absent raises Unavailable: run alone it exits non-zero with the reason, the
all-run records it as unavailable and goes on.
Heavy imports (torch, the backbone) happen inside the benchmarks, so a measured child process holds
only what its target needs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import __version__
from .io import write_json
from .paths import REPO_ROOT, outputs_root

BEAUTY_SOURCE = REPO_ROOT.parent / "shared" / "data" / "amazon2014-5core" / "beauty"
IMAGE_PX = 224  # synthetic item images: (224 / 28)^2 = 64 image tokens, inside the default pixel bounds
MODA_VS_LORA_TARGET = 1.10
EXPORT_OVERHEAD_TARGET = 1.02
CPU_ROUNDS = dict(repeats=15, warmup=2, batch_size=8)  # the CPU micro-benchmarks' defaults
GPU_ROUNDS = dict(repeats=3, warmup=1, batch_size=32)  # steps of each gpu-check run; 32 items a step, as trained
GPU_ITEMS = 256  # synthetic items the gpu check trains on and exports


@dataclass
class Options:
    """Settings every benchmark reads. None: the benchmark's own default (see `defaults`)."""

    preset: str | None = None
    repeats: int | None = None
    warmup: int | None = None
    threads: int = 1
    batch_size: int | None = None
    dataset: str = "toy"
    beauty: str = str(BEAUTY_SOURCE)
    device: str | None = None

    def __post_init__(self):
        for name, low in (("repeats", 1), ("warmup", 0), ("threads", 1), ("batch_size", 2)):
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")

    def defaults(self, **values) -> Options:
        """These options with each setting left at None replaced by the benchmark's value for it."""
        return replace(self, **{k: v for k, v in values.items() if getattr(self, k) is None})


class Unavailable(RuntimeError):
    """The benchmark cannot run on this machine (no GPU, say); the message says what it needs."""


@dataclass
class Measurement:
    """What a benchmark found: `rows` print as its table, `values` go into its JSON record."""

    rows: list[dict]
    values: dict
    headline: str
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- measuring tools


def interleaved(units: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each unit in each repetition. Units run in turn, in reverse order every other
    repetition, so drift in machine load and cache state hits them alike; warm-up runs are dropped."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    samples = {name: [] for name in units}
    order = list(units)
    for rep in range(warmup + repeats):
        for name in order if rep % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            units[name]()
            sync()
            if rep >= warmup:
                samples[name].append(time.perf_counter() - start)
    return samples


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark in MiB.

    On Linux, VmHWM of /proc/self/status: ru_maxrss would not do, as execve carries the spawning
    parent's RSS into it, so a child started by a big parent would report the parent's size.
    Elsewhere ru_maxrss (bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**10  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak_rss() -> bool:
    """Restart this process's RSS high-water mark from its current RSS (Linux: "5" into
    /proc/self/clear_refs), so peak_rss_mb then measures one phase; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# The child reports on its last stdout line, after whatever the target printed.
_CHILD = """\
import importlib, json, sys, time
from sda_lib.bench import peak_rss_mb
module, _, name = sys.argv[1].partition(":")
target = getattr(importlib.import_module(module), name)
start = time.perf_counter()
out = target(**json.loads(sys.argv[2]))
seconds = time.perf_counter() - start
print(json.dumps({"result": out if isinstance(out, dict) else None, "seconds": seconds,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def in_fresh_process(target: str, kwargs: dict, threads: int = 1) -> dict:
    """Call `module:function(**kwargs)` (kwargs JSON-able) in a new interpreter, so its RSS high-water
    mark is its own.

    The child's stdout passes through as it comes and its stderr is inherited; returns
    {"result": the function's dict (else None), "seconds": the call's time, "peak_rss_mb": ...}.
    """
    package_parent = str(Path(__file__).resolve().parents[1])
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
    )
    command = [sys.executable, "-c", _CHILD, target, json.dumps(kwargs)]
    last = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as child:
        for line in child.stdout:
            if last is not None:
                print(last, end="", flush=True)
            last = line
    if child.returncode != 0 or last is None:
        raise RuntimeError(
            f"{target} failed in a fresh interpreter (exit code {child.returncode}); its traceback is printed above"
        )
    return json.loads(last)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _timing_row(label: str, samples: list[float], **extra) -> dict:
    return {
        "unit": label,
        **extra,
        "median ms": _ms(statistics.median(samples)),
        "min ms": _ms(min(samples)),
        "max ms": _ms(max(samples)),
    }


def _verdict(ratio: float, target: float, what: str) -> tuple[dict, str]:
    status = "PASS" if ratio <= target else "ABOVE"
    return (
        {"ratio": round(ratio, 4), "target": target, "status": status},
        f"ratio {what} = {ratio:.3f} (target <= {target:.2f}): {status}",
    )


def synthetic_items(n: int, seed: int = 0) -> tuple[list[dict], list]:
    """`n` made-up items: text fields (4 of them, product-like) and IMAGE_PX noise images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = ("red", "blue", "green", "black", "white", "yellow")
    texts = [
        {
            "title": f"{colours[i % len(colours)]} stoneware mug no. {i}",
            "categories": "Home > Kitchen > Mugs",
            "brand": f"Brand {i % 5}",
            "description": "Sturdy dishwasher-safe mug for coffee and tea; holds 350 ml.",
        }
        for i in range(n)
    ]
    images = [Image.fromarray(rng.integers(0, 256, (IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)) for _ in range(n)]
    return texts, images


def synthetic_inputs(backbone, n: int, seed: int = 0):
    """Pre-built text and image batches of `n` synthetic items, so timed units run the model only,
    never the processor."""
    texts, images = synthetic_items(n, seed)
    return backbone.inputs(texts=texts), backbone.inputs(images=images)


def synthetic_dataset(n: int, folder: Path, seed: int = 0):
    """`n` synthetic items as a PreparedDataset (images written to `folder`, no users), so adaptation
    and export run unchanged on a host that has no data."""
    import numpy as np
    import pandas as pd

    from .data import PreparedDataset

    texts, images = synthetic_items(n, seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.png" for i in range(n)]
    for name, image in zip(names, images):
        image.save(folder / name, compress_level=1)
    items = pd.DataFrame(texts)
    items.insert(0, "item", range(n))
    items.insert(1, "item_id", [f"synthetic-{i}" for i in range(n)])
    items["image_path"], items["has_image"] = names, True
    card = {"dataset": "synthetic", "items": n, "users": 0, "interactions": 0, "text_fields": list(texts[0])}
    no_interactions = pd.DataFrame({"user": [], "item": [], "timestamp": [], "split": []})
    return PreparedDataset(folder, card, items, no_interactions, np.empty((0, 0), dtype=np.int64))


def _export_defaults() -> dict:
    """export_embeddings' default keyword values, so the notes quote what the export really uses."""
    from .export import export_embeddings

    return {k: p.default for k, p in inspect.signature(export_embeddings).parameters.items()}


def _input_note(text, image, n: int) -> str:
    return (
        f"inputs pre-built once (processor time excluded): {n} items = {n} text rows of "
        f"{text['input_ids'].shape[1]} tokens + {n} image rows of {image['input_ids'].shape[1]} tokens "
        f"({IMAGE_PX}x{IMAGE_PX} images)"
    )


def _hygiene_note(options: Options, preset: str) -> str:
    return (
        f"preset {preset}, torch threads {options.threads}, {options.repeats} repeats after "
        f"{options.warmup} warm-up, interleaved with the order swapped every repeat; medians"
    )


# ----------------------------------------------------------------------------- benchmarks


def moda_vs_lora(options: Options) -> Measurement:
    """MoDA training step vs a peft LoRA of the same total rank on the same layers (target <= 1.10)."""
    from . import adapters
    from .adapt import AdaptConfig
    from .backbone import load_backbone
    from .cmsa import Temperature, cmsa_loss
    from .moda import IMAGE, TEXT

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

    samples = interleaved({kind: training_step(b) for kind, b in backbones.items()}, options.repeats, options.warmup)
    moda_s, lora_s = (statistics.median(samples[k]) for k in ("moda", "lora"))
    verdict, headline = _verdict(moda_s / lora_s, MODA_VS_LORA_TARGET, "MoDA / LoRA")
    rows = [
        _timing_row(f"{kind} step", samples[kind], layers=len(reports[kind].layers), trainable=reports[kind].trainable)
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
    }
    notes = [
        _hygiene_note(options, preset),
        _input_note(text, image, options.batch_size),
        f"both adapters: r={config.r} on the same {len(reports['moda'].layers)} language-model "
        f"projections, MoDA with {config.experts} experts; step = text + image forward, CMSA, backward",
    ]
    return Measurement(rows, values, headline, notes)


def export_overhead(options: Options) -> Measurement:
    """Merged-MoDA embedding vs the bare backbone, text and image rows (target <= 1.02)."""
    import torch

    from . import adapters
    from .backbone import load_backbone
    from .moda import IMAGE, TEXT

    options = options.defaults(**CPU_ROUNDS)
    preset = options.preset or "small"
    bare, adapted = load_backbone(preset), load_backbone(preset)
    adapters.attach(adapted.model, "moda")
    text, image = synthetic_inputs(bare, options.batch_size)

    def embed(backbone, batch):
        def run():
            with torch.inference_mode():
                backbone.embed_batch(batch)

        return run

    samples = {}
    for m, label, batch in ((TEXT, "text", text), (IMAGE, "image", image)):
        with adapters.merged(adapted.model, m):
            pair = interleaved(
                {"bare": embed(bare, batch), "merged": embed(adapted, batch)}, options.repeats, options.warmup
            )
        samples[f"bare {label}"], samples[f"merged {label}"] = pair["bare"], pair["merged"]

    def merge_unmerge():
        with adapters.merged(adapted.model, TEXT):
            pass

    merge = interleaved({"merge+unmerge": merge_unmerge}, options.repeats, options.warmup)["merge+unmerge"]
    median = {k: statistics.median(v) for k, v in samples.items()}
    bare_s = median["bare text"] + median["bare image"]
    merged_s = median["merged text"] + median["merged image"]
    verdict, headline = _verdict(merged_s / bare_s, EXPORT_OVERHEAD_TARGET, "merged MoDA / bare")
    rows = [_timing_row(label, s) for label, s in samples.items()] + [_timing_row("merge+unmerge", merge)]
    values = {
        **verdict,
        "preset": preset,
        "bare_ms": _ms(bare_s),
        "merged_ms": _ms(merged_s),
        "merge_unmerge_ms": _ms(statistics.median(merge)),
        "text_ratio": round(median["merged text"] / median["bare text"], 4),
        "image_ratio": round(median["merged image"] / median["bare image"], 4),
        "batch_items": options.batch_size,
        "repeats": options.repeats,
        "warmup": options.warmup,
        "samples_ms": {k: [_ms(s) for s in v] for k, v in samples.items()},
    }
    notes = [
        _hygiene_note(options, preset),
        _input_note(text, image, options.batch_size),
        "ratio = (merged text + merged image) / (bare text + bare image), inference mode, "
        f"merge outside the timed unit: export merges once per modality per "
        f"{_export_defaults()['chunk']}-item chunk, timed apart as merge+unmerge",
    ]
    return Measurement(rows, values, headline, notes)


def export_memory(options: Options) -> Measurement:
    """Peak memory (RSS high-water mark) of export_embeddings on toy, tiny preset, in a fresh interpreter."""
    from . import adapters
    from .backbone import load_backbone
    from .data import prepare_dataset

    preset = options.preset or "tiny"
    data = prepare_dataset(options.dataset)  # its usual place under outputs/, reused when current
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter"
        backbone = load_backbone(preset)
        adapters.attach(backbone.model, "moda")
        adapters.save(backbone.model, adapter, backbone.id)
        run = in_fresh_process(
            "sda_lib.bench:_export",
            dict(preset=preset, data=str(data), adapter=str(adapter), out=str(Path(tmp) / "features")),
            options.threads,
        )
    loaded, peak = run["result"]["loaded_rss_mb"], run["peak_rss_mb"]
    rows = [
        {"stage": "backbone + dataset loaded", "RSS high-water MiB": round(loaded, 1)},
        {"stage": "after export (peak)", "RSS high-water MiB": round(peak, 1)},
        {"stage": "raised by the export", "RSS high-water MiB": round(peak - loaded, 1)},
    ]
    values = {
        "preset": preset,
        "dataset": options.dataset,
        "items": run["result"]["items"],
        "export_seconds": round(run["result"]["export_seconds"], 3),
        "loaded_rss_mb": round(loaded, 1),
        "export_peak_rss_mb": round(peak, 1),
        "export_increment_mb": round(peak - loaded, 1),
    }
    headline = (
        f"export peak RSS {peak:.0f} MiB ({peak - loaded:+.0f} MiB over the loaded backbone), "
        f"{values['items']} items in {values['export_seconds']:.1f} s"
    )
    notes = [
        f"preset {preset} with a MoDA adapter merged per modality, dataset {options.dataset}, "
        f"export defaults (batch {_export_defaults()['batch_size']}, chunk {_export_defaults()['chunk']}), "
        f"torch threads {options.threads}, "
        "measured in a fresh interpreter"
    ]
    return Measurement(rows, values, headline, notes)


def _export(preset: str, data: str, adapter: str, out: str) -> dict:
    """export-memory's child: the high-water mark once everything is loaded, then the export."""
    from .backbone import load_backbone
    from .data import load_prepared
    from .export import export_embeddings

    backbone, dataset = load_backbone(preset), load_prepared(data)
    loaded = peak_rss_mb()
    start = time.perf_counter()
    export_embeddings(backbone, dataset, out, adapter=adapter, progress=False)
    return {"loaded_rss_mb": loaded, "export_seconds": time.perf_counter() - start, "items": dataset.n_items}


def data_prepare(options: Options) -> Measurement:
    """Time and peak memory of preparing toy and (when its files are here) beauty, each in a fresh interpreter."""
    jobs = {options.dataset: {"name": options.dataset}}
    notes = []
    if Path(options.beauty).is_dir():
        jobs["beauty"] = {"name": "beauty", "source": options.beauty}
    else:
        notes.append(f"beauty skipped: {options.beauty} does not exist (pass --beauty FOLDER)")
    rows, values = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, kwargs in jobs.items():
            out = Path(tmp) / label
            run = in_fresh_process(
                "sda_lib.data:prepare_dataset", dict(kwargs, out=str(out), force=True), options.threads
            )
            card = json.loads((out / "card.json").read_text())
            values[label] = {
                "seconds": round(run["seconds"], 3),
                "peak_rss_mb": round(run["peak_rss_mb"], 1),
                "items": card["items"],
                "users": card["users"],
                "interactions": card["interactions"],
            }
            rows.append({"dataset": label, **values[label]})
    headline = "; ".join(f"{k} {v['seconds']:.1f} s, peak {v['peak_rss_mb']:.0f} MiB" for k, v in values.items())
    notes.append("prepare_dataset(..., force=True) into a temporary folder; peak = the child's RSS high-water mark")
    return Measurement(rows, {"datasets": values}, headline, notes)


def seconds_of(target: str, repeat_arg: str, **kwargs) -> Callable[[Options], Measurement]:
    """A benchmark from a timing function `module:function(dataset_folder, threads=, <repeat_arg>=,
    **kwargs)` that returns mean seconds (the recommenders' time_epoch and time_full_eval)."""
    module, _, name = target.partition(":")

    def benchmark(options: Options) -> Measurement:
        from .data import prepare_dataset

        options = options.defaults(**CPU_ROUNDS)
        function = getattr(importlib.import_module(module), name)
        folder = prepare_dataset(options.dataset)  # its usual place under outputs/, reused when current
        seconds = function(folder, threads=options.threads, **{repeat_arg: options.repeats}, **kwargs)
        values = {"dataset": options.dataset, **kwargs, "repeats": options.repeats, "seconds": round(seconds, 4)}
        notes = [
            f"{name} on {options.dataset}, mean over {options.repeats} {repeat_arg}, torch threads {options.threads}"
        ]
        return Measurement([values], values, f"{seconds:.3f} s ({name} on {options.dataset})", notes)

    benchmark.__doc__ = f"Seconds of {name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) on --dataset."
    return benchmark


def recbole_vs_ours(options: Options) -> Measurement:
    """Our SASRec against RecBole's on the same data and protocol, in one run: seconds per training
    epoch and per full-ranking pass over all users (RecBole in its own virtualenv, see recsys.peers)."""
    from .data import prepare_dataset
    from .recsys.experiment import time_epoch, time_full_eval
    from .recsys.peers import RECBOLE_PYTHON, recbole_sasrec_timing

    if not Path(RECBOLE_PYTHON).exists():
        note = f"RecBole not installed at {RECBOLE_PYTHON} (see sda_lib/recsys/peers.py): nothing measured"
        return Measurement([], {"skipped": note}, "skipped: RecBole absent", [note])
    options = options.defaults(**CPU_ROUNDS)
    folder = prepare_dataset(options.dataset)
    ours = {
        "epoch": time_epoch(folder, threads=options.threads, epochs=options.repeats),
        "eval": time_full_eval(folder, threads=options.threads, repeats=options.repeats),
    }
    peer = recbole_sasrec_timing(folder, epochs=1, threads=options.threads)
    theirs = {"epoch": peer["epoch_seconds"], "eval": peer["eval_seconds"]}
    rows = [
        {
            "what": what,
            "ours_s": round(ours[what], 3),
            "recbole_s": round(theirs[what], 3),
            "recbole/ours": round(theirs[what] / ours[what], 2),
        }
        for what in ("epoch", "eval")
    ]
    notes = [
        f"SASRec hidden 64, 2 layers, 2 heads, max length 50, on {options.dataset}; torch threads "
        f"{options.threads}. An epoch is each library's own: ours one pass per user predicting every "
        f"next item ({peer['users']} users), RecBole's every prefix ({peer['train_sequences']} sequences)."
    ]
    values = {
        "dataset": options.dataset,
        **{f"{r['what']}_ratio": r["recbole/ours"] for r in rows},
        "ours": ours,
        "recbole": theirs,
    }
    return Measurement(
        rows, values, f"RecBole/ours: epoch {rows[0]['recbole/ours']}x, full ranking {rows[1]['recbole/ours']}x", notes
    )


def gpu_check(options: Options) -> Measurement:
    """The 7B on a GPU (7b-shaped, random weights): adaptation step time and memory, export speed.

    Each of MoDA and a shared LoRA with and without gradient checkpointing on a fresh model, then
    the export of every synthetic item with the MoDA adapter (see the README's GPU host section)."""
    from .adapt import AdaptConfig
    from .backbone import SHAPED

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
        print(f"[gpu] export: {GPU_ITEMS} items, MoDA adapter merged per modality", flush=True)
        export = _export_run(
            preset,
            device,
            dataset,
            folders["moda step, checkpointing"] / "adapter",
            Path(tmp) / "features",
            options.batch_size,
        )
        print(f"[gpu] export: {json.dumps(export)}", flush=True)
        # Last: at 32 items a step MoDA without checkpointing does not fit one GPU (see the README's
        # GPU host section), and running out of memory is the failure likeliest to leave CUDA unusable.
        train("moda", False)

    rows = []
    for label in labels.values():
        run, extra = runs[label], {"peak GiB": runs[label]["peak_gib"], "build s": runs[label]["build_s"]}
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
    verdict, ratio_line = _verdict(
        median["moda step, checkpointing"] / median["lora step, checkpointing"],
        MODA_VS_LORA_TARGET,
        "MoDA / LoRA step (checkpointing)",
    )
    plain = median["moda step"] / median["lora step"] if median["moda step"] and median["lora step"] else None
    values = {
        **verdict,
        "ratio_without_checkpointing": plain and round(plain, 4),
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
            "`python -m sda_lib.bench gpu --preset small --device cpu`"
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

    from .adapt import load_image, train_adapter
    from .backbone import load_backbone

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
    from . import adapters
    from .adapt import load_image
    from .backbone import load_backbone
    from .export import export_embeddings
    from .moda import IMAGE, TEXT

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


BENCHMARKS: dict[str, Callable[[Options], Measurement]] = {
    "moda-vs-lora": moda_vs_lora,
    "export-overhead": export_overhead,
    "export-memory": export_memory,
    "data-prepare": data_prepare,
    "sasrec-epoch": seconds_of("sda_lib.recsys.experiment:time_epoch", "epochs", model="sasrec"),
    "full-eval": seconds_of("sda_lib.recsys.experiment:time_full_eval", "repeats", model="sasrec"),
    "recbole-sasrec": recbole_vs_ours,
    "gpu": gpu_check,
}


# ----------------------------------------------------------------------------- running


def about(name: str) -> str:
    return (BENCHMARKS[name].__doc__ or "").strip().splitlines()[0]


def format_table(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_string(index=False)


def run_benchmark(name: str, **options) -> dict:
    """Run one registered benchmark with Options(**options); print its table and, as the last line,
    its JSON record, which is also returned."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    opts = Options(**options)
    import torch

    torch.set_num_threads(opts.threads)
    start = time.perf_counter()
    try:
        found = BENCHMARKS[name](opts)
    except Unavailable as err:
        found = Measurement([], {"unavailable": str(err)}, f"unavailable: {err}")
    record = {
        "benchmark": name,
        "headline": found.headline,
        **found.values,
        "threads": opts.threads,
        "wall_seconds": round(time.perf_counter() - start, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(f"\n== {name}: {about(name)}")
    if found.rows:
        print(format_table(found.rows))
    for note in found.notes:
        print(f"  {note}")
    print(found.headline)
    print(json.dumps(record), flush=True)
    return record


def machine_info(threads: int) -> dict:
    import numpy
    import peft
    import torch
    import transformers

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "numpy": numpy.__version__,
        "sda_lib": __version__,
        "torch_threads": threads,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_suite(options: Options) -> tuple[Path, dict]:
    """Every registered benchmark in its own fresh interpreter; writes outputs/bench/<timestamp>.json
    and prints a summary. A failing benchmark is recorded with its error and the rest still run."""
    machine = machine_info(options.threads)
    results = {}
    for name in BENCHMARKS:
        try:
            results[name] = in_fresh_process(
                "sda_lib.bench:run_benchmark", dict(name=name, **asdict(options)), options.threads
            )["result"]
        except RuntimeError as err:
            results[name] = {"benchmark": name, "error": str(err)}
    created = dt.datetime.now(dt.UTC)
    path = outputs_root() / "bench" / f"{created:%Y%m%d-%H%M%S}.json"
    write_json(
        path,
        {
            "created": created.isoformat(timespec="seconds"),
            "machine": machine,
            "options": asdict(options),
            "results": results,
        },
    )
    print("\n== summary")
    print(
        format_table(
            [
                {
                    "benchmark": name,
                    "result": r.get("headline", "FAILED: " + r.get("error", "")),
                    "peak RSS MiB": r.get("peak_rss_mb"),
                    "wall s": r.get("wall_seconds"),
                }
                for name, r in results.items()
            ]
        )
    )
    print(
        f"machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
        f"torch threads {options.threads}; written to {path}"
    )
    return path, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda_lib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "name",
        nargs="?",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"one of {', '.join(BENCHMARKS)}; none: run all and write outputs/bench/<timestamp>.json",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    defaults = Options()
    parser.add_argument(
        "--preset",
        help="backbone: tiny, small, 7b-shaped[:layers], 7b, a hub id or a folder "
        "(default: small for the ratios, tiny for export-memory, 7b-shaped for gpu)",
    )
    rounds = ", ".join(f"{k} {CPU_ROUNDS[k]}, gpu {GPU_ROUNDS[k]}" for k in ("repeats", "warmup", "batch_size"))
    parser.add_argument("--repeats", type=int, help="timed repetitions")
    parser.add_argument("--warmup", type=int, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads (default 1)")
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"items per timed batch (each gives a text row and an image row). Defaults: {rounds}",
    )
    parser.add_argument("--dataset", default=defaults.dataset, help="dataset of the data and recommender benchmarks")
    parser.add_argument("--beauty", default=defaults.beauty, help="Amazon beauty source folder for data-prepare")
    parser.add_argument(
        "--device",
        help="gpu: cuda (default; refused without CUDA) or cpu, to try the script here with a small --preset",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name in BENCHMARKS:
            print(f"{name:16} {about(name)}")
        return 0
    try:
        options = Options(**{k: v for k, v in vars(args).items() if k not in ("name", "list")})
    except ValueError as err:
        parser.error(str(err))
    if args.name:
        record = run_benchmark(args.name, **asdict(options))
        if "unavailable" in record:
            print(f"{args.name}: {record['unavailable']}", file=sys.stderr)
            return 1
        return 0
    _, results = run_suite(options)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
