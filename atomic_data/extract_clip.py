"""Step 3: CLIP image and text vectors of every item, written as ``float_seq`` fields of ``NAME.item``.

    python -m atomic_data.extract_clip --name amazon-beauty [--out dataset]
    python -m atomic_data.extract_clip --name amazon-beauty --model /path/to/local/clip --batch-size 128

Reads ``NAME.meta.jsonl`` (item text) and ``images/`` (one image per item, from
``download_images``) and writes ``NAME.item``::

    item_id:token   img_emb:float_seq   txt_emb:float_seq
    B0001           0.0123 -0.0456 ...   0.0789 ...

* Hugging Face ``transformers``: ``CLIPModel`` + ``CLIPProcessor`` from ``--model`` (default
  ``openai/clip-vit-base-patch32``, 512-d; any CLIP checkpoint name or local folder;
  ``--local-files-only`` never touches the network); image vectors from
  ``get_image_features``, text vectors from ``get_text_features``;
* batched (``--batch-size``), on the GPU when there is one, in fp16 there (``--fp32`` to
  keep float32), with progress bars;
* L2-normalised by default (``--no-normalize`` keeps the raw projections);
* text longer than the model's limit (77 tokens for CLIP) is truncated by the tokenizer;
  the summary counts the truncated items;
* an item with no image (none listed, download failed, or an unreadable file: counted in the
  summary) or no text gets an **empty** field, which ``prism_recbole`` reads as "missing"
  (zero vector + missing flag), never random numbers;
* resumable: vectors are kept, a few batches at a time, in ``NAME.clip-work/`` (each chunk
  written to a temporary name and renamed), keyed by item and by the text / image file they
  came from; a rerun after a kill (or after more images were downloaded) computes only what
  is not there yet, and gives the same ``NAME.item`` as an uninterrupted run with the same
  batch size. ``NAME.item`` itself is written to a temporary name and renamed. Work made with
  other settings (model, dtype, normalisation) is discarded. ``--clean-work`` deletes the
  folder after success.
"""
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

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
from atomic_data.download_images import existing_images

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
KINDS = ("image", "text")
WORK_VERSION = 1


# ---- model ------------------------------------------------------------------------------

def load_clip(model_name, device=None, fp16=None, local_files_only=False):
    """``(model, processor, device, dtype)``; a clear error when the model cannot be loaded."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if fp16 is None:
        fp16 = str(device).startswith("cuda")
    dtype = torch.float16 if fp16 else torch.float32
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = CLIPModel.from_pretrained(model_name, local_files_only=local_files_only)
            processor = CLIPProcessor.from_pretrained(model_name, local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot load CLIP model {model_name!r} ({err}). Give a local folder with --model, "
            "or run once with network access so that the Hugging Face cache has it."
        ) from None
    model = model.to(device=device, dtype=dtype).eval()
    return model, processor, str(device), dtype


def _as_tensor(out):
    import torch

    return out if torch.is_tensor(out) else out.pooler_output


def text_max_length(model, processor):
    limit = model.config.text_config.max_position_embeddings
    tok_limit = getattr(processor.tokenizer, "model_max_length", None) or limit
    return int(min(limit, tok_limit))


def encode_texts(model, processor, texts, max_length, normalize, device, dtype):
    """``(vectors float32 [n, d], truncated bool [n])``."""
    import torch

    tok = processor.tokenizer
    lengths = [len(ids) for ids in tok(texts, truncation=False, verbose=False)["input_ids"]]
    truncated = np.array([n > max_length for n in lengths], dtype=bool)
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        out = model.get_text_features(input_ids=enc["input_ids"].to(device),
                                      attention_mask=enc["attention_mask"].to(device))
        vec = _as_tensor(out).float()
        if normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
    return vec.cpu().numpy().astype(np.float32), truncated


def encode_images(model, processor, images, normalize, device, dtype):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=pixels.to(device=device, dtype=dtype))
        vec = _as_tensor(out).float()
        if normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
    return vec.cpu().numpy().astype(np.float32)


def load_rgb(path):
    """The image as RGB, or the error text when Pillow cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB"), None
    except Exception as err:  # noqa: BLE001
        return None, f"{type(err).__name__}: {err}"


