"""Item images: find them on disk, check that they decode, and download them into a cache.

An image that is missing or unusable becomes `image_path=None` rather than an error: real
catalogues always have some, and the data card reports how many (`missing_images` counts every
item left without an image, `corrupt_images` the files among them that do not decode,
`extreme_aspect_images` those the backbone's resizing refuses). Such items are shown to the
backbone as one placeholder image (`placeholder_image`).
"""

from __future__ import annotations

import csv
import http.client
import io
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image

from sda_lib import __version__
from sda_lib.data.catalogue import DataError
from sda_lib.utils.choices import check_choice
from sda_lib.utils.frontend import tqdm
from sda_lib.utils.io import atomic_path
from sda_lib.utils.preempt import Preempted, on_sigterm

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
Placeholder = Literal["noise", "grey"]
PLACEHOLDERS = get_args(Placeholder)
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


def placeholder_image(kind: Placeholder = "noise") -> Image.Image:
    """The placeholder image `kind` ("noise" or "grey"); identical on every call and machine."""
    if check_choice(kind, Placeholder, "placeholder") == "grey":
        return Image.new("RGB", (64, 64), (128, 128, 128))
    noise = np.random.default_rng(NOISE_SEED).normal(0.0, NOISE_STD, (NOISE_SIZE, NOISE_SIZE, 3))
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "RGB")


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


@dataclass(frozen=True)
class DownloadPolicy:
    """How `download_images` treats the internet, which throttles, fails and lies.

    Each request waits at most `timeout` seconds per read; a 429, a 5xx, a timeout, a dropped
    connection or a body shorter than its Content-Length is tried again up to `retries` times,
    waiting `backoff` seconds doubled after each try (at most `max_backoff`, or what the server's
    Retry-After asks within that), with jitter so threads do not retry in step. At most `per_host`
    requests go to one host at once. A response is refused before it is decoded when its
    Content-Type is not image/* or it is larger than `max_bytes`; an image is refused before its
    pixels are decoded when it declares more than `max_pixels` (a decompression bomb)."""

    timeout: float = 30.0
    retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 60.0
    per_host: int = 4
    max_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000

    def wait(self, attempt: int, retry_after: str | None, rng: random.Random) -> float:
        """Seconds before try `attempt` + 1 (0-based), honouring a numeric Retry-After."""
        delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + rng.random() / 2)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), self.max_backoff))
        return delay


FAILURES_FILE = "download-failures.csv"  # in the cache: item, url, reason of each image not fetched
USER_AGENT = f"sda-workbench/{__version__} (research image download)"
_RETRY_STATUS = {429, 500, 502, 503, 504}


class _Refused(Exception):
    """A download that failed; `retry` says whether trying again may help."""

    def __init__(self, reason: str, retry: bool = False, retry_after: str | None = None):
        super().__init__(reason)
        self.reason, self.retry, self.retry_after = reason, retry, retry_after


class _Hosts:
    """One semaphore per host: at most `limit` requests to a host at once."""

    def __init__(self, limit: int):
        self.limit, self.lock, self.semaphores = limit, threading.Lock(), {}

    def __call__(self, url: str) -> threading.BoundedSemaphore:
        host = urllib.parse.urlsplit(url).netloc
        with self.lock:
            return self.semaphores.setdefault(host, threading.BoundedSemaphore(self.limit))


def _get(url: str, policy: DownloadPolicy) -> bytes:
    """The body of `url`, checked for type, size and completeness (raises _Refused)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=policy.timeout) as response:  # follows redirects
            kind = response.headers.get_content_type()
            if not kind.startswith("image/"):
                raise _Refused(f"not an image: Content-Type {kind}")
            length = response.headers.get("Content-Length")
            if length is not None and int(length) > policy.max_bytes:
                raise _Refused(f"too large: {int(length)} bytes, above the {policy.max_bytes}-byte cap")
            data = response.read(policy.max_bytes + 1)
    except urllib.error.HTTPError as err:
        retry_after = err.headers.get("Retry-After")
        raise _Refused(f"HTTP {err.code} {err.reason}", err.code in _RETRY_STATUS, retry_after) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _Refused(f"connection failed: {type(err).__name__} {err}".strip(), retry=True) from None
    except urllib.error.URLError as err:  # DNS, refused connections, timeouts while connecting
        raise _Refused(f"connection failed: {err.reason}", retry=True) from None
    except ValueError as err:  # a malformed URL
        raise _Refused(f"bad URL: {err}") from None
    if len(data) > policy.max_bytes:
        raise _Refused(f"too large: above the {policy.max_bytes}-byte cap")
    if length is not None and len(data) < int(length):
        raise _Refused(f"truncated: {len(data)} of {int(length)} bytes", retry=True)
    return data


def _image_suffix(data: bytes, policy: DownloadPolicy) -> str:
    """The file suffix of a downloaded image, checked whole; raises _Refused. The declared size
    is read from the header first, so a decompression bomb is refused before its pixels exist."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _Refused(f"decompression bomb refused: {err}") from None
    except Exception as err:  # as in image_format
        raise _Refused(f"does not decode as an image ({type(err).__name__}: {err})") from None
    if width * height > policy.max_pixels:
        raise _Refused(f"decompression bomb refused: {width}x{height} px, above the {policy.max_pixels}-pixel cap")
    fmt = image_format(io.BytesIO(data))
    if fmt not in _SUFFIX_OF_FORMAT:
        raise _Refused(f"does not decode as a whole JPEG, PNG, WebP or GIF image ({fmt or 'damaged'})")
    return _SUFFIX_OF_FORMAT[fmt]


