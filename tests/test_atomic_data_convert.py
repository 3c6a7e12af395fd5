"""atomic_data.convert: each raw format on tiny inputs written here (no network, no big files)."""
import gzip
import json
import os

import pytest

from atomic_data import convert as conv
from atomic_data.common import RawInputError


def write_lines(path, lines, gz=False):
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return str(path)


def read_inter(folder, name):
    with open(os.path.join(folder, name, f"{name}.inter"), encoding="utf-8") as f:
        header = f.readline().rstrip("\n")
        rows = [line.rstrip("\n").split("\t") for line in f]
    return header, rows


def read_meta_lines(folder, name):
    with open(os.path.join(folder, name, f"{name}.meta.jsonl"), encoding="utf-8") as f:
        return {rec["item_id"]: rec for rec in map(json.loads, f)}


def amazon2014_reviews():
    """Users A, B, C keep items v, x, y, z; D and E and item w fall in a second k-core round."""
    r = []

    def add(user, item, ts, **extra):
        rec = {"reviewerID": user, "asin": item, "overall": 5.0, "reviewText": "ok", **extra}
        if ts is not None:
            rec["unixReviewTime"] = ts
        r.append(json.dumps(rec))

    add("A", "z", 300)
    add("A", "x", 100)
    add("A", "y", 200)
    add("A", "v", 400)
    add("B", "y", 150)  # same time as B's x: file order (y, x) is kept
    add("B", "x", 150)
    add("B", "z", None, reviewTime="09 13, 2009")  # only the "MM DD, YYYY" date
    add("B", "v", 160)
    add("C", "x", 500)  # a repeat: the earliest (50) is kept
    add("C", "x", 50)
    add("C", "y", 60)
    add("C", "z", 70)
    add("C", "v", 80)
    add("C", "z", None)  # no timestamp at all: skipped and counted
    add("D", "x", 10)
    add("D", "y", 11)
    add("D", "w", 12)
    add("E", "w", 13)
    return r


def amazon2014_meta():
    return [
        repr({"asin": "x", "title": "Rose Cream", "brand": "Acme", "price": 3.5,
              "categories": [["Beauty", "Skin Care", "Face"], ["Other"]],
              "description": "Soft &amp; <b>gentle</b>.", "imUrl": "http://img.example/x._SY300_.jpg"}),
        repr({"asin": "w", "title": "Never needed"}),
        repr({"asin": "y", "description": "Only a description", "imUrl": "http://img.example/y.jpg"}),
        repr({"asin": "z", "title": "Zeta", "categories": [["Beauty"]]}),
        repr({"asin": "x", "title": "A second row for x"}),
    ]


