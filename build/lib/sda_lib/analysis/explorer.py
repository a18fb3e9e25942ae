"""The alignment explorer: one item's neighbourhoods in text, image and cross-modal space, before
and after adaptation, and its CMSA soft-teacher row against its cross-modal row.

Everything is a pure function of an `ExplorerData` (the HTML panel and the figure included), so it
is tested without a kernel; `explorer_widget` only wires sliders to them. Embeddings are
L2-normalised as CMSA sees them (normalize=True), and the whole catalogue plays the batch: T_i and
P_i are distributions over every item.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy.special import rel_entr, softmax

from ..utils.display import item_card_html
from ..utils.frontend import live_widgets
from .alignment import knn, l2_normalise

SPACES = ("text", "image", "cross-modal")
PANEL_CLASS = "sda-explorer-panel"


@dataclass
class ExplorerData:
    """Items (titles, image paths, a short note such as the category) and, per version
    ("zero-shot", "adapted", ...), their text and image embeddings, row i = item i."""

    titles: list[str]
    image_paths: list[Path]
    notes: list[str]
    spaces: dict[str, tuple[np.ndarray, np.ndarray]]

    def __post_init__(self):
        n = len(self.titles)
        if len(self.image_paths) != n or len(self.notes) != n:
            raise ValueError(
                f"{n} titles but {len(self.image_paths)} image paths and {len(self.notes)} notes; "
                "give one of each per item"
            )
        if not self.spaces:
            raise ValueError("no embeddings: pass spaces={'zero-shot': (text, image), ...}")
        for version, (t, v) in self.spaces.items():
            if t.ndim != 2 or t.shape[0] != n or v.ndim != 2 or v.shape[0] != n:
                raise ValueError(
                    f"embeddings {version!r}: text {t.shape} and image {v.shape} must both be [{n} items, d]"
                )
        self.spaces = {k: (l2_normalise(t), l2_normalise(v)) for k, (t, v) in self.spaces.items()}

    @property
    def n_items(self) -> int:
        return len(self.titles)

    @classmethod
    def from_dataset(
        cls, dataset, spaces: dict[str, tuple[np.ndarray, np.ndarray]], note_column: str | None = None
    ) -> ExplorerData:
        """From a PreparedDataset; `note_column` (e.g. latent_category, categories) labels each card."""
        items = dataset.items
        if note_column is not None and note_column not in items:
            raise ValueError(
                f"note_column {note_column!r} is not an items column of {dataset.name!r}; "
                f"columns: {', '.join(items.columns)}"
            )
        raw = items["title"].fillna("").astype(str) if "title" in items else [""] * dataset.n_items
        titles = [t or "(no title)" for t in raw]
        notes = [str(x) for x in items[note_column]] if note_column else [""] * dataset.n_items
        return cls(titles, dataset.image_paths(), notes, spaces)


def _check_item(data: ExplorerData, i: int) -> int:
    if not 0 <= i < data.n_items:
        raise IndexError(f"item {i} is out of range: the explorer holds items 0..{data.n_items - 1}")
    return int(i)


def teacher_row(t: np.ndarray, v: np.ndarray, i: int, tau: float) -> np.ndarray:
    """T_i = softmax(tau/2 (t_i tᵀ + v_i vᵀ)) over all items, on L2-normalised embeddings."""
    t, v = l2_normalise(t).astype(np.float64), l2_normalise(v).astype(np.float64)
    return softmax(tau / 2 * (t @ t[i] + v @ v[i]))


def cross_modal_row(t: np.ndarray, v: np.ndarray, i: int, tau: float) -> np.ndarray:
    """P_i = softmax(t_i vᵀ / tau): how item i's text scores every item's image."""
    t, v = l2_normalise(t).astype(np.float64), l2_normalise(v).astype(np.float64)
    return softmax(v @ t[i] / tau)


def neighbours(t: np.ndarray, v: np.ndarray, i: int, k: int) -> dict[str, np.ndarray]:
    """Item i's k nearest items (cosine) in text space and image space (itself excluded) and the k
    images nearest to its text (its own image included: ideally it comes first)."""
    k = min(k, len(t) - 1)

    def nearest(x, query, exclude_self):
        found = knn(x, k + 1, queries=query[None], exclude_self=False)[0]
        return found[found != i][:k] if exclude_self else found[:k]

    return {"text": nearest(t, t[i], True), "image": nearest(v, v[i], True), "cross-modal": nearest(v, t[i], False)}


def own_image_rank(t: np.ndarray, v: np.ndarray, i: int) -> int:
    """1-based rank of item i's image among all images, queried by its text (ties count against it)."""
    sims = l2_normalise(v) @ l2_normalise(t)[i]
    return int((sims >= sims[i]).sum())


