"""What a notebook's frontend can show: live widgets in a kernel that a Jupyter server started,
static views and text progress bars everywhere else.

A headless run (papermill, nbconvert, the runner) has no frontend to answer widget messages, and a
widget cell there can leave the notebook client waiting for ever (jupyter/nbclient#312). So the
explorer's sliders and tqdm's widget bars are built only where someone can move and watch them.
`SDA_WIDGETS=live` or `=static` overrides the guess (for frontends that start kernels themselves).
"""

from __future__ import annotations

import os
from typing import Literal

from .choices import check_choice

WidgetMode = Literal["auto", "live", "static"]


def live_widgets() -> bool:
    """True in a kernel a Jupyter server started for a notebook (JupyterLab, Notebook, Voilà: the
    server sets JPY_SESSION_NAME in its environment), unless SDA_WIDGETS says otherwise."""
    mode = check_choice(os.environ.get("SDA_WIDGETS", "auto"), WidgetMode, "SDA_WIDGETS")
    if mode != "auto":
        return mode == "live"
    return "JPY_SESSION_NAME" in os.environ


def tqdm(*args, **kwargs):
    """A progress bar: tqdm's notebook widget where widgets are live, else its text bar, which an
    executed notebook keeps as its final state and the runner's log shows as it goes."""
    if live_widgets():
        from tqdm.auto import tqdm as bar
    else:
        from tqdm.std import tqdm as bar

        kwargs.setdefault("mininterval", 1.0)  # each redraw is a message to the notebook client
    return bar(*args, **kwargs)
