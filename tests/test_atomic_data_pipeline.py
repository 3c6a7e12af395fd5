"""End to end: a tiny raw Amazon 2014 sample -> atomic files with tiny-CLIP vectors -> PRISM_SASRec.

Images come from a local HTTP server on 127.0.0.1; the CLIP model is a tiny random one built in
a temp folder; the training config is configs/amazon-beauty.yaml shrunk by tiny_config.
"""
import gzip
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from atomic_data import pipeline
from atomic_data.tiny_clip import build_tiny_clip
from prism_recbole.config import Config
from prism_recbole.data import create_dataset
from prism_recbole.quick_start import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = [f"B00{n:02d}" for n in range(10)]
NO_IMAGE = {"B0008": "404 at download", "B0009": "no metadata row"}


@pytest.fixture
def image_server():
    yield from _serve_images(set(ITEMS) - set(NO_IMAGE))


@pytest.fixture
def dead_image_server():
    """Every image URL answers 404."""
    yield from _serve_images(set())


@pytest.fixture
def sparse_image_server():
    """Only 3 of the 10 items have an image."""
    yield from _serve_images(set(ITEMS[:3]))


def _serve_images(served):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            stem = os.path.basename(self.path).split(".")[0]
            if stem not in served:
                self.send_response(404)
                self.end_headers()
                return
            rng = np.random.default_rng(ITEMS.index(stem))
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, format="JPEG")
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(buf.getvalue())))
            self.end_headers()
            self.wfile.write(buf.getvalue())

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def write_raw_amazon2014(folder, url):
    rng = np.random.default_rng(0)
    reviews = []
    for u in range(14):
        for t, item in enumerate(rng.choice(ITEMS, size=int(rng.integers(6, 9)), replace=False)):
            reviews.append(json.dumps({"reviewerID": f"A{u:03d}", "asin": str(item), "overall": 4.0,
                                       "unixReviewTime": 1_400_000_000 + 86400 * (10 * u + t)}))
    meta = [repr({"asin": item, "title": f"Product {item}", "brand": "Acme",
                  "categories": [["Beauty", "Makeup"]], "description": "A fine product. " * 30,
                  "imUrl": f"{url}/images/I/{item}._SY300_.jpg"})
            for item in ITEMS if item != "B0009"]
    paths = {}
    for name, lines in (("reviews_Beauty_5.json.gz", reviews), ("meta_Beauty.json.gz", meta)):
        paths[name] = os.path.join(folder, name)
        with gzip.open(paths[name], "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return paths["reviews_Beauty_5.json.gz"], paths["meta_Beauty.json.gz"]


def test_raw_sample_to_trained_prism_sasrec(tmp_path, image_server, capsys):
    reviews, meta = write_raw_amazon2014(str(tmp_path), image_server)
    clip_dir = build_tiny_clip(str(tmp_path / "tiny-clip"), projection_dim=16)
    out = str(tmp_path / "data")
    summaries = pipeline.run([
        "amazon2014", "--reviews", reviews, "--meta", meta, "--name", "amazon-beauty", "--out", out,
        "--model", clip_dir, "--local-files-only", "--no-progress", "--workers", "2",
        "--timeout", "5", "--retries", "0", "--batch-size", "4",
    ])
    printed = capsys.readouterr().out
    for step in ("== convert amazon2014", "== download_images", "== extract_clip", "--dataset=amazon-beauty"):
        assert step in printed
    conv, down, ext = summaries["convert"], summaries["download_images"], summaries["extract_clip"]
    assert conv["items"] == 10 and conv["users"] == 14 and conv["items with no metadata row"] == 1
    assert down["downloaded or copied now"] == 8 and down["failed now"] == 1
    assert ext["img_emb: items with a vector"] == 8 and ext["txt_emb: items with a vector"] == 9
    assert ext["texts truncated to the token limit"] == 9  # the long descriptions are cut
    with open(os.path.join(out, "amazon-beauty", "amazon-beauty.summary.json")) as f:
        assert sorted(json.load(f)) == ["convert", "download_images", "extract_clip"]

    # the config example, shrunk to a tiny model and one epoch
    overrides = tiny_config(out, str(tmp_path / "saved"), epochs=1)
    del overrides["load_col"]  # the one from configs/amazon-beauty.yaml is used
    config_files = [os.path.join(REPO, "configs", "amazon-beauty.yaml")]

    config = Config(model="PRISM_SASRec", dataset="amazon-beauty", config_file_list=config_files,
                    config_dict=overrides)
    dataset = create_dataset(config)
    tokens = dataset.field2id_token["item_id"]
    for field, absent in (("img_emb", set(NO_IMAGE)), ("txt_emb", {"B0009"})):
        table, missing = dataset.modality_table(field)
        assert table.shape == (11, 16)
        assert {tokens[i] for i in np.flatnonzero(missing.numpy())} == {"[PAD]"} | absent

    result = run(model="PRISM_SASRec", dataset="amazon-beauty", config_file_list=config_files,
                 config_dict=overrides)
    assert len(result["epoch_times"]) == 1
    assert set(result["test_result"]) >= {"hit@10", "ndcg@10", "mrr@10"}
    assert all(np.isfinite(v) for v in result["test_result"].values())
    assert result["checkpoint"].startswith(str(tmp_path))


def test_pipeline_help_lists_every_step():
    text = pipeline.build_parser().format_help()
    for option in ("--reviews", "--text-order", "--workers", "--skip-failed", "--model", "--no-normalize",
                   "--skip-download"):
        assert option in text


# ---- the pipeline refuses a modality that came out empty ---------------------------------

@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(str(tmp_path_factory.mktemp("tiny-clip")), projection_dim=16)


def _pipeline_argv(reviews, meta, out, clip_dir, *extra):
    return ["amazon2014", "--reviews", reviews, "--meta", meta, "--name", "amazon-beauty", "--out", out,
            "--model", clip_dir, "--local-files-only", "--no-progress", "--workers", "2",
            "--timeout", "5", "--retries", "0", "--batch-size", "4", *extra]


def test_every_image_download_failed_is_an_error(tmp_path, dead_image_server, tiny_clip_dir, capsys):
    reviews, meta = write_raw_amazon2014(str(tmp_path), dead_image_server)
    out = str(tmp_path / "data")
    code = pipeline.main(_pipeline_argv(reviews, meta, out, tiny_clip_dir))
    captured = capsys.readouterr()
    assert code == 2
    assert "Done" not in captured.out and "run_recbole.py" not in captured.out
    err = captured.err[captured.err.index("error: "):]
    item_file = os.path.join(out, "amazon-beauty", "amazon-beauty.item")
    failures = os.path.join(out, "amazon-beauty", "amazon-beauty.image_failures.tsv")
    assert err.startswith("error: img_emb (image vectors) is empty for every one of the 10 items")
    assert item_file in err and failures in err
    assert "all 9 image downloads failed (HTTP 404" in err
    assert "--modalities text" in err and "modalities: [txt_emb]" in err
    # a rerun that does not retry the failures says the same
    with pytest.raises(pipeline.EmptyModalityError, match=r"all 9 image downloads failed \(9 not retried"):
        pipeline.run(_pipeline_argv(reviews, meta, out, tiny_clip_dir, "--skip-failed"))


def test_skip_download_without_images_is_an_error(tmp_path, dead_image_server, tiny_clip_dir):
    reviews, meta = write_raw_amazon2014(str(tmp_path), dead_image_server)
    with pytest.raises(pipeline.EmptyModalityError, match=r"--skip-download was given and .*images holds no"):
        pipeline.run(_pipeline_argv(reviews, meta, str(tmp_path / "data"), tiny_clip_dir, "--skip-download"))


def test_no_text_for_any_item_is_an_error(tmp_path, dead_image_server, tiny_clip_dir):
    reviews, _ = write_raw_amazon2014(str(tmp_path), dead_image_server)
    meta = str(tmp_path / "other_meta.json")
    with open(meta, "w") as f:
        f.write(repr({"asin": "ZZZ", "title": "another category"}) + "\n")
    with pytest.raises(pipeline.EmptyModalityError,
                       match=r"txt_emb \(text vectors\) is empty .*no kept item has a row in the metadata file"):
        pipeline.run(_pipeline_argv(reviews, meta, str(tmp_path / "data"), tiny_clip_dir,
                                    "--skip-download", "--modalities", "text"))


def test_most_images_missing_is_a_warning(tmp_path, sparse_image_server, tiny_clip_dir, capsys):
    reviews, meta = write_raw_amazon2014(str(tmp_path), sparse_image_server)
    out = str(tmp_path / "data")
    summaries = pipeline.run(_pipeline_argv(reviews, meta, out, tiny_clip_dir))
    captured = capsys.readouterr()
    assert summaries["extract_clip"]["img_emb: items with a vector"] == 3
    assert "warning: img_emb (image vectors) is missing for 7 of 10 items (70%)" in captured.err
    assert "amazon-beauty.image_failures.tsv" in captured.err
    assert "txt_emb" not in captured.err  # 9 of 10 items have text
    assert "Done" in captured.out