def test_amazon2014_ids_kcore_timestamps_text(tmp_path):
    out = str(tmp_path / "out")
    reviews = write_lines(tmp_path / "reviews_Beauty_5.json.gz", amazon2014_reviews(), gz=True)
    meta = write_lines(tmp_path / "meta_Beauty.json.gz", amazon2014_meta(), gz=True)
    summary = conv.convert("amazon2014", "beauty", out=out, reviews=reviews, meta=meta, k=3, quiet=True)

    header, rows = read_inter(out, "beauty")
    assert header == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    b_z = str(1252800000)  # "09 13, 2009" at 00:00 UTC
    assert rows == [
        ["A", "x", "5", "100"], ["A", "y", "5", "200"], ["A", "z", "5", "300"], ["A", "v", "5", "400"],
        ["B", "y", "5", "150"], ["B", "x", "5", "150"], ["B", "v", "5", "160"], ["B", "z", "5", b_z],
        ["C", "x", "5", "50"], ["C", "y", "5", "60"], ["C", "z", "5", "70"], ["C", "v", "5", "80"],
    ]
    assert (summary["users"], summary["items"], summary["interactions"]) == (3, 4, 12)
    assert summary["density"] == pytest.approx(1.0)
    assert summary["k-core rounds"] == 2  # w and E first, then D
    assert summary["dropped: repeated (user, item), earliest kept"] == 1
    assert summary["skipped reviews: no timestamp"] == 1
    assert summary["skipped reviews: no timestamp, first at"].endswith("reviews_Beauty_5.json.gz:14")
    assert summary["metadata: repeated metadata rows (first kept)"] == 1

    meta_out = read_meta_lines(out, "beauty")
    assert list(meta_out) == ["v", "x", "y", "z"]  # sorted ids, w dropped
    assert meta_out["x"] == {"item_id": "x", "text": "Rose Cream Acme Beauty > Skin Care > Face Soft & gentle .",
                             "image": "http://img.example/x._SY300_.jpg"}
    assert meta_out["y"]["text"] == "Only a description"
    assert meta_out["z"] == {"item_id": "z", "text": "Zeta Beauty", "image": None}
    assert meta_out["v"] == {"item_id": "v", "text": "", "image": None}  # no metadata row
    assert summary["items with no image"] == 2 and summary["items with no text"] == 1
    assert summary["items with no metadata row"] == 1
    with open(os.path.join(out, "beauty", "beauty.summary.json")) as f:
        assert json.load(f)["convert"]["interactions"] == 12

    # the authors' order puts the description second, so CLIP's 77 tokens cut brand/categories
    conv.convert("amazon2014", "beauty-authors", out=out, reviews=reviews, meta=meta, k=3,
                 text_order="authors", quiet=True)
    assert read_meta_lines(out, "beauty-authors")["x"]["text"] == \
        "Rose Cream Soft & gentle . Acme Beauty > Skin Care > Face"

    # a single k-core pass is not enough: with k=1 nothing is dropped
    one = conv.convert("amazon2014", "all", out=out, reviews=reviews, meta=meta, k=1, quiet=True)
    assert (one["users"], one["items"]) == (5, 5)


def test_amazon2014_ratings_csv_and_2018_column_order(tmp_path):
    out = str(tmp_path / "out")
    meta = write_lines(tmp_path / "meta.json.gz", amazon2014_meta(), gz=True)
    rows14 = [f"{u},{i},4.0,{t}" for u, i, t in [("A", "x", 3), ("A", "y", 1), ("B", "x", 2), ("B", "y", 5)]]
    csv14 = write_lines(tmp_path / "ratings_Beauty.csv", rows14)
    conv.convert("amazon2014", "r14", out=out, ratings=csv14, meta=meta, k=2, quiet=True)
    assert read_inter(out, "r14")[1] == [["A", "y", "4", "1"], ["A", "x", "4", "3"],
                                         ["B", "x", "4", "2"], ["B", "y", "4", "5"]]
    # Amazon 2018 ratings-only CSVs are item,user,rating,timestamp
    rows18 = [f"{i},{u},4.0,{t}" for u, i, t in [("A", "x", 3), ("A", "y", 1), ("B", "x", 2), ("B", "y", 5)]]
    csv18 = write_lines(tmp_path / "Beauty.csv", rows18)
    meta18 = write_lines(tmp_path / "meta18.json", [json.dumps({"asin": "x", "title": "X"})])
    conv.convert("amazon2018", "r18", out=out, ratings=csv18, meta=meta18, k=2, quiet=True)
    assert read_inter(out, "r18")[1] == read_inter(out, "r14")[1]


def test_amazon2018_json_meta_and_full_size_images(tmp_path):
    out = str(tmp_path / "out")
    reviews = write_lines(tmp_path / "Beauty_5.json", [
        json.dumps({"reviewerID": u, "asin": i, "overall": 3.0, "unixReviewTime": t, "verified": True})
        for u, i, t in [("U1", "P1", 10), ("U1", "P2", 20), ("U2", "P1", 30), ("U2", "P2", 40)]
    ])
    meta = write_lines(tmp_path / "meta_Beauty.json.gz", [
        json.dumps({"asin": "P1", "title": "Gel", "brand": "Glow", "category": ["Beauty", "Hair"],
                    "description": ["Line one.", "Line two."], "feature": ["Vegan"],
                    "image": ["https://images-na.ssl-images-amazon.com/images/I/41abc._SS40_.jpg"]}),
        json.dumps({"asin": "P2", "title": "Oil", "description": [], "image": [],
                    "imageURLHighRes": ["https://images-na.ssl-images-amazon.com/images/I/51def.jpg"]}),
    ], gz=True)
    conv.convert("amazon2018", "b18", out=out, reviews=reviews, meta=meta, k=2, quiet=True)
    items = read_meta_lines(out, "b18")
    assert items["P1"]["text"] == "Gel Glow Beauty > Hair Line one. Line two. Vegan"
    assert items["P1"]["image"] == "https://images-na.ssl-images-amazon.com/images/I/41abc.jpg"
    assert items["P2"]["image"] == "https://images-na.ssl-images-amazon.com/images/I/51def.jpg"
    conv.convert("amazon2018", "b18t", out=out, reviews=reviews, meta=meta, k=2,
                 full_size_images=False, quiet=True)
    assert read_meta_lines(out, "b18t")["P1"]["image"].endswith("41abc._SS40_.jpg")


