"""Benchmarks that tell whether the workbench is fast.

    python -m sda_lib.bench NAME [--preset P] [--repeats N] [--threads N] ...   one benchmark
    python -m sda_lib.bench                                                     all of them
    python -m sda_lib.bench --list

One benchmark prints a table and, as its last line, one JSON object with the measured numbers
(ratio, target and status for the comparisons, the raw samples too). The all-run gives every
benchmark its own fresh interpreter, so each peak memory is that benchmark's own and no benchmark
inherits another's allocator or thread state, then writes outputs/bench/<timestamp>.json with the
machine, the versions and every result.

Timing hygiene: the two sides of a comparison live in one process and run interleaved, their order
swapped every repetition, after warm-up runs; inputs are built once beforehand, so processor
(tokeniser, image resizing) time does not blur the ratio; medians of time.perf_counter; torch
threads fixed by --threads (default 1: the machine may be shared).

A benchmark is a function Options -> Measurement; registering one is one line in BENCHMARKS.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from .io import write_json
from .paths import REPO_ROOT, outputs_root

BEAUTY_SOURCE = REPO_ROOT.parent / "shared" / "data" / "amazon2014-5core" / "beauty"
IMAGE_PX = 224  # synthetic item images: (224 / 28)^2 = 64 image tokens, inside the default pixel bounds
MODA_VS_LORA_TARGET = 1.10
EXPORT_OVERHEAD_TARGET = 1.02


@dataclass
class Options:
    """Settings every benchmark reads. preset None: the benchmark's own default backbone."""

    preset: str | None = None
    repeats: int = 15
    warmup: int = 2
    threads: int = 1
    batch_size: int = 8
    dataset: str = "toy"
    beauty: str = str(BEAUTY_SOURCE)

    def __post_init__(self):
        for name, low in (("repeats", 1), ("warmup", 0), ("threads", 1), ("batch_size", 2)):
            if getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")


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
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-c", _CHILD, target, json.dumps(kwargs)]
    last = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as child:
        for line in child.stdout:
            if last is not None:
                print(last, end="", flush=True)
            last = line
    if child.returncode != 0 or last is None:
        raise RuntimeError(f"{target} failed in a fresh interpreter (exit code {child.returncode}); "
                           "its traceback is printed above")
    return json.loads(last)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _timing_row(label: str, samples: list[float], **extra) -> dict:
    return {"unit": label, **extra, "median ms": _ms(statistics.median(samples)),
            "min ms": _ms(min(samples)), "max ms": _ms(max(samples))}


def _verdict(ratio: float, target: float, what: str) -> tuple[dict, str]:
    status = "PASS" if ratio <= target else "ABOVE"
    return ({"ratio": round(ratio, 4), "target": target, "status": status},
            f"ratio {what} = {ratio:.3f} (target <= {target:.2f}): {status}")


def synthetic_inputs(backbone, n: int, seed: int = 0):
    """Pre-built text and image batches of `n` made-up items (4 text fields; IMAGE_PX noise images),
    so timed units run the model only, never the processor."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = ("red", "blue", "green", "black", "white", "yellow")
    texts = [{"title": f"{colours[i % len(colours)]} stoneware mug no. {i}",
              "categories": "Home > Kitchen > Mugs", "brand": f"Brand {i % 5}",
              "description": "Sturdy dishwasher-safe mug for coffee and tea; holds 350 ml."} for i in range(n)]
    images = [Image.fromarray(rng.integers(0, 256, (IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)) for _ in range(n)]
    return backbone.inputs(texts=texts), backbone.inputs(images=images)


def _export_defaults() -> dict:
    """export_embeddings' default keyword values, so the notes quote what the export really uses."""
    from .export import export_embeddings

    return {k: p.default for k, p in inspect.signature(export_embeddings).parameters.items()}


