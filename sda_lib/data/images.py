"""Item images: find them on disk, check that they decode, and download them into a cache.

An image that is missing or unusable becomes `image_path=None` rather than an error: real
catalogues always have some, and the data card reports how many (`missing_images` counts every
item left without an image, `corrupt_images` the files among them that do not decode,
`extreme_aspect_images` those the backbone's resizing refuses). Such items are shown to the
backbone as one placeholder image (`placeholder_image`).
"""

from __future__ import annotations

import io
import logging
import os
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from sda_lib.data.catalogue import DataError
from sda_lib.frontend import tqdm
from sda_lib.io import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
_SUFFIX_OF_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}
_THUMBNAIL = (64, 64)
# Qwen2-VL's image resizing (transformers' smart_resize) raises for a longer-to-shorter side ratio
# above this; smaller images are scaled up, so size alone never makes an image unusable.
MAX_ASPECT_RATIO = 200
# The image of every item without a usable one. "noise" is the authors' data/noise.jpg recipe
# (qwen_vl_mask.py generate_gaussian_noise_image: 224x224 RGB, Normal(0, 50) per channel, clipped
# to [0, 255], uint8: a dark noise image), drawn from a fixed seed so it is the same everywhere and
# saved losslessly; "grey" is the workbench's earlier 64x64 mid-grey square.
PLACEHOLDERS = ("noise", "grey")
NOISE_SIZE, NOISE_STD, NOISE_SEED = 224, 50.0, 0


def _decode(source: str | os.PathLike | io.BytesIO) -> tuple[str, tuple[int, int]]:
    """Format and (width, height) of a whole, decodable image; raises PIL's error when it is not.

    `verify` checks the container cheaply; a reduced-size decode then catches truncated pixel data
    (which `verify` lets through for JPEG).
    """
    with Image.open(source) as img:
        fmt, size = img.format, img.size
        img.verify()
    if isinstance(source, io.BytesIO):
        source.seek(0)
    with Image.open(source) as img:
        img.draft("RGB", _THUMBNAIL)  # JPEG decodes at 1/8 scale: fast on full-size photos
        img.load()
    return fmt, size


def placeholder_image(kind: str = "noise") -> Image.Image:
    """The placeholder image `kind` ("noise" or "grey"); identical on every call and machine."""
    if kind == "noise":
        noise = np.random.default_rng(NOISE_SEED).normal(0.0, NOISE_STD, (NOISE_SIZE, NOISE_SIZE, 3))
        return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "RGB")
    if kind == "grey":
        return Image.new("RGB", (64, 64), (128, 128, 128))
    raise ValueError(f"placeholder must be one of {', '.join(PLACEHOLDERS)}, got {kind!r}")


def image_format(source: str | os.PathLike | io.BytesIO) -> str | None:
    """PIL format name ("JPEG", "PNG"...) if `source` is a whole, decodable image, else None."""
    try:
        return _decode(source)[0]
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on bad files
        return None


def _image_problem(source: str | os.PathLike) -> tuple[str, str] | None:
    """(card count, reason) when the backbone cannot use the image file, else None."""
    try:
        _, (width, height) = _decode(source)
    except Exception as e:  # as in image_format
        return "corrupt_images", f"does not decode as an image ({type(e).__name__}: {e})"
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return "extreme_aspect_images", (
            f"is {width}x{height} px: its aspect ratio {max(width, height) / min(width, height):.0f} is above "
            f"{MAX_ASPECT_RATIO}, which Qwen2-VL's image resizing refuses"
        )
    return None


def usable_image(source: str | os.PathLike) -> str | None:
    """Why the backbone cannot use this image file (to name with the item and file), or None."""
    problem = _image_problem(source)
    return problem[1] if problem else None


def check_images(
    candidates: Mapping[str, Iterable[str | os.PathLike]], workers: int = 8
) -> tuple[dict[str, str | None], dict[str, int]]:
    """For each item, the first candidate file that exists and is usable (else None), plus counts."""

    def first_valid(paths) -> tuple[str | None, list[str]]:
        rejected = []
        for path in paths:
            if not os.path.isfile(path):
                continue
            problem = _image_problem(path)
            if problem is None:
                return str(path), rejected
            rejected.append(problem[0])
        return None, rejected

    items = list(candidates)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL decodes outside the GIL
        results = list(
            tqdm(
                pool.map(first_valid, (candidates[i] for i in items)),
                total=len(items),
                desc="checking images",
                unit=" items",
                leave=False,
            )
        )
    paths = {item: path for item, (path, _) in zip(items, results)}
    rejections = Counter(kind for _, rejected in results for kind in rejected)
    counts = {
        "missing_images": sum(path is None for path, _ in results),
        "corrupt_images": 0,
        "extreme_aspect_images": 0,
        **rejections,
    }
    return paths, counts


def _files_by_stem(folder: Path) -> dict[str, list[Path]]:
    """Image files in `folder` grouped by name without suffix (suffix matched case-insensitively)."""
    found: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if path.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
            found.setdefault(path.stem, []).append(path)
    return found


def find_images(
    item_ids: Iterable[str], folder: str | os.PathLike, workers: int = 8
) -> tuple[dict[str, str | None], dict[str, int]]:
    """Images named by item id (`<id>.jpg`, `.jpeg`, `.png`, `.webp`, `.gif`) in `folder`.

    Returns {item_id: path or None} and counts {"missing_images", "corrupt_images",
    "extreme_aspect_images"}.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder {folder} not found: pass a folder of <item id>.jpg (or .png, .webp...) files")
    by_stem = _files_by_stem(folder)
    return check_images({item: by_stem.get(item, []) for item in item_ids}, workers)


def download_images(
    urls: Mapping[str, str], cache_dir: str | os.PathLike, workers: int = 16, timeout: float = 30.0
) -> dict[str, int]:
    """Fetch each item's image into `cache_dir/<item id>.<format suffix>`; resumable.

    An item whose cached file already decodes is skipped. A download is checked before it is
    written, and written under a temporary name then renamed, so an interrupted run leaves no
    partial file. Failures (HTTP errors, timeouts, non-images) are counted, not raised.
    Returns {"downloaded", "already_present", "download_failures"}.
    """
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    by_stem = _files_by_stem(cache)

    def fetch(item: str, url: str) -> str:
        for cached in by_stem.get(item, []):
            if image_format(cached) is not None:
                return "already_present"
            cached.unlink(missing_ok=True)  # a bad file in our own cache: replace it
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = io.BytesIO(response.read())
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, malformed URLs
            log.debug("download of %s for item %s failed: %s", url, item, e)
            return "download_failures"
        fmt = image_format(data)
        if fmt not in _SUFFIX_OF_FORMAT:
            log.debug("download of %s for item %s is not a usable image", url, item)
            return "download_failures"
        with atomic_path(cache / f"{item}{_SUFFIX_OF_FORMAT[fmt]}") as tmp:
            tmp.write_bytes(data.getvalue())
        return "downloaded"

    counts = {"downloaded": 0, "already_present": 0, "download_failures": 0}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        outcomes = pool.map(fetch, urls.keys(), urls.values())
        for outcome in tqdm(outcomes, total=len(urls), desc="downloading images", unit=" images"):
            counts[outcome] += 1
    if counts["download_failures"]:
        log.warning(
            "%d of %d image downloads failed (see DEBUG log for each URL); those items have no image",
            counts["download_failures"],
            len(urls),
        )
    return counts
