"""The run report reads as a narrative: verdicts on top, headings in words in the paper's order, one
number format, no duplicate sections. Built here from hand-made run folders (seconds); the whole
runner's report is checked in test_run.py and in a browser in test_report_browser.py."""

import html
import json
import re

import pandas as pd
import plotly.graph_objects as go
import pytest

from sda_lib.analysis.alignment import findings, verdict
from sda_lib.utils import display
from sda_lib.utils.io import write_json
from sda_lib.workbench.report import (
    HEADINGS,
    MECHANISMS,
    PARTS,
    build_report,
    heading_of,
    save_figure,
    save_finding,
    save_table,
)


def test_number_formats():
    assert [display.number(x) for x in (0.123456, 0.6, 23.3712, 8.5149, 1.923e-240, -0.0, 1234.56, 120, 12345)] == [
        "0.1235",
        "0.6000",
        "23.37",
        "8.515",
        "1.923e-240",
        "0.000",
        "1235",
        "120",
        "12,345",
    ]
    assert display.number(float("nan")) == "" and display.gain(float("nan")) == ""
    assert [display.gain(x) for x in (0.056, -0.0634, 8.515, 0.00004)] == ["+5.6%", "-6.3%", "+851.5%", "0.0%"]
    assert [display.p_value(p) for p in (1.923e-240, 9.99e-5, 1e-4, 0.0344, 0.5)] == [
        "< 1e-4",
        "< 1e-4",
        "0.0001",
        "0.034",
        "0.5",
    ]


def test_a_change_below_the_printed_precision_is_unchanged():
    keys = ("t2i_recall@10", "matched_cosine_centred", "cosine_gap", "matched_cosine", "overlap_text_cross@10")
    before = dict.fromkeys(keys, 0.5) | {"cosine_gap": -0.000012, "t2i_recall@10": 0.1}
    after = dict.fromkeys(keys, 0.5) | {"cosine_gap": -0.000031, "t2i_recall@10": 0.25, "matched_cosine": 0.49}
    lines = verdict(before, after).splitlines()
    assert "matched-minus-random cosine gap: 0.0000 -> 0.0000 (unchanged)" in lines
    assert "text-to-image Recall@10: 0.1000 -> 0.2500 (improved)" in lines
    assert "raw matched-pair cosine: 0.5000 -> 0.4900 (did NOT improve)" in lines
    alignment, structure = findings(before, after)
    assert alignment["verdict"] == "improved" and "0.1000 -> 0.2500" in alignment["measured"]
    assert structure["verdict"] == "kept"


def test_every_key_the_notebooks_save_has_a_heading_in_words():
    """Every title the notebooks pass to save_table / save_figure maps to a HEADINGS entry (no
    title-cased file name), and its part exists."""
    from sda_lib.utils.io import slug

    titles = re.compile(r'save_(?:table|figure)\([^,]+, [^,]+, "(\d\d)", f?"([^"]+)"\)')
    found = []
    for notebook in sorted((pytest.importorskip("sda_lib.utils.paths").REPO_ROOT / "notebooks").glob("*.ipynb")):
        source = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
        for order, title in titles.findall(source.replace("\\n", "\n")):
            title = re.sub(r"\{(\w+)\}", lambda m: {"protocol": "sampled", "model": "sasrec"}.get(m[1], "x"), title)
            found.append(f"{order}-{slug(title)}")
    assert len(found) >= 20, found
    for key in found:
        part, heading, rank = heading_of(key)
        assert rank < len(HEADINGS), f"{key}: no heading in words"
        file_like = key.split("-", 1)[1].replace("-", " ").capitalize()
        assert part in PARTS and heading[0].isupper() and heading != file_like, (key, heading)


