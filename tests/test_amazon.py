"""Amazon 2014 loaders (raw and preprocessed forms) and item images, on small files written here."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import json
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sda_lib.data.amazon import DESCRIPTION_CHARS, load_amazon, sda_filter, source_files
from sda_lib.data.catalogue import DataError
from sda_lib.data.images import FAILURES_FILE, DownloadPolicy, download_images, find_images, usable_image

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon2014-5core"

REVIEWS = [  # file order is not time order; ties (u1 at 300) must keep file order
    {"reviewerID": "u1", "asin": "A1", "overall": 5.0, "unixReviewTime": 300, "reviewText": "nice"},
    {"reviewerID": "u2", "asin": "B3", "overall": 4.0, "unixReviewTime": 100},
    {"reviewerID": "u1", "asin": "A2", "overall": 3.0, "unixReviewTime": 300},
    {"reviewerID": "u2", "asin": "A1", "overall": 2.0, "unixReviewTime": 200},
]
LONG_DESCRIPTION = "word " * 300
META = [  # Python literals, as the authors distribute them: single quotes, asin not always first
    {
        "asin": "A1",
        "title": "Tom &amp; Jerry",
        "price": 12.5,
        "imUrl": "{server}/good.jpg",
        "categories": [["Beauty", "Makeup", "Nails"], ["Beauty", "Tools"]],
        "brand": "OPI",
        "description": LONG_DESCRIPTION,
        "related": {"also_bought": ["A2", "ZZ"]},
    },
    {"asin": "UNREVIEWED", "title": "never reviewed", "categories": [["Beauty"]]},
    {
        "categories": [["Beauty", "Skin Care"]],
        "asin": "A2",
        "imUrl": "{server}/not-an-image.jpg",
        "description": "Gentle\n  cleanser",
    },
    {
        "asin": "B3",
        "title": "Brush set",
        "categories": [["Beauty", "Tools & Accessories"]],
        "imUrl": "{server}/missing.jpg",
    },
]


def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    return path


def write_raw(folder: Path, server: str = "http://127.0.0.1:9", reviews=REVIEWS, meta=META) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_gz(folder / "reviews_Beauty_5.json.gz", [json.dumps(r) for r in reviews])
    meta_lines = [repr({k: (v.format(server=server) if k == "imUrl" else v) for k, v in m.items()}) for m in meta]
    assert "'asin': 'A1'" in meta_lines[0]  # really Python literals, not JSON
    write_gz(folder / "meta_Beauty.json.gz", meta_lines)
    return folder


def write_png(path: Path, size=(16, 12)) -> Path:
    Image.new("RGB", size, (200, 30, 30)).save(path, format="PNG")
    return path


def jpeg_bytes() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# ---- raw form ------------------------------------------------------------------------------------


def test_raw_form_items_interactions_and_counts(tmp_path):
    catalogue = load_amazon("beauty", write_raw(tmp_path / "raw"))

    assert catalogue.name == "beauty"
    assert catalogue.text_fields == ["title", "categories", "brand", "description", "price"]
    items = catalogue.items.set_index("item_id")
    assert list(items.index) == ["A1", "B3", "A2"]  # reviewed asins, in order of first review
    assert items.loc["A1", "title"] == "Tom & Jerry"
    assert items.loc["A1", "categories"] == "Beauty > Makeup > Nails | Beauty > Tools"
    assert items.loc["A1", "brand"] == "OPI"
    assert items.loc["A1", "price"] == "12.50"
    description = items.loc["A1", "description"]
    assert description.endswith("…") and len(description) <= DESCRIPTION_CHARS + 1
    assert LONG_DESCRIPTION.startswith(description[:-1])
    assert items.loc["A1", "image_url"] == "http://127.0.0.1:9/good.jpg"
    assert items.loc["A2"].to_dict() == {
        "title": "",
        "categories": "Beauty > Skin Care",
        "brand": "",
        "description": "Gentle cleanser",
        "price": "",
        "image_url": "http://127.0.0.1:9/not-an-image.jpg",
        "image_path": None,
    }
    assert items.loc["B3", "categories"] == "Beauty > Tools & Accessories"

    interactions = catalogue.interactions
    assert interactions.to_dict("list") == {
        "user_id": ["u1", "u2", "u1", "u2"],
        "item_id": ["A1", "B3", "A2", "A1"],
        "timestamp": [300, 100, 300, 200],
    }
    assert interactions["timestamp"].dtype == np.int64
    assert catalogue.counts == {"html_unescaped_titles": 1, "missing_titles": 1, "missing_images": 3}


def test_raw_form_is_preferred_and_name_checked(tmp_path):
    folder = write_raw(tmp_path)
    (folder / "Beauty.txt").write_text("1 1\n")
    (folder / "items.jsonl").write_text('{"item_id": 1, "asin": "A1", "title": "t"}\n')
    assert load_amazon("beauty", folder).source.startswith("Amazon 2014 Beauty, raw form")
    with pytest.raises(ValueError, match="'makeup'.*beauty"):
        load_amazon("makeup", folder)


def test_truncated_gzip_names_the_file(tmp_path):
    folder = write_raw(tmp_path, reviews=REVIEWS * 2000)
    path = folder / "reviews_Beauty_5.json.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"reviews_Beauty_5\.json\.gz: file is truncated or corrupt.*download it again"):
        load_amazon("beauty", folder)


def test_file_that_is_not_gzip(tmp_path):
    folder = write_raw(tmp_path)
    (folder / "meta_Beauty.json.gz").write_text("<html>404 Not Found</html>\n")
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz: file is truncated or corrupt"):
        load_amazon("beauty", folder)


@pytest.mark.parametrize(
    ("file", "lines", "message"),
    [
        (
            "reviews_Beauty_5.json.gz",
            [json.dumps(REVIEWS[0]), '{"reviewerID": "u2", "asin"'],
            r"reviews_Beauty_5\.json\.gz:2: line is not a JSON object: '\{\"reviewerID\": \"u2\", \"asin\"'",
        ),
        (
            "reviews_Beauty_5.json.gz",
            [json.dumps(REVIEWS[0]), "", json.dumps({"reviewerID": "u2", "asin": "A1"})],
            r"reviews_Beauty_5\.json\.gz:3: line has no 'unixReviewTime' key",
        ),
        (
            "meta_Beauty.json.gz",
            [repr(m) for m in META[:2]] + ["{'asin': 'A2', 'title': 'unterminated}"],
            r"meta_Beauty\.json\.gz:3: line is not a Python dict literal",
        ),
        ("meta_Beauty.json.gz", ["{'title': 'no asin'}"], r"meta_Beauty\.json\.gz:1: line has no 'asin' key"),
        ("meta_Beauty.json.gz", ["__import__('os').system('false')"], r"meta_Beauty\.json\.gz:1: line is not"),
        ("reviews_Beauty_5.json.gz", [], r"reviews_Beauty_5\.json\.gz: file is empty"),
    ],
    ids=["malformed-json", "missing-key", "malformed-literal", "meta-without-asin", "code-not-data", "empty"],
)
def test_bad_lines_name_file_and_line(tmp_path, file, lines, message):
    folder = write_raw(tmp_path)
    write_gz(folder / file, lines)
    with pytest.raises(DataError, match=message):
        load_amazon("beauty", folder)


def test_reviewed_asin_without_meta(tmp_path):
    folder = write_raw(tmp_path, meta=[m for m in META if m["asin"] != "B3"])
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz: no metadata line for asin 'B3'.*\(1 reviewed"):
        load_amazon("beauty", folder)


def test_no_data_lists_the_files_looked_for(tmp_path):
    with pytest.raises(DataError) as error:
        load_amazon("toys", tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    for name in (
        "reviews_Toys_and_Games_5.json.gz",
        "meta_Toys_and_Games.json.gz",
        "Toys_and_Games.txt",
        "items.jsonl",
        "jmcauley.ucsd.edu",
        "CIKM2020-S3Rec",
    ):
        assert name in message


# ---- images ----------------------------------------------------------------------------------------


def test_find_images_checks_every_file(tmp_path):
    write_png(tmp_path / "good.PNG")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "cut.jpg").write_bytes(jpeg_bytes()[:3000])  # header intact, pixel data truncated
    (tmp_path / "both.jpg").write_bytes(b"\xff\xd8garbage")
    write_png(tmp_path / "both.png")
    (tmp_path / "other.txt").write_text("ignored")

    paths, counts = find_images(["good", "text", "cut", "both", "absent", "other"], tmp_path)
    assert paths == {
        "good": str(tmp_path / "good.PNG"),
        "text": None,
        "cut": None,
        "both": str(tmp_path / "both.png"),
        "absent": None,
        "other": None,
    }
    assert counts == {"missing_images": 4, "corrupt_images": 3, "extreme_aspect_images": 0}
    assert "does not decode" in usable_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match="image folder .*nowhere not found"):
        find_images(["good"], tmp_path / "nowhere")


def test_raw_form_with_image_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "A1.png")
    (images / "A2.jpg").write_bytes(b"corrupt, but named like an image")
    catalogue = load_amazon("beauty", write_raw(tmp_path / "raw"), images=images)
    paths = dict(zip(catalogue.items["item_id"], catalogue.items["image_path"]))
    assert paths == {"A1": str(images / "A1.png"), "B3": None, "A2": None}
    assert catalogue.counts["missing_images"] == 2
    assert catalogue.counts["corrupt_images"] == 1


@pytest.mark.parametrize(
    ("size", "usable"),
    [((1, 200), True), ((200, 1), True), ((1, 201), False), ((3000, 1), False), ((14, 2801), False), ((1, 1), True)],
)
def test_images_too_elongated_for_qwen_are_unusable(tmp_path, size, usable):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    width, height = size
    try:
        smart_resize(height, width)
        resizable = True
    except ValueError:
        resizable = False
    assert resizable == usable  # the rule below is transformers' rule
    write_png(tmp_path / "item.png", size)
    reason = usable_image(tmp_path / "item.png")
    assert (reason is None) == usable
    paths, counts = find_images(["item"], tmp_path)
    assert (paths["item"] is not None) == usable
    if not usable:
        assert f"{width}x{height} px" in reason and "above 200" in reason
        assert counts == {"missing_images": 1, "corrupt_images": 0, "extreme_aspect_images": 1}


def test_elongated_image_leaves_the_item_its_text_and_the_placeholder(tmp_path):
    from sda_lib.data import PrepareParams, load_prepared, prepare_dataset

    folder = write_preprocessed(tmp_path / "beauty", "1 1 4 2\n2 3 4 1\n")
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "B004.png", (1, 3000))
    write_png(images / "B001.png")
    out = prepare_dataset("beauty", folder, out=tmp_path / "d", params=PrepareParams(n_negatives=1), images=images)
    prepared = load_prepared(out)
    items = prepared.items.set_index("asin")
    assert items.loc["B004", "title"] == "Brush" and items.loc["B004", "image_path"] == "placeholder.png"
    assert items["has_image"].tolist() == [True, False, False, False]
    assert prepared.card["counts"]["extreme_aspect_images"] == 1


@pytest.fixture
def image_server(tmp_path):
    """A local HTTP server over a folder with one image, one non-image (and no missing.jpg)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "good.jpg").write_bytes(jpeg_bytes())
    (served / "not-an-image.jpg").write_text("<html>sorry</html>")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_is_checked_and_resumable(tmp_path, image_server):
    urls = {name: f"{image_server}/{name}.jpg" for name in ("good", "not-an-image", "missing")}
    cache = tmp_path / "cache"
    started = time.perf_counter()
    first = download_images(urls, cache, workers=3, policy=DownloadPolicy(timeout=5))
    assert first == {"downloaded": 1, "already_present": 0, "download_failures": 2}
    # no partial or rejected files; the failures listed
    assert sorted(p.name for p in cache.iterdir()) == [FAILURES_FILE, "good.jpg"]
    assert (cache / "good.jpg").read_bytes() == jpeg_bytes()

    second = download_images(urls, cache, workers=3, policy=DownloadPolicy(timeout=5))
    assert second == {"downloaded": 0, "already_present": 1, "download_failures": 2}
    assert time.perf_counter() - started < 10