# ---- resume data ------------------------------------------------------------------------

class WorkDir:
    """Vectors computed so far, in ``.npz`` chunks (``items``, ``keys``, ``vectors``, ``flags``)."""

    def __init__(self, folder, settings):
        self.folder = folder
        self.settings = settings
        self.done = {kind: {} for kind in KINDS}  # kind -> item -> (key, vector, flag)
        self.seq = 0
        self.reset_reason = None
        os.makedirs(folder, exist_ok=True)
        remove_stale_temps(folder)
        state_path = os.path.join(folder, "state.json")
        state = None
        if os.path.isfile(state_path):
            with contextlib.suppress(ValueError, OSError):
                with open(state_path, encoding="utf-8") as f:
                    state = json.load(f)
        if state != {"version": WORK_VERSION, "settings": settings}:
            chunks = [e for e in os.listdir(folder) if e.endswith(".npz")]
            if chunks:
                self.reset_reason = "made with other settings" if state else "no readable state.json"
            for entry in chunks:
                os.remove(os.path.join(folder, entry))
            with atomic_write(state_path) as f:
                json.dump({"version": WORK_VERSION, "settings": settings}, f, indent=2, sort_keys=True)
        self._load()

    def _load(self):
        for entry in sorted(os.listdir(self.folder)):
            if not entry.endswith(".npz"):
                continue
            kind, _, seq = entry[:-4].partition("-")
            if kind not in KINDS or not seq.isdigit():
                continue
            self.seq = max(self.seq, int(seq) + 1)
            try:
                with np.load(os.path.join(self.folder, entry), allow_pickle=False) as z:
                    items, keys, vectors, flags = z["items"], z["keys"], z["vectors"], z["flags"]
            except (OSError, ValueError, KeyError):
                continue  # an unreadable chunk is recomputed
            for item, key, vec, flag in zip(items.tolist(), keys.tolist(), vectors, flags.tolist()):
                self.done[kind][item] = (key, vec, flag)

    def get(self, kind, item, key):
        entry = self.done[kind].get(item)
        return entry if entry is not None and entry[0] == key else None

    def save(self, kind, items, keys, vectors, flags):
        if not items:
            return
        path = os.path.join(self.folder, f"{kind}-{self.seq:06d}.npz")
        self.seq += 1
        with atomic_write(path, "wb") as f:
            np.savez(f, items=np.array(items), keys=np.array(keys),
                     vectors=np.asarray(vectors, dtype=np.float32), flags=np.asarray(flags, dtype=bool))
        for item, key, vec, flag in zip(items, keys, vectors, flags):
            self.done[kind][item] = (key, vec, bool(flag))


def text_key(text):
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def image_key(path):
    st = os.stat(path)
    return f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}"


# ---- the step ---------------------------------------------------------------------------

_FORMATS = {}


def _format_vector(vec, digits):
    """Space-separated ``%.<digits>g`` values (one %-format per row: about twice as fast)."""
    key = (len(vec), digits)
    if key not in _FORMATS:
        _FORMATS[key] = " ".join([f"%.{digits}g"] * len(vec))
    return _FORMATS[key] % tuple(vec.tolist())