def test_amazon2023_parent_asin_and_milliseconds(tmp_path):
    out = str(tmp_path / "out")
    reviews = write_lines(tmp_path / "All_Beauty.jsonl", [
        json.dumps({"rating": 5.0, "asin": a, "parent_asin": p, "user_id": u, "timestamp": t, "text": "."})
        for u, a, p, t in [("U1", "A1v", "A1", 1588687728923), ("U1", "B1", "B1", 1588687729000),
                           ("U2", "A1w", "A1", 1500000000000), ("U2", "B1", "B1", 1500000000500)]
    ])
    meta = write_lines(tmp_path / "meta_All_Beauty.jsonl", [
        json.dumps({"parent_asin": "A1", "title": "Lip Balm", "store": "Howard", "categories": [],
                    "main_category": "All Beauty", "description": ["Smooth."], "features": [],
                    "images": [{"variant": "PT01", "large": "https://m.media-amazon.com/images/I/alt.jpg"},
                               {"variant": "MAIN", "hi_res": None, "large": "https://m.media-amazon.com/images/I/main.jpg"}]}),
        json.dumps({"parent_asin": "B1", "title": "Brush", "details": {"Brand": "Brushy"},
                    "categories": ["Beauty & Personal Care", "Tools"], "images": []}),
    ])
    summary = conv.convert("amazon2023", "b23", out=out, reviews=reviews, meta=meta, k=2, quiet=True)
    assert read_inter(out, "b23")[1] == [
        ["U1", "A1", "5", "1588687728.923"], ["U1", "B1", "5", "1588687729"],
        ["U2", "A1", "5", "1500000000"], ["U2", "B1", "5", "1500000000.5"],
    ]
    items = read_meta_lines(out, "b23")
    assert items["A1"] == {"item_id": "A1", "text": "Lip Balm Howard All Beauty Smooth.",
                           "image": "https://m.media-amazon.com/images/I/main.jpg"}
    assert items["B1"] == {"item_id": "B1", "text": "Brush Brushy Beauty & Personal Care > Tools", "image": None}
    assert summary["time range (UTC)"] == ["2017-07-14", "2020-05-05"]

    # the rating-only CSV of 2023 has a header
    csv23 = write_lines(tmp_path / "All_Beauty.csv", ["user_id,parent_asin,rating,timestamp",
                                                      "U1,A1,5.0,1588687728923", "U1,B1,5.0,1588687729000",
                                                      "U2,A1,5.0,1500000000000", "U2,B1,5.0,1500000000500"])
    conv.convert("amazon2023", "c23", out=out, ratings=csv23, meta=meta, k=2, quiet=True)
    assert read_inter(out, "c23")[1] == read_inter(out, "b23")[1]


