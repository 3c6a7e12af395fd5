"""Step 2: download (or, for Yelp, copy) the image of each item named in ``NAME.meta.jsonl``.

    python -m atomic_data.download_images --name amazon-beauty [--out dataset] [--workers 16]

Each item's image source (``image`` in ``NAME.meta.jsonl``: an http(s) URL, or a local file
for Yelp photos) becomes ``<out>/<name>/images/<item_id>.<ext>``:

* concurrent (``--workers``), with a timeout per network operation (``--timeout``), a cap on
  the time per attempt (``--max-time``) and on the size (``--max-bytes``), and retries with
  back-off on timeouts, connection errors and HTTP 408/429/5xx (``--retries``);
* every response is decoded with Pillow before it is kept: a corrupt, truncated or non-image
  response (an HTML error page, say), or a placeholder smaller than ``--min-side`` pixels, is
  a failure; failures go to ``NAME.image_failures.tsv`` (item, source, reason);
* an image is held in memory until it is complete and valid, then written to a temporary
  name and renamed: a kill never leaves a half-written image under its final name (temporary
  files of a killed run are removed by the next one);
* resumable: a rerun skips every item whose image is already there and readable, so
  nothing is downloaded twice (``--skip-failed`` also skips the items that failed before);
* it talks only to the hosts in the metadata URLs: a redirect to any other host is refused
  and recorded as a failure (``--allow-host`` adds hosts), and environment proxy settings are
  ignored (``--proxy`` sets one).
"""
import http.client
import io
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed

from atomic_data.common import (
    DEFAULT_OUT,
    DatasetPaths,
    add_common_arguments,
    step_main,
    atomic_write,
    image_stem,
    print_summary,
    progress,
    read_meta,
    remove_stale_temps,
    save_summary,
)

USER_AGENT = "Mozilla/5.0 (compatible; prism-recbole-atomic-data/1.0)"
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}


class Failure(Exception):
    """A failed image; ``retry`` says whether another attempt may help."""

    def __init__(self, reason, retry=False):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class _HostLockedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, allowed):
        super().__init__()
        self.allowed = allowed

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        if target.scheme not in ("http", "https") or (target.hostname or "").lower() not in self.allowed:
            raise Failure(f"redirect to {target.scheme}://{target.hostname} refused (not a metadata host; "
                          "see --allow-host)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def validate_image(data, min_side=10):
    """``(extension, (width, height))`` of image bytes; :class:`Failure` when they are not a
    complete image that Pillow can decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()  # decodes everything: catches truncated and corrupt files
            size = im.size
    except Exception as err:  # noqa: BLE001  (Pillow raises many types)
        head = data[:15].decode("latin-1", errors="replace").strip()
        raise Failure(f"not a valid image ({type(err).__name__}: {err}; starts with {head!r})") from None
    if fmt not in EXTENSIONS:
        raise Failure(f"unsupported image format {fmt}")
    if min(size) < min_side:
        raise Failure(f"placeholder image {size[0]}x{size[1]} (smaller than --min-side {min_side})")
    return EXTENSIONS[fmt], size


def is_readable_image(path):
    """Cheap check of a file already on disk (header and structure, no full decode)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001
        return False


def existing_images(folder):
    """``{stem: file name}`` of the images in ``folder``."""
    found = {}
    if os.path.isdir(folder):
        for entry in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(entry)
            if not entry.startswith(".") and ext[1:] in EXTENSIONS.values():
                found[stem] = entry
    return found


class Downloader:
    def __init__(self, allowed_hosts, timeout=10.0, max_time=60.0, retries=2, retry_wait=1.0,
                 max_bytes=20 << 20, min_side=10, proxy=None):
        proxies = {"http": proxy, "https": proxy} if proxy else {}
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler(proxies), _HostLockedRedirects(allowed_hosts)
        )
        self.timeout, self.max_time = timeout, max_time
        self.retries, self.retry_wait = retries, retry_wait
        self.max_bytes, self.min_side = max_bytes, min_side

    def fetch(self, source):
        """Bytes of one image source (URL or local file), validated; raises :class:`Failure`."""
        if not source.lower().startswith(("http://", "https://")):
            if "://" in source:
                raise Failure(f"unsupported URL scheme in {source[:40]!r}")
            try:
                with open(source, "rb") as f:
                    data = f.read(self.max_bytes + 1)
            except OSError as err:
                raise Failure(f"cannot read local file ({err.strerror})") from None
            if len(data) > self.max_bytes:
                raise Failure(f"larger than --max-bytes {self.max_bytes}")
            return data, validate_image(data, self.min_side)
        attempt = 0
        while True:
            try:
                data = self._get(source)
                return data, validate_image(data, self.min_side)
            except Failure as failure:
                if not failure.retry or attempt >= self.retries:
                    raise
            attempt += 1
            time.sleep(self.retry_wait * 2 ** (attempt - 1))

    def _get(self, url):
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
        start = time.monotonic()
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                chunks, size = [], 0
                while True:
                    chunk = response.read(1 << 16)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise Failure(f"larger than --max-bytes {self.max_bytes}")
                    if time.monotonic() - start > self.max_time:
                        raise Failure(f"slower than --max-time {self.max_time:g} s", retry=True)
                    chunks.append(chunk)
                return b"".join(chunks)
        except Failure:
            raise
        except urllib.error.HTTPError as err:
            raise Failure(f"HTTP {err.code}", retry=err.code in RETRY_HTTP) from None
        except (socket.timeout, TimeoutError):
            raise Failure(f"timeout ({self.timeout:g} s)", retry=True) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, Failure):
                raise err.reason from None
            if isinstance(err.reason, (socket.timeout, TimeoutError)):
                raise Failure(f"timeout ({self.timeout:g} s)", retry=True) from None
            raise Failure(f"connection error ({err.reason})", retry=True) from None
        except (http.client.HTTPException, ConnectionError, OSError) as err:
            raise Failure(f"connection error ({type(err).__name__}: {err})", retry=True) from None


