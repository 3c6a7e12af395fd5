"""Step 1: raw Amazon (2014, 2018, 2023) or Yelp dumps to RecBole atomic files.

    python -m atomic_data.convert amazon2014 --reviews reviews_Beauty_5.json.gz \\
        --meta meta_Beauty.json.gz --name amazon-beauty
    python -m atomic_data.convert amazon2014 --ratings ratings_Beauty.csv --meta meta_Beauty.json.gz --name beauty-all
    python -m atomic_data.convert amazon2018 --reviews Luxury_Beauty_5.json.gz --meta meta_Luxury_Beauty.json.gz --name lux
    python -m atomic_data.convert amazon2023 --reviews All_Beauty.jsonl.gz --meta meta_All_Beauty.jsonl.gz --name beauty23
    python -m atomic_data.convert yelp --reviews yelp_academic_dataset_review.json \\
        --meta yelp_academic_dataset_business.json --photos yelp_photos/ --since 2019-01-01 --name yelp

Writes into ``<out>/<name>/`` (``--out`` defaults to ``dataset``, RecBole's ``data_path``):

* ``NAME.inter``: ``user_id:token  item_id:token  rating:float  timestamp:float``, users and
  items keyed by their own ids (reviewerID / user_id, asin / parent_asin / business_id),
  sorted by user, then time, then file order (RecBole's stable sort keeps that order for
  equal timestamps); timestamps in seconds since 1970 (Amazon 2023's milliseconds are
  divided by 1000, Yelp's dates are read as UTC; a Yelp ``date`` given as epoch seconds or
  milliseconds is accepted too);
* ``NAME.meta.jsonl``: one line per item of ``NAME.inter`` (sorted by item id) with its
  ``text`` and its ``image`` source (a URL, or a local photo path for Yelp), read by
  ``download_images`` and ``extract_clip``; items without metadata get ``""`` / ``null``.

Processing: reviews are read (``.gz`` or plain), repeated (user, item) pairs keep their
earliest interaction (``--keep-duplicates`` keeps all), ``--min-rating`` / ``--since`` /
``--until`` filter, then k-core filtering (``--k``, default 5; ``--user-k`` / ``--item-k``)
is repeated until every user and item has at least k interactions. Metadata is read only
for the items that remain.

Item text: title, brand, categories (first category path, joined with " > "), then the
description (and Amazon 2018/2023 feature bullets), so that CLIP's 77-token limit cuts the
description, not the brand; ``--text-order authors`` gives the PRISM authors' order
(title, description, brand, categories). HTML tags and entities are removed.

Bad input: a truncated gzip file, or a line that is neither JSON nor a Python dict literal,
is an error naming the file and line (``--skip-bad-lines`` counts and skips such lines
instead); a review with no user, item or timestamp is skipped and counted in the summary.
When no interaction is left, the error gives the skipped lines per reason (with the first
line of each) and what each filter dropped.
"""
import csv
import datetime as dt
import html
import json
import os
import re
import sys
from array import array
from collections import Counter

import numpy as np

from atomic_data.common import (
    DEFAULT_OUT,
    DatasetPaths,
    RawInputError,
    add_common_arguments,
    step_main,
    atomic_write,
    check_token,
    iter_lines,
    parse_record,
    print_summary,
    quick_key,
    save_summary,
)

FORMATS = ("amazon2014", "amazon2018", "amazon2023", "yelp")
TEXT_ORDERS = {
    "default": ("title", "brand", "categories", "description"),
    "authors": ("title", "description", "brand", "categories"),
}


# ---- interactions -----------------------------------------------------------------------

