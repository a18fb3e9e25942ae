"""The run report: one self-contained HTML page per run folder, rendered from
`templates/report.html.j2`.

Notebooks hand their results over as files: tables as CSV under `<run>/tables/`, plotly figures
as JSON under `<run>/figures/` (`save_table`, `save_figure`), named `<order>-<title>`, and one-line
verdicts on what SDA's mechanisms did as JSON under `<run>/findings/` (`save_finding`). The page
opens with those verdicts ("What this run shows"), then shows the tables and figures in the paper's
order under headings in words (HEADINGS), every number in one format (`display`), and ends with
the data card, every stage's parameters, the software versions and the executed notebooks.
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

from ..method.adapters import saved_kind
from ..method.model_card import refresh_model_cards
from ..utils import display
from ..utils.io import atomic_path, read_json, slug, write_json
from ..utils.paths import REPO_ROOT, outputs_root

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


def save_finding(finding: dict | None, run_dir: str | Path, order: str) -> Path | None:
    """Hand the report one of its top verdicts: a dict with "mechanism" (one of MECHANISMS),
    "verdict" (a few words), "measured" (the number behind it, formatted by `display`) and "paper"
    (the published value in words, None where the paper has none to compare). None: nothing was
    measured (the report says so)."""
    if finding is None:
        return None
    if finding["mechanism"] not in MECHANISMS:
        raise ValueError(f"unknown mechanism {finding['mechanism']!r}; the report shows {', '.join(MECHANISMS)}")
    path = Path(run_dir) / "findings" / f"{order}-{slug(finding['mechanism'])}.json"
    write_json(path, finding)
    return path


# The page's parts in the paper's order (Table 1, Table 2, Figure 3, section 3.3.3's gradient study,
# the alignment it motivates), then what the paper does not show; each in the menu.
PARTS = {
    "summary": "What this run shows",
    "data": "The data",
    "table-1": "Table 1: recommendation with SDA's features",
    "table-2": "Table 2: what each part of SDA adds",
    "figure-3": "Figure 3: text and image features apart",
    "gradients": "Gradient conflict between the modalities",
    "alignment": "Alignment of text and image",
    "sweep": "The sweep",
    "more": "Further results",
    "details": "Run details",
}
# Saved tables and figures by key (`<order>-<slug of the title>`): their part and heading, in the
# order they are shown; `{name}` is the pattern's group, with hyphens as spaces. A key no pattern
# matches goes to "Further results" under its title as saved.
HEADINGS = (
    (r"01-item-popularity-long-tail", "data", "How often each item is bought: the long tail"),
    (
        r"05-table-1-(?P<protocol>\w+)-ranking",
        "table-1",
        "Hit@10 and NDCG@10 per model and features ({protocol} ranking)",
    ),
    (
        r"05-abstract-aggregates-beside-the-published-ones",
        "table-1",
        "SDA's mean gain over CLIP, as the abstract reports it",
    ),
    (
        r"06-table-2-ablations-(?P<model>\w+)-(?P<protocol>\w+)-ranking",
        "table-2",
        "SDA without each component ({model}, {protocol} ranking)",
    ),
    (r"06-ablations-ndcg-10", "table-2", "NDCG@10 of each ablation variant"),
    (r"05-figure-3-slmrec-modality-replacement", "figure-3", "SLMRec on Base, SDA text, SDA image and both"),
    (
        r"07-gradient-conflict-per-projection-section-3-3-3",
        "gradients",
        "Gradient cosine per projection, beside section 3.3.3",
    ),
    (r"07-gradient-conflict-finding", "gradients", "What the gradient study finds"),
    (r"07-gradient-conflict-over-training", "gradients", "Gradient cosine over training: shared LoRA and MoDA"),
    (r"07-gradient-conflict-summary", "gradients", "Gradient cosine at the first and last step, per part"),
    (
        r"03-gradient-conflict-during-adaptation-(?P<adapter>.+)",
        "gradients",
        "Gradient cosine while the {adapter} adapter trained",
    ),
    (r"07-moda-gate-weights", "gradients", "How MoDA's gates weigh the experts for text and image"),
    (
        r"04-alignment-of-all-items-zero-shot-vs-adapted",
        "alignment",
        "Every item's text and image, before and after adaptation",
    ),
    # notebook 08 saves the same measures of the same embeddings; shown only where 04's is missing
    (r"08-alignment-zero-shot-vs-adapted", "alignment", "Every item's text and image, before and after adaptation"),
    (r"02-zero-shot-pair-cosines", "alignment", "Cosine of matched and random text-image pairs before adaptation"),
    (r"08-umap-by-(?P<colour>.+)", "alignment", "Map of the items (UMAP), coloured by {colour}"),
    (r"00-points-of-the-sweep", "sweep", "Points of the sweep"),
    (r"00-metrics-against-the-swept-parameter", "sweep", "Metrics against the swept parameter"),
    (
        r"09-sda-s-gain-over-zero-shot-features-per-condition-(?P<protocol>\w+)-ranking",
        "sweep",
        "SDA's gain over zero-shot features per condition ({protocol} ranking)",
    ),
    (r"05-recommendation-full-ranking", "more", "Every feature setting against ID only (full ranking)"),
    (r"05-gains-by-item-popularity", "more", "SDA's gain by how popular the target item is"),
    (r"03-training-loss-(?P<adapter>.+)", "more", "Training loss of the {adapter} adapter"),
)
WORDS = {"is tail": "long-tail membership", "latent category": "latent category"}  # pattern groups in words
MECHANISMS = {  # finding key -> how the summary names it, in the order it lists them
    "alignment": "Alignment: an item's text finds its image",
    "structure": "Structure kept: neighbours agree across modalities",
    "CMSA vs InfoNCE": "CMSA's soft target vs InfoNCE",
    "gradient conflict": "Gradient conflict: MoDA vs a shared LoRA",
    "recommendation": "Recommendation with SDA's features",
}
MEASURED_BY = {  # where a missing finding would come from
    "alignment": "04_export",
    "structure": "04_export",
    "CMSA vs InfoNCE": "06_ablations (with the w/o soft target variant)",
    "gradient conflict": "07_gradient_conflict",
    "recommendation": "05_recommend",
}


def build_report(run_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """Write `<run>/report.html` from what the stages left in the run folder: the verdicts at the
    top, then the paper's tables and figures in the paper's order, then the rest."""
    run_dir = Path(run_dir)
    stages = read_json(run_dir / "stages.json") or {}
    dataset = next((s["params"]["dataset"] for s in stages.values()), run_dir.parent.name)
    data_dir = Path(data_dir) if data_dir else run_dir.parent / "data"
    card = read_json(data_dir / "card.json")

    parts: dict[str, list[tuple[str, str]]] = {part: [] for part in PARTS}  # part -> [(heading, body)]
    parts["summary"].append(("", _summary_html(run_dir, stages, card, dataset)))
    if card:
        parts["data"].append(("Data card", _card_table(card)))
    first_figure = [True]
    for part, heading, paths in _saved_items(run_dir):
        parts[part].append((heading, "".join(_item_html(path, first_figure) for path in paths)))
    scaling = outputs_root() / "bench" / "scaling.json"  # the latest `python -m sda_lib.bench scaling`
    if scaling.is_file():
        note = "python -m sda_lib.bench scaling, on the machine named in the title; not part of this run"
        parts["details"].append(
            ("Scaling of this workbench", _figure_html(scaling, first_figure) + f'<p class="note">{note}</p>')
        )
    parts["details"].append(("Parameters", _params_table(stages)))
    parts["details"].append(("Software", _versions_table()))
    notebooks = sorted(run_dir.glob("*.ipynb"))
    links = "".join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.name)}</a></li>' for p in notebooks)
    parts["details"].append(("Executed notebooks", f"<ul>{links}</ul>"))

    fidelity = REPO_ROOT / "docs" / "FIDELITY.md"
    profiles = {s.get("profile") for s in stages.values()} - {None}
    page = _template().render(
        title=f"SDA workbench: {dataset} / {run_dir.name}",
        profile=", ".join(sorted(map(str, profiles))),
        fidelity=fidelity.as_uri() if fidelity.exists() else None,
        sections=[
            {"id": part, "title": PARTS[part], "items": [{"title": t, "body": b} for t, b in items]}
            for part, items in parts.items()
            if items
        ],
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    out = run_dir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    refresh_model_cards(run_dir, saved_kind)  # the adapters' cards carry the figures measured since they were saved
    return out


def heading_of(key: str) -> tuple[str, str, int]:
    """The part, heading and rank (its place in HEADINGS) of a saved table's or figure's key."""
    for rank, (pattern, part, heading) in enumerate(HEADINGS):
        match = re.fullmatch(pattern, key)
        if match:
            words = {k: WORDS.get(v.replace("-", " "), v.replace("-", " ")) for k, v in match.groupdict().items()}
            return part, heading.format(**words), rank
    title = key.split("-", 1)[1] if "-" in key else key
    return "more", title.replace("-", " ").capitalize(), len(HEADINGS)


def _saved_items(run_dir: Path) -> list[tuple[str, str, list[Path]]]:
    """(part, heading, files) for every saved table and figure, in HEADINGS' order; the files of
    one heading (a figure and its table) together, figures first; a later duplicate of a heading
    (notebook 08's alignment table beside 04's) left out."""
    files = [*sorted(run_dir.glob("figures/*.json")), *sorted(run_dir.glob("tables/*.csv"))]
    grouped: dict[tuple[int, str, str], list[Path]] = {}
    keys: dict[str, str] = {}  # heading -> the key that filled it first
    for path in sorted(files, key=lambda p: heading_of(p.stem)[2]):
        part, heading, rank = heading_of(path.stem)
        if keys.setdefault(heading, path.stem[:2]) != path.stem[:2]:
            continue  # another stage already filled this heading
        grouped.setdefault((rank, part, heading), []).append(path)
    return [(part, heading, paths) for (_, part, heading), paths in sorted(grouped.items(), key=lambda kv: kv[0][0])]


def _item_html(path: Path, first_figure: list[bool]) -> str:
    if path.suffix == ".json":
        return _figure_html(path, first_figure)
    return _table_html(path)


def _table_html(path: Path) -> str:
    """A saved table in the report's one number format (`display`), with its notes under it."""
    df = pd.read_csv(path).rename(columns=lambda c: "" if c.startswith("Unnamed:") else c)
    shown = df.astype(object).where(df.notna(), "")
    has_gain = any("gain" in str(c) for c in df.columns)
    for column in df.columns:
        values = df[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            shown_as = _formatter(str(column), has_gain)
            counts = values.dropna().map(float).map(float.is_integer).all()  # counts read back as floats
            shown[column] = ["" if pd.isna(v) else shown_as(int(v) if counts else v) for v in values]
    body = shown.to_html(border=0, classes="t", index=False)
    notes = path.with_suffix(".notes.txt")
    if notes.exists():
        body += "".join(
            f'<p class="note">{html.escape(line)}</p>' for line in notes.read_text().splitlines() if line.strip()
        )
    return body


def _formatter(column: str, has_gain: bool):
    """How a numeric column is shown: p-values as `display.p_value`, relative changes (gains, Δ,
    relative differences from the paper, a gain's interval bounds) as signed percentages, every
    other number to 4 significant digits."""
    words = column.split()
    last = words[-1] if words else ""
    if last == "p":
        return display.p_value
    if "gain" in words or last == "Δ" or column.endswith("vs paper") or (has_gain and column in ("low", "high")):
        return display.gain
    return display.number


def _summary_html(run_dir: Path, stages: dict, card: dict | None, dataset: str) -> str:
    """What SDA did in this run, in one sentence, and each mechanism's verdict with its number and
    the paper's."""
    from ..recsys import published  # imported here: the recommenders import torch

    found = {}
    for path in sorted(run_dir.glob("findings/*.json")):
        finding = read_json(path)
        found[finding["mechanism"]] = finding
    no_paper = published.comparable([dataset])
    rows = []
    for key, label in MECHANISMS.items():
        finding = found.get(key)
        if finding is None:
            rows.append((label, "not measured", f"run {MEASURED_BY[key]} to measure it", ""))
            continue
        paper = finding.get("paper") or (f"none for {dataset}" if no_paper else "not reported")
        rows.append((label, finding["verdict"], finding["measured"], paper))
    cells = "".join(
        f'<tr data-mechanism="{html.escape(label)}"><th>{html.escape(label)}</th><td class="verdict">'
        f"{html.escape(verdict)}</td><td>{html.escape(measured)}</td><td>{html.escape(paper)}</td></tr>"
        for label, verdict, measured, paper in rows
    )
    return (
        f'<div class="summary"><p class="lede">{html.escape(_what_ran(run_dir, stages, card, dataset))}</p>'
        '<table class="findings"><thead><tr><th>mechanism</th><th>verdict</th><th>this run</th>'
        f"<th>paper</th></tr></thead><tbody>{cells}</tbody></table></div>"
    )


def _what_ran(run_dir: Path, stages: dict, card: dict | None, dataset: str) -> str:
    """One sentence on what SDA did in this run, from the adapter's training record and the
    recommenders' results."""
    from ..recsys.report import PAPER_MODELS, short_name  # imported here: the recommenders import torch

    data = f"{dataset}" + (f" ({card['items']:,} items, {card['users']:,} users)" if card else "")
    name = stages.get("adapt", {}).get("params", {}).get("adapter_name", "sda")
    record = read_json(run_dir / "adapters" / name / "adapt.json")
    if not record:
        return f"No adaptation ran in this run on {data}; the sections below show what the stages that ran saved."
    config = record["config"]
    words = {"moda": "MoDA", "lora": "LoRA", "cmsa": "CMSA", "infonce": "InfoNCE"}
    sentence = (
        f"SDA adapted the {short_name(record['backbone'])} backbone to {data} with a "
        f"{words.get(config['adapter'], config['adapter'])} adapter trained on the "
        f"{words.get(config['loss'], config['loss'])} loss for {config['steps']} steps"
    )
    results = run_dir / "recsys" / "results.parquet"
    if results.is_file():
        models = pd.read_parquet(results, columns=["model"])["model"].unique()
        order = [m for m in PAPER_MODELS if m in models] + sorted(set(models) - set(PAPER_MODELS))
        sentence += (
            f", then trained {', '.join(PAPER_MODELS.get(m, m) for m in order)} on the item embeddings it exported"
        )
    return sentence + "."


def _figure_html(path: Path, first: list[bool]) -> str:
    """A saved plotly figure as an HTML fragment (420 px high unless its layout says otherwise); the
    page's first figure carries plotly.js inline (`first` holds whether it is still to come)."""
    import plotly.io as pio

    fig = pio.from_json(path.read_text())
    inline, first[0] = first[0], False
    return fig.to_html(
        full_html=False,
        include_plotlyjs="inline" if inline else False,
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

    env = jinja2.Environment(loader=jinja2.PackageLoader("sda_lib.workbench", "templates"), autoescape=True)
    return env.get_template("report.html.j2")