def _input_note(text, image, n: int) -> str:
    return (f"inputs pre-built once (processor time excluded): {n} items = {n} text rows of "
            f"{text['input_ids'].shape[1]} tokens + {n} image rows of {image['input_ids'].shape[1]} tokens "
            f"({IMAGE_PX}x{IMAGE_PX} images)")


def _hygiene_note(options: Options, preset: str) -> str:
    return (f"preset {preset}, torch threads {options.threads}, {options.repeats} repeats after "
            f"{options.warmup} warm-up, interleaved with the order swapped every repeat; medians")


# ----------------------------------------------------------------------------- benchmarks


def moda_vs_lora(options: Options) -> Measurement:
    """MoDA training step vs a peft LoRA of the same total rank on the same layers (target <= 1.10)."""
    from . import adapters
    from .adapt import AdaptConfig
    from .backbone import load_backbone
    from .cmsa import Temperature, cmsa_loss
    from .moda import IMAGE, TEXT

    preset = options.preset or "small"
    config = AdaptConfig()  # the training defaults: r, experts, alpha, dropout, tau, loss options
    backbones, reports = {}, {}
    for kind in ("moda", "lora"):
        backbones[kind] = load_backbone(preset, seed=config.seed)
        reports[kind] = adapters.attach(backbones[kind].model, kind, config.r, config.experts, config.alpha,
                                        config.dropout)
        backbones[kind].model.train()
    if set(reports["moda"].layers) != set(reports["lora"].layers):
        raise RuntimeError("MoDA and LoRA adapt different layers, so their steps are not comparable: "
                           f"{sorted(set(reports['moda'].layers) ^ set(reports['lora'].layers))[:3]}")
    text, image = synthetic_inputs(backbones["moda"], options.batch_size)
    temperature = Temperature(config.tau, config.learn_tau)

    def training_step(backbone):
        """Forward + backward of one CMSA batch, as adapt.batch_loss does."""
        def step():
            with adapters.modality(backbone.model, TEXT):
                e_t = backbone.embed_batch(text)
            with adapters.modality(backbone.model, IMAGE):
                e_v = backbone.embed_batch(image)
            cmsa_loss(e_t, e_v, temperature(), config.normalize, config.detach_teacher).backward()
            backbone.model.zero_grad(set_to_none=True)
            temperature.zero_grad(set_to_none=True)
        return step

    samples = interleaved({kind: training_step(b) for kind, b in backbones.items()}, options.repeats,
                          options.warmup)
    moda_s, lora_s = (statistics.median(samples[k]) for k in ("moda", "lora"))
    verdict, headline = _verdict(moda_s / lora_s, MODA_VS_LORA_TARGET, "MoDA / LoRA")
    rows = [_timing_row(f"{kind} step", samples[kind], layers=len(reports[kind].layers),
                        trainable=reports[kind].trainable) for kind in ("moda", "lora")]
    values = {**verdict, "preset": preset, "moda_ms": _ms(moda_s), "lora_ms": _ms(lora_s),
              "r": config.r, "experts": config.experts, "layers": len(reports["moda"].layers),
              "batch_items": options.batch_size, "repeats": options.repeats, "warmup": options.warmup,
              "moda_samples_ms": [_ms(s) for s in samples["moda"]],
              "lora_samples_ms": [_ms(s) for s in samples["lora"]]}
    notes = [_hygiene_note(options, preset), _input_note(text, image, options.batch_size),
             f"both adapters: r={config.r} on the same {len(reports['moda'].layers)} language-model "
             f"projections, MoDA with {config.experts} experts; step = text + image forward, CMSA, backward"]
    return Measurement(rows, values, headline, notes)


