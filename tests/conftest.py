import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """An empty outputs root for code that writes under outputs/<dataset>/..."""
    root = tmp_path / "outputs"
    monkeypatch.setenv("SDA_OUTPUTS", str(root))
    return root


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found; real-data checks skipped")
    return SHARED_DATA


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
