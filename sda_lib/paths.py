"""Where outputs live, so notebooks (cwd notebooks/), the CLI and papermill agree on one folder."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def outputs_root() -> Path:
    """$SDA_OUTPUTS, else `outputs/` of the checkout (editable install), else `./outputs`."""
    if os.environ.get("SDA_OUTPUTS"):
        return Path(os.environ["SDA_OUTPUTS"])
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / "outputs"
    return Path.cwd() / "outputs"


def data_dir(dataset: str) -> Path:
    return outputs_root() / dataset / "data"


def run_dir(dataset: str, run: str = "default") -> Path:
    return outputs_root() / dataset / run