def test_yelp_reviews_business_photos_and_since(tmp_path):
    out = str(tmp_path / "out")
    reviews = write_lines(tmp_path / "yelp_academic_dataset_review.json", [
        json.dumps({"review_id": f"r{n}", "user_id": u, "business_id": b, "stars": 4.0, "text": "Nice",
                    "date": d})
        for n, (u, b, d) in enumerate([
            ("u1", "bizA-1_x", "2019-03-01 10:00:00"), ("u1", "bizB", "2019-03-02 09:30:00"),
            ("u2", "bizA-1_x", "2019-05-01 00:00:00"), ("u2", "bizB", "2019-04-01 12:00:00"),
            ("u3", "bizA-1_x", "2018-01-01 00:00:00"),  # before --since
        ])
    ])
    business = write_lines(tmp_path / "yelp_academic_dataset_business.json", [
        json.dumps({"business_id": "bizA-1_x", "name": "Cafe Blue", "city": "Tucson", "state": "AZ",
                    "categories": "Coffee & Tea, Cafes", "stars": 4.5}),
        json.dumps({"business_id": "bizB", "name": "Bike Shop", "city": "Reno", "state": "NV",
                    "categories": None}),
    ])
    photos = tmp_path / "yelp_photos"
    (photos / "photos").mkdir(parents=True)
    write_lines(photos / "photos.json", [
        json.dumps({"photo_id": "p1", "business_id": "bizA-1_x", "label": "inside"}),
        json.dumps({"photo_id": "p2", "business_id": "bizA-1_x", "label": "outside"}),
        json.dumps({"photo_id": "p3", "business_id": "bizC", "label": "food"}),
    ])
    summary = conv.convert("yelp", "yelp", out=out, reviews=reviews, meta=business, photos=str(photos),
                           since="2019-01-01", k=2, photo_label="outside", quiet=True)
    assert read_inter(out, "yelp")[1] == [
        ["u1", "bizA-1_x", "4", "1551434400"], ["u1", "bizB", "4", "1551519000"],
        ["u2", "bizB", "4", "1554120000"], ["u2", "bizA-1_x", "4", "1556668800"],
    ]
    assert summary["dropped: before --since"] == 1
    items = read_meta_lines(out, "yelp")
    assert items["bizA-1_x"] == {"item_id": "bizA-1_x", "text": "Cafe Blue Coffee & Tea, Cafes Tucson, AZ",
                                 "image": str(photos / "photos" / "p2.jpg")}
    assert items["bizB"] == {"item_id": "bizB", "text": "Bike Shop Reno, NV", "image": None}
    # without a label preference: the first photo of the business in photos.json
    conv.convert("yelp", "yelp1", out=out, reviews=reviews, meta=business, photos=str(photos),
                 since="2019-01-01", k=2, quiet=True)
    assert read_meta_lines(out, "yelp1")["bizA-1_x"]["image"].endswith("p1.jpg")


# ---- bad input --------------------------------------------------------------------------

def test_truncated_gzip_is_an_error_naming_the_file(tmp_path, capsys):
    lines = [json.dumps({"reviewerID": f"U{n % 50}", "asin": f"I{n % 7}", "overall": 1.0,
                         "unixReviewTime": n, "reviewText": "x" * 40}) for n in range(3000)]
    full = write_lines(tmp_path / "full.json.gz", lines, gz=True)
    with open(full, "rb") as f:
        data = f.read()
    cut = tmp_path / "reviews_cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    meta = write_lines(tmp_path / "meta.json", [repr({"asin": "I1"})])
    with pytest.raises(RawInputError, match=r"reviews_cut\.json\.gz: truncated or corrupt gzip file after line \d+"):
        conv.convert("amazon2014", "cut", out=str(tmp_path / "out"), reviews=str(cut), meta=meta, quiet=True)
    # the command prints one line and exits with 2 instead of a traceback
    code = conv.main(["amazon2014", "--reviews", str(cut), "--meta", meta, "--name", "cut",
                      "--out", str(tmp_path / "out")])
    assert code == 2
    assert "reviews_cut.json.gz: truncated or corrupt gzip" in capsys.readouterr().err


