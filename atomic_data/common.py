"""Shared pieces of the data pipeline: file layout, raw-line reading, atomic writes, summaries."""
import ast
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import sys
import zlib

#: RecBole's default ``data_path``: ``run_recbole.py --dataset=NAME`` finds ``dataset/NAME``.
DEFAULT_OUT = "dataset"


class RawInputError(ValueError):
    """Malformed raw input; the message names the file and, where there is one, the line."""


class DatasetPaths:
    """Where each step reads and writes, inside ``<out>/<name>/``.

    ============================  ==========================================================
    ``NAME.inter``                interactions (``convert``)
    ``NAME.meta.jsonl``           one JSON object per item: ``item_id``, ``text``, ``image``
                                  (``convert``; read by the two later steps)
    ``images/``                   one validated image per item (``download_images``)
    ``NAME.image_failures.tsv``   item, source, reason of each image that failed
    ``NAME.clip-work/``           vectors computed so far (``extract_clip``; resume data)
    ``NAME.item``                 ``item_id``, ``img_emb``, ``txt_emb`` (``extract_clip``)
    ``NAME.summary.json``         each step's summary
    ============================  ==========================================================
    """

    def __init__(self, out, name):
        if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
            raise ValueError(f"dataset name {name!r} must be a plain folder name")
        self.out = out
        self.name = name
        self.folder = os.path.join(out, name)
        self.inter = os.path.join(self.folder, f"{name}.inter")
        self.item = os.path.join(self.folder, f"{name}.item")
        self.meta = os.path.join(self.folder, f"{name}.meta.jsonl")
        self.images = os.path.join(self.folder, "images")
        self.failures = os.path.join(self.folder, f"{name}.image_failures.tsv")
        self.work = os.path.join(self.folder, f"{name}.clip-work")
        self.summary = os.path.join(self.folder, f"{name}.summary.json")


# ---- reading raw files ------------------------------------------------------------------

def iter_lines(path, desc=None, show_progress=False):
    """Yield ``(line_no, line)`` for every non-blank line of a text or ``.gz`` file.

    A truncated or corrupt gzip stream, or bytes that are not UTF-8, raise
    :class:`RawInputError` naming the file and the line reached. ``show_progress`` shows a
    progress bar over the bytes of the file (compressed bytes for ``.gz``).
    """
    if not os.path.isfile(path):
        raise RawInputError(f"{path}: no such file")
    line_no = 0
    bar = progress(total=os.path.getsize(path), desc=desc or os.path.basename(path),
                   enabled=show_progress, unit="B", unit_scale=True)
    try:
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if _is_gzip(path) else raw
            text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
            done = 0
            for line_no, line in enumerate(text, start=1):
                if show_progress and line_no % 20000 == 0:
                    bar.update(raw.tell() - done)
                    done = raw.tell()
                line = line.strip()
                if line:
                    yield line_no, line
            bar.update(os.path.getsize(path) - done)
    except UnicodeDecodeError as err:
        raise RawInputError(f"{path}, near line {line_no + 1}: not UTF-8 text ({err.reason})") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise RawInputError(
            f"{path}: truncated or corrupt gzip file after line {line_no} ({err}); "
            "download it again"
        ) from None
    finally:
        bar.close()


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def parse_record(line, path, line_no):
    """One raw line as a dict: JSON first, then a Python literal (Amazon 2014 metadata).

    The literal is read with :func:`ast.literal_eval`, never ``eval``.
    """
    try:
        record = json.loads(line)
    except ValueError:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise RawInputError(
                f"{path}, line {line_no}: neither JSON nor a Python dict literal: "
                f"{line[:80]!r}{'...' if len(line) > 80 else ''}"
            ) from None
    if not isinstance(record, dict):
        raise RawInputError(
            f"{path}, line {line_no}: expected an object/dict, got {type(record).__name__}"
        )
    return record


_KEY_RE = {}


def quick_key(line, keys):
    """The value of the first of ``keys`` found in a raw JSON / dict-literal line, or None.

    A cheap regex, used to skip metadata lines of items that are not needed without parsing
    them; a line it cannot read is parsed in full.
    """
    pattern = _KEY_RE.get(keys)
    if pattern is None:
        alternatives = "|".join(re.escape(k) for k in keys)
        pattern = re.compile(r"""["'](%s)["']\s*:\s*(?:"([^"\\]*)"|'([^'\\]*)')""" % alternatives)
        _KEY_RE[keys] = pattern
    found = {}
    for m in pattern.finditer(line):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        if found.get(m.group(1), value) != value:
            return None  # the key also appears in a nested object: parse the line in full
        found[m.group(1)] = value
    for key in keys:
        if key in found:
            return found[key]
    return None


