"""Small, documented shims that let recbole==1.2.1 run on today's stack.

Imported first by :mod:`prism_recbole`, before anything from RecBole runs.
Nothing in site-packages is edited; each shim only fills a gap and is a no-op
where the gap does not exist.

1. numpy >= 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``.  RecBole's
   ``Config.compatibility_settings`` reads them to create its own aliases
   (``np.float``, ``np.long`` ...) that the rest of RecBole uses, so every ``Config()``
   fails on numpy 2 without them (RecBole issue #2215).  We restore the three names,
   only when they are missing.
2. ``recbole.quick_start`` imports ray 2.6.3, which needs ``pkg_resources`` (gone from
   setuptools >= 82) and numpy < 2.  We never import it: our own
   :mod:`prism_recbole.quick_start` builds Config, dataset, model and trainer itself.
3. ``recbole/model/sequential_recommender/sine.py`` calls
   ``torch.autograd.set_detect_anomaly(True)`` at import time, and RecBole's
   ``sequential_recommender`` package imports it, so importing *any* RecBole sequential model
   turns autograd's anomaly mode on for the whole process: every backward op is checked for
   NaN and records a Python stack trace.  We import that package once here and switch the mode
   back off (``benchmarks/bench_anomaly_mode.py`` measures what it costs).  Set
   ``PRISM_RECBOLE_KEEP_ANOMALY_MODE=1`` to keep RecBole's behaviour.
4. torch >= 2.6 loads checkpoints with ``weights_only=True``; RecBole's own checkpoints
   cannot be loaded that way.  That is handled by :mod:`prism_recbole.trainer`, which
   writes checkpoints that load safely, not by a process-wide switch.
"""
import warnings

import numpy as np

_NUMPY_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_"}


def apply_numpy_aliases():
    for old, new in _NUMPY_ALIASES.items():
        try:
            getattr(np, old)
        except AttributeError:
            setattr(np, old, getattr(np, new))


def silence_known_warnings():
    """Warnings that RecBole 1.2.1 prints on every epoch and that the user cannot act on."""
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.GradScaler.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*The given NumPy array is not writable.*", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.data\.dataset\..*")


def undo_recbole_anomaly_mode():
    import os

    import recbole.model.sequential_recommender  # noqa: F401  (imports sine.py once)
    import torch

    if os.environ.get("PRISM_RECBOLE_KEEP_ANOMALY_MODE") != "1":
        torch.autograd.set_detect_anomaly(False)


apply_numpy_aliases()
silence_known_warnings()
undo_recbole_anomaly_mode()
