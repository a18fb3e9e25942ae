"""Small HTML views of items (thumbnail + text) for notebooks, the explorer and the report."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image


def thumbnail_uri(path: str | Path, size: int = 96) -> str:
    """A PNG data URI, so the HTML stays self-contained when saved or exported."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def item_card_html(path: str | Path, title: str, note: str = "", size: int = 96) -> str:
    return (
        f'<div style="display:inline-block;width:{size + 44}px;margin:4px;vertical-align:top;'
        f'font:11px sans-serif"><img src="{thumbnail_uri(path, size)}" width="{size}"><br>'
        f"{html.escape(title[:80])}<br><i>{html.escape(note)}</i></div>"
    )


def item_gallery(data, n: int = 12, seed: int = 0, items=None) -> str:
    """HTML of `n` random items (or the given item indices) with image, title and tail mark."""
    if items is None:
        items = np.random.default_rng(seed).choice(data.n_items, size=min(n, data.n_items), replace=False)
    paths, rows = data.image_paths(), data.items
    cards = []
    for i in items:
        row = rows.iloc[int(i)]
        title = str(row.get("title", "")) or "(no title)"
        note = f"#{int(i)} · {int(row['popularity'])} train"
        note += " · tail" if row["is_tail"] else ""
        note += "" if row["has_image"] else " · no image"
        cards.append(item_card_html(paths[int(i)], title, note))
    return "<div>" + "".join(cards) + "</div>"
