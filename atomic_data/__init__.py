"""Raw Amazon / Yelp dumps to RecBole atomic files with CLIP image and text vectors.

Steps, each a command (see ``atomic_data/README.md``):

* ``python -m atomic_data.convert``: raw reviews + metadata -> ``NAME.inter`` and
  ``NAME.meta.jsonl`` (item text and image source per item);
* ``python -m atomic_data.download_images``: the images named in ``NAME.meta.jsonl``;
* ``python -m atomic_data.extract_clip``: CLIP image and text vectors -> ``NAME.item``;
* ``python -m atomic_data.pipeline``: the three in a row.

``build_ml100k_mm.py`` (the bundled demo dataset) is a separate script.

Installed (``pip install .``), each is also a console script usable from any folder:
``prism-data-convert``, ``prism-data-download-images``, ``prism-data-extract-clip``,
``prism-data-pipeline``, ``prism-data-build-ml100k-mm`` and ``prism-data-s3rec``.
"""
