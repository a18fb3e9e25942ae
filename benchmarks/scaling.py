"""How time and memory grow with the catalogue: synthetic catalogues of 10k, 100k and 1M items
with users in Beauty's proportion, each stage measured in its own fresh interpreter (its peak
memory its own), a growth exponent fitted per stage, and a plotly figure of the curves."""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time
from pathlib import Path

from sda_lib.utils.io import atomic_path

from .core import Measurement, Options, in_fresh_process, peak_rss_mb, reset_peak_rss, synthetic_dataset

SCALES = (10_000, 100_000, 1_000_000)
USERS_PER_ITEM = 22_363 / 12_101  # Beauty's users per item
MEAN_LENGTH = 8.9  # Beauty's interactions per user (5-core: at least 5)
TRAIN_BATCHES = 20  # timed SASRec training batches per scale (after one warm-up); the epoch is extrapolated
RANKED_SCORES = 2**28  # users x items ranked per scale: every user at 10k, a sample above; time extrapolated
EXPORT_ITEMS = 32  # synthetic items exported on the tiny preset
FIGURE = "scaling.html"
TIME_CURVES = ("prepare s", "epoch s", "full ranking s", "export s (tiny)")
MEMORY_CURVES = ("prepare peak MiB", "train peak MiB", "ranking peak MiB")


def synthetic_catalogue(n_items: int, seed: int = 0):
    """A Catalogue of `n_items` items and users in Beauty's proportion: sequence lengths 5 + a
    geometric tail (mean MEAN_LENGTH), items drawn with a Zipf-like popularity (weight 1 / rank)."""
    import numpy as np
    import pandas as pd

    from sda_lib.data.catalogue import Catalogue

    rng = np.random.default_rng(seed)
    n_users = round(n_items * USERS_PER_ITEM)
    lengths = 4 + rng.geometric(1 / (MEAN_LENGTH - 4), n_users)
    weights = 1 / np.arange(1, n_items + 1)
    items = rng.choice(n_items, size=int(lengths.sum()), p=weights / weights.sum())
    users = np.repeat(np.arange(n_users), lengths)
    interactions = pd.DataFrame(
        {
            "user_id": pd.Series(users).map("u{}".format),
            "item_id": pd.Series(items).map("i{}".format),
            "timestamp": np.arange(len(items)) - np.repeat(np.cumsum(lengths) - lengths, lengths),
        }
    )
    table = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": [f"item {i}" for i in range(n_items)]})
    table["image_path"] = None
    return Catalogue(f"synthetic-{n_items}", table, interactions, ["title"])


def _prepare(n_items: int, out: str) -> dict:
    """Child: build the catalogue, then prepare it (timed, its own memory high-water mark)."""
    from sda_lib.data.prepare import prepare_catalogue

    catalogue = synthetic_catalogue(n_items)
    Path(out).mkdir(parents=True)
    reset_peak_rss()
    start = time.perf_counter()
    card = prepare_catalogue(catalogue, Path(out))
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_rss_mb(), "users": card["users"]}


def _train(folder: str, batches: int) -> dict:
    """Child: SASRec (the default sampled loss) for `batches` training batches after one warm-up;
    seconds per batch and batches per epoch."""
    import numpy as np
    import torch

    from sda_lib.data import PreparedDataset
    from sda_lib.recsys import InteractionData
    from sda_lib.recsys.experiment import build_model

    torch.set_num_threads(1)
    data = InteractionData.from_prepared(PreparedDataset.load(folder))
    model = build_model("sasrec", data).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    stream = model.train_batches(model.batch_size, np.random.default_rng(0))
    per_epoch = math.ceil(len(model.train_users) / model.batch_size)
    timed = min(batches, per_epoch - 1)
    for i, batch in zip(range(timed + 1), stream):
        if i == 1:
            start = time.perf_counter()
        loss = model.loss(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"batch_seconds": (time.perf_counter() - start) / timed, "batches_per_epoch": per_epoch}


