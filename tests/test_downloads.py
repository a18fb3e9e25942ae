"""The image downloader against a loopback HTTP server (127.0.0.1 only) that misbehaves as the
internet does: slow answers, 429s with Retry-After, 500s, bodies cut short, redirects, pages that
are not images, oversized bodies, decompression bombs; and a SIGTERM in the middle of a run."""

import collections
import csv
import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from sda_lib.data.images import FAILURES_FILE, DownloadPolicy, download_images, image_format

FAST = DownloadPolicy(timeout=0.5, retries=2, backoff=0.01, max_backoff=0.05, per_host=2, max_bytes=50_000)


def png(seed: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, 90, 160)).save(buffer, "PNG")
    return buffer.getvalue()


def bomb_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none: its IHDR and an empty IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", b"")
    )


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests = collections.Counter()
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):
        pass  # a client that timed out and hung up: expected here

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, body: bytes, kind: str = "image/png", status: int = 200, length: int | None = None, **headers):
        self.finished_work()  # the client holds its slot until it has read the answer: count below it
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        server = self.server
        # a request the client gave up on (hang) keeps its handler busy after the client moved on,
        # so it is not counted among the requests in flight
        self.counted = int(not self.path.startswith("/hang"))
        with server.lock:
            server.requests[self.path] += 1
            seen = server.requests[self.path]
            server.in_flight += self.counted
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
        try:
            self.answer(self.path.strip("/").split("/"), seen)
        finally:
            self.finished_work()

    def finished_work(self):
        """Leave the requests in flight (once), before the answer goes out: a client that has read
        it may start its next request at once, before this handler returns."""
        with self.server.lock:
            self.server.in_flight -= self.counted
            self.counted = 0

    def answer(self, parts: list[str], seen: int):
        kind, seed = parts[0], int(parts[-1]) if parts[-1].isdigit() else 0
        if kind == "img":
            time.sleep(0.05)  # long enough for requests to overlap
            self.send(png(seed))
        elif kind == "slow":  # slow, but within the timeout
            time.sleep(0.3)
            self.send(png(seed))
        elif kind == "hang":  # longer than the timeout, every time
            time.sleep(1.0)
            self.send(png(seed))
        elif kind == "429":
            self.send(b"slow down", "text/plain", 429, Retry_After="0") if seen == 1 else self.send(png(seed))
        elif kind == "500":
            self.send(b"oops", "text/plain", 500) if seen <= 2 else self.send(png(seed))
        elif kind == "always500":
            self.send(b"oops", "text/plain", 503)
        elif kind == "truncated":  # the first answer promises more bytes than it sends
            body = png(seed)
            self.send(body[: len(body) // 2], length=len(body)) if seen == 1 else self.send(body)
            self.close_connection = True
        elif kind == "redirect":
            self.send(b"", "text/plain", 302, Location=f"/img/{seed}")
        elif kind == "page":
            self.send(b"<html>not an image</html>", "text/html")
        elif kind == "liar":  # says it is a JPEG, is a web page
            self.send(b"<html>still not an image</html>", "image/jpeg")
        elif kind == "huge":
            self.send(png(seed, 400) + b"\0" * 60_000)
        elif kind == "bomb":  # beyond PIL's own guard
            self.send(bomb_header(100_000, 100_000))
        elif kind == "bigpx":  # within PIL's guard, beyond the policy's pixel cap
            self.send(bomb_header(9_000, 9_000))
        else:
            self.send(b"no such thing", "text/plain", 404)


@pytest.fixture
def server():
    server = Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def failures(cache) -> dict[str, tuple[str, str]]:
    with open(cache / FAILURES_FILE, newline="") as f:
        return {row["item"]: (row["url"], row["reason"]) for row in csv.DictReader(f)}


def test_faults_are_retried_refused_and_listed(server, tmp_path):
    good = {f"ok{i}": server.url(f"/img/{i}") for i in range(6)}
    recovered = {
        "slow": server.url("/slow/1"),
        "throttled": server.url("/429/2"),
        "flaky": server.url("/500/3"),
        "cut": server.url("/truncated/4"),
        "moved": server.url("/redirect/5"),
    }
    refused = {
        "hangs": server.url("/hang/6"),
        "broken": server.url("/always500/7"),
        "page": server.url("/page/8"),
        "liar": server.url("/liar/9"),
        "huge": server.url("/huge/10"),
        "bomb": server.url("/bomb/11"),
        "bigpx": server.url("/bigpx/13"),
        "gone": server.url("/missing/12"),
    }
    cache = tmp_path / "cache"
    counts = download_images({**good, **recovered, **refused}, cache, workers=8, policy=FAST, progress=False)
    assert counts == {"downloaded": 11, "already_present": 0, "download_failures": 8}
    for item in [*good, *recovered]:
        assert image_format(cache / f"{item}.png") == "PNG", item
    assert not any(cache.glob(".*.tmp")) and not any((cache / f"{i}.png").exists() for i in refused)

    listed = failures(cache)
    assert set(listed) == set(refused)
    assert all(listed[item][0] == url for item, url in refused.items())
    reasons = {item: reason for item, (_, reason) in listed.items()}
    assert "connection failed" in reasons["hangs"] and "after 3 tries" in reasons["hangs"]
    assert reasons["broken"].startswith("HTTP 503") and "after 3 tries" in reasons["broken"]
    assert reasons["page"] == "not an image: Content-Type text/html"
    assert reasons["liar"].startswith("does not decode as an image")
    assert reasons["huge"].startswith("too large")
    assert reasons["bomb"].startswith("decompression bomb refused")
    assert reasons["bigpx"] == "decompression bomb refused: 9000x9000 px, above the 50000000-pixel cap"
    assert reasons["gone"] == "HTTP 404 Not Found"  # not worth a retry

    # retried exactly as often as the server misbehaved; refusals are not retried
    assert server.requests["/429/2"] == 2 and server.requests["/500/3"] == 3 and server.requests["/truncated/4"] == 2
    assert server.requests["/page/8"] == 1 and server.requests["/missing/12"] == 1 and server.requests["/hang/6"] == 3
    assert server.most_in_flight <= FAST.per_host  # 8 threads, one host: 2 requests at a time


def test_what_is_on_disk_is_never_fetched_again(server, tmp_path):
    cache = tmp_path / "cache"
    urls = {"a": server.url("/img/1"), "b": server.url("/page/2")}
    download_images(urls, cache, workers=2, policy=FAST, progress=False)
    (cache / "c.png").write_bytes(b"damaged")  # a bad file in the cache is replaced
    urls["c"] = server.url("/img/3")
    counts = download_images(urls, cache, workers=2, policy=FAST, progress=False)
    assert counts == {"downloaded": 1, "already_present": 1, "download_failures": 1}
    assert server.requests["/img/1"] == 1 and server.requests["/page/2"] == 2
    assert image_format(cache / "c.png") == "PNG"
    stamp = (cache / FAILURES_FILE).stat().st_mtime_ns
    download_images(urls, cache, workers=2, policy=FAST, progress=False)
    assert (cache / FAILURES_FILE).stat().st_mtime_ns == stamp  # same failures: file untouched
    urls.pop("b")
    download_images(urls, cache, workers=2, policy=FAST, progress=False)
    assert not (cache / FAILURES_FILE).exists()


def test_retry_wait_doubles_and_honours_retry_after():
    import random

    policy = DownloadPolicy(backoff=1.0, max_backoff=8.0)
    rng = random.Random(0)
    waits = [policy.wait(a, None, rng) for a in range(5)]
    assert [0.5 <= w / min(8.0, 2**a) <= 1.0 for a, w in enumerate(waits)] == [True] * 5
    assert policy.wait(0, "5", rng) == 5.0 and policy.wait(0, "600", rng) == 8.0


_JOB = """
import sys
from sda_lib.data.images import DownloadPolicy, download_images
from sda_lib.utils.preempt import Preempted
urls = {f"item{i}": f"%s/slow/{i}" for i in range(40)}
try:
    download_images(urls, sys.argv[1], workers=2, policy=DownloadPolicy(timeout=5, per_host=2), progress=False)
except Preempted as err:
    print(err)
    sys.exit(75)
"""


def test_sigterm_mid_download_resumes_cleanly(server, tmp_path):
    cache = tmp_path / "cache"
    job = _JOB % server.url("")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-c", job, str(cache)], stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while len(list(cache.glob("*.png"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 75, out
    assert "run the same command again to resume" in out
    kept = sorted(cache.glob("*.png"))
    assert 4 <= len(kept) < 40
    assert all(image_format(p) == "PNG" for p in kept) and not any(cache.glob(".*.tmp"))
    fetched_before = sum(server.requests.values())

    counts = download_images(
        {f"item{i}": server.url(f"/slow/{i}") for i in range(40)}, cache, workers=8, policy=FAST, progress=False
    )
    assert counts == {"downloaded": 40 - len(kept), "already_present": len(kept), "download_failures": 0}
    assert sum(server.requests.values()) - fetched_before == 40 - len(kept)
