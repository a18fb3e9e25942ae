"""The run report: one self-contained HTML page per run folder, rendered from
`templates/report.html.j2`.

Notebooks hand their results over as files: tables as CSV under `<run>/tables/` and plotly figures
as JSON under `<run>/figures/` (`save_table`, `save_figure`), named `<order>-<title>` so the page
keeps the stage order. The report adds the data card, every stage's parameters, the software
versions and links to the executed notebooks.
"""

from __future__ import annotations

import datetime as dt
import html
import platform
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path, read_json, slug
from .model_card import refresh_model_cards
from .paths import REPO_ROOT, outputs_root

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "numpy",
    "pandas",
    "scikit-learn",
    "umap-learn",
    "plotly",
    "papermill",
)


def save_table(df: pd.DataFrame, run_dir: str | Path, order: str, title: str) -> Path:
    """Hand a table to the report (and keep it as a flat CSV beside the run: multi-level column
    names are joined, the row labels become columns). Notes in `df.attrs["notes"]` (what a number
    means, why a column is empty) go to a `.notes.txt` beside it and under the table."""
    flat = df.copy()
    if isinstance(flat.columns, pd.MultiIndex):
        flat.columns = [" ".join(str(part) for part in col if str(part)) for col in flat.columns]
    if not isinstance(flat.index, pd.RangeIndex):
        flat = flat.rename_axis([name or "" for name in flat.index.names]).reset_index()
    path = Path(run_dir) / "tables" / f"{order}-{slug(title)}.csv"
    with atomic_path(path) as tmp:
        flat.to_csv(tmp, index=False)
    notes = df.attrs.get("notes") or []
    notes_path = path.with_suffix(".notes.txt")
    if notes:
        with atomic_path(notes_path) as tmp:
            tmp.write_text("\n".join(map(str, [notes] if isinstance(notes, str) else notes)) + "\n")
    else:
        notes_path.unlink(missing_ok=True)
    return path


def save_figure(fig, run_dir: str | Path, order: str, title: str) -> Path:
    """Hand a plotly figure to the report."""
    path = Path(run_dir) / "figures" / f"{order}-{slug(title)}.json"
    with atomic_path(path) as tmp:
        tmp.write_text(fig.to_json())
    return path


def build_report(run_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """Write `<run>/report.html` from what the stages left in the run folder."""
    run_dir = Path(run_dir)
    stages = read_json(run_dir / "stages.json") or {}
    dataset = next((s["params"]["dataset"] for s in stages.values()), run_dir.parent.name)
    data_dir = Path(data_dir) if data_dir else run_dir.parent / "data"
    card = read_json(data_dir / "card.json")

    sections = []
    if card:
        sections.append(("Data card", _card_table(card)))
    tables = sorted((run_dir / "tables").glob("*.csv")) if (run_dir / "tables").exists() else []
    figures = sorted((run_dir / "figures").glob("*.json")) if (run_dir / "figures").exists() else []
    items = sorted([(p.stem, "table", p) for p in tables] + [(p.stem, "figure", p) for p in figures])
    first_figure = True
    for stem, kind, path in items:
        title = stem.split("-", 1)[1].replace("-", " ").capitalize() if "-" in stem else stem
        if kind == "table":
            df = pd.read_csv(path).rename(columns=lambda c: "" if c.startswith("Unnamed:") else c)
            body = df.to_html(float_format=lambda x: f"{x:.4g}", border=0, classes="t", na_rep="", index=False)
            notes = path.with_suffix(".notes.txt")
            if notes.exists():
                body += "".join(
                    f'<p class="note">{html.escape(line)}</p>'
                    for line in notes.read_text().splitlines()
                    if line.strip()
                )
        else:
            body = _figure_html(path, first_figure)
            first_figure = False
        sections.append((title, body))
    scaling = outputs_root() / "bench" / "scaling.json"  # the latest `python -m sda_lib.bench scaling`
    if scaling.is_file():
        note = "python -m sda_lib.bench scaling, on the machine named in the title; not part of this run"
        sections.append(
            ("Scaling of this workbench", _figure_html(scaling, first_figure) + f'<p class="note">{note}</p>')
        )
    sections.append(("Parameters", _params_table(stages)))
    sections.append(("Software", _versions_table()))
    notebooks = sorted(run_dir.glob("*.ipynb"))
    links = "".join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.name)}</a></li>' for p in notebooks)
    sections.append(("Executed notebooks", f"<ul>{links}</ul>"))

    fidelity = REPO_ROOT / "docs" / "FIDELITY.md"
    profiles = {s.get("profile") for s in stages.values()} - {None}
    page = _template().render(
        title=f"SDA workbench: {dataset} / {run_dir.name}",
        profile=", ".join(sorted(map(str, profiles))),
        fidelity=fidelity.as_uri() if fidelity.exists() else None,
        sections=[{"title": t, "body": b} for t, b in sections],
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    out = run_dir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    refresh_model_cards(run_dir)  # the adapters' cards carry the figures measured since they were saved
    return out


def _figure_html(path: Path, first: bool) -> str:
    """A saved plotly figure as an HTML fragment (420 px high unless its layout says otherwise); the
    page's first figure carries plotly.js inline."""
    import plotly.io as pio

    fig = pio.from_json(path.read_text())
    return fig.to_html(
        full_html=False,
        include_plotlyjs="inline" if first else False,
        default_width="100%",
        default_height="420px",
    )


def report_numbers(path: str | Path) -> dict[str, int]:
    """Counts a reader (or a test) checks: tables, figures, numeric cells and non-finite ones."""
    text = Path(path).read_text()
    cells = [html.unescape(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", text, flags=re.S)]
    numbers = []
    for c in cells:
        try:
            numbers.append(float(c.rstrip("%")))
        except ValueError:
            if c.lower() in ("nan", "inf", "-inf"):
                numbers.append(float(c))
    return {
        "tables": text.count("<table"),
        "figures": text.count('class="plotly-graph-div"'),
        "numbers": len(numbers),
        "non_finite": int(sum(not np.isfinite(x) for x in numbers)),
    }


def _card_table(card: dict) -> str:
    rows = {
        "users": card["users"],
        "items": card["items"],
        "interactions": card["interactions"],
        "density": round(card["density"], 6),
        "mean sequence length": round(card["sequence_length"]["mean"], 2),
        "tail items": card["tail_items"],
        "tail item share": round(card["tail_item_share"], 4),
        "tail share of test targets": round(card["tail_test_share"], 4),
        "items without image": card["missing_images"],
        "share of items on the placeholder image": round(
            card.get("placeholder_share", card["missing_images"] / max(card["items"], 1)), 4
        ),
        "items without title": card["missing_titles"],
        "negatives per user": card["params"]["n_negatives_used"],
    }
    shown = {k: f"{v:,}" if isinstance(v, int) else f"{v:.4f}" for k, v in rows.items()}
    return pd.Series(shown, name="value").to_frame().to_html(border=0, classes="t")


def _params_table(stages: dict) -> str:
    rows = [
        {"stage": s, "seconds": v.get("seconds"), **{k: str(x) for k, x in v["params"].items() if k != "out_dir"}}
        for s, v in stages.items()
    ]
    if not rows:
        return "<p>no stage record</p>"
    return pd.DataFrame(rows).set_index("stage").fillna("").to_html(border=0, classes="t")


def _versions_table() -> str:
    rows = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            rows[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            rows[name] = "not installed"
    return pd.Series(rows, name="version").to_frame().to_html(border=0, classes="t")


def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("sda_lib", "templates"), autoescape=True)
    return env.get_template("report.html.j2")
