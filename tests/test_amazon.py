"""Amazon 2014 loaders (raw and preprocessed forms) and item images, on small files written here."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sda_lib.data.amazon import DESCRIPTION_CHARS, load_amazon
from sda_lib.data.catalogue import DataError
from sda_lib.data.images import download_images, find_images, usable_image

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon2014-5core"

REVIEWS = [  # file order is not time order; ties (u1 at 300) must keep file order
    {"reviewerID": "u1", "asin": "A1", "overall": 5.0, "unixReviewTime": 300, "reviewText": "nice"},
    {"reviewerID": "u2", "asin": "B3", "overall": 4.0, "unixReviewTime": 100},
    {"reviewerID": "u1", "asin": "A2", "overall": 3.0, "unixReviewTime": 300},
    {"reviewerID": "u2", "asin": "A1", "overall": 2.0, "unixReviewTime": 200},
]
LONG_DESCRIPTION = "word " * 300
META = [  # Python literals, as the authors distribute them: single quotes, asin not always first
    {"asin": "A1", "title": "Tom &amp; Jerry", "price": 12.5, "imUrl": "{server}/good.jpg",
     "categories": [["Beauty", "Makeup", "Nails"], ["Beauty", "Tools"]], "brand": "OPI",
     "description": LONG_DESCRIPTION, "related": {"also_bought": ["A2", "ZZ"]}},
    {"asin": "UNREVIEWED", "title": "never reviewed", "categories": [["Beauty"]]},
    {"categories": [["Beauty", "Skin Care"]], "asin": "A2", "imUrl": "{server}/not-an-image.jpg",
     "description": "Gentle\n  cleanser"},
    {"asin": "B3", "title": "Brush set", "categories": [["Beauty", "Tools & Accessories"]],
     "imUrl": "{server}/missing.jpg"},
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
        "title": "", "categories": "Beauty > Skin Care", "brand": "", "description": "Gentle cleanser",
        "price": "", "image_url": "http://127.0.0.1:9/not-an-image.jpg", "image_path": None,
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
        ("reviews_Beauty_5.json.gz", [json.dumps(REVIEWS[0]), '{"reviewerID": "u2", "asin"'],
         r"reviews_Beauty_5\.json\.gz:2: line is not a JSON object: '\{\"reviewerID\": \"u2\", \"asin\"'"),
        ("reviews_Beauty_5.json.gz", [json.dumps(REVIEWS[0]), "", json.dumps({"reviewerID": "u2", "asin": "A1"})],
         r"reviews_Beauty_5\.json\.gz:3: line has no 'unixReviewTime' key"),
        ("meta_Beauty.json.gz", [repr(m) for m in META[:2]] + ["{'asin': 'A2', 'title': 'unterminated}"],
         r"meta_Beauty\.json\.gz:3: line is not a Python dict literal"),
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
    for name in ("reviews_Toys_and_Games_5.json.gz", "meta_Toys_and_Games.json.gz", "Toys_and_Games.txt",
                 "items.jsonl", "jmcauley.ucsd.edu", "CIKM2020-S3Rec"):
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
        "good": str(tmp_path / "good.PNG"), "text": None, "cut": None,
        "both": str(tmp_path / "both.png"), "absent": None, "other": None,
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


@pytest.mark.parametrize(("size", "usable"), [((1, 200), True), ((200, 1), True), ((1, 201), False),
                                             ((3000, 1), False), ((14, 2801), False), ((1, 1), True)])
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
    first = download_images(urls, cache, workers=3, timeout=5)
    assert first == {"downloaded": 1, "already_present": 0, "download_failures": 2}
    assert sorted(p.name for p in cache.iterdir()) == ["good.jpg"]  # no partial or rejected files
    assert (cache / "good.jpg").read_bytes() == jpeg_bytes()

    second = download_images(urls, cache, workers=3, timeout=5)
    assert second == {"downloaded": 0, "already_present": 1, "download_failures": 2}
    assert time.perf_counter() - started < 10


def test_raw_form_downloads_image_urls(tmp_path, image_server):
    folder = write_raw(tmp_path / "raw", server=image_server)
    cache = tmp_path / "cache"
    catalogue = load_amazon("beauty", folder, download_images=True, image_cache=cache, workers=3)
    paths = dict(zip(catalogue.items["item_id"], catalogue.items["image_path"]))
    assert paths == {"A1": str(cache / "A1.jpg"), "B3": None, "A2": None}
    assert catalogue.counts == {
        "html_unescaped_titles": 1, "missing_titles": 1, "downloaded": 1, "already_present": 0,
        "download_failures": 2, "missing_images": 2, "corrupt_images": 0, "extreme_aspect_images": 0,
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
    with pytest.raises(DataError, match=r"Beauty\.txt:2: item '9' is not in .*items\.jsonl: the two files do not belong together"):
        load_amazon("beauty", folder)


def test_preprocessed_file_cut_mid_line(tmp_path):
    # "2 4 1" may have been "2 4 13": a cut id can be a real item, so a missing final newline is an error
    with pytest.raises(DataError, match=r"Beauty\.txt:2: the file does not end with a newline"):
        load_amazon("beauty", write_preprocessed(tmp_path, "1 1 2\n2 4 1"))


def test_preprocessed_user_without_items(tmp_path):
    with pytest.raises(DataError, match=r"Beauty\.txt:2: expected 'user_id item_id"):
        load_amazon("beauty", write_preprocessed(tmp_path, "1 1 2\n2\n"))


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