def extract_clip(name, out=DEFAULT_OUT, model=DEFAULT_MODEL, batch_size=64, device=None, fp16=None,
                 normalize=True, modalities=KINDS, img_field="img_emb", txt_field="txt_emb",
                 flush_every=16, clean_work=False, local_files_only=False, threads=None,
                 show_progress=True, quiet=False, digits=6):
    """Run the step; returns the summary dict (also printed and saved)."""
    import torch

    modalities = tuple(m for m in KINDS if m in modalities)
    if not modalities:
        raise ValueError(f"--modalities: give at least one of {', '.join(KINDS)}")
    if batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if img_field == txt_field:
        raise ValueError(f"--img-field and --txt-field are both {img_field!r}")
    if threads:
        torch.set_num_threads(threads)
    paths = DatasetPaths(out, name)
    items = read_meta(paths)
    remove_stale_temps(paths.folder)
    on_disk = existing_images(paths.images)

    model_id = os.path.abspath(model) if os.path.isdir(model) else model
    clip, processor, device, dtype = load_clip(model, device, fp16, local_files_only)
    max_length = text_max_length(clip, processor)
    dim = int(clip.config.projection_dim)
    settings = {
        "model": model_id,
        "model_config": hashlib.sha1(clip.config.to_json_string(use_diff=False).encode()).hexdigest(),
        "processor": hashlib.sha1(processor.image_processor.to_json_string().encode()).hexdigest(),
        "dtype": str(dtype).replace("torch.", ""),
        "normalize": bool(normalize),
        "max_length": max_length,
    }
    work = WorkDir(paths.work, settings)

    # what each item needs
    todo = {kind: [] for kind in KINDS}
    unreadable = []
    no_image_file = 0
    reused = {kind: 0 for kind in KINDS}
    for item in items:
        item_id = item["item_id"]
        if "text" in modalities and item.get("text"):
            key = text_key(item["text"])
            if work.get("text", item_id, key):
                reused["text"] += 1
            else:
                todo["text"].append((item_id, key, item["text"]))
        if "image" in modalities:
            filename = on_disk.get(image_stem(item_id))
            if filename is None:
                no_image_file += bool(item.get("image"))
                continue
            path = os.path.join(paths.images, filename)
            key = image_key(path)
            if work.get("image", item_id, key):
                reused["image"] += 1
            else:
                todo["image"].append((item_id, key, path))

    computed = {kind: 0 for kind in KINDS}
    seconds = {kind: 0.0 for kind in KINDS}
    loader = ThreadPoolExecutor(max_workers=4)
    try:
        for kind in modalities:
            tasks = todo[kind]
            pending = ([], [], [], [])
            bar = progress(total=len(tasks), desc=f"CLIP {kind}", enabled=show_progress, unit="item")
            start = time.monotonic()
            for b in range(0, len(tasks), batch_size):
                batch = tasks[b:b + batch_size]
                if kind == "text":
                    vectors, flags = encode_texts(clip, processor, [t[2] for t in batch], max_length,
                                                  normalize, device, dtype)
                else:
                    # an unreadable image is kept in the resume data too (flag set, zero
                    # vector), so that a rerun batches the remaining items the same way
                    loaded = list(loader.map(load_rgb, [t[2] for t in batch]))
                    good = [n for n, (image, _) in enumerate(loaded) if image is not None]
                    vectors = np.zeros((len(batch), dim), dtype=np.float32)
                    flags = np.ones(len(batch), dtype=bool)
                    if good:
                        vectors[good] = encode_images(clip, processor, [loaded[n][0] for n in good],
                                                      normalize, device, dtype)
                        flags[good] = False
                    for task, (image, error) in zip(batch, loaded):
                        if image is None:
                            unreadable.append(f"{task[2]} ({error})")
                for part, values in zip(pending, ([t[0] for t in batch], [t[1] for t in batch],
                                                  list(vectors), list(flags))):
                    part.extend(values)
                computed[kind] += len(batch)
                bar.update(len(batch))
                if (b // batch_size + 1) % flush_every == 0:
                    work.save(kind, *pending)
                    pending = ([], [], [], [])
            work.save(kind, *pending)
            seconds[kind] = time.monotonic() - start
            bar.close()
    finally:
        loader.shutdown(wait=True)

    # NAME.item
    fields = [(kind, img_field if kind == "image" else txt_field) for kind in modalities]
    dims = {}
    counts = {kind: 0 for kind in modalities}
    truncated = n_unreadable = 0
    with atomic_write(paths.item) as f:
        f.write("\t".join(["item_id:token"] + [f"{field}:float_seq" for _, field in fields]) + "\n")
        for item in items:
            item_id = item["item_id"]
            cells = [item_id]
            for kind, _ in fields:
                entry = None
                if kind == "text" and item.get("text"):
                    entry = work.get("text", item_id, text_key(item["text"]))
                elif kind == "image":
                    filename = on_disk.get(image_stem(item_id))
                    if filename:
                        entry = work.get("image", item_id, image_key(os.path.join(paths.images, filename)))
                if entry is not None and kind == "image" and entry[2]:
                    n_unreadable += 1  # flag: Pillow could not read the file
                    entry = None
                if entry is None:
                    cells.append("")
                    continue
                vec = entry[1]
                dims.setdefault(kind, len(vec))
                counts[kind] += 1
                truncated += bool(entry[2]) if kind == "text" else 0
                cells.append(_format_vector(vec, digits))
            f.write("\t".join(cells) + "\n")
    if clean_work:
        shutil.rmtree(paths.work, ignore_errors=True)

    n = len(items)
    summary = {
        "items": n,
        "model": model_id,
        "device": device,
        "dtype": settings["dtype"],
        "normalized": bool(normalize),
        "text token limit": max_length,
        "file": paths.item,
    }
    for kind, field in fields:
        summary[f"{field}: dimension"] = dims.get(kind)
        summary[f"{field}: items with a vector"] = counts[kind]
        summary[f"{field}: items with an empty field (missing)"] = n - counts[kind]
        summary[f"{field}: computed now"] = computed[kind]
        summary[f"{field}: reused from {os.path.basename(paths.work)}"] = reused[kind]
        rate = computed[kind] / seconds[kind] if seconds[kind] > 0 else None
        summary[f"{field}: items per second"] = None if rate is None else round(rate, 1)
        if counts[kind] == 0:
            summary[f"{field}: WARNING"] = (
                "empty for every item: prism_recbole refuses a modality with no vectors; "
                "leave it out of `modalities`"
            )
    if "text" in modalities:
        summary["texts truncated to the token limit"] = truncated
    if "image" in modalities:
        summary["items whose image is listed but not on disk"] = no_image_file
        summary["unreadable image files (empty field)"] = n_unreadable
        if unreadable:
            summary["unreadable image files found now, first"] = unreadable[:5]
    if work.reset_reason:
        summary["discarded resume data"] = work.reset_reason
    save_summary(paths, "extract_clip", summary)
    if not quiet:
        print_summary(f"extract_clip -> {paths.item}", list(summary.items()))
    return summary


def add_arguments(parser, common=True):
    if common:
        add_common_arguments(parser, "no progress bars")
    g = parser.add_argument_group("extract_clip")
    g.add_argument("--model", default=DEFAULT_MODEL, help="CLIP checkpoint name or local folder (default: %(default)s)")
    g.add_argument("--local-files-only", action="store_true", help="never download the model")
    g.add_argument("--batch-size", type=int, default=64, help="items per batch (default: %(default)s)")
    g.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    g.add_argument("--fp32", action="store_true", help="float32 on the GPU too (default there: fp16)")
    g.add_argument("--no-normalize", action="store_true", help="keep the raw projections (default: L2-normalised)")
    g.add_argument("--modalities", nargs="+", choices=KINDS, default=list(KINDS), help="which vectors to compute")
    g.add_argument("--img-field", default="img_emb", help="image field name (default: %(default)s)")
    g.add_argument("--txt-field", default="txt_emb", help="text field name (default: %(default)s)")
    g.add_argument("--flush-every", type=int, default=16, help="batches between resume-data writes (default: %(default)s)")
    g.add_argument("--clean-work", action="store_true", help="delete NAME.clip-work/ after success")
    g.add_argument("--threads", type=int, help="torch CPU threads")


def run_from_args(args, quiet=False):
    return extract_clip(
        args.name, out=args.out, model=args.model, batch_size=args.batch_size, device=args.device,
        fp16=False if args.fp32 else None, normalize=not args.no_normalize, modalities=args.modalities,
        img_field=args.img_field, txt_field=args.txt_field, flush_every=max(1, args.flush_every),
        clean_work=args.clean_work, local_files_only=args.local_files_only, threads=args.threads,
        show_progress=not args.no_progress, quiet=quiet,
    )


def main(argv=None):
    return step_main("python -m atomic_data.extract_clip", __doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