def export_overhead(options: Options) -> Measurement:
    """Merged-MoDA embedding vs the bare backbone, text and image rows (target <= 1.02)."""
    import torch

    from . import adapters
    from .backbone import load_backbone
    from .moda import IMAGE, TEXT

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
            pair = interleaved({"bare": embed(bare, batch), "merged": embed(adapted, batch)}, options.repeats,
                               options.warmup)
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
    values = {**verdict, "preset": preset, "bare_ms": _ms(bare_s), "merged_ms": _ms(merged_s),
              "merge_unmerge_ms": _ms(statistics.median(merge)),
              "text_ratio": round(median["merged text"] / median["bare text"], 4),
              "image_ratio": round(median["merged image"] / median["bare image"], 4),
              "batch_items": options.batch_size, "repeats": options.repeats, "warmup": options.warmup,
              "samples_ms": {k: [_ms(s) for s in v] for k, v in samples.items()}}
    notes = [_hygiene_note(options, preset), _input_note(text, image, options.batch_size),
             "ratio = (merged text + merged image) / (bare text + bare image), inference mode, "
             f"merge outside the timed unit: export merges once per modality per "
             f"{_export_defaults()['chunk']}-item chunk, timed apart as merge+unmerge"]
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
        run = in_fresh_process("sda_lib.bench:_export", dict(preset=preset, data=str(data), adapter=str(adapter),
                                                             out=str(Path(tmp) / "features")), options.threads)
    loaded, peak = run["result"]["loaded_rss_mb"], run["peak_rss_mb"]
    rows = [{"stage": "backbone + dataset loaded", "RSS high-water MiB": round(loaded, 1)},
            {"stage": "after export (peak)", "RSS high-water MiB": round(peak, 1)},
            {"stage": "raised by the export", "RSS high-water MiB": round(peak - loaded, 1)}]
    values = {"preset": preset, "dataset": options.dataset, "items": run["result"]["items"],
              "export_seconds": round(run["result"]["export_seconds"], 3),
              "loaded_rss_mb": round(loaded, 1), "export_peak_rss_mb": round(peak, 1),
              "export_increment_mb": round(peak - loaded, 1)}
    headline = (f"export peak RSS {peak:.0f} MiB ({peak - loaded:+.0f} MiB over the loaded backbone), "
                f"{values['items']} items in {values['export_seconds']:.1f} s")
    notes = [f"preset {preset} with a MoDA adapter merged per modality, dataset {options.dataset}, "
             f"export defaults (batch {_export_defaults()['batch_size']}, chunk {_export_defaults()['chunk']}), "
             f"torch threads {options.threads}, "
             "measured in a fresh interpreter"]
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
            run = in_fresh_process("sda_lib.data:prepare_dataset", dict(kwargs, out=str(out), force=True),
                                   options.threads)
            card = json.loads((out / "card.json").read_text())
            values[label] = {"seconds": round(run["seconds"], 3), "peak_rss_mb": round(run["peak_rss_mb"], 1),
                             "items": card["items"], "users": card["users"], "interactions": card["interactions"]}
            rows.append({"dataset": label, **values[label]})
    headline = "; ".join(f"{k} {v['seconds']:.1f} s, peak {v['peak_rss_mb']:.0f} MiB" for k, v in values.items())
    notes.append("prepare_dataset(..., force=True) into a temporary folder; "
                 "peak = the child's RSS high-water mark")
    return Measurement(rows, {"datasets": values}, headline, notes)


