"""RecBole's log format and file layout (``./log/<model>/<model>-<dataset>-<time>-<hash>.log``),
without ``logging.basicConfig``.

RecBole's ``init_logger`` calls ``basicConfig``, which does nothing once the root logger has a
handler: a second run in the same process (a comparison of several models, a test suite)
keeps writing into the first run's file, and under pytest no file is written at all.  Here
each call replaces the handlers that the previous call added, and returns the file's path.
"""
import hashlib
import logging
import os

import colorlog
from colorama import init
from recbole.utils.logger import RemoveColorFilter, log_colors_config
from recbole.utils.utils import ensure_dir, get_local_time

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def init_logger(config, log_root="./log/"):
    init(autoreset=True)
    model_dir = os.path.join(log_root, config["model"])
    ensure_dir(model_dir)
    config_str = "".join(str(v) for v in config.final_config_dict.values())
    md5 = hashlib.md5(config_str.encode("utf-8")).hexdigest()[:6]
    path = os.path.abspath(os.path.join(
        model_dir, f"{config['model']}-{config['dataset']}-{get_local_time()}-{md5}.log"
    ))
    level = _LEVELS.get(str(config["state"] or "info").lower(), logging.INFO)

    file_handler = logging.FileHandler(path)
    file_handler.setLevel(level)
    file_handler.setFormatter(
        logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%a %d %b %Y %H:%M:%S")
    )
    file_handler.addFilter(RemoveColorFilter())
    stream_handler = logging.StreamHandler()
    stream_handler.setLevel(level)
    stream_handler.setFormatter(colorlog.ColoredFormatter(
        "%(log_color)s%(asctime)-15s %(levelname)s  %(message)s", "%d %b %H:%M",
        log_colors=log_colors_config,
    ))

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_prism_recbole", False)]:
        root.removeHandler(handler)
        handler.close()
    for handler in (stream_handler, file_handler):
        handler._prism_recbole = True
        root.addHandler(handler)
    root.setLevel(level)
    return path