def download_images(
    urls: Mapping[str, str],
    cache_dir: str | os.PathLike,
    workers: int = 16,
    policy: DownloadPolicy = DownloadPolicy(),
    progress: bool = True,
) -> dict[str, int]:
    """Fetch each item's image into `cache_dir/<item id>.<format suffix>`: a job to leave running.

    Resumable: an item whose cached file decodes is never fetched again, and each download is
    checked, written under a temporary name and renamed, so an interrupted run leaves no partial
    file. Failures (see DownloadPolicy for what is retried and what is refused) are counted, not
    raised, and listed in `cache_dir/download-failures.csv` (item, url, reason); a later run tries
    them again. On SIGTERM the downloads in flight finish, the failures file is written and
    `Preempted` is raised: running it again resumes. `workers` threads share the per-host limit.
    Returns {"downloaded", "already_present", "download_failures"}.
    """
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    by_stem = _files_by_stem(cache)
    host_slot = _Hosts(policy.per_host)
    failures: dict[str, tuple[str, str]] = {}

    with on_sigterm("image download") as stop:

        def fetch(item: str, url: str) -> str:
            for cached in by_stem.get(item, []):
                if image_format(cached) is not None:
                    return "already_present"
                cached.unlink(missing_ok=True)  # a bad file in our own cache: replace it
            if stop:
                return "stopped"
            rng = random.Random(f"{item}{url}")
            for attempt in range(policy.retries + 1):
                try:
                    with host_slot(url):
                        data = _get(url, policy)
                    suffix = _image_suffix(data, policy)
                except _Refused as refused:
                    if not refused.retry or attempt == policy.retries or stop:
                        tries = f" (after {attempt + 1} tries)" if attempt else ""
                        failures[item] = (url, refused.reason + tries)
                        log.debug("download of %s for item %s failed: %s", url, item, refused.reason)
                        return "download_failures"
                    time.sleep(policy.wait(attempt, refused.retry_after, rng))
                    continue
                with atomic_path(cache / f"{item}{suffix}") as tmp:
                    tmp.write_bytes(data)
                return "downloaded"

        counts = {"downloaded": 0, "already_present": 0, "download_failures": 0, "stopped": 0}
        bar = tqdm(total=len(urls), desc="downloading images", unit=" images", disable=not progress)
        with bar, ThreadPoolExecutor(max(1, workers)) as pool:
            for outcome in pool.map(fetch, urls.keys(), urls.values()):
                counts[outcome] += 1
                bar.update(1)
                if outcome == "download_failures":
                    bar.set_postfix(failed=counts["download_failures"], refresh=False)
        _write_failures(cache / FAILURES_FILE, failures)
        stopped = counts.pop("stopped")
        if stop:
            raise Preempted(
                f"image download stopped on SIGTERM: {counts['downloaded']} fetched this run, "
                f"{stopped} not started; the images are kept in {cache}: run the same command again to resume"
            )
    if counts["download_failures"]:
        log.warning(
            "%d of %d image downloads failed (item, URL and reason of each in %s); those items have no image",
            counts["download_failures"],
            len(urls),
            cache / FAILURES_FILE,
        )
    return counts


def _write_failures(path: Path, failures: dict[str, tuple[str, str]]) -> None:
    """The failures file, sorted by item; rewritten only when its content changes (the cache's
    listing fingerprints a prepared dataset), removed when nothing failed."""
    if not failures:
        path.unlink(missing_ok=True)
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["item", "url", "reason"])
    writer.writerows([item, *failures[item]] for item in sorted(failures))
    if path.is_file() and path.read_text() == buffer.getvalue():
        return
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
