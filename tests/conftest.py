import contextlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's, driven by Playwright
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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


@pytest.fixture
def sync_api():
    """Playwright's sync API for the browser checks; they skip, saying what to install, without
    chromium or playwright."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not found (apt-get install -y chromium): browser check skipped")
    return pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install playwright==1.65.2): browser check skipped"
    )


@pytest.fixture(scope="session")
def toy_tiny_run(tmp_path_factory):
    """Every stage on toy-tiny with small budgets, run once per session for the tests that read a
    whole run (the runner's and the report's): the outputs root, the run folder and its parameters.
    The library version is fixed at the start, so an edit to sda_lib made meanwhile (a colleague's,
    in a shared checkout) does not rerun stages."""
    from sda_lib.workbench import run as runner

    params = {"steps": 20, "ablation_steps": 20, "epochs": 3, "ablation_epochs": 3, "conflict_steps": 10}
    root = tmp_path_factory.mktemp("toy-tiny-run") / "outputs"
    version = runner.library_version()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDA_OUTPUTS", str(root))
        patch.setattr(runner, "library_version", lambda: version)
        out = runner.run_stages("toy-tiny", params=params, progress=False)
    return SimpleNamespace(outputs=root, folder=out, params=params, library_version=version)


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


def todays_project_down(layer, x):
    """MoDALinear._project_down as it was before ExpertDropoutDown, the reference the lean path must
    equal: the masks drawn from the generator as expert_keep_bits draws them, unpacked, and a loop
    over experts that keeps each expert's masked float32 copy of x for backward."""
    import torch
    import torch.nn.functional as F

    if not (layer.per_expert_masks and layer.training):
        return F.linear(layer.dropout(x.to(layer.lora_A.dtype)), layer.lora_A)
    x = x.to(layer.lora_A.dtype)
    n, cut = layer.num_experts * x.numel(), round(layer.dropout.p * 65536)
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    keep = draws.view(torch.int16)[:n].view(layer.num_experts, *x.shape) >= cut - 32768
    kept = x * (65536 / (65536 - cut))
    experts = layer.lora_A.split(layer.expert_rank)
    return torch.cat([F.linear(torch.where(keep[i], kept, 0.0), a) for i, a in enumerate(experts)], dim=-1)


@pytest.fixture
def todays_moda_path():
    """A context manager inside which every MoDA layer runs the per-expert path as it was
    (todays_project_down); processes forked inside it inherit that."""
    from sda_lib.method.moda import MoDALinear

    @contextlib.contextmanager
    def patched():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(MoDALinear, "_project_down", todays_project_down)
            yield

    return patched
