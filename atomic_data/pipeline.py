"""All three steps in a row: convert, download images, extract CLIP vectors.

    python -m atomic_data.pipeline amazon2014 --reviews reviews_Beauty_5.json.gz \\
        --meta meta_Beauty.json.gz --name amazon-beauty
    python run_recbole.py --model=PRISM_SASRec --dataset=amazon-beauty

Takes every option of ``atomic_data.convert``, ``atomic_data.download_images`` and
``atomic_data.extract_clip`` (``--help`` lists them by step), plus ``--skip-download``
(use the images already in ``<out>/<name>/images/``). Each step prints its summary; all of
them are also saved in ``<out>/<name>/<name>.summary.json``. Every step is resumable, so
rerunning the same command after a failure or a kill redoes only what is missing (the
conversion itself is rerun: it is a pass over the raw files).

At the end it checks the vectors: a modality that is empty for every item (say every image
download failed) is an error (exit status 2) that names the field, the file and the likely
cause; a modality missing for more than half of the items prints a warning.
"""
import argparse
import os
import sys

from atomic_data import convert, download_images, extract_clip
from atomic_data.common import DEFAULT_OUT, DatasetPaths, command_name, report_errors

#: Warn when more than this share of the items has no vector for a modality.
MISSING_WARN_SHARE = 0.5


class EmptyModalityError(ValueError):
    """A modality came out empty for every item: the dataset cannot be trained on as it is."""


def build_parser():
    parser = argparse.ArgumentParser(prog=command_name("python -m atomic_data.pipeline"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="dataset name (folder and file names)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output root (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--skip-download", action="store_true", help="do not download images")
    convert.add_arguments(parser, common=False)
    download_images.add_arguments(parser, common=False)
    extract_clip.add_arguments(parser, common=False)
    return parser


def run(argv=None):
    """Parse ``argv`` and run the steps; returns ``{step: summary}``."""
    args = build_parser().parse_args(argv)
    summaries = {"convert": convert.run_from_args(args)}
    if not args.skip_download:
        summaries["download_images"] = download_images.run_from_args(args)
    summaries["extract_clip"] = extract_clip.run_from_args(args)
    check_modalities(args, summaries)
    data_path = "" if args.out == DEFAULT_OUT else f" --data_path={args.out}"
    print(f"\nDone: {os.path.join(args.out, args.name)}. Train with\n"
          f"  python run_recbole.py --model=PRISM_SASRec --dataset={args.name}{data_path}\n"
          f"(configs/{args.name}.yaml is read when it exists; otherwise add --config_files=FILE, "
          "a copy of configs/amazon-beauty.yaml, whose `modalities: [img_emb, txt_emb]` names the "
          "vector fields)")
    return summaries


def _image_cause(args, paths, summaries):
    """The likely reason why no item has an image vector."""
    conv, down, ext = (summaries.get(k) or {} for k in ("convert", "download_images", "extract_clip"))
    n_items = conv.get("items", ext.get("items", 0))
    if n_items and conv.get("items with no image", 0) >= n_items:
        why = f"no item has an image source in {paths.meta}"
        return why + (" (Yelp: pass --photos DIR, the extracted photos archive)" if args.format == "yelp"
                      else " (the metadata has no image URLs for these items)")
    if down:
        failed_now = down.get("failed now", 0)
        not_retried = down.get("failed before, not retried (--skip-failed)", 0)
        if down.get("images on disk", 0) == 0 and failed_now + not_retried:
            reasons = ", ".join(f"{k}: {v}" for k, v in (down.get("failure reasons") or {}).items())
            if not_retried:
                reasons = ", ".join(filter(None, [f"{not_retried} not retried (--skip-failed)", reasons]))
            return (f"all {failed_now + not_retried} image downloads failed"
                    + (f" ({reasons})" if reasons else "")
                    + f"; see the download log {down.get('failures file', paths.failures)} "
                      "(no network access? the image host refused or the URLs are dead?)")
    elif getattr(args, "skip_download", False):
        return f"--skip-download was given and {paths.images} holds no usable image"
    if ext.get("unreadable image files (empty field)"):
        return (f"Pillow could not read any of the images in {paths.images} "
                f"({ext['unreadable image files (empty field)']} unreadable)")
    return f"no usable image in {paths.images}; see {paths.failures}"


def _text_cause(args, paths, summaries):
    conv = summaries.get("convert") or {}
    n_items = conv.get("items", 0)
    if n_items and conv.get("items with no metadata row", 0) >= n_items:
        return f"no kept item has a row in the metadata file {args.meta} (wrong --meta file?)"
    return f"every item has an empty text in {paths.meta} (metadata without title or description?)"


def check_modalities(args, summaries):
    """Raise :class:`EmptyModalityError` when a computed modality is empty for every item;
    print a warning when more than half of the items miss it."""
    ext = summaries.get("extract_clip") or {}
    paths = DatasetPaths(args.out, args.name)
    n = ext.get("items", 0)
    fields = [(kind, field) for kind, field in (("image", args.img_field), ("text", args.txt_field))
              if f"{field}: items with a vector" in ext]
    empty = []
    for kind, field in fields:
        have = ext[f"{field}: items with a vector"]
        if n and have == 0:
            cause = (_image_cause if kind == "image" else _text_cause)(args, paths, summaries)
            empty.append((kind, field, cause))
        elif n and (n - have) / n > MISSING_WARN_SHARE:
            print(f"warning: {field} ({kind} vectors) is missing for {n - have} of {n} items "
                  f"({100 * (n - have) / n:.0f}%) in {paths.item}; they get a zero vector and a "
                  f"missing flag in training. "
                  + (f"See {paths.failures} for the failed downloads."
                     if kind == "image" and os.path.isfile(paths.failures) else ""),
                  file=sys.stderr)
    if empty:
        parts = [f"{field} ({kind} vectors) is empty for every one of the {n} items in {paths.item}: {cause}"
                 for kind, field, cause in empty]
        usable = [(kind, field) for kind, field in fields if field not in {e[1] for e in empty}]
        rest = (f"; to train on the other modality alone, rerun with --modalities {usable[0][0]} and "
                f"`modalities: [{usable[0][1]}]` in the config" if usable else "")
        raise EmptyModalityError(". ".join(parts) + f". prism_recbole refuses a modality with no vectors{rest}")


def main(argv=None):
    return report_errors(run, argv)


if __name__ == "__main__":
    sys.exit(main())