def test_raw_form_downloads_image_urls(tmp_path, image_server):
    folder = write_raw(tmp_path / "raw", server=image_server)
    cache = tmp_path / "cache"
    catalogue = load_amazon("beauty", folder, download_images=True, image_cache=cache, workers=3)
    paths = dict(zip(catalogue.items["item_id"], catalogue.items["image_path"]))
    assert paths == {"A1": str(cache / "A1.jpg"), "B3": None, "A2": None}
    assert catalogue.counts == {
        "html_unescaped_titles": 1,
        "missing_titles": 1,
        "downloaded": 1,
        "already_present": 0,
        "download_failures": 2,
        "missing_images": 2,
        "corrupt_images": 0,
        "extreme_aspect_images": 0,
    }


# ---- preprocessed form ---------------------------------------------------------------------------


def write_preprocessed(folder: Path, sequences: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Beauty.txt").write_text(sequences)
    items = [
        {"item_id": 1, "asin": "B001", "title": "Tom &amp; Jerry", "categories": [["Beauty", "Nails"]]},
        {"item_id": 2, "asin": "B002", "title": "title_2", "categories": []},
        {"item_id": 3, "asin": "B003", "title": "Unused item", "categories": [["Beauty"]]},
        {"item_id": 4, "asin": "B004", "title": "Brush", "categories": [["Beauty", "Tools"], ["Brushes"]]},
    ]
    (folder / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    return folder


def test_preprocessed_form(tmp_path):
    catalogue = load_amazon("beauty", write_preprocessed(tmp_path, "1 4 1 2\n2 1\n\n3 2 4\n"))
    assert catalogue.text_fields == ["title", "categories"]
    assert catalogue.items.to_dict("list") == {
        "item_id": ["1", "2", "4"],  # items file order, only items that occur
        "title": ["Tom & Jerry", "", "Brush"],
        "categories": ["Beauty > Nails", "", "Beauty > Tools | Brushes"],
        "asin": ["B001", "B002", "B004"],
        "image_path": [None, None, None],
    }
    assert catalogue.interactions.to_dict("list") == {
        "user_id": ["1", "1", "1", "2", "3", "3"],
        "item_id": ["4", "1", "2", "1", "2", "4"],
        "timestamp": [0, 1, 2, 0, 0, 1],
    }
    assert catalogue.counts == {"html_unescaped_titles": 1, "missing_titles": 1, "missing_images": 3}


def test_preprocessed_images_by_asin(tmp_path):
    folder = write_preprocessed(tmp_path / "data", "1 1 4\n")
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "B004.png")
    catalogue = load_amazon("beauty", folder, images=images)
    assert catalogue.items["image_path"].tolist() == [None, str(images / "B004.png")]
    with pytest.raises(DataError, match="preprocessed form has no image URLs.*images="):
        load_amazon("beauty", folder, download_images=True)


def test_preprocessed_unknown_item_names_line_and_item(tmp_path):
    folder = write_preprocessed(tmp_path, "1 1 2\n2 4 9 1\n")
    with pytest.raises(
        DataError,
        match=r"Beauty\.txt:2: item '9' is not in .*items\.jsonl: the two files do not "
        r"belong together",
    ):
        load_amazon("beauty", folder)


def test_preprocessed_file_cut_mid_line(tmp_path):
    # "2 4 1" may have been "2 4 13": a cut id can be a real item, so a missing final newline is an error
    with pytest.raises(DataError, match=r"Beauty\.txt:2: the file does not end with a newline"):
        load_amazon("beauty", write_preprocessed(tmp_path, "1 1 2\n2 4 1"))


def test_preprocessed_user_without_items(tmp_path):
    with pytest.raises(DataError, match=r"Beauty\.txt:2: expected 'user_id item_id"):
        load_amazon("beauty", write_preprocessed(tmp_path, "1 1 2\n2\n"))


# ---- the authors' recipe (recipe="sda") ------------------------------------------------------------

SDA_REVIEWS = [  # (user, item, time) in file order; what each user and item is for: test_sda_recipe_by_hand
    ("zed", "X", 100),
    ("bob", "A", 5),
    ("amy", "A", 1),
    ("zed", "B", 20),
    ("zed", "A", 10),
    ("amy", "B", 2),
    ("bob", "B", 6),
    ("zed", "D", 30),
    ("zed", "C", 30),
    ("amy", "C", 3),
    ("amy", "C", 9),
    ("bob", "C", 7),
    ("zed", "E", 50),
    ("amy", "D", 4),
    ("bob", "D", 8),
    ("bob", "E", 9),
    ("bob", "F", 10),
    ("cat", "F", 1),
    ("cat", "A", 2),
    ("cat", "B", 3),
    ("cat", "X", 4),
    ("dan", "A", 1),
    ("dan", "G", 2),
    ("dan", "B", 3),
    ("dan", "C", 4),
    ("dan", "E", 5),
    ("dan", "F", 6),
    ("eve", "G", 1),
    ("eve", "D", 2),
    ("eve", "E", 3),
    ("eve", "F", 4),
    ("eve", "B", 5),
    ("fay", "X", 1),
    ("fay", "X", 2),
    ("fay", "D", 3),
    ("fay", "E", 4),
    ("fay", "F", 5),
    ("fay", "G", 6),
    ("zed", "G", 60),
    ("bob", "G", 11),
    ("gus", "H", 1),
    ("zed", "H", 70),
    ("hal", "H", 2),
    ("dan", "H", 7),
    ("ivy", "H", 3),
]


def write_reviews(folder: Path, rows, meta_asins, file="reviews_Beauty.json.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_gz(
        folder / file,
        [json.dumps({"reviewerID": u, "asin": i, "overall": 5.0, "unixReviewTime": t}) for u, i, t in rows],
    )
    write_gz(
        folder / "meta_Beauty.json.gz",
        [repr({"asin": a, "title": f"Item {a}", "categories": [["Beauty"]]}) for a in meta_asins],
    )
    return folder


def test_sda_recipe_by_hand(tmp_path):
    """Raw reviews per item: A 5, B 6, C 5 (one a duplicate), D 5, E 5, F 5, G 5 (no meta), H 5, X 4.
    Per user: zed 8, bob 7, amy 5 (C twice), cat 4, dan 7, eve 5, fay 6 (X twice), gus, hal, ivy 1."""
    folder = write_reviews(tmp_path / "raw", SDA_REVIEWS, "ABCDEFHX")
    catalogue = load_amazon("beauty", folder, recipe="sda")
    # cat, gus, hal, ivy have fewer than 5 reviews and X 4: their rows go, in one pass, so H keeps
    # the reviews of zed and dan though 3 of its 5 came from users dropped. amy's duplicate C leaves her 4 items and
    # fay has D E F G once X is gone: both below 5, dropped. G has no meta: dropped from every
    # sequence at the end, which leaves eve 4 items (the authors keep her). Users in order of first
    # appearance among the kept reviews (bob's line 2 comes before zed's line 4; zed's X on line 1 was
    # dropped); time order within a user, zed's D and C (both at 30) in file order.
    interactions = catalogue.interactions
    assert interactions["user_id"].tolist() == ["bob"] * 6 + ["zed"] * 6 + ["dan"] * 6 + ["eve"] * 4
    assert interactions["item_id"].tolist() == [*"ABCDEF", *"ABDCEH", *"ABCEFH", *"DEFB"]
    assert interactions["timestamp"].tolist() == [
        5,
        6,
        7,
        8,
        9,
        10,
        10,
        20,
        30,
        30,
        50,
        70,
        1,
        3,
        4,
        5,
        6,
        7,
        2,
        3,
        4,
        5,
    ]
    # items in order of first appearance in the sequences (C before D), not of first review (D first)
    assert catalogue.items["item_id"].tolist() == list("ABCDEFH")
    assert {k: v for k, v in catalogue.counts.items() if k.startswith("sda_")} == {
        "sda_reviews_read": 45,
        "sda_reviews_below_core": 10,  # X's 4, cat's 4 (one of them X), gus', hal's and ivy's H
        "sda_duplicates_dropped": 1,  # amy's second C
        "sda_users_below_min_length": 2,  # amy, fay
        "sda_items_without_meta": 1,  # G
        "sda_interactions_without_meta": 4,  # G of bob, zed, dan, eve
        "sda_users_left_without_items": 0,
    }
    assert catalogue.source.startswith("Amazon 2014 Beauty, raw form (reviews_Beauty.json.gz), recipe sda")


def test_sda_recipe_prepared_keeps_the_authors_numbering_and_tail(tmp_path):
    from sda_lib.data import PrepareParams, load_prepared, prepare_dataset

    folder = write_reviews(tmp_path / "raw", SDA_REVIEWS, "ABCDEFHX")
    out = prepare_dataset("beauty", folder, out=tmp_path / "d", params=PrepareParams(n_negatives=1, recipe="sda"))
    prepared = load_prepared(out)
    # user u and item i are the authors' ids u + 1 and i + 1
    assert pd.read_parquet(out / "users.parquet")["user_id"].tolist() == ["bob", "zed", "dan", "eve"]
    assert prepared.items["item_id"].tolist() == list("ABCDEFH")
    assert [list(s) for s in prepared.sequences("test")] == [
        [0, 1, 2, 3, 4, 5],
        [0, 1, 3, 2, 4, 6],
        [0, 1, 2, 4, 5, 6],
        [3, 4, 5, 1],
    ]
    # the authors' popularity (users holding the item) and tail (< 4): A has 5 raw reviews, 3 left
    assert prepared.items["popularity_all"].tolist() == [3, 4, 3, 3, 4, 3, 2]
    assert prepared.items["is_tail"].tolist() == [True, False, True, True, False, True, True]
    card = prepared.card
    assert card["params"]["recipe"] == "sda" and card["params"]["tail_count_on"] == "all"
    assert card["tail_rule"] == "< 4 interactions over all data (the authors' rule)"
    assert card["tail_test_share"] == 0.75  # test targets F H H B
    assert card["counts"]["sda_users_below_min_length"] == 2 and card["counts"]["users_dropped_short"] == 0


def authors_recipe_by_loops(rows, with_meta):
    """The recipe step by step over (user, item, time) rows, as the research notes describe it."""
    user_rows, item_rows = Counter(u for u, _, _ in rows), Counter(i for _, i, _ in rows)
    kept = {}
    for user, item, when in rows:
        if user_rows[user] >= 5 and item_rows[item] >= 5:
            history = kept.setdefault(user, [])
            if item not in [seen for seen, _ in history]:
                history.append((item, when))
    sequences = {
        user: [item for item, _ in sorted(history, key=lambda pair: pair[1])] for user, history in kept.items()
    }
    sequences = {
        user: [item for item in items if item in with_meta] for user, items in sequences.items() if len(items) >= 5
    }
    return {user: items for user, items in sequences.items() if items}


@pytest.mark.parametrize("seed", range(4))
def test_sda_recipe_matches_the_steps_on_random_reviews(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 600
    users = [f"u{k}" for k in rng.zipf(1.6, n) % 60]
    items = [f"i{k}" for k in rng.zipf(1.4, n) % 40]
    rows = list(zip(users, items, rng.integers(0, 30, n).tolist()))  # many ties and repeats
    with_meta = {f"i{k}" for k in range(40) if k % 7 != 3}
    expected = authors_recipe_by_loops(rows, with_meta)
    assert len(expected) >= 5  # the draw exercises the recipe

    catalogue = load_amazon("beauty", write_reviews(tmp_path, rows, sorted(with_meta)), recipe="sda")
    found = catalogue.interactions.groupby("user_id", sort=False)["item_id"].agg(list).to_dict()
    assert list(found.items()) == list(expected.items())
    assert catalogue.items["item_id"].tolist() == list(dict.fromkeys(i for s in expected.values() for i in s))


def test_sda_recipe_reads_the_5core_file_when_the_full_one_is_absent(tmp_path):
    from sda_lib.data import PrepareParams, load_prepared, prepare_dataset
    from sda_lib.data.card import format_card

    five = write_reviews(tmp_path / "five", SDA_REVIEWS, "ABCDEFHX", file="reviews_Beauty_5.json.gz")
    catalogue = load_amazon("beauty", five, recipe="sda")
    assert catalogue.source.startswith("Amazon 2014 Beauty, raw form (reviews_Beauty_5.json.gz), recipe sda")
    assert catalogue.interactions["user_id"].tolist() == ["bob"] * 6 + ["zed"] * 6 + ["dan"] * 6 + ["eve"] * 4
    out = prepare_dataset("beauty", five, out=tmp_path / "d", params=PrepareParams(n_negatives=1, recipe="sda"))
    printed = format_card(load_prepared(out).card)
    assert f"source        {five.resolve()} (reviews_Beauty_5.json.gz, meta_Beauty.json.gz)\n" in printed
    # with both files, "sda" reads the full one and "5core" the 5-core one
    write_reviews(five, SDA_REVIEWS, "ABCDEFHX")
    assert source_files("beauty", five, "sda")[1][0].name == "reviews_Beauty.json.gz"
    assert source_files("beauty", five, "5core")[1][0].name == "reviews_Beauty_5.json.gz"


def test_recipes_name_the_files_they_need(tmp_path):
    full_only = write_reviews(tmp_path / "full", SDA_REVIEWS, "ABCDEFHX")
    with pytest.raises(
        DataError,
        match=r"reviews_Beauty\.json\.gz \(all reviews\) is there: the recipe 'sda' "
        r"\(--recipe sda\) reads it",
    ):
        load_amazon("beauty", full_only)
    preprocessed = write_preprocessed(tmp_path / "pre", "1 1 4 2\n")
    with pytest.raises(DataError) as error:
        load_amazon("beauty", preprocessed, recipe="sda")
    message = str(error.value)
    for text in (
        "reviews_Beauty.json.gz (missing)",
        "reviews_Beauty_5.json.gz (missing)",
        "meta_Beauty.json.gz (missing)",
        "recipe '5core' (--recipe 5core)",
    ):
        assert text in message


def test_sda_recipe_that_keeps_nothing_names_the_file(tmp_path):
    folder = write_raw(tmp_path)  # 4 reviews: no user or item has 5
    (folder / "reviews_Beauty_5.json.gz").rename(folder / "reviews_Beauty.json.gz")
    with pytest.raises(
        DataError,
        match=r"reviews_Beauty\.json\.gz: no user has 5 or more reviews of items with 5 "
        r"or more reviews \(4 reviews read\)",
    ):
        load_amazon("beauty", folder, recipe="sda")


# ---- real data -----------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data not found; real-data count checks skipped")
@pytest.mark.parametrize(
    ("name", "users", "items", "interactions"),
    [("beauty", 22_363, 12_101, 198_502), ("toys", 19_412, 11_924, 167_597)],
)
def test_real_preprocessed_counts(name, users, items, interactions):
    catalogue = load_amazon(name, REAL_DATA / name)
    assert catalogue.interactions["user_id"].nunique() == users
    assert len(catalogue.items) == catalogue.items["item_id"].nunique() == items
    assert len(catalogue.interactions) == interactions
    assert set(catalogue.interactions["item_id"]) == set(catalogue.items["item_id"])
    assert catalogue.items["asin"].str.fullmatch(r"[0-9A-Z]{10}").all()


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data not found; real-data count checks skipped")
@pytest.mark.parametrize(
    ("name", "users", "items", "interactions"),
    [("beauty", 22_363, 12_101, 198_502), ("toys", 19_412, 11_924, 167_597)],
)
def test_sda_filter_keeps_the_5core_data_whole(name, users, items, interactions):
    """S3-Rec's 5-core sequences have no repeated item per user and every user and item has >= 5
    interactions, so the authors' filter keeps them whole: on the 5-core files, recipe "sda" gives
    the 5-core counts."""
    kept, counts = sda_filter(load_amazon(name, REAL_DATA / name).interactions)
    assert (kept["user_id"].nunique(), kept["item_id"].nunique(), len(kept)) == (users, items, interactions)
    assert counts == {
        "sda_reviews_read": interactions,
        "sda_reviews_below_core": 0,
        "sda_duplicates_dropped": 0,
        "sda_users_below_min_length": 0,
    }