def _read_failures(path):
    failed = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            next(f, None)
            for line in f:
                cells = line.rstrip("\n").split("\t")
                if len(cells) == 3:
                    failed[cells[0]] = (cells[1], cells[2])
    return failed


def _write_failures(path, failures):
    with atomic_write(path) as f:
        f.write("item_id\tsource\treason\n")
        for item in sorted(failures):
            source, reason = failures[item]
            reason = reason.replace("\t", " ").replace("\n", " ")
            f.write(f"{item}\t{source}\t{reason}\n")


def download_images(name, out=DEFAULT_OUT, workers=16, timeout=10.0, max_time=60.0, retries=2,
                    retry_wait=1.0, max_bytes=20 << 20, min_side=10, skip_failed=False,
                    allow_hosts=(), proxy=None, show_progress=True, quiet=False):
    """Run the step; returns the summary dict (also printed and saved)."""
    paths = DatasetPaths(out, name)
    items = read_meta(paths)
    os.makedirs(paths.images, exist_ok=True)
    stale = remove_stale_temps(paths.images)
    on_disk = existing_images(paths.images)
    previous_failures = _read_failures(paths.failures)

    todo, present, no_source, skipped_failed = [], 0, 0, 0
    failures = {}
    for item in items:
        source = item.get("image")
        if not source:
            no_source += 1
            continue
        stem = image_stem(item["item_id"])
        name_on_disk = on_disk.get(stem)
        if name_on_disk:
            if is_readable_image(os.path.join(paths.images, name_on_disk)):
                present += 1
                continue
            os.remove(os.path.join(paths.images, name_on_disk))
        if skip_failed and item["item_id"] in previous_failures:
            skipped_failed += 1
            failures[item["item_id"]] = previous_failures[item["item_id"]]
            continue
        todo.append((item["item_id"], source, stem))

    allowed = {h.lower() for h in allow_hosts}
    for _, source, _ in todo:
        host = urllib.parse.urlsplit(source).hostname if "://" in source else None
        if host:
            allowed.add(host.lower())
    downloader = Downloader(allowed, timeout, max_time, retries, retry_wait, max_bytes, min_side, proxy)
    reasons = Counter()
    downloaded = 0
    finished = set()
    start = time.monotonic()

    def job(item_id, source, stem):
        data, (ext, _) = downloader.fetch(source)
        target = os.path.join(paths.images, f"{stem}.{ext}")
        with atomic_write(target, "wb") as f:
            f.write(data)
        return len(data)

    executor = ThreadPoolExecutor(max_workers=max(1, workers))
    bar = progress(total=len(todo), desc="images", enabled=show_progress, unit="img")
    try:
        futures = {executor.submit(job, *task): task for task in todo}
        for future in as_completed(futures):
            item_id, source, _ = futures[future]
            finished.add(item_id)
            try:
                future.result()
                downloaded += 1
            except Failure as failure:
                failures[item_id] = (source, failure.reason)
                reasons[failure.reason.split(" (")[0]] += 1
            bar.update(1)
    finally:
        bar.close()
        executor.shutdown(wait=False, cancel_futures=True)
        # interrupted: items not tried again keep their earlier failure record
        for item_id, _, _ in todo:
            if item_id not in finished and item_id in previous_failures:
                failures.setdefault(item_id, previous_failures[item_id])
        _write_failures(paths.failures, failures)

    elapsed = time.monotonic() - start
    summary = {
        "items": len(items),
        "items with an image source": len(items) - no_source,
        "items with no image source": no_source,
        "already present (skipped)": present,
        "downloaded or copied now": downloaded,
        "failed now": len(todo) - downloaded,
        "failed before, not retried (--skip-failed)": skipped_failed,
        "images on disk": len(existing_images(paths.images)),
        "failure reasons": dict(sorted(reasons.items())),
        "failures file": paths.failures,
        "stale temporary files removed": stale,
        "seconds": round(elapsed, 2),
    }
    save_summary(paths, "download_images", summary)
    if not quiet:
        print_summary(f"download_images -> {paths.images}", list(summary.items()))
    return summary


