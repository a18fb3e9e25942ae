from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sda_lib.analysis import explorer
from sda_lib.analysis.umap_view import umap_figure, umap_layout


def unit(angles_deg):
    a = np.radians(angles_deg)
    return np.column_stack([np.cos(a), np.sin(a)])


# Items on a circle: text angles 0, 10, 30, 70, 150 degrees; images rotated so that item 0's text is
# nearest item 1's image.
TEXT = unit([0, 10, 30, 70, 150])
IMAGE = unit([40, 5, 22, 200, 60])
TITLES = ["Amber mug", "Birch vase", "Cobalt plate", "Dune lamp", "Ember cushion"]


@pytest.fixture
def data(tmp_path):
    paths = []
    for i, colour in enumerate(["red", "green", "blue", "yellow", "purple"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (16, 16), colour).save(paths[-1])
    return explorer.ExplorerData(
        TITLES,
        paths,
        ["cat a", "cat b", "cat a", "cat b", "cat a"],
        {"zero-shot": (TEXT, IMAGE), "adapted": (3 * TEXT, IMAGE[[1, 0, 2, 3, 4]])},
    )


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_teacher_and_cross_modal_rows_match_numpy():
    rng = np.random.default_rng(0)
    t, v = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    tau, i = 0.7, 3
    teacher = [np.exp(tau / 2 * (tn[i] @ tn[j] + vn[i] @ vn[j])) for j in range(7)]
    np.testing.assert_allclose(explorer.teacher_row(t, v, i, tau), np.array(teacher) / sum(teacher), rtol=1e-6)
    cross = [np.exp(tn[i] @ vn[j] / tau) for j in range(7)]
    np.testing.assert_allclose(explorer.cross_modal_row(t, v, i, tau), np.array(cross) / sum(cross), rtol=1e-6)
    # Scale does not matter: rows are computed on L2-normalised embeddings, as CMSA does.
    np.testing.assert_allclose(explorer.teacher_row(5 * t, v, i, tau), explorer.teacher_row(t, v, i, tau), rtol=1e-6)


def test_rows_stay_finite_at_small_tau():
    row = explorer.cross_modal_row(TEXT, IMAGE, 0, 0.01)
    assert np.isfinite(row).all() and row.sum() == pytest.approx(1.0)


def test_neighbours_by_hand():
    found = explorer.neighbours(TEXT, IMAGE, 0, k=2)
    assert found["text"].tolist() == [1, 2]  # 10 and 30 degrees away; itself excluded
    assert found["image"].tolist() == [2, 4]  # from 40 degrees: 22 (18 away), 60 (20 away)
    assert found["cross-modal"].tolist() == [1, 2]  # images nearest text 0 at 0 degrees: 5, 22
    assert all(0 not in found[s] for s in ("text", "image"))
    own_first = explorer.neighbours(TEXT, TEXT, 3, k=2)["cross-modal"]
    assert own_first[0] == 3  # cross-modal neighbours include the item's own image
    assert explorer.neighbours(TEXT, IMAGE, 0, k=10)["text"].tolist() == [1, 2, 3, 4]  # k capped at n - 1
    assert explorer.own_image_rank(TEXT, IMAGE, 0) == 3  # images at 5 and 22 degrees beat its own at 40


def test_panel_names_the_item_and_its_neighbours(data):
    html = explorer.panel_html(data, 0, k=1)
    assert html.startswith(f'<div class="{explorer.PANEL_CLASS}"')
    assert "item #0</b>: Amber mug" in html
    # k=1: text neighbour Birch vase in both versions, image neighbour Cobalt plate in both;
    # cross-modal Birch vase zero-shot, Amber mug's own image once adapted.
    assert html.count("Birch vase") == 3 and html.count("Cobalt plate") == 2
    assert html.count("Amber mug") == 3 and html.count("own image</i>") == 1
    assert "own image ranked #3 of 5" in html and "own image ranked #1 of 5" in html
    assert "Dune lamp" not in html and "Ember cushion" not in html
    assert html.count("data:image/png;base64,") == 1 + 3 * 2  # the item, then one card per space and version
    assert explorer.panel_html(data, 3, k=1) != explorer.panel_html(data, 4, k=1)


def test_rows_figure_bars_and_kl(data):
    fig = explorer.rows_figure(data, 2, tau=0.5, top=2)
    assert len(fig.data) == 4  # T and P, per version
    teacher = explorer.teacher_row(TEXT, IMAGE, 2, 0.5)
    cross = explorer.cross_modal_row(TEXT, IMAGE, 2, 0.5)
    assert fig.layout.annotations[0].text == f"zero-shot: KL(T‖P) = {np.sum(teacher * np.log(teacher / cross)):.4f}"
    shown = np.unique(np.concatenate([np.argsort(-teacher)[:2], np.argsort(-cross)[:2]]))
    np.testing.assert_allclose(sorted(fig.data[0].y, reverse=True), sorted(teacher[shown], reverse=True))
    assert fig.data[0].x[0].startswith("#2 Cobalt plate")  # the item leads its own teacher row


def test_explorer_data_checks_its_input(data):
    with pytest.raises(ValueError, match=r"embeddings 'x': text \(4, 2\) and image \(5, 2\)"):
        explorer.ExplorerData(TITLES, data.image_paths, data.notes, {"x": (TEXT[:4], IMAGE)})
    with pytest.raises(ValueError, match="5 titles but 4 image paths"):
        explorer.ExplorerData(TITLES, data.image_paths[:4], data.notes, {"x": (TEXT, IMAGE)})
    with pytest.raises(IndexError, match="item 5 is out of range: the explorer holds items 0..4"):
        explorer.panel_html(data, 5)


def test_from_dataset_reads_titles_and_notes(data):
    dataset = SimpleNamespace(
        name="two",
        n_items=2,
        image_paths=lambda: data.image_paths[:2],
        items=pd.DataFrame({"title": ["Amber mug", None], "latent_category": ["a", "b"]}),
    )
    built = explorer.ExplorerData.from_dataset(dataset, {"v": (3 * TEXT[:2], IMAGE[:2])}, note_column="latent_category")
    assert built.titles == ["Amber mug", "(no title)"] and built.notes == ["a", "b"]
    np.testing.assert_allclose(np.linalg.norm(built.spaces["v"][0], axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="note_column 'brand' is not an items column of 'two'"):
        explorer.ExplorerData.from_dataset(dataset, {"v": (TEXT[:2], IMAGE[:2])}, note_column="brand")


def test_widget_redraws_the_panel_when_the_item_moves(data, monkeypatch):
    monkeypatch.setenv("SDA_WIDGETS", "live")
    box = explorer.explorer_widget(data, item=0, k=1, tau=1.0)
    item_slider, panel = box.children[0].children[0], box.children[1]
    assert "item #0</b>: Amber mug" in panel.value
    item_slider.value = 3
    assert "item #3</b>: Dune lamp" in panel.value


def test_headless_explorer_builds_no_widget(data, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("SDA_WIDGETS", raising=False)
    note = explorer.explorer_widget(data, item=0, k=1, tau=1.0)
    assert "static views below stand in" in note.data


def test_umap_figure_links_each_pair():
    layout = pd.DataFrame(
        {
            "version": ["a"] * 4 + ["b"] * 4,
            "modality": ["text", "text", "image", "image"] * 2,
            "item": [0, 1, 0, 1] * 2,
            "x": [0.0, 1, 2, 3, 4, 5, 6, 7],
            "y": [0.0] * 8,
        }
    )
    items = pd.DataFrame({"title": ["A", "B"], "popularity": [3, 40], "is_tail": [True, False]})
    fig = umap_figure(layout, items, "is_tail")
    lines = [trace for trace in fig.data if trace.mode == "lines"]
    assert fig.data[:2] == tuple(lines)  # drawn first, under the points
    np.testing.assert_array_equal(lines[0].x, [0, 2, np.nan, 1, 3, np.nan])  # text -> image of each item
    np.testing.assert_array_equal(lines[1].x, [4, 6, np.nan, 5, 7, np.nan])
    assert {trace.name for trace in fig.data if trace.mode != "lines"} == {
        "True, text",
        "True, image",
        "False, text",
        "False, image",
    }
    assert lines[0].name == "text-image pair (2 of 2 items)"
    assert fig.layout.legend.x < 0.05 and fig.layout.legend.y > 0.95  # inside the first panel, not below it
    capped = umap_figure(layout, items, "popularity").layout.coloraxis
    assert (capped.cmin, capped.cmax) == pytest.approx((3, items["popularity"].quantile(0.95)))
    with pytest.raises(ValueError, match="cannot colour by 'colour'"):
        umap_figure(layout, items, "colour")
    with pytest.raises(ValueError, match="'v': 3 text rows but 2 image rows"):
        umap_layout({"v": (np.zeros((3, 2)), np.zeros((2, 2)))})


def test_umap_figure_links_a_sample_of_pairs_the_same_in_every_panel():
    """On a catalogue of 200 items only 30 pairs are joined (a line per item hides the points), the
    same 30 items in both panels, each line from that item's text to its image."""
    n = 200
    rng = np.random.default_rng(1)
    layout = pd.concat(
        [
            pd.DataFrame(
                {
                    "version": version,
                    "modality": np.repeat(["text", "image"], n),
                    "item": np.tile(np.arange(n), 2),
                    "x": rng.normal(size=2 * n),
                    "y": rng.normal(size=2 * n),
                }
            )
            for version in ("zero-shot", "adapted")
        ],
        ignore_index=True,
    )
    items = pd.DataFrame({"popularity": np.arange(n)})
    lines = [t for t in umap_figure(layout, items, "popularity").data if t.mode == "lines"]
    assert len(lines) == 2 and lines[0].name == "text-image pair (30 of 200 items)"
    linked = []
    for trace, version in zip(lines, ("zero-shot", "adapted")):
        starts = np.asarray(trace.x, dtype=float)[0::3]
        ends = np.asarray(trace.x, dtype=float)[1::3]
        assert len(starts) == 30
        part = layout[layout["version"] == version]
        text = part[part["modality"] == "text"].set_index("x")["item"]
        image = part[part["modality"] == "image"].set_index("x")["item"]
        assert text.loc[starts].tolist() == image.loc[ends].tolist()  # each line joins one item's pair
        linked.append(text.loc[starts].tolist())
    assert linked[0] == linked[1]
    every = [t for t in umap_figure(layout, items, "popularity", links=None).data if t.mode == "lines"]
    assert len(np.asarray(every[0].x)[0::3]) == n
    assert not [t for t in umap_figure(layout, items, "popularity", links=0).data if t.mode == "lines"]