# ---- writing ----------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8"):
    """Write to ``.<name>.tmp-<pid>`` next to ``path`` and rename it on success.

    A crash or kill leaves either the old file or the new one, never a half-written one (the
    temporary name matches the repository's ``*.tmp-*`` ignore rule; a later run removes
    stale ones with :func:`remove_stale_temps`).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def remove_stale_temps(folder):
    """Delete temporary files that a killed run left in ``folder``; returns how many."""
    removed = 0
    if not os.path.isdir(folder):
        return removed
    for entry in os.listdir(folder):
        if entry.startswith(".") and ".tmp-" in entry:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, entry))
                removed += 1
    return removed


_SAFE_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")


def image_stem(item_id):
    """File name (without extension) for an item's image: the id itself when it is a safe
    file name (asin, Yelp business_id), else a hash of it."""
    if _SAFE_STEM.match(item_id) and not item_id.endswith("."):
        return item_id
    return "id-" + hashlib.sha1(item_id.encode("utf-8")).hexdigest()


def check_token(value, what, path, line_no):
    """A RecBole token must be a non-empty string with no tab or newline."""
    if value is None:
        return None
    value = str(value).strip()
    if not value:
        return None
    if "\t" in value or "\n" in value or "\r" in value:
        raise RawInputError(f"{path}, line {line_no}: {what} {value!r} holds a tab or newline")
    return value


# ---- reporting --------------------------------------------------------------------------

def progress(iterable=None, total=None, desc=None, enabled=True, unit="it", unit_scale=False):
    """A tqdm progress bar on stderr (a silent stand-in when disabled)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, unit_scale=unit_scale,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def print_summary(title, rows, file=None):
    """Print ``rows`` (a list of ``(label, value)``) as an aligned block."""
    file = file or sys.stdout
    width = max((len(label) for label, _ in rows), default=0)
    print(f"== {title}", file=file)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}", file=file)
    file.flush()


def save_summary(paths, step, summary):
    """Merge one step's summary into ``NAME.summary.json`` (atomically)."""
    data = {}
    if os.path.isfile(paths.summary):
        with contextlib.suppress(ValueError, OSError):
            with open(paths.summary, encoding="utf-8") as f:
                data = json.load(f)
    data[step] = summary
    with atomic_write(paths.summary) as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def read_meta(paths):
    """Items of ``NAME.meta.jsonl`` as a list of dicts, in file order (sorted by item id)."""
    if not os.path.isfile(paths.meta):
        raise RawInputError(
            f"{paths.meta}: no such file; run `python -m atomic_data.convert ... "
            f"--out {paths.out} --name {paths.name}` first"
        )
    items = []
    for line_no, line in iter_lines(paths.meta):
        try:
            record = json.loads(line)
        except ValueError:
            raise RawInputError(f"{paths.meta}, line {line_no}: not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("item_id"), str):
            raise RawInputError(f"{paths.meta}, line {line_no}: no 'item_id'")
        items.append(record)
    return items


def report_errors(function, *args):
    """Run one step; bad input ends in one ``error: ...`` line and exit code 2, not a traceback."""
    try:
        function(*args)
    except (RawInputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def command_name(default):
    """The program name for ``--help`` and usage lines: the console script's name when run as
    one (``prism-data-convert``), else ``default`` (``python -m atomic_data.convert``)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if invoked.endswith((".exe", "-script.py")):
        invoked = invoked.rsplit("-script.py", 1)[0].rsplit(".exe", 1)[0]
    return invoked if invoked.startswith("prism-data-") else default


def step_main(prog, description, add_arguments, run_from_args, argv=None):
    """The command line of one step: its own options, then :func:`report_errors`."""
    import argparse

    parser = argparse.ArgumentParser(prog=command_name(prog), description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return report_errors(run_from_args, parser.parse_args(argv))


def add_common_arguments(parser, progress_help="no progress bar"):
    """--name, --out and --no-progress, shared by every step's command line."""
    parser.add_argument("--name", required=True, help="dataset name (folder and file names)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output root (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help=progress_help)