def panel_html(data: ExplorerData, i: int, k: int = 5) -> str:
    """Item i's card, then for each space its k neighbours in every version (thumbnail, title, cosine)."""
    i = _check_item(data, i)

    def card(j, note):
        return item_card_html(data.image_paths[j], data.titles[j], note)

    found = {version: neighbours(t, v, i, k) for version, (t, v) in data.spaces.items()}
    parts = [
        f'<div class="{PANEL_CLASS}" style="font:12px sans-serif">',
        f"<b>item #{i}</b>: {html.escape(data.titles[i])}<br>",
        card(i, data.notes[i]),
    ]
    for space in SPACES:
        parts.append(f"<h4 style='margin:8px 0 2px'>{space} neighbours</h4>")
        for version, (t, v) in data.spaces.items():
            keys, query = {"text": (t, t[i]), "image": (v, v[i]), "cross-modal": (v, t[i])}[space]
            header = html.escape(version)
            if space == "cross-modal":
                header += f" (own image ranked #{own_image_rank(t, v, i)} of {data.n_items})"
            cards = "".join(
                card(j, f"#{j} · cos {keys[j] @ query:.3f}" + (" · own image" if j == i else ""))
                for j in found[version][space]
            )
            parts.append(f"<div><i>{header}</i><br>{cards}</div>")
    parts.append("</div>")
    return "".join(parts)


def rows_figure(data: ExplorerData, i: int, tau: float, top: int = 10) -> go.Figure:
    """Bars of T_i and P_i over the items either ranks in its `top`, one panel per version, with
    KL(T_i || P_i), item i's term of the CMSA loss, in each title."""
    i = _check_item(data, i)
    rows = {ver: (teacher_row(t, v, i, tau), cross_modal_row(t, v, i, tau)) for ver, (t, v) in data.spaces.items()}
    titles = [f"{ver}: KL(T‖P) = {rel_entr(T, P).sum():.4f}" for ver, (T, P) in rows.items()]
    fig = make_subplots(rows=1, cols=len(rows), subplot_titles=titles)
    for col, (T, P) in enumerate(rows.values(), 1):
        shown = np.unique(np.concatenate([np.argsort(-T)[:top], np.argsort(-P)[:top]]))
        shown = shown[np.argsort(-T[shown])]
        labels = [f"#{j} {data.titles[j][:18]}" for j in shown]
        for name, values, colour in (("T_i (soft teacher)", T, "#1f77b4"), ("P_i (cross-modal)", P, "#ff7f0e")):
            fig.add_trace(
                go.Bar(
                    x=labels, y=values[shown], name=name, marker_color=colour, legendgroup=name, showlegend=col == 1
                ),
                row=1,
                col=col,
            )
    fig.update_layout(
        barmode="group", height=420, title=f"Item #{i}: soft-teacher row vs cross-modal row, tau={tau:.3g}"
    )
    fig.update_xaxes(tickangle=45)
    return fig


def explorer_widget(data: ExplorerData, item: int = 0, k: int = 5, tau: float = 1.0):
    """Sliders for item, k and tau over the panel and the T_i/P_i figure where a frontend can show
    them (sda_lib.utils.frontend); in a headless run a note instead, the notebook's static views standing
    in (a widget there can hang the notebook client)."""
    from IPython.display import HTML, clear_output, display

    if not live_widgets():
        return HTML(
            "<i>Headless run: the static views below stand in for the explorer's sliders, which need "
            "a live Jupyter kernel (SDA_WIDGETS=live builds them anyway).</i>"
        )
    import ipywidgets as widgets

    item_slider = widgets.IntSlider(
        value=item, min=0, max=data.n_items - 1, description="item", continuous_update=False
    )
    k_slider = widgets.IntSlider(
        value=k, min=1, max=max(1, min(20, data.n_items - 1)), description="k", continuous_update=False
    )
    tau_slider = widgets.FloatLogSlider(
        value=tau, base=10, min=-2, max=1, step=0.05, description="tau", continuous_update=False
    )
    panel = widgets.HTML()
    figure = widgets.Output()

    def update(_=None):
        panel.value = panel_html(data, item_slider.value, k_slider.value)
        with figure:
            clear_output(wait=True)
            display(rows_figure(data, item_slider.value, tau_slider.value))

    for slider in (item_slider, k_slider, tau_slider):
        slider.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([item_slider, k_slider, tau_slider]), panel, figure])
