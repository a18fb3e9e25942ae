"""The data card: what a prepared dataset holds, in numbers a reader checks before trusting results."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__


def data_card(
    name: str, items: pd.DataFrame, inter: pd.DataFrame, text_fields: list[str], counts: dict, params, n_negatives: int
) -> dict:
    n_users, n_items, n_inter = int(inter["user"].nunique()), len(items), len(inter)
    seq = inter.groupby("user").size().to_numpy()
    pop = items["popularity_all"].to_numpy()
    test = inter[inter["split"] == "test"]
    tail_test_share = float(items["is_tail"].to_numpy()[test["item"].to_numpy()].mean())
    empty_title = (items["title"].fillna("").str.strip() == "") if "title" in items else pd.Series(False)
    return {
        "dataset": name,
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "density": n_inter / (n_users * n_items),
        "sequence_length": _summary(seq),
        "item_popularity": {**_summary(pop), "gini": _gini(pop), "top10pct_share": _top_share(pop, 0.10)},
        "tail_rule": tail_rule(params),
        "tail_items": int(items["is_tail"].sum()),
        "tail_item_share": float(items["is_tail"].mean()),
        "tail_test_share": tail_test_share,
        "tail_note": _tail_note(items, params, tail_test_share),
        "missing_images": int((~items["has_image"]).sum()),
        "placeholder_share": float((~items["has_image"]).mean()),
        "missing_titles": int(empty_title.sum()),
        "text_fields": list(text_fields),
        "counts": {k: int(v) for k, v in sorted(counts.items())},
        "params": {**asdict(params), "n_negatives_used": int(n_negatives)},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sda_lib": __version__,
    }


def tail_rule(params) -> str:
    """The tail rule of `params` in words, naming it when it is the authors'."""
    if params.tail_count_on == "train":
        return f"< {params.tail_threshold} training interactions"
    authors = " (the authors' rule)" if params.tail_threshold == 4 else ""
    return f"< {params.tail_threshold} interactions over all data{authors}"


def _tail_note(items: pd.DataFrame, params, tail_test_share: float) -> str | None:
    """Why the tail metrics of this dataset will be empty, if they will."""
    counted = items["popularity_all" if params.tail_count_on == "all" else "popularity"]
    rule = tail_rule(params)
    if not items["is_tail"].any():
        other = (
            "use tail_count_on='train' (--tail-count-on train) for a training-count tail"
            if params.tail_count_on == "all"
            else "raise tail_threshold for a tail"
        )
        return f"no tail items under the rule '{rule}': every item has at least {int(counted.min())}; {other}"
    if tail_test_share == 0:
        return f"no test target is a tail item under the rule '{rule}': the tail metrics are empty"
    return None


def placeholder_note(card: dict) -> str | None:
    """The share of items shown the placeholder image, in words (None when every item has its own
    image): said at preparation and by every notebook that embeds, since image embeddings of
    placeholder items carry nothing about the item."""
    share = card.get("placeholder_share", card["missing_images"] / max(card["items"], 1))
    if card["missing_images"] == 0:
        return None
    note = (
        f"{card['missing_images']:,} of {card['items']:,} items ({share:.1%}) have no usable image and are shown "
        f"the {card['params']['placeholder']} placeholder"
    )
    if share >= 0.5:
        note = (
            f"WARNING: {note}; their image embeddings say nothing about the item. Prepare with --images DIR "
            "or --download-images for real images."
        )
    return note


def format_card(card: dict) -> str:
    """Human-readable card, ending with the card as one JSON line (for scripts that parse output)."""
    seq, pop, params = card["sequence_length"], card["item_popularity"], card["params"]
    tail_note = [f"              {card['tail_note']}"] if card["tail_note"] else []
    placeholder = placeholder_note(card)
    files_read = [Path(path).name for path in card.get("inputs", {}).get("files", {})]
    lines = [
        f"dataset       {card['dataset']}",
        f"source        {card['source']}" + (f" ({', '.join(files_read)})" if files_read else ""),
        f"recipe        {params['recipe']}: {card['recipe']}",
        f"users         {card['users']:,}",
        f"items         {card['items']:,}",
        f"interactions  {card['interactions']:,}   density {card['density']:.5f}",
        f"seq. length   mean {seq['mean']:.2f}  median {seq['median']:g}  min {seq['min']}  max {seq['max']}",
        f"popularity    mean {pop['mean']:.2f}  max {pop['max']}  gini {pop['gini']:.3f}  "
        f"top 10% of items hold {pop['top10pct_share']:.1%} of interactions",
        f"tail items    {card['tail_items']:,} ({card['tail_item_share']:.1%}; "
        f"{card['tail_test_share']:.1%} of test targets)  rule: {card['tail_rule']}",
        *tail_note,
        f"missing       images {card['missing_images']:,} (shown as the {params['placeholder']} placeholder)  "
        f"titles {card['missing_titles']:,}",
        *([f"images        {placeholder}"] if placeholder else []),
        f"negatives     {params['n_negatives_used']} per user (seed {params['seed']})",
        "counts        " + ", ".join(f"{k} {v:,}" for k, v in card["counts"].items()),
    ]
    return "\n".join(lines) + "\n" + json.dumps(card, separators=(",", ":"))


def card_figures(items: pd.DataFrame, inter: pd.DataFrame):
    """Sequence-length and item-popularity distributions (plotly), for the data notebook."""
    import plotly.express as px

    seq = inter.groupby("user").size().rename("sequence length").reset_index()
    fig_seq = px.histogram(seq, x="sequence length", log_y=True, title="Sequence length per user")
    pop = items.sort_values("popularity_all", ascending=False).reset_index(drop=True)
    pop["rank"] = np.arange(1, len(pop) + 1)
    fig_pop = px.scatter(
        pop,
        x="rank",
        y="popularity_all",
        color="is_tail",
        log_x=True,
        log_y=True,
        labels={"popularity_all": "interactions", "is_tail": "tail item"},
        title="Item popularity by rank (long tail)",
    )
    return fig_seq, fig_pop


def _summary(x: np.ndarray) -> dict:
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "min": int(x.min()),
        "p90": float(np.percentile(x, 90)),
        "max": int(x.max()),
    }


def _gini(x: np.ndarray) -> float:
    x = np.sort(x.astype(float))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def _top_share(x: np.ndarray, frac: float) -> float:
    k = max(1, int(round(len(x) * frac)))
    return float(np.sort(x)[::-1][:k].sum() / x.sum())
