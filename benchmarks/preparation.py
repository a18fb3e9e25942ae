"""Data preparation: time and peak memory of preparing the datasets."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .core import (
    Measurement,
    Options,
    in_fresh_process,
)


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
