"""What every benchmark shares: its options and result, the measuring tools (interleaved timing,
fresh interpreters, RSS high-water marks) and synthetic inputs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sda_lib.utils.paths import REPO_ROOT

BEAUTY_SOURCE = REPO_ROOT.parent / "shared" / "data" / "amazon2014-5core" / "beauty"
IMAGE_PX = 224  # synthetic item images: (224 / 28)^2 = 64 image tokens, inside the default pixel bounds
CPU_ROUNDS = dict(repeats=15, warmup=2, batch_size=8)  # the CPU micro-benchmarks' defaults
# Steps of each gpu-check run, 32 items a step as trained: two warm-up steps, as MoDA's kernels compile
# for the first step's shapes and once more, for any shape, when the next step's differ.
GPU_ROUNDS = dict(repeats=3, warmup=2, batch_size=32)


@dataclass
class Options:
    """Settings every benchmark reads. None: the benchmark's own default (see `defaults`)."""

    preset: str | None = None
    repeats: int | None = None
    warmup: int | None = None
    threads: int = 1
    batch_size: int | None = None
    dataset: str = "toy"
    features: str = "sda"  # feature table of the recommender benchmarks (outputs/<dataset>/default/embeddings/)
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


def interleaved(
    units: dict[str, Callable[[], object]], repeats: int, warmup: int, cpu: dict | None = None
) -> dict[str, list[float]]:
    """Seconds of each unit in each repetition. Units run in turn, in reverse order every other
    repetition, so drift in machine load and cache state hits them alike; warm-up runs are dropped.
    With `cpu` (a dict), the process's CPU seconds of the same runs go into it: with one torch
    thread on a machine shared with other work they leave out the time spent waiting for a core."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    samples = {name: [] for name in units}
    cpu = {} if cpu is None else cpu
    cpu.update({name: [] for name in units})
    order = list(units)
    for rep in range(warmup + repeats):
        for name in order if rep % 2 == 0 else order[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            units[name]()
            sync()
            if rep >= warmup:
                samples[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
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
from benchmarks.core import peak_rss_mb
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


def beauty_folder(options: Options) -> Path:
    """Prepared Beauty (reused when current), or Unavailable when its source files are absent."""
    from sda_lib.data import prepare_dataset
    from sda_lib.utils.paths import data_dir

    if not Path(options.beauty).is_dir() and not (data_dir("beauty") / "card.json").exists():
        raise Unavailable(f"needs the Amazon Beauty source folder (--beauty); {options.beauty} does not exist")
    return prepare_dataset("beauty", source=options.beauty if Path(options.beauty).is_dir() else None)


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

    from sda_lib.data import PreparedDataset

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
