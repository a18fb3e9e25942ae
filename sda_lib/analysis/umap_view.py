"""A UMAP map of text and image item embeddings, one map per version (zero-shot, adapted), with
each item's text and image linked, so the modality gap and how adaptation closes it are visible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ..utils.frontend import tqdm
from .alignment import l2_normalise


def umap_layout(
    spaces: dict[str, tuple[np.ndarray, np.ndarray]], n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0
) -> pd.DataFrame:
    """2-D UMAP coordinates of every item's text and image embedding, one fit per version on the
    L2-normalised text and image rows together (so both modalities share a map).

    Columns: version, modality ("text" | "image"), item, x, y.
    """
    for version, (t, v) in spaces.items():
        if t.shape[0] != v.shape[0]:
            raise ValueError(f"embeddings {version!r}: {t.shape[0]} text rows but {v.shape[0]} image rows")
    sizes = ", ".join(f"{version} {2 * t.shape[0]:,} points" for version, (t, _) in spaces.items())
    print(f"UMAP: one map per version ({sizes}); on 2 CPU cores about 10 s to start (numba) and 10-30 s a map")
    import umap  # imported here: its import takes seconds (numba)

    frames = []
    for version, (t, v) in tqdm(spaces.items(), desc="UMAP maps", total=len(spaces)):
        n = t.shape[0]
        points = np.vstack([l2_normalise(t), l2_normalise(v)])
        xy = umap.UMAP(
            n_neighbors=min(n_neighbors, len(points) - 1), min_dist=min_dist, random_state=seed, n_jobs=1
        ).fit_transform(points)
        frames.append(
            pd.DataFrame(
                {
                    "version": version,
                    "modality": np.repeat(["text", "image"], n),
                    "item": np.tile(np.arange(n), 2),
                    "x": xy[:, 0],
                    "y": xy[:, 1],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def umap_figure(
    layout: pd.DataFrame, items: pd.DataFrame, colour: str, links: int | None = 30, seed: int = 0
) -> go.Figure:
    """Scatter of `umap_layout`, one panel per version, circles for text and diamonds for image,
    coloured by the items column `colour` (categorical, or numeric on a scale capped at its 95th
    percentile so a long tail stays visible), with the text and image of `links` items (the same
    random sample in every panel; None: every item, 0: none) joined by a line: a line per item
    hides the points on any real catalogue. The legend sits inside the first panel."""
    if colour not in items:
        raise ValueError(f"cannot colour by {colour!r}: not an items column ({', '.join(items.columns)})")
    values = items[colour].reset_index(drop=True)
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    data = layout.assign(
        **{
            colour: values.iloc[layout["item"]].to_numpy()
            if numeric
            else values.astype(str).iloc[layout["item"]].to_numpy()
        }
    )
    hover = {"item": True, "x": False, "y": False}
    if "title" in items:
        data["title"] = items["title"].astype(str).iloc[layout["item"]].to_numpy()
        hover["title"] = True
    versions = list(dict.fromkeys(layout["version"]))
    extra = dict(range_color=(values.min(), values.quantile(0.95))) if numeric else {}
    fig = px.scatter(
        data,
        x="x",
        y="y",
        color=colour,
        symbol="modality",
        facet_col="version",
        category_orders={"version": versions, "modality": ["text", "image"]},
        symbol_map={"text": "circle", "image": "diamond"},
        opacity=0.8,
        hover_data=hover,
        title=f"UMAP of text and image embeddings, coloured by {colour}",
        **extra,
    )
    fig.update_traces(marker_size=5)
    all_items = np.unique(layout["item"])
    linked = (
        all_items
        if links is None or links >= len(all_items)
        else np.sort(np.random.default_rng(seed).choice(all_items, size=links, replace=False))
    )
    if len(linked):
        for col, version in enumerate(versions, 1):
            part = data[(data["version"] == version) & data["item"].isin(linked)]
            text = part[part["modality"] == "text"].set_index("item")
            image = part[part["modality"] == "image"].set_index("item").loc[text.index]
            xs = np.column_stack([text["x"], image["x"], np.full(len(text), np.nan)]).ravel()
            ys = np.column_stack([text["y"], image["y"], np.full(len(text), np.nan)]).ravel()
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line=dict(color="rgba(90,90,90,0.45)", width=0.8),
                    hoverinfo="skip",
                    showlegend=col == 1,
                    name=f"text-image pair ({len(linked)} of {len(all_items)} items)",
                ),
                row=1,
                col=col,
            )
        fig.data = fig.data[-len(versions) :] + fig.data[: -len(versions)]  # lines under the points
    fig.update_xaxes(matches=None, showticklabels=False, title=None)
    fig.update_yaxes(matches=None, showticklabels=False, title=None)
    fig.for_each_annotation(lambda a: a.update(text=a.text.removeprefix("version=")))
    fig.update_layout(  # the legend inside the first panel's top left corner, where nothing clips it
        height=560,
        legend=dict(x=0.005, y=0.995, xanchor="left", yanchor="top", bgcolor="rgba(255,255,255,0.8)", font_size=11),
        margin=dict(t=70),
    )
    return fig