class Interactions:
    """Interactions as compact arrays with interned user and item tokens."""

    def __init__(self):
        self.user_index, self.item_index = {}, {}
        self.users, self.items = [], []
        self.u, self.i = array("q"), array("q")
        self.rating, self.ts = array("d"), array("d")
        self.skipped = Counter()
        self.first_skip = {}
        self.first_skip_line = {}
        self.bad_lines = 0
        self.first_bad_line = None
        self.first_bad_excerpt = None
        self.lines_read = 0

    def add(self, user, item, rating, ts):
        u = self.user_index.get(user)
        if u is None:
            u = self.user_index[user] = len(self.users)
            self.users.append(user)
        i = self.item_index.get(item)
        if i is None:
            i = self.item_index[item] = len(self.items)
            self.items.append(item)
        self.u.append(u)
        self.i.append(i)
        self.rating.append(np.nan if rating is None else rating)
        self.ts.append(ts)

    def skip(self, reason, path, line_no, line=None):
        self.skipped[reason] += 1
        if reason not in self.first_skip:
            self.first_skip[reason] = f"{path}:{line_no}"
            self.first_skip_line[reason] = _excerpt(line)

    def bad_line(self, path, line_no, line=None):
        self.bad_lines += 1
        if self.first_bad_line is None:
            self.first_bad_line = f"{path}:{line_no}"
            self.first_bad_excerpt = _excerpt(line)

    def skip_report(self):
        """Why review lines gave no interaction: one ``reason: count (first at FILE:LINE:
        excerpt)`` entry per reason, or ``""`` when none was skipped."""
        parts = []
        for reason, count in self.skipped.most_common():
            parts.append(f"{reason}: {count} (first at {self.first_skip[reason]}: "
                         f"{self.first_skip_line.get(reason) or ''})")
        if self.bad_lines:
            parts.append(f"malformed lines (--skip-bad-lines): {self.bad_lines} (first at "
                         f"{self.first_bad_line}: {self.first_bad_excerpt or ''})")
        return "; ".join(parts)

    def arrays(self):
        return (np.frombuffer(self.u, dtype=np.int64), np.frombuffer(self.i, dtype=np.int64),
                np.frombuffer(self.rating, dtype=np.float64), np.frombuffer(self.ts, dtype=np.float64))


def _excerpt(line, limit=120):
    """The start of a raw line for an error message."""
    if line is None:
        return None
    return repr(line[:limit]) + ("..." if len(line) > limit else "")


def _records(path, inter, skip_bad_lines, show_progress=False):
    for line_no, line in iter_lines(path, "reviews", show_progress):
        inter.lines_read += 1
        try:
            yield line_no, line, parse_record(line, path, line_no)
        except RawInputError:
            if not skip_bad_lines:
                raise
            inter.bad_line(path, line_no, line)