def seconds_of(target: str, repeat_arg: str, **kwargs) -> Callable[[Options], Measurement]:
    """A benchmark from a timing function `module:function(dataset_folder, threads=, <repeat_arg>=,
    **kwargs)` that returns mean seconds (the recommenders' time_epoch and time_full_eval)."""
    module, _, name = target.partition(":")

    def benchmark(options: Options) -> Measurement:
        from .data import prepare_dataset

        function = getattr(importlib.import_module(module), name)
        folder = prepare_dataset(options.dataset)  # its usual place under outputs/, reused when current
        seconds = function(folder, threads=options.threads, **{repeat_arg: options.repeats}, **kwargs)
        values = {"dataset": options.dataset, **kwargs, "repeats": options.repeats, "seconds": round(seconds, 4)}
        notes = [f"{name} on {options.dataset}, mean over {options.repeats} {repeat_arg}, "
                 f"torch threads {options.threads}"]
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
    folder = prepare_dataset(options.dataset)
    ours = {"epoch": time_epoch(folder, threads=options.threads, epochs=options.repeats),
            "eval": time_full_eval(folder, threads=options.threads, repeats=options.repeats)}
    peer = recbole_sasrec_timing(folder, epochs=1, threads=options.threads)
    theirs = {"epoch": peer["epoch_seconds"], "eval": peer["eval_seconds"]}
    rows = [{"what": what, "ours_s": round(ours[what], 3), "recbole_s": round(theirs[what], 3),
             "recbole/ours": round(theirs[what] / ours[what], 2)} for what in ("epoch", "eval")]
    notes = [f"SASRec hidden 64, 2 layers, 2 heads, max length 50, on {options.dataset}; torch threads "
             f"{options.threads}. An epoch is each library's own: ours one pass per user predicting every "
             f"next item ({peer['users']} users), RecBole's every prefix ({peer['train_sequences']} sequences)."]
    values = {"dataset": options.dataset, **{f"{r['what']}_ratio": r["recbole/ours"] for r in rows},
              "ours": ours, "recbole": theirs}
    return Measurement(rows, values, f"RecBole/ours: epoch {rows[0]['recbole/ours']}x, "
                                     f"full ranking {rows[1]['recbole/ours']}x", notes)


BENCHMARKS: dict[str, Callable[[Options], Measurement]] = {
    "moda-vs-lora": moda_vs_lora,
    "export-overhead": export_overhead,
    "export-memory": export_memory,
    "data-prepare": data_prepare,
    "sasrec-epoch": seconds_of("sda_lib.recsys.experiment:time_epoch", "epochs", model="sasrec"),
    "full-eval": seconds_of("sda_lib.recsys.experiment:time_full_eval", "repeats", model="sasrec"),
    "recbole-sasrec": recbole_vs_ours,
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
    found = BENCHMARKS[name](opts)
    record = {"benchmark": name, "headline": found.headline, **found.values, "threads": opts.threads,
              "wall_seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
    print(f"\n== {name}: {about(name)}")
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
            results[name] = in_fresh_process("sda_lib.bench:run_benchmark", dict(name=name, **asdict(options)),
                                             options.threads)["result"]
        except RuntimeError as err:
            results[name] = {"benchmark": name, "error": str(err)}
    created = dt.datetime.now(dt.timezone.utc)
    path = outputs_root() / "bench" / f"{created:%Y%m%d-%H%M%S}.json"
    write_json(path, {"created": created.isoformat(timespec="seconds"), "machine": machine,
                      "options": asdict(options), "results": results})
    print("\n== summary")
    print(format_table([{"benchmark": name, "result": r.get("headline", "FAILED: " + r.get("error", "")),
                         "peak RSS MiB": r.get("peak_rss_mb"), "wall s": r.get("wall_seconds")}
                        for name, r in results.items()]))
    print(f"machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
          f"torch threads {options.threads}; written to {path}")
    return path, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda_lib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"one of {', '.join(BENCHMARKS)}; "
                             "none: run all and write outputs/bench/<timestamp>.json")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    defaults = Options()
    parser.add_argument("--preset", help="backbone: tiny, small, 7b, a hub id or a folder "
                                         "(default: small for the ratios, tiny for export-memory)")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="items per timed batch (each gives a text row and an image row)")
    parser.add_argument("--dataset", default=defaults.dataset,
                        help="dataset of the data and recommender benchmarks")
    parser.add_argument("--beauty", default=defaults.beauty, help="Amazon beauty source folder for data-prepare")
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
        run_benchmark(args.name, **asdict(options))
        return 0
    _, results = run_suite(options)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