def _toy_run(outputs):
    """A run folder with what the stages save: two tables under one heading (Figure 3's table and
    figure), the alignment table twice (04 and 08), gains, p-values and findings."""
    run = outputs / "toy" / "default"
    run.mkdir(parents=True)
    (run / "stages.json").write_text(json.dumps({"adapt": {"params": {"dataset": "toy", "steps": 40}}}))
    config = {"adapter": "moda", "loss": "cmsa", "steps": 40}
    write_json(run / "adapters" / "sda" / "adapt.json", {"config": config, "backbone": "mini-connector-abc123"})
    results = pd.DataFrame({"model": ["slmrec", "sasrec", "sasrec"], "value": [0.1, 0.2, 0.3]})
    (run / "recsys").mkdir()
    results.to_parquet(run / "recsys" / "results.parquet")
    bars = pd.DataFrame(
        {
            "bar": ["Base", "SDA text + image"],
            "value": [0.31234, 0.3391],
            "gain": [None, 0.0857],
            "p": [None, 1.923e-240],
        }
    )
    save_table(bars, run, "05", "Figure 3 SLMRec modality replacement")
    save_figure(go.Figure(go.Bar(x=bars["bar"], y=bars["value"])), run, "05", "Figure 3 SLMRec modality replacement")
    full = pd.DataFrame({"features": ["id", "sda"], "overall HR@10": [0.1, 0.9515], "overall HR@10 gain": [0.0, 8.515]})
    save_table(full, run, "05", "Recommendation (full ranking)")
    alignment = pd.DataFrame({"t2i_recall@10": [0.1, 0.25]}, index=["zero-shot", "sda"])
    save_table(alignment, run, "04", "Alignment of all items: zero-shot vs adapted")
    save_table(alignment, run, "08", "Alignment zero-shot vs adapted")
    save_table(pd.DataFrame({"x": [1]}), run, "02", "Something of my own")
    for finding in findings(
        {"t2i_recall@10": 0.1, "cosine_gap": 0.01, "overlap_text_cross@10": 0.3},
        {"t2i_recall@10": 0.25, "cosine_gap": 0.02, "overlap_text_cross@10": 0.2},
    ):
        save_finding(finding, run, "04")
    gradients = {
        "mechanism": "gradient conflict",
        "verdict": "no clear difference",
        "measured": "0.1 vs 0.1",
        "paper": None,
    }
    save_finding(gradients, run, "07")
    return run


def test_report_opens_with_the_verdicts_then_the_papers_order_without_duplicates(outputs):
    page = build_report(_toy_run(outputs)).read_text()
    h2 = re.findall(r"<h2>(.*?)</h2>", page)
    assert h2[0] == "What this run shows"
    assert h2 == [t for t in PARTS.values() if t in h2]  # the parts in PARTS' order
    h3 = [display_text for display_text in re.findall(r"<h3[^>]*>(.*?)</h3>", page)]
    assert len(h3) == len(set(h3)), h3
    assert h3.count("SLMRec on Base, SDA text, SDA image and both") == 1  # table and figure under one heading
    assert "Every item&#39;s text and image, before and after adaptation" in h3  # 04's; 08's same table left out
    # Figure 3, full ranking, alignment (once), own; then parameters and software
    assert page.count('<table class="dataframe t">') == 6
    assert "Something of my own" in h3  # a key without a heading keeps its saved title
    lede = re.search(r'<p class="lede">(.*?)</p>', page).group(1)
    assert lede == (
        "SDA adapted the mini backbone to toy with a MoDA adapter trained on the CMSA loss for 40 steps, "
        "then trained SLMRec, SASRec on the item embeddings it exported."
    )
    rows = re.findall(r'<tr data-mechanism="([^"]+)"><th>[^<]*</th><td class="verdict">([^<]*)</td>', page)
    verdicts = {html.unescape(label): verdict for label, verdict in rows}
    assert list(verdicts) == list(MECHANISMS.values())
    assert verdicts[MECHANISMS["alignment"]] == "improved" and verdicts[MECHANISMS["structure"]] == "weakened"
    assert verdicts[MECHANISMS["recommendation"]] == "not measured"
    assert "none for toy" in page  # no published value for a dataset the paper did not use
    # one number format: 4 significant digits, gains as signed percentages, p-values bounded
    cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", page)]
    assert "0.3123" in cells and "0.1000" in cells and "+8.6%" in cells and "< 1e-4" in cells and "+851.5%" in cells
    assert not [c for c in cells if re.fullmatch(r"-?\d+\.\d{5,}", c)]
    assert "1.923e-240" not in page and "8.515<" not in page
    # every menu entry points at a section that exists
    targets = re.findall(r"<nav>(.*?)</nav>", page, flags=re.S)[0]
    for anchor in re.findall(r'href="#([^"]+)"', targets):
        assert f'<section id="{anchor}">' in page


def test_save_finding_refuses_an_unknown_mechanism(tmp_path):
    with pytest.raises(ValueError, match="unknown mechanism 'speed'"):
        save_finding({"mechanism": "speed", "verdict": "fast", "measured": "", "paper": None}, tmp_path, "04")
    assert save_finding(None, tmp_path, "04") is None and not (tmp_path / "findings").exists()
