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


@pytest.fixture(scope="session")
def toy_tiny(tmp_path_factory):
    """toy-tiny prepared once per test session."""
    from sda_lib.data import load_prepared, prepare_dataset

    return load_prepared(prepare_dataset("toy-tiny", out=tmp_path_factory.mktemp("toy-tiny") / "data"))


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and a shared machine does not thrash."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps one process-wide state whose mixed precision cannot change; tests that
    train in bf16 and in fp32 each get their own, as separate runs would."""
    yield
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
