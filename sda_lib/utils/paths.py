"""Where outputs and the stage notebooks live, so notebooks (cwd notebooks/), the CLI and papermill
agree on one folder, in a checkout and in an installed wheel alike."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE.parent  # the checkout, when the package runs from one (pyproject.toml beside it)
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").exists()
# The templates the runner executes: notebooks/ of the checkout, else the copies the wheel installs.
NOTEBOOKS = REPO_ROOT / "notebooks" if IN_CHECKOUT else PACKAGE / "notebooks"


def outputs_root() -> Path:
    """$SDA_OUTPUTS, else `outputs/` of the checkout (editable install), else `./outputs`."""
    if os.environ.get("SDA_OUTPUTS"):
        return Path(os.environ["SDA_OUTPUTS"])
    if IN_CHECKOUT:
        return REPO_ROOT / "outputs"
    return Path.cwd() / "outputs"


def data_dir(dataset: str) -> Path:
    return outputs_root() / dataset / "data"


def run_dir(dataset: str, run: str = "default") -> Path:
    return outputs_root() / dataset / run