def test_malformed_lines_name_file_and_line_or_are_counted(tmp_path):
    out = str(tmp_path / "out")
    good = [json.dumps({"reviewerID": u, "asin": i, "overall": 5, "unixReviewTime": t})
            for u, i, t in [("A", "x", 1), ("A", "y", 2), ("B", "x", 3), ("B", "y", 4)]]
    reviews = write_lines(tmp_path / "reviews.json", good[:2] + ["{'reviewerID': 'B', oops"] + good[2:])
    meta = write_lines(tmp_path / "meta.json", [repr({"asin": "x", "title": "X"}), repr({"asin": "y"})])
    with pytest.raises(RawInputError, match=r"reviews\.json, line 3: neither JSON nor a Python dict literal"):
        conv.convert("amazon2014", "bad", out=out, reviews=reviews, meta=meta, k=2, quiet=True)
    summary = conv.convert("amazon2014", "bad", out=out, reviews=reviews, meta=meta, k=2,
                           skip_bad_lines=True, quiet=True)
    assert summary["skipped bad review lines"] == 1
    assert summary["first bad review line"].endswith("reviews.json:3")
    assert summary["interactions"] == 4

    # a metadata line of a needed item that is not a dict literal
    bad_meta = write_lines(tmp_path / "meta_bad.json", [repr({"asin": "x"}), "[1, 2, 3]"])
    with pytest.raises(RawInputError, match=r"meta_bad\.json, line 2: expected an object/dict, got list"):
        conv.convert("amazon2014", "bad2", out=out, reviews=write_lines(tmp_path / "ok.json", good),
                     meta=bad_meta, k=2, quiet=True)
    # a CSV row with too few columns
    bad_csv = write_lines(tmp_path / "ratings.csv", ["A,x,5,1", "A,y"])
    with pytest.raises(RawInputError, match=r"ratings\.csv, line 2: not a ratings CSV row"):
        conv.convert("amazon2014", "bad3", out=out, ratings=bad_csv, meta=meta, k=1, quiet=True)


def test_nothing_left_after_kcore_is_a_clear_error(tmp_path):
    reviews = write_lines(tmp_path / "r.json", [json.dumps({"reviewerID": "A", "asin": "x", "unixReviewTime": 1})])
    meta = write_lines(tmp_path / "m.json", [repr({"asin": "x"})])
    with pytest.raises(ValueError, match="no interactions left after filtering"):
        conv.convert("amazon2014", "empty", out=str(tmp_path / "out"), reviews=reviews, meta=meta, quiet=True)
    assert not os.path.exists(tmp_path / "out" / "empty" / "empty.inter")


# ---- HTML left in real metadata, timestamps of other exports, why nothing is left -------

@pytest.mark.parametrize("raw, cleaned", [
    # real Amazon 2018 titles: a tag cut off before its ">"
    ('<span class="a-size-medium a-color-secondary"', ""),
    ('Rose Cream <span class="a-size-medium a-color-secondary"', "Rose Cream"),
    ('Rose Cream <span class="a-size-med', "Rose Cream"),
    ("Rose Cream <br", "Rose Cream"),
    ('class="a-size-medium">Rose Cream', "Rose Cream"),
    ('span class="a" id=\'b\'>Rose Cream', "Rose Cream"),
    # legitimate "<" and ">" are text
    ("size < 5 cm", "size < 5 cm"),
    ("size < 5 cm and <b>bold</b> > 3", "size < 5 cm and bold > 3"),
    ("a<b", "a<b"),
    ("I <3 it", "I <3 it"),
    ("AC <-> DC", "AC <-> DC"),
    ('12" > 10" screen', '12" > 10" screen'),
    ("Soft &amp; <b>gentle</b>.", "Soft & gentle ."),
    ("<!-- a > b -->Text", "Text"),
])
def test_clean_text_strips_cut_off_tags_but_not_comparisons(raw, cleaned):
    assert conv.clean_text(raw) == cleaned


def test_amazon2018_title_that_is_a_cut_off_tag(tmp_path):
    out = str(tmp_path / "out")
    reviews = write_lines(tmp_path / "r.json", [
        json.dumps({"reviewerID": u, "asin": i, "overall": 5, "unixReviewTime": t})
        for u, i, t in [("A", "x", 1), ("A", "y", 2), ("B", "x", 3), ("B", "y", 4)]])
    meta = write_lines(tmp_path / "m.json", [
        json.dumps({"asin": "x", "title": '<span class="a-size-medium a-color-secondary"', "brand": "Acme"}),
        json.dumps({"asin": "y", "title": "Cream <span class=\"a-color-secondary\"", "description": ["size < 5 cm"]}),
    ])
    conv.convert("amazon2018", "lux", out=out, reviews=reviews, meta=meta, k=2, quiet=True)
    items = read_meta_lines(out, "lux")
    assert items["x"]["text"] == "Acme"
    assert items["y"]["text"] == "Cream size < 5 cm"


