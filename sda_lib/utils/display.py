"""How things are shown: small HTML views of items (thumbnail + text) for notebooks, the explorer
and the report, and the one number format every table, verdict and report uses (`number`, `gain`,
`p_value`, `change`)."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

SIGNIFICANT = 4  # digits of every number shown


def number(x, digits: int = SIGNIFICANT) -> str:
    """A value to `digits` significant digits, trailing zeros kept so columns line up ("0.1235",
    "0.6000", "23.37", "1.200e-05"); integers as they are; "" when missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return f"{x:,}" if abs(x) >= 10_000 else str(x)
    text = f"{float(x):#.{digits}g}".rstrip(".")
    return text.removeprefix("-") if float(text) == 0 else text


def gain(x) -> str:
    """A relative change (0.056) as a signed percentage ("+5.6%"); "" when missing."""
    if x is None or math.isnan(x):
        return ""
    text = f"{float(x):+.1%}"
    return "0.0%" if text in ("+0.0%", "-0.0%") else text


def p_value(p) -> str:
    """A p-value: "< 1e-4" below 1e-4, else 2 significant digits; "" when missing."""
    if p is None or math.isnan(p):
        return ""
    return "< 1e-4" if p < 1e-4 else f"{float(p):.2g}"


def change(before: float, after: float, shown=number, higher_is_better: bool = True) -> str:
    """ "improved", "worse" or "unchanged" for a move from `before` to `after`, as a reader sees it:
    a move that does not show in the numbers as `shown` prints them is "unchanged"."""
    if shown(before) == shown(after):
        return "unchanged"
    return "improved" if (after > before) == higher_is_better else "worse"


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