def add_arguments(parser, common=True):
    if common:
        add_common_arguments(parser, "no progress bar")
    g = parser.add_argument_group("download_images")
    g.add_argument("--workers", type=int, default=16, help="concurrent downloads (default: %(default)s)")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds per network operation (default: %(default)s)")
    g.add_argument("--max-time", type=float, default=60.0, help="seconds per attempt (default: %(default)s)")
    g.add_argument("--retries", type=int, default=2, help="retries after a transient failure (default: %(default)s)")
    g.add_argument("--retry-wait", type=float, default=1.0, help="first back-off in seconds, doubled each retry")
    g.add_argument("--max-bytes", type=int, default=20 << 20, help="largest image accepted (default: 20 MiB)")
    g.add_argument("--min-side", type=int, default=10,
                   help="images smaller than this many pixels on a side are placeholders (default: %(default)s)")
    g.add_argument("--skip-failed", action="store_true", help="do not retry items listed in the failures file")
    g.add_argument("--allow-host", action="append", default=[], help="also follow redirects to this host")
    g.add_argument("--proxy", help="HTTP proxy URL (environment proxy settings are ignored)")


def run_from_args(args, quiet=False):
    return download_images(
        args.name, out=args.out, workers=args.workers, timeout=args.timeout, max_time=args.max_time,
        retries=args.retries, retry_wait=args.retry_wait, max_bytes=args.max_bytes,
        min_side=args.min_side, skip_failed=args.skip_failed, allow_hosts=args.allow_host,
        proxy=args.proxy, show_progress=not args.no_progress, quiet=quiet,
    )


def main(argv=None):
    """The command line (``python -m atomic_data.download_images`` / ``prism-data-download-images``);
    Ctrl-C ends it with status 130, no traceback (a rerun resumes)."""
    try:
        return step_main("python -m atomic_data.download_images", __doc__, add_arguments, run_from_args, argv)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