def test_yelp_dates_as_epoch_seconds_or_milliseconds(tmp_path):
    out = str(tmp_path / "out")
    dates = [1551434400, "1551519000", 1554120000000, "1556668800000", 1551434400.5, "2019-03-01T10:00:00Z"]
    pairs = [("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "a"), ("u3", "a"), ("u3", "b")]
    reviews = write_lines(tmp_path / "reviews.json", [
        json.dumps({"user_id": u, "business_id": b, "stars": 5, "date": d}) for (u, b), d in zip(pairs, dates)])
    business = write_lines(tmp_path / "business.json", [json.dumps({"business_id": b, "name": b}) for b in "ab"])
    summary = conv.convert("yelp", "y", out=out, reviews=reviews, meta=business, k=2, quiet=True)
    assert summary["interactions"] == 6
    assert not any(k.startswith("skipped reviews") for k in summary)
    assert read_inter(out, "y")[1] == [
        ["u1", "a", "5", "1551434400"], ["u1", "b", "5", "1551519000"],
        ["u2", "b", "5", "1554120000"], ["u2", "a", "5", "1556668800"],
        ["u3", "b", "5", "1551434400"], ["u3", "a", "5", "1551434400.5"],
    ]


def test_nothing_left_error_counts_skipped_lines_per_reason(tmp_path, capsys):
    """Yelp: every date unreadable (or missing): the error counts them and shows the first line."""
    out = str(tmp_path / "out")
    lines = [json.dumps({"user_id": f"u{n}", "business_id": "b", "stars": 4, "date": "03/01/2019"})
             for n in range(1200)]
    lines.insert(5, json.dumps({"user_id": "u", "business_id": "b", "stars": 4}))
    lines.append(json.dumps({"business_id": "b", "date": "2019-01-01"}))
    reviews = write_lines(tmp_path / "yelp_review.json", lines)
    business = write_lines(tmp_path / "business.json", [json.dumps({"business_id": "b"})])
    with pytest.raises(ValueError) as info:
        conv.convert("yelp", "y", out=out, reviews=reviews, meta=business, quiet=True)
    msg = str(info.value)
    assert "no interactions left after filtering: 1202 review line(s) read, 0 gave an interaction" in msg
    assert "unreadable timestamp: 1200 (first at " in msg and "yelp_review.json:1: " in msg
    assert "03/01/2019" in msg  # the excerpt of the first such line
    assert "no timestamp: 1 (first at " in msg and "yelp_review.json:6: " in msg
    assert "no user or item id: 1 (first at " in msg and "yelp_review.json:1202: " in msg
    assert "epoch seconds or milliseconds" in msg
    assert "lower --k" not in msg  # k-core is not the cause
    # the excerpt is truncated
    long_line = json.dumps({"user_id": "u", "business_id": "b", "date": "bad", "text": "x" * 500})
    reviews = write_lines(tmp_path / "long.json", [long_line])
    assert conv.main(["yelp", "--reviews", reviews, "--meta", business, "--name", "y", "--out", out,
                      "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unreadable timestamp: 1 (first at " in err and "x" * 200 not in err and "..." in err


def test_nothing_left_error_amazon_skips_and_kcore(tmp_path):
    out = str(tmp_path / "out")
    meta = write_lines(tmp_path / "m.json", [repr({"asin": "x"})])
    reviews = write_lines(tmp_path / "r.json", [
        json.dumps({"reviewerID": "A", "asin": "x", "overall": 5}),  # no time at all
        json.dumps({"reviewerID": "A", "asin": "y", "reviewTime": "yesterday"}),
        json.dumps({"reviewerID": "B", "asin": "x", "unixReviewTime": 5}),
        "{'broken",
    ])
    with pytest.raises(ValueError) as info:
        conv.convert("amazon2014", "a", out=out, reviews=reviews, meta=meta, skip_bad_lines=True, quiet=True)
    msg = str(info.value)
    assert "4 review line(s) read, 1 gave an interaction" in msg
    assert "no timestamp: 1 (first at " in msg and "r.json:1: " in msg
    assert "unreadable timestamp: 1 (first at " in msg and "r.json:2: " in msg
    assert "malformed lines (--skip-bad-lines): 1 (first at " in msg and "r.json:4: " in msg
    assert "then dropped: k-core: 1" in msg and "lower --k (now user 5, item 5)" in msg
