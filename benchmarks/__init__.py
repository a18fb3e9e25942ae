"""Benchmarks that tell whether the workbench is fast.

    python -m benchmarks NAME [--preset P] [--repeats N] [--threads N] ...   one benchmark
    python -m benchmarks                                                     all of them
    python -m benchmarks --list
    python -m benchmarks gpu                           the 7B-shaped check, on a CUDA host

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
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from sda_lib import __version__
from sda_lib.utils.io import write_json
from sda_lib.utils.paths import outputs_root

from .adapters import MODA_VS_LORA_TARGET, moda_memory, moda_vs_loop, moda_vs_lora
from .core import (
    CPU_ROUNDS,
    GPU_ROUNDS,
    Measurement,
    Options,
    Unavailable,
    in_fresh_process,
    interleaved,
    peak_rss_mb,
    reset_peak_rss,
)
from .export import export_memory, export_overhead, export_padding
from .gpu import gpu_check
from .mmrec import mmrec_parity
from .preparation import data_prepare
from .recsys import full_eval, recbole_time_to_quality, seconds_of
from .scaling import scaling

__all__ = [
    "BENCHMARKS",
    "CPU_ROUNDS",
    "GPU_ROUNDS",
    "MODA_VS_LORA_TARGET",
    "Measurement",
    "Options",
    "Unavailable",
    "in_fresh_process",
    "interleaved",
    "main",
    "peak_rss_mb",
    "reset_peak_rss",
    "run_benchmark",
]


BENCHMARKS: dict[str, Callable[[Options], Measurement]] = {
    "moda-vs-lora": moda_vs_lora,
    "moda-vs-loop": moda_vs_loop,
    "moda-memory": moda_memory,
    "export-overhead": export_overhead,
    "export-memory": export_memory,
    "export-padding": export_padding,
    "data-prepare": data_prepare,
    "sasrec-epoch": seconds_of("sda_lib.recsys.experiment:time_epoch", "epochs", model="sasrec"),
    "full-eval": full_eval,
    "recbole-time-to-quality": recbole_time_to_quality,
    "mmrec-parity": mmrec_parity,
    "scaling": scaling,
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
                "benchmarks:run_benchmark", dict(name=name, **asdict(options)), options.threads
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
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
    parser.add_argument(
        "--features",
        default=defaults.features,
        help="feature table of mmrec-parity (under outputs/<dataset>/default/embeddings/)",
    )
    parser.add_argument("--beauty", default=defaults.beauty, help="Amazon beauty source folder for data-prepare")
    parser.add_argument(
        "--device",
        help="gpu: cuda (default; refused without CUDA) or cpu, to try the script here with a small --preset",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name in BENCHMARKS:
            print(f"{name:{max(map(len, BENCHMARKS))}}  {about(name)}")
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
