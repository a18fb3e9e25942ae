"""The explorer in a real browser: JupyterLab on loopback, Debian's chromium driven by Playwright.

Runs a small notebook that builds the explorer on synthetic items, moves the item slider with the
keyboard and checks that the neighbour panel follows. Skips when chromium or playwright is absent.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import CHROMIUM, CHROMIUM_FLAGS

SCREENSHOT = Path("/tmp/sda-explorer-browser.png")
TOKEN = "sda-explorer-test"

NOTEBOOK_CODE = """\
import numpy as np
from PIL import Image
from sda_lib.analysis.explorer import ExplorerData, explorer_widget

rng = np.random.default_rng(0)
words = ["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliet"]
paths = []
for i, word in enumerate(words):
    paths.append(f"{word}.png")
    Image.new("RGB", (32, 32), tuple(int(c) for c in rng.integers(0, 256, 3))).save(paths[-1])
spaces = {version: (rng.normal(size=(10, 8)), rng.normal(size=(10, 8))) for version in ("zero-shot", "adapted")}
data = ExplorerData([f"{w} lamp" for w in words], paths, ["synthetic"] * 10, spaces)
explorer_widget(data, item=0, k=3, tau=1.0)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s:\n{log.read_text()[-2000:]}")


@pytest.fixture
def jupyter_lab(sync_api, tmp_path):
    """A JupyterLab server on 127.0.0.1 serving tmp_path/work, with its own config and runtime dirs;
    stopped (with its kernels) at teardown."""
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    env = os.environ | {
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter",
                "lab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--IdentityProvider.token={TOKEN}",
                f"--ServerApp.root_dir={work}",
                "--ServerApp.allow_root=True",
                "--ServerApp.terminals_enabled=False",
                "--LabApp.extension_manager=readonly",
                "--LabApp.expose_app_in_browser=True",
                f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
                f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
            ],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", server, log)
        yield f"http://127.0.0.1:{port}", work
    finally:
        server.send_signal(signal.SIGINT)  # jupyter shuts its kernels down on SIGINT (asks twice)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)  # the server's own session: leftover kernels
        except ProcessLookupError:
            pass


def panel_text(page) -> str:
    return page.inner_text(".sda-explorer-panel")


def test_item_slider_changes_the_neighbour_panel(sync_api, jupyter_lab, tmp_path):
    base, work = jupyter_lab
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK_CODE)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, work / "explorer.ipynb")

    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1100},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/explorer.ipynb?token={TOKEN}")
            page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')")
            page.wait_for_function(  # a kernel is attached and idle
                "() => !document.querySelector('.jp-KernelName').textContent.includes('No Kernel')"
                " && document.querySelector('.jp-Notebook-ExecutionIndicator[data-status=\"idle\"]')"
            )
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_selector(".sda-explorer-panel")
            before = panel_text(page)
            assert "item #0: Alpha lamp" in before

            handle = page.locator(".widget-slider .noUi-handle").first  # the item slider
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function("() => document.querySelector('.sda-explorer-panel').innerText.includes('item #1:')")
            after = panel_text(page)
            page.wait_for_function(  # the T_i / P_i bars follow as well
                "() => [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                ".some(t => t.textContent.startsWith('Item #1:'))"
            )
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            context.close()
    assert "item #1: Bravo lamp" in after
    # The neighbour lists below the header moved with the item too.
    assert before.split("text neighbours")[1] != after.split("text neighbours")[1]