def _number(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _amazon_review_time(rec):
    ts = _number(rec.get("unixReviewTime"))
    if ts is None and isinstance(rec.get("reviewTime"), str):  # "09 13, 2009"
        try:
            day = dt.datetime.strptime(rec["reviewTime"].strip(), "%m %d, %Y")
            ts = float(day.replace(tzinfo=dt.timezone.utc).timestamp())
        except ValueError:
            ts = None
    return ts


#: Epoch values at or above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
EPOCH_MS_FROM = 1e11


def _epoch_seconds(value):
    """Epoch seconds or milliseconds (a number or a numeric string) -> seconds, else None."""
    ts = _number(value.strip() if isinstance(value, str) else value)
    if ts is None:
        return None
    return ts / 1000.0 if abs(ts) >= EPOCH_MS_FROM else ts


def _yelp_time(value):
    """Yelp ``date``: "YYYY-MM-DD HH:MM:SS" (the Open Dataset), "YYYY-MM-DD", an ISO 8601
    date-time, or epoch seconds / milliseconds (int or numeric string; other exports); UTC
    unless the value names its zone. Seconds since 1970, or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _epoch_seconds(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if re.fullmatch(r"[+-]?\d+(\.\d*)?", text):
        return _epoch_seconds(text)
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return float(dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc).timestamp())
        except ValueError:
            continue
    try:
        day = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    if day.tzinfo is None:
        day = day.replace(tzinfo=dt.timezone.utc)
    return float(day.timestamp())


#: The timestamp field of each review format (for "no timestamp" / "unreadable timestamp").
TIME_FIELDS = {
    "amazon2014": ("unixReviewTime", "reviewTime"),
    "amazon2018": ("unixReviewTime", "reviewTime"),
    "amazon2023": ("timestamp",),
    "yelp": ("date",),
}


def read_reviews(fmt, path, inter, skip_bad_lines=False, show_progress=False):
    """Add the interactions of a JSON-lines review file to ``inter``."""
    for line_no, line, rec in _records(path, inter, skip_bad_lines, show_progress):
        if fmt in ("amazon2014", "amazon2018"):
            user, item = rec.get("reviewerID"), rec.get("asin")
            rating, ts = _number(rec.get("overall")), _amazon_review_time(rec)
        elif fmt == "amazon2023":
            user = rec.get("user_id")
            item = rec.get("parent_asin") or rec.get("asin")
            rating = _number(rec.get("rating"))
            ts = _number(rec.get("timestamp"))
            ts = None if ts is None else ts / 1000.0  # milliseconds
        else:  # yelp
            user, item = rec.get("user_id"), rec.get("business_id")
            rating, ts = _number(rec.get("stars")), _yelp_time(rec.get("date"))
        user = check_token(user, "user id", path, line_no)
        item = check_token(item, "item id", path, line_no)
        if user is None or item is None:
            inter.skip("no user or item id", path, line_no, line)
        elif ts is None:
            present = any(rec.get(f) not in (None, "") for f in TIME_FIELDS[fmt])
            inter.skip("unreadable timestamp" if present else "no timestamp", path, line_no, line)
        else:
            inter.add(user, item, rating, ts)


# Column order of header-less ratings CSVs, per release (SNAP's READMEs).
CSV_COLUMNS = {
    "amazon2014": ("user", "item", "rating", "timestamp"),
    "amazon2018": ("item", "user", "rating", "timestamp"),
}
CSV_HEADER_NAMES = {
    "user": ("user_id", "user", "reviewerid", "reviewer_id"),
    "item": ("parent_asin", "asin", "item_id", "item", "business_id"),
    "rating": ("rating", "overall", "stars"),
    "timestamp": ("timestamp", "unixreviewtime", "time"),
}


def read_ratings_csv(fmt, path, inter, skip_bad_lines=False, show_progress=False):
    """Add the rows of a ratings-only CSV (Amazon 2014/2018: no header; 2023: a header)."""
    if fmt == "yelp":
        raise RawInputError(f"{path}: ratings CSV files are an Amazon format; use --reviews for Yelp")
    columns = None
    scale = 1000.0 if fmt == "amazon2023" else 1.0
    for line_no, line in iter_lines(path, "ratings", show_progress):
        inter.lines_read += 1
        try:
            row = next(csv.reader([line]))
        except csv.Error as err:
            row, err_text = None, str(err)
        if row is None and columns is None:
            raise RawInputError(f"{path}, line {line_no}: not CSV ({err_text}): {line[:80]!r}")
        if columns is None:
            lowered = [c.strip().lower() for c in row]
            if any(name in lowered for name in CSV_HEADER_NAMES["rating"]):
                columns = {}
                for key, names in CSV_HEADER_NAMES.items():
                    for name in names:
                        if name in lowered:
                            columns[key] = lowered.index(name)
                            break
                missing = [k for k in ("user", "item", "timestamp") if k not in columns]
                if missing:
                    raise RawInputError(f"{path}, line {line_no}: header has no {', '.join(missing)} column")
                inter.lines_read -= 1  # the header is not a rating
                continue
            if fmt not in CSV_COLUMNS:
                raise RawInputError(
                    f"{path}, line {line_no}: Amazon 2023 ratings CSV must start with a header "
                    "(user_id,parent_asin,rating,timestamp)"
                )
            columns = {k: n for n, k in enumerate(CSV_COLUMNS[fmt])}
        if row is None or len(row) <= max(columns.values()):
            if not skip_bad_lines:
                why = err_text if row is None else f"{len(row)} columns, expected {max(columns.values()) + 1}"
                raise RawInputError(f"{path}, line {line_no}: not a ratings CSV row ({why}): {line[:80]!r}")
            inter.bad_line(path, line_no, line)
            continue
        user = check_token(row[columns["user"]], "user id", path, line_no)
        item = check_token(row[columns["item"]], "item id", path, line_no)
        rating = _number(row[columns["rating"]]) if "rating" in columns else None
        ts = _number(row[columns["timestamp"]])
        if user is None or item is None:
            inter.skip("no user or item id", path, line_no, line)
        elif ts is None:
            reason = "unreadable timestamp" if row[columns["timestamp"]].strip() else "no timestamp"
            inter.skip(reason, path, line_no, line)
        else:
            inter.add(user, item, rating, ts / scale)


def filter_interactions(inter, keep_duplicates=False, min_rating=None, since=None, until=None,
                        user_k=5, item_k=5):
    """Deduplicate, filter, and k-core; returns the kept row indices sorted for writing and
    a dict of counts."""
    u, i, rating, ts = inter.arrays()
    n = len(u)
    stats = {"raw interactions": n}
    keep = np.ones(n, dtype=bool)
    if min_rating is not None:
        drop = ~(rating >= min_rating)
        stats["dropped: rating below --min-rating"] = int((keep & drop).sum())
        keep &= ~drop
    if since is not None:
        drop = ts < since
        stats["dropped: before --since"] = int((keep & drop).sum())
        keep &= ~drop
    if until is not None:
        drop = ts >= until
        stats["dropped: at or after --until"] = int((keep & drop).sum())
        keep &= ~drop
    if not keep_duplicates and n:
        rows = np.flatnonzero(keep)
        order = rows[np.lexsort((rows, ts[rows], i[rows], u[rows]))]
        first = np.ones(len(order), dtype=bool)
        first[1:] = (u[order][1:] != u[order][:-1]) | (i[order][1:] != i[order][:-1])
        duplicate = order[~first]
        stats["dropped: repeated (user, item), earliest kept"] = int(len(duplicate))
        keep[duplicate] = False
    rounds = 0
    before = int(keep.sum())
    while True:
        n_user = np.bincount(u[keep], minlength=len(inter.users))
        n_item = np.bincount(i[keep], minlength=len(inter.items))
        drop = keep & ((n_user[u] < user_k) | (n_item[i] < item_k))
        if not drop.any():
            break
        keep &= ~drop
        rounds += 1
    stats["dropped: k-core"] = before - int(keep.sum())
    stats["k-core rounds"] = rounds
    rows = np.flatnonzero(keep)
    # sort by user token, then time, then file order
    user_rank = np.empty(len(inter.users), dtype=np.int64)
    user_rank[np.argsort(np.array(inter.users, dtype=object), kind="stable")] = np.arange(len(inter.users))
    rows = rows[np.lexsort((rows, ts[rows], user_rank[u[rows]]))]
    return rows, stats


def _fmt_number(x):
    if np.isnan(x):
        return ""
    if float(x).is_integer():
        return str(int(x))
    return repr(round(float(x), 3))


def write_inter(path, inter, rows):
    u, i, rating, ts = inter.arrays()
    with atomic_write(path) as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for r in rows:
            f.write(f"{inter.users[u[r]]}\t{inter.items[i[r]]}\t{_fmt_number(rating[r])}\t{_fmt_number(ts[r])}\n")


# ---- item metadata ----------------------------------------------------------------------

# A complete tag or comment: "<" then a tag name (or "/", "!", "?"), never "< 5" or "a < b".
_TAG = re.compile(r"<!--.*?-->|<[/!?]?[A-Za-z][^<>]*>", re.S)
# Tags cut off by the scraper (real Amazon 2018 titles such as
# '<span class="a-size-medium a-color-secondary"'): a tag with no ">" up to the end of the
# text, recognised by an attribute ('name=') or, alone, by a known HTML tag name after a
# space; and the tail of a tag at the start of the text ('class="x">Title').
_HTML_NAMES = (
    "a|abbr|b|big|blockquote|br|center|code|div|dl|dt|dd|em|font|h[1-6]|hr|i|img|input|label|"
    "li|link|meta|noscript|ol|option|p|pre|script|select|small|span|strike|strong|style|sub|sup|"
    "table|tbody|td|th|thead|tr|tt|u|ul"
)
_ATTR = r"""[A-Za-z_:][-\w:.]*\s*=\s*(?:"[^"<>]*"?|'[^'<>]*'?|[^\s"'<>=]*)"""
_OPEN_TAG_AT_END = re.compile(
    r"<\s*/?[A-Za-z][-\w:]*\s+(?:%s\s*)+/?\s*$"            # <span class="a-size-medium ...
    r"|(?:(?<=\s)|^)<\s*/?(?:%s)\b[^<>]*$" % (_ATTR, _HTML_NAMES),  # "... <br" / "<span"
    re.I,
)
_TAG_TAIL_AT_START = re.compile(  # 'span class="x">Title', 'id="y">Title' (name="value" only)
    r"""^\s*(?:/?[A-Za-z][-\w:]*\s+)?(?:[A-Za-z_:][-\w:.]*=(?:"[^"<>]*"|'[^'<>]*')\s*)+/?>"""
)
_SPACE = re.compile(r"\s+")


def strip_html(text):
    """``text`` without HTML tags, also a tag cut off at either end; entities decoded."""
    text = _TAG.sub(" ", text)
    text = _OPEN_TAG_AT_END.sub(" ", text)
    text = _TAG_TAIL_AT_START.sub(" ", text)
    return html.unescape(text)
_SIZE_SUFFIX = re.compile(r"\._[^/]*_(?=\.[A-Za-z]{3,4}$)")  # "._SS40_" in ".../41x._SS40_.jpg"


def clean_text(value):
    """Text of a metadata field: lists joined, HTML tags and entities removed, spaces collapsed."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(filter(None, (clean_text(v) for v in value)))
    if isinstance(value, dict):
        return ""
    return _SPACE.sub(" ", strip_html(str(value))).strip()


def _category_path(value):
    """The first category path joined with " > " (2014: a list of paths; 2018/23: one path)."""
    if isinstance(value, str):
        return clean_text(value)
    if not isinstance(value, (list, tuple)) or not value:
        return ""
    path = value[0] if isinstance(value[0], (list, tuple)) else value
    return " > ".join(filter(None, (clean_text(v) for v in path)))


def _first(value):
    if isinstance(value, (list, tuple)):
        return next((v for v in value if isinstance(v, str) and v.strip()), None)
    return value if isinstance(value, str) and value.strip() else None


def item_fields(fmt, rec, full_size_images=True):
    """``(fields, image)``: the text fields of one metadata record and its image source."""
    if fmt == "amazon2014":
        fields = {
            "title": clean_text(rec.get("title")),
            "brand": clean_text(rec.get("brand")),
            "categories": _category_path(rec.get("categories")),
            "description": clean_text(rec.get("description")),
        }
        image = _first(rec.get("imUrl"))
    elif fmt == "amazon2018":
        fields = {
            "title": clean_text(rec.get("title")),
            "brand": clean_text(rec.get("brand")),
            "categories": _category_path(rec.get("category")),
            "description": clean_text([rec.get("description"), rec.get("feature")]),
        }
        image = _first(rec.get("imageURLHighRes")) or _first(rec.get("imageURL")) or _first(rec.get("image"))
        if image and full_size_images:
            image = _SIZE_SUFFIX.sub("", image)
    elif fmt == "amazon2023":
        details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
        fields = {
            "title": clean_text(rec.get("title")),
            "brand": clean_text(rec.get("store")) or clean_text(details.get("Brand")),
            "categories": _category_path(rec.get("categories")) or clean_text(rec.get("main_category")),
            "description": clean_text([rec.get("description"), rec.get("features")]),
        }
        image = None
        images = [im for im in rec.get("images") or [] if isinstance(im, dict)]
        images.sort(key=lambda im: im.get("variant") != "MAIN")  # stable: MAIN first
        for im in images:
            image = _first(im.get("hi_res")) or _first(im.get("large")) or _first(im.get("thumb"))
            if image:
                break
    else:  # yelp business
        location = ", ".join(filter(None, (clean_text(rec.get("city")), clean_text(rec.get("state")))))
        fields = {
            "title": clean_text(rec.get("name")),
            "brand": "",
            "categories": clean_text(rec.get("categories")),
            "description": location,
        }
        image = None
    return fields, image


def item_text(fields, order="default"):
    return " ".join(fields[k] for k in TEXT_ORDERS[order] if fields.get(k))


META_KEYS = {
    "amazon2014": ("asin",),
    "amazon2018": ("asin",),
    "amazon2023": ("parent_asin",),
    "yelp": ("business_id",),
}


def read_meta(fmt, path, needed, skip_bad_lines=False, full_size_images=True, show_progress=False):
    """Metadata of the ``needed`` items: ``({item: (fields, image)}, stats)``."""
    keys = META_KEYS[fmt]
    found, stats = {}, Counter()
    first_bad = None
    for line_no, line in iter_lines(path, "metadata", show_progress):
        key = quick_key(line, keys)
        if key is not None and key not in needed:
            continue
        try:
            rec = parse_record(line, path, line_no)
        except RawInputError:
            if not skip_bad_lines:
                raise
            stats["bad lines skipped"] += 1
            first_bad = first_bad or f"{path}:{line_no}"
            continue
        item = check_token(rec.get(keys[0]), "item id", path, line_no)
        if item is None or item not in needed:
            continue
        if item in found:
            stats["repeated metadata rows (first kept)"] += 1
            continue
        found[item] = item_fields(fmt, rec, full_size_images)
    if first_bad:
        stats["first bad line"] = first_bad
    return found, stats


def read_yelp_photos(photos_dir, needed, label=None, show_progress=False):
    """``{business_id: photo path}`` from the Yelp photos archive (``photos.json`` and
    ``photos/<photo_id>.jpg``): the first photo of each business in file order, or the first
    with ``label`` when it has one."""
    listing = os.path.join(photos_dir, "photos.json")
    if not os.path.isfile(listing):
        raise RawInputError(f"{listing}: no such file (expected the extracted Yelp photos archive)")
    chosen, rank = {}, {}
    for line_no, line in iter_lines(listing, "photos.json", show_progress):
        rec = parse_record(line, listing, line_no)
        business, photo = rec.get("business_id"), rec.get("photo_id")
        if business not in needed or not isinstance(photo, str) or not photo:
            continue
        r = 0 if (label and rec.get("label") == label) else 1
        if business not in chosen or r < rank[business]:
            chosen[business] = os.path.abspath(os.path.join(photos_dir, "photos", photo + ".jpg"))
            rank[business] = r
    return chosen


# ---- the step ---------------------------------------------------------------------------

def _parse_date(value, option):
    if value is None:
        return None
    try:
        day = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{option}: {value!r} is not a date (YYYY-MM-DD)") from None
    if day.tzinfo is None:
        day = day.replace(tzinfo=dt.timezone.utc)
    return day.timestamp()


def _nothing_left_message(fmt, inter, stats, user_k, item_k):
    """Why no interaction is left: the lines skipped (per reason, with the first of each),
    what each filter dropped, and what to change."""
    read = inter.lines_read
    raw = stats.get("raw interactions", 0)
    msg = [f"no interactions left after filtering: {read} review line(s) read, {raw} gave an interaction"]
    skips = inter.skip_report()
    if skips:
        msg.append(f"; skipped lines: {skips}")
    dropped = {k: v for k, v in stats.items() if k.startswith("dropped") and v}
    if dropped:
        msg.append("; then dropped: " + ", ".join(f"{k[len('dropped: '):]}: {v}" for k, v in dropped.items()))
    hints = []
    fields = " / ".join(TIME_FIELDS[fmt])
    if inter.skipped.get("unreadable timestamp"):
        accepted = {
            "yelp": "'YYYY-MM-DD HH:MM:SS', 'YYYY-MM-DD', ISO 8601, epoch seconds or milliseconds",
            "amazon2023": "epoch milliseconds",
        }.get(fmt, "unixReviewTime in epoch seconds, reviewTime as 'MM DD, YYYY'")
        hints.append(f"the {fields} values are in a format this reader does not know (accepted: {accepted})")
    if inter.skipped.get("no timestamp"):
        hints.append(f"reviews without {fields} are skipped: is --reviews the {fmt} review file?")
    if inter.skipped.get("no user or item id"):
        hints.append(f"check that --reviews is a {fmt} file (format given: {fmt})")
    if raw:
        hints.append(f"lower --k (now user {user_k}, item {item_k}) or check --since/--until/--min-rating")
    return "".join(msg) + ("; " + "; ".join(hints) if hints else "")


def convert(fmt, name, out=DEFAULT_OUT, reviews=None, ratings=None, meta=None, photos=None,
            k=5, user_k=None, item_k=None, text_order="default", keep_duplicates=False,
            min_rating=None, since=None, until=None, skip_bad_lines=False,
            full_size_images=True, photo_label=None, show_progress=True, quiet=False):
    """Run the conversion; returns the summary dict (also printed and saved)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if text_order not in TEXT_ORDERS:
        raise ValueError(f"text order {text_order!r}: one of {', '.join(TEXT_ORDERS)}")
    if not reviews and not ratings:
        raise ValueError("give --reviews or --ratings")
    if not meta:
        raise ValueError("give --meta (for Yelp: the business file)")
    if photos and fmt != "yelp":
        raise ValueError("--photos is the Yelp photos archive; Amazon images come from --meta URLs")
    paths = DatasetPaths(out, name)
    user_k = k if user_k is None else user_k
    item_k = k if item_k is None else item_k

    inter = Interactions()
    for path in ([reviews] if reviews else []):
        read_reviews(fmt, path, inter, skip_bad_lines, show_progress)
    for path in ([ratings] if ratings else []):
        read_ratings_csv(fmt, path, inter, skip_bad_lines, show_progress)
    rows, stats = filter_interactions(
        inter, keep_duplicates, min_rating, _parse_date(since, "--since"), _parse_date(until, "--until"),
        user_k, item_k,
    )
    if not len(rows):
        raise ValueError(_nothing_left_message(fmt, inter, stats, user_k, item_k))
    u, i, _, ts = inter.arrays()
    kept_items = sorted({inter.items[x] for x in np.unique(i[rows])})
    needed = set(kept_items)

    found, meta_stats = read_meta(fmt, meta, needed, skip_bad_lines, full_size_images, show_progress)
    yelp_photos = read_yelp_photos(photos, needed, photo_label, show_progress) if photos else {}

    os.makedirs(paths.folder, exist_ok=True)
    write_inter(paths.inter, inter, rows)
    no_meta = no_text = no_image = 0
    with atomic_write(paths.meta) as f:
        for item in kept_items:
            fields, image = found.get(item, (None, None))
            if fields is None:
                no_meta += 1
                text = ""
            else:
                text = item_text(fields, text_order)
            image = yelp_photos.get(item) if fmt == "yelp" else image
            no_text += not text
            no_image += not image
            f.write(json.dumps({"item_id": item, "text": text, "image": image or None},
                               ensure_ascii=False) + "\n")

    n_users = len(np.unique(u[rows]))
    n_items = len(kept_items)
    summary = {
        "format": fmt,
        "folder": paths.folder,
        "users": n_users,
        "items": n_items,
        "interactions": int(len(rows)),
        "density": len(rows) / (n_users * n_items),
        "items with no image": no_image,
        "items with no text": no_text,
        "items with no metadata row": no_meta,
        "k-core (user, item)": [user_k, item_k],
        "text order": text_order,
        "time range (UTC)": [
            dt.datetime.fromtimestamp(float(ts[rows].min()), dt.timezone.utc).strftime("%Y-%m-%d"),
            dt.datetime.fromtimestamp(float(ts[rows].max()), dt.timezone.utc).strftime("%Y-%m-%d"),
        ],
    }
    summary.update(stats)
    for reason, count in sorted(inter.skipped.items()):
        summary[f"skipped reviews: {reason}"] = count
        summary[f"skipped reviews: {reason}, first at"] = inter.first_skip[reason]
    if inter.bad_lines:
        summary["skipped bad review lines"] = inter.bad_lines
        summary["first bad review line"] = inter.first_bad_line
    for key, value in sorted(meta_stats.items()):
        summary[f"metadata: {key}"] = value
    save_summary(paths, "convert", summary)
    if not quiet:
        rows_out = [(k, f"{v:.6f}" if k == "density" else v) for k, v in summary.items()]
        print_summary(f"convert {fmt} -> {paths.folder}", rows_out)
        if os.path.isfile(paths.item):
            print(f"  note: {paths.item} is from an earlier run; run extract_clip again", file=sys.stdout)
    return summary


def add_arguments(parser, common=True):
    """Conversion options (``common``: also --out, --name; the pipeline adds those once)."""
    parser.add_argument("format", choices=FORMATS, help="raw data release")
    if common:
        add_common_arguments(parser, "no progress bars")
    g = parser.add_argument_group("convert")
    g.add_argument("--reviews", help="reviews file (JSON lines; .gz or plain)")
    g.add_argument("--ratings", help="Amazon ratings-only CSV instead of (or with) --reviews")
    g.add_argument("--meta", "--business", dest="meta", help="metadata file (Yelp: the business file)")
    g.add_argument("--photos", help="Yelp only: the extracted photos archive (photos.json, photos/)")
    g.add_argument("--photo-label", help="Yelp only: prefer a photo with this label (e.g. outside)")
    g.add_argument("--k", type=int, default=5, help="k-core for users and items (default: %(default)s; 0 or 1: off)")
    g.add_argument("--user-k", type=int, help="k-core for users (default: --k)")
    g.add_argument("--item-k", type=int, help="k-core for items (default: --k)")
    g.add_argument("--text-order", choices=sorted(TEXT_ORDERS), default="default",
                   help="default: title, brand, categories, description; authors: title, "
                        "description, brand, categories")
    g.add_argument("--keep-duplicates", action="store_true", help="keep repeated (user, item) interactions")
    g.add_argument("--min-rating", type=float, help="drop interactions rated below this")
    g.add_argument("--since", help="drop interactions before this date (YYYY-MM-DD, UTC)")
    g.add_argument("--until", help="drop interactions at or after this date (YYYY-MM-DD, UTC)")
    g.add_argument("--skip-bad-lines", action="store_true",
                   help="count and skip malformed lines instead of stopping with an error")
    g.add_argument("--thumbnail-images", action="store_true",
                   help="Amazon 2018: keep the thumbnail size suffix (e.g. ._SS40_) of image URLs")


def run_from_args(args, quiet=False):
    return convert(
        args.format, args.name, out=args.out, reviews=args.reviews, ratings=args.ratings,
        meta=args.meta, photos=args.photos, k=args.k, user_k=args.user_k, item_k=args.item_k,
        text_order=args.text_order, keep_duplicates=args.keep_duplicates,
        min_rating=args.min_rating, since=args.since, until=args.until,
        skip_bad_lines=args.skip_bad_lines,
        full_size_images=not args.thumbnail_images, photo_label=args.photo_label,
        show_progress=not args.no_progress, quiet=quiet,
    )


def main(argv=None):
    return step_main("python -m atomic_data.convert", __doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
