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
"""
import argparse
import os
import sys

from atomic_data import convert, download_images, extract_clip
from atomic_data.common import DEFAULT_OUT, report_errors


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m atomic_data.pipeline", description=__doc__,
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
    data_path = "" if args.out == DEFAULT_OUT else f" --data_path={args.out}"
    print(f"\nDone: {os.path.join(args.out, args.name)}. Train with\n"
          f"  python run_recbole.py --model=PRISM_SASRec --dataset={args.name}{data_path}\n"
          f"(configs/{args.name}.yaml is read when it exists; otherwise add --config_files=FILE, "
          "a copy of configs/amazon-beauty.yaml, whose `modalities: [img_emb, txt_emb]` names the "
          "vector fields)")
    return summaries


def main(argv=None):
    return report_errors(run, argv)


if __name__ == "__main__":
    sys.exit(main())
