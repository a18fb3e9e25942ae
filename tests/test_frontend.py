"""Widgets only where a frontend can show them; headless runs get static views and text bars."""

import pytest
from tqdm.std import tqdm as text_bar

from sda_lib.utils import frontend


@pytest.mark.parametrize(
    ("env", "live"),
    [
        ({}, False),  # papermill, nbconvert, a script: no Jupyter server started the kernel
        ({"JPY_SESSION_NAME": "/lab/08_alignment.ipynb"}, True),  # JupyterLab's kernel
        ({"JPY_SESSION_NAME": "x", "SDA_WIDGETS": "static"}, False),  # the runner's kernels
        ({"SDA_WIDGETS": "live"}, True),  # a frontend that starts its own kernels
    ],
)
def test_live_widgets_only_in_a_jupyter_servers_kernel_unless_told(monkeypatch, env, live):
    for name in ("JPY_SESSION_NAME", "SDA_WIDGETS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert frontend.live_widgets() is live


def test_a_bad_widget_mode_names_the_variable(monkeypatch):
    monkeypatch.setenv("SDA_WIDGETS", "sliders")
    with pytest.raises(ValueError, match="SDA_WIDGETS must be one of auto, live, static, got 'sliders'"):
        frontend.live_widgets()


def test_headless_progress_is_a_text_bar(monkeypatch):
    monkeypatch.setenv("SDA_WIDGETS", "static")
    bar = frontend.tqdm(range(3), disable=True)
    assert type(bar) is text_bar and list(bar) == [0, 1, 2]