def _rank(folder: str, scores: int) -> dict:
    """Child: full ranking (history masked) of the first users, about `scores` users x items, with
    the default block size; seconds and the share of all users ranked."""
    import torch

    from sda_lib.data import PreparedDataset
    from sda_lib.recsys import InteractionData, rank_targets
    from sda_lib.recsys.experiment import build_model

    torch.set_num_threads(1)
    data = InteractionData.from_prepared(PreparedDataset.load(folder))
    model = build_model("sasrec", data)
    users = min(data.n_users, max(1, scores // data.n_items))
    sample = data.first_users(users)
    start = time.perf_counter()
    rank_targets(model, sample, "test", "full")
    return {"seconds": time.perf_counter() - start, "fraction": users / data.n_users}


def _export_per_item(items: int) -> float:
    """Seconds per item of exporting `items` synthetic items (text and image) on the tiny preset."""
    from sda_lib.method.backbones import load_backbone
    from sda_lib.method.export import export_embeddings

    backbone = load_backbone("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = synthetic_dataset(items, Path(tmp) / "data")
        export_embeddings(backbone, dataset, Path(tmp) / "features", d=8, progress=False)  # warm-up
        start = time.perf_counter()
        export_embeddings(backbone, dataset, Path(tmp) / "again", d=8, progress=False)
        return (time.perf_counter() - start) / items


def scaling(options: Options) -> Measurement:
    """Time and peak memory against catalogue size (10k, 100k, 1M items), growth exponents fitted.

    Data preparation, a SASRec epoch, full ranking of all users, export per item; a plotly figure."""
    import numpy as np

    from sda_lib.utils.paths import outputs_root

    scales = SCALES[: options.repeats] if options.repeats else SCALES  # --repeats N: the first N scales
    rows, failed = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in scales:
            folder = str(Path(tmp) / f"synthetic-{n}")
            try:
                prepared = in_fresh_process("benchmarks.scaling:_prepare", {"n_items": n, "out": folder})
                train = in_fresh_process("benchmarks.scaling:_train", {"folder": folder, "batches": TRAIN_BATCHES})
                rank = in_fresh_process("benchmarks.scaling:_rank", {"folder": folder, "scores": RANKED_SCORES})
            except RuntimeError as err:  # e.g. killed for want of memory (exit code -9): larger scales would be too
                failed[n] = str(err)
                break
            rows.append(
                {
                    "items": n,
                    "users": prepared["result"]["users"],
                    "prepare s": round(prepared["result"]["seconds"], 2),
                    "prepare peak MiB": round(prepared["result"]["peak_mb"]),
                    "epoch s": round(train["result"]["batch_seconds"] * train["result"]["batches_per_epoch"], 2),
                    "train peak MiB": round(train["peak_rss_mb"]),
                    "full ranking s": round(rank["result"]["seconds"] / rank["result"]["fraction"], 2),
                    "ranked share": round(rank["result"]["fraction"], 4),
                    "ranking peak MiB": round(rank["peak_rss_mb"]),
                }
            )
            print(rows[-1], flush=True)
    export_s = _export_per_item(EXPORT_ITEMS)
    for row in rows:
        row["export s (tiny)"] = round(export_s * row["items"], 1)
    curves = (
        "prepare s",
        "epoch s",
        "full ranking s",
        "export s (tiny)",
        "prepare peak MiB",
        "train peak MiB",
        "ranking peak MiB",
    )
    exponents = {}
    if len(rows) > 1:
        x = np.log([r["items"] for r in rows])
        exponents = {c: round(float(np.polyfit(x, np.log([r[c] for r in rows]), 1)[0]), 2) for c in curves}
    figure = outputs_root() / "bench" / FIGURE
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    write_figure(rows, exponents, figure, machine)
    values = {
        "rows": rows,
        "growth_exponents": exponents,
        "export_seconds_per_item": round(export_s, 4),
        "figure": str(figure),
        "failed": failed,
        "machine": machine,
    }
    headline = "growth exponents (time or memory ~ items^k): " + ", ".join(f"{c} {k}" for c, k in exponents.items())
    if failed:
        headline += f"; not measured at {', '.join(map(str, failed))} items (see the notes)"
    notes = [
        f"synthetic catalogues, {USERS_PER_ITEM:.2f} users per item, {MEAN_LENGTH} interactions per user, Zipf-like "
        "popularity; each stage in its own fresh interpreter, one torch thread; peak = that interpreter's RSS "
        "high-water mark (prepare: over the generated catalogue it starts from)",
        f"epoch = mean of {TRAIN_BATCHES} SASRec batches (after one warm-up; default sampled loss, batch 256 users) x "
        "batches per epoch; full ranking = the first users up to 2**28 users x items, scaled to all users; the "
        "block (max_scores, sda_lib.recsys.evaluate) bounds ranking memory, no users x items matrix is held",
        f"export: {EXPORT_ITEMS} synthetic items (text and image) on the tiny preset, seconds per item x items",
        f"figure: {figure}; measured on {machine}",
        *(f"{n} items: not measured, {err}" for n, err in failed.items()),
    ]
    return Measurement(rows, values, headline, notes)


def write_figure(rows: list[dict], exponents: dict, path: Path, machine: str) -> None:
    """Log-log curves of time and peak memory against items, the fitted exponent in each legend:
    plotly HTML that loads plotly.js from its CDN (a few KB), and the figure's JSON beside it, which
    every run's report.html shows (sda_lib.workbench.report)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    items = [r["items"] for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("time (s)", "peak memory (MiB)"))
    for column, curve in enumerate(
        (
            ("prepare s", "epoch s", "full ranking s", "export s (tiny)"),
            ("prepare peak MiB", "train peak MiB", "ranking peak MiB"),
        ),
        1,
    ):
        for name in curve:
            label = f"{name} (k={exponents[name]})" if name in exponents else name
            fig.add_trace(
                go.Scatter(x=items, y=[r[name] for r in rows], mode="lines+markers", name=label), row=1, col=column
            )
    fig.update_xaxes(type="log", title_text="items")
    fig.update_yaxes(type="log")
    fig.update_layout(title=f"Cost against catalogue size (fitted: cost ~ items^k); {machine}", width=1100, height=450)
    with atomic_path(path) as tmp:
        fig.write_html(tmp, include_plotlyjs="cdn")
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(fig.to_json())
