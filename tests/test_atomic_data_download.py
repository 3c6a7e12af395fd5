"""atomic_data.download_images against a local HTTP server on 127.0.0.1 started by the test."""
import functools
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from atomic_data.common import DatasetPaths
from atomic_data.download_images import download_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def image_bytes(fmt="JPEG", size=(32, 24), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


class ImageServer:
    """Serves test images; counts requests per path; some paths misbehave on purpose."""

    def __init__(self):
        self.counts = Counter()
        self.hang = True
        self.hang_started = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code, body, ctype="image/jpeg", extra=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path
                server.counts[path] += 1
                n = server.counts[path]
                if path.startswith("/ok/"):
                    self.send(200, image_bytes(seed=int(path.split("/")[2].split(".")[0])))
                elif path == "/ok.png":
                    self.send(200, image_bytes("PNG"), "image/png")
                elif path == "/slow.jpg":
                    time.sleep(4)
                    self.send(200, image_bytes())
                elif path == "/corrupt.jpg":
                    self.send(200, np.random.default_rng(1).bytes(3000))
                elif path == "/truncated.jpg":
                    data = image_bytes(size=(64, 64))
                    self.send(200, data[: len(data) // 2])
                elif path == "/page.html":
                    self.send(200, b"<!DOCTYPE html><html>gone</html>", "text/html")
                elif path == "/flaky.jpg":
                    self.send(503, b"busy", "text/plain") if n == 1 else self.send(200, image_bytes(seed=7))
                elif path == "/tiny.gif":
                    self.send(200, image_bytes("GIF", size=(1, 1)), "image/gif")
                elif path == "/redirect-other.jpg":
                    port = self.server.server_address[1]
                    self.send(302, b"", "text/plain", [("Location", f"http://localhost:{port}/ok/1.jpg")])
                elif path == "/redirect-same.jpg":
                    self.send(302, b"", "text/plain", [("Location", "/ok/9.jpg")])
                elif path.startswith("/hang/"):
                    data = image_bytes(seed=4)
                    if not server.hang:
                        self.send(200, data)
                        return
                    # headers and half the body, then stall until released
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    server.hang_started.set()
                    server.release.wait(30)
                else:
                    self.send(404, b"not found", "text/plain")

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # the client gave up on a slow response: expected here

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ImageServer()
    yield s
    s.close()


def write_meta(out, name, sources):
    paths = DatasetPaths(str(out), name)
    os.makedirs(paths.folder, exist_ok=True)
    with open(paths.meta, "w", encoding="utf-8") as f:
        for item, source in sources.items():
            f.write(json.dumps({"item_id": item, "text": f"text {item}", "image": source}) + "\n")
    return paths


def read_failures(paths):
    with open(paths.failures, encoding="utf-8") as f:
        assert f.readline() == "item_id\tsource\treason\n"
        return {cells[0]: cells[2] for cells in (line.rstrip("\n").split("\t") for line in f)}


def images_on_disk(paths):
    return sorted(os.listdir(paths.images))


def test_outcomes_retries_hosts_and_rerun(tmp_path, server):
    local = tmp_path / "photo.jpg"
    local.write_bytes(image_bytes(seed=3))
    u = server.url
    paths = write_meta(tmp_path / "out", "dl", {
        "ok1": f"{u}/ok/1.jpg", "okpng": f"{u}/ok.png", "missing": f"{u}/missing.jpg",
        "slow": f"{u}/slow.jpg", "corrupt": f"{u}/corrupt.jpg", "truncated": f"{u}/truncated.jpg",
        "html": f"{u}/page.html", "flaky": f"{u}/flaky.jpg", "tiny": f"{u}/tiny.gif",
        "other-host": f"{u}/redirect-other.jpg", "same-host": f"{u}/redirect-same.jpg",
        "local": str(local), "local-missing": str(tmp_path / "nope.jpg"), "none": None,
    })
    summary = download_images("dl", out=str(tmp_path / "out"), workers=4, timeout=1.0, retries=1,
                              retry_wait=0.01, show_progress=False, quiet=True)

    assert images_on_disk(paths) == ["flaky.jpg", "local.jpg", "ok1.jpg", "okpng.png", "same-host.jpg"]
    with Image.open(os.path.join(paths.images, "ok1.jpg")) as im:
        assert im.size == (32, 24)
    with open(os.path.join(paths.images, "local.jpg"), "rb") as f:
        assert f.read() == local.read_bytes()
    failures = read_failures(paths)
    assert sorted(failures) == ["corrupt", "html", "local-missing", "missing", "other-host", "slow",
                                "tiny", "truncated"]
    assert failures["missing"] == "HTTP 404"
    assert failures["slow"].startswith("timeout")
    assert failures["corrupt"].startswith("not a valid image")
    assert failures["truncated"].startswith("not a valid image")
    assert "<!DOCTYPE html" in failures["html"]
    assert failures["tiny"].startswith("placeholder image 1x1")
    assert failures["other-host"].startswith("redirect to http://localhost refused")
    assert failures["local-missing"].startswith("cannot read local file")
    assert server.counts["/ok/1.jpg"] == 1  # the refused redirect never reached localhost
    assert server.counts["/slow.jpg"] == 2 and server.counts["/flaky.jpg"] == 2  # retried once
    assert server.counts["/missing.jpg"] == 1  # a 404 is not retried
    assert summary["downloaded or copied now"] == 5 and summary["failed now"] == 8
    assert summary["items with no image source"] == 1
    assert not [e for e in os.listdir(paths.images) if e.startswith(".")]  # no temporary files

    # rerun: what is there is not requested again; failures are retried (or skipped)
    before = Counter(server.counts)
    summary = download_images("dl", out=str(tmp_path / "out"), workers=4, timeout=1.0, retries=0,
                              show_progress=False, quiet=True)
    assert summary["already present (skipped)"] == 5 and summary["downloaded or copied now"] == 0
    for path in ("/ok/1.jpg", "/ok.png", "/flaky.jpg", "/redirect-same.jpg", "/ok/9.jpg"):
        assert server.counts[path] == before[path]
    assert server.counts["/missing.jpg"] == 2
    before = Counter(server.counts)
    summary = download_images("dl", out=str(tmp_path / "out"), skip_failed=True, show_progress=False, quiet=True)
    assert server.counts == before
    assert summary["failed before, not retried (--skip-failed)"] == 8
    assert sorted(read_failures(paths)) == sorted(failures)

    # a corrupt file under an image's final name is detected and downloaded again
    with open(os.path.join(paths.images, "ok1.jpg"), "wb") as f:
        f.write(b"\xff\xd8 not really")
    download_images("dl", out=str(tmp_path / "out"), skip_failed=True, show_progress=False, quiet=True)
    assert server.counts["/ok/1.jpg"] == 2
    with Image.open(os.path.join(paths.images, "ok1.jpg")) as im:
        im.load()


def test_kill_in_the_middle_then_rerun(tmp_path, server):
    u = server.url
    out = tmp_path / "out"
    paths = write_meta(out, "kill", {f"i{n}": f"{u}/{'hang' if n == 4 else 'ok'}/{n}.jpg" for n in range(1, 7)})
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomic_data.download_images", "--name", "kill", "--out", str(out),
         "--workers", "1", "--timeout", "30", "--no-progress"],
        cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert server.hang_started.wait(60), proc.stderr.read().decode() if proc.poll() is not None else "no hang"
        time.sleep(0.2)  # the client is now reading the stalled body of item 4
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    # killed in the middle of item 4: items 1 to 3 complete, nothing of item 4 on disk
    assert images_on_disk(paths) == ["i1.jpg", "i2.jpg", "i3.jpg"]
    for n in (1, 2, 3):
        with Image.open(os.path.join(paths.images, f"i{n}.jpg")) as im:
            im.load()

    server.hang = False
    summary = download_images("kill", out=str(out), workers=2, show_progress=False, quiet=True)
    assert summary["already present (skipped)"] == 3 and summary["downloaded or copied now"] == 3
    assert images_on_disk(paths) == [f"i{n}.jpg" for n in range(1, 7)]
    assert [server.counts[f"/ok/{n}.jpg"] for n in (1, 2, 3, 5, 6)] == [1, 1, 1, 1, 1]  # none twice
    assert server.counts["/hang/4.jpg"] == 2  # the interrupted one, once more
    with Image.open(os.path.join(paths.images, "i4.jpg")) as im:
        im.load()
