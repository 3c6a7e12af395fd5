"""atomic_data.extract_clip with a tiny random CLIP built in a temp folder (nothing downloaded)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from atomic_data import extract_clip as ec
from atomic_data.common import DatasetPaths
from atomic_data.tiny_clip import build_tiny_clip

DIM = 16
LONG_TEXT = " ".join(["word"] * 60)  # 60 words -> over 77 byte-level tokens


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(str(tmp_path_factory.mktemp("tiny-clip")), projection_dim=DIM)


def make_dataset(root, name="clip", n_extra=0):
    """Items: a (text, image), b (text only), c (image only), d (image failed to download),
    e (unreadable image file), f (text longer than CLIP's limit), g... (text and image)."""
    paths = DatasetPaths(str(root), name)
    os.makedirs(paths.images, exist_ok=True)
    rows = [
        ("a", "red lipstick", "http://h/a.jpg"), ("b", "blue shampoo", None), ("c", "", "http://h/c.jpg"),
        ("d", "green soap", "http://h/d.jpg"), ("e", "pink brush", "http://h/e.jpg"), ("f", LONG_TEXT, None),
    ] + [(f"g{n}", f"item number {n}", f"http://h/g{n}.jpg") for n in range(n_extra)]
    with open(paths.meta, "w", encoding="utf-8") as fh:
        for item, text, image in rows:
            fh.write(json.dumps({"item_id": item, "text": text, "image": image}) + "\n")
    rng = np.random.default_rng(0)
    for item, _, image in rows:
        if image and item not in ("d", "e"):
            size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
                os.path.join(paths.images, f"{item}.{'png' if item == 'c' else 'jpg'}"))
    with open(os.path.join(paths.images, "e.jpg"), "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return paths


def read_item(paths):
    with open(paths.item, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = {}
        for line in f:
            cells = line.rstrip("\n").split("\t")
            rows[cells[0]] = [np.array(c.split(), dtype=np.float64) if c else None for c in cells[1:]]
    return header, rows


def run(paths, model, **kw):
    kw.setdefault("batch_size", 2)
    kw.setdefault("flush_every", 1)
    return ec.extract_clip(paths.name, out=paths.out, model=model, local_files_only=True,
                           show_progress=False, quiet=True, **kw)


def test_vectors_missing_fields_truncation_and_determinism(tmp_path, tiny_clip):
    paths = make_dataset(tmp_path / "out")
    summary = run(paths, tiny_clip)
    header, rows = read_item(paths)
    assert header == ["item_id:token", "img_emb:float_seq", "txt_emb:float_seq"]
    assert list(rows) == ["a", "b", "c", "d", "e", "f"]
    has = {item: (img is not None, txt is not None) for item, (img, txt) in rows.items()}
    assert has == {"a": (True, True), "b": (False, True), "c": (True, False), "d": (False, True),
                   "e": (False, True), "f": (False, True)}
    for img, txt in rows.values():
        for vec in (img, txt):
            if vec is not None:
                assert vec.shape == (DIM,)
                assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    assert summary["img_emb: items with a vector"] == 2 and summary["txt_emb: items with a vector"] == 5
    assert summary["texts truncated to the token limit"] == 1  # f
    assert summary["unreadable image files (empty field)"] == 1  # e
    assert summary["items whose image is listed but not on disk"] == 1  # d
    assert summary["img_emb: dimension"] == DIM and summary["text token limit"] == 77
    assert summary["txt_emb: items per second"] > 0

    # each row holds that item's own vectors (computed here directly with transformers)
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    proc = CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad(), Image.open(os.path.join(paths.images, "c.png")) as im:
        pix = proc.image_processor(images=[im.convert("RGB")], return_tensors="pt")["pixel_values"]
        img = ec._as_tensor(model.get_image_features(pixel_values=pix))[0]
        enc = proc.tokenizer(["blue shampoo"], return_tensors="pt")
        txt = ec._as_tensor(model.get_text_features(**enc))[0]
    np.testing.assert_allclose(rows["c"][0], (img / img.norm()).numpy(), atol=2e-5)
    np.testing.assert_allclose(rows["b"][1], (txt / txt.norm()).numpy(), atol=2e-5)
    assert not np.allclose(rows["a"][1], rows["b"][1], atol=1e-3)

    # a second run from scratch gives the same file; a rerun reuses the resume data
    with open(paths.item, "rb") as f:
        first = f.read()
    shutil.rmtree(paths.work)
    run(paths, tiny_clip)
    with open(paths.item, "rb") as f:
        assert f.read() == first
    again = run(paths, tiny_clip)
    assert again["txt_emb: computed now"] == 0 and again["img_emb: computed now"] == 0
    with open(paths.item, "rb") as f:
        assert f.read() == first

    # other settings: the resume data is discarded, the raw projections are not unit length
    raw = run(paths, tiny_clip, normalize=False)
    assert raw["discarded resume data"] == "made with other settings"
    assert raw["txt_emb: computed now"] == 5
    norms = [np.linalg.norm(txt) for _, txt in read_item(paths)[1].values() if txt is not None]
    assert not np.allclose(norms, 1.0, atol=1e-3)


@pytest.mark.parametrize("stage", ["image", "text"])
def test_kill_and_rerun_gives_the_same_file(tmp_path, tiny_clip, monkeypatch, stage):
    clean = make_dataset(tmp_path / "clean", n_extra=7)
    run(clean, tiny_clip)
    with open(clean.item, "rb") as f:
        expected = f.read()

    paths = make_dataset(tmp_path / "killed", n_extra=7)
    target = "encode_images" if stage == "image" else "encode_texts"
    real = getattr(ec, target)
    calls = []

    def dies_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a kill at this point leaves: the saved chunks
        return real(*args, **kwargs)

    monkeypatch.setattr(ec, target, dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run(paths, tiny_clip)
    assert not os.path.exists(paths.item)
    assert [e for e in os.listdir(paths.work) if e.endswith(".npz")]
    monkeypatch.setattr(ec, target, real)

    summary = run(paths, tiny_clip)
    field = "img_emb" if stage == "image" else "txt_emb"
    tasks = 10 if stage == "image" else 12  # image files on disk (e included) / non-empty texts
    assert summary[f"{field}: reused from clip.clip-work"] == 4  # two batches of 2 saved before the kill
    assert summary[f"{field}: computed now"] == tasks - 4
    with open(paths.item, "rb") as f:
        assert f.read() == expected
    assert not [e for e in os.listdir(paths.folder) if ".tmp-" in e]


def test_text_only_and_missing_model(tmp_path, tiny_clip):
    paths = make_dataset(tmp_path / "out")
    summary = run(paths, tiny_clip, modalities=("text",), txt_field="title_vec")
    header, rows = read_item(paths)
    assert header == ["item_id:token", "title_vec:float_seq"]
    assert rows["c"] == [None] and rows["a"][0].shape == (DIM,)
    assert summary["title_vec: items with an empty field (missing)"] == 1

    shutil.rmtree(paths.images)
    summary = run(paths, tiny_clip, modalities=("image",))
    assert "empty for every item" in summary["img_emb: WARNING"]

    with pytest.raises(ValueError, match="cannot load CLIP model"):
        run(paths, str(tmp_path / "no-such-model"))
