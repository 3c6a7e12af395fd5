"""Model and trainer look-up: PRISM models from this package, everything else from RecBole.

Follows RecBole-GNN's pattern (``recbole_gnn/utils.py``): search our own
``prism_recbole.model.<kind>_recommender.<name.lower()>`` first, then fall back to RecBole.
"""
import importlib
import importlib.util
import pkgutil

from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import ModelType

_OWN_KINDS = ["sequential_recommender"]
_RECBOLE_KINDS = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",  # lightgbm / xgboost: imported only when the name is found there
]


def _find_class(package, kinds, model_name):
    for kind in kinds:
        module_path = f"{package}.model.{kind}.{model_name.lower()}"
        if importlib.util.find_spec(module_path) is None:
            continue
        module = importlib.import_module(module_path)
        cls = getattr(module, model_name, None)
        if cls is not None:
            return cls
    return None


def _module_exists(path):
    try:
        return importlib.util.find_spec(path) is not None
    except ModuleNotFoundError:  # a parent package fails to import (exlib needs lightgbm)
        return False


def list_prism_models():
    """Names of the models this package defines (imported to be sure they load)."""
    names = []
    for kind in _OWN_KINDS:
        package = importlib.import_module(f"prism_recbole.model.{kind}")
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for attr in vars(module).values():
                if (
                    isinstance(attr, type)
                    and issubclass(attr, AbstractRecommender)
                    and attr.__module__ == module.__name__
                    and attr.__name__.lower() == info.name
                ):
                    names.append(attr.__name__)
    return sorted(names)


def get_model(model_name):
    """Return the model class called ``model_name``.

    PRISM models come from :mod:`prism_recbole`; any other name is looked up in RecBole,
    so ``SASRec``, ``GRU4Rec`` ... run with the same data and config.
    """
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model name must be a non-empty string, got {model_name!r}")
    cls = _find_class("prism_recbole", _OWN_KINDS, model_name)
    if cls is not None:
        return cls
    for kind in _RECBOLE_KINDS:
        module_path = f"recbole.model.{kind}.{model_name.lower()}"
        if kind == "exlib_recommender":
            # RecBole's package __init__ imports lightgbm and xgboost; look at the file only.
            spec = importlib.util.find_spec("recbole")
            import os

            exlib_file = os.path.join(
                os.path.dirname(spec.origin), "model", kind, model_name.lower() + ".py"
            )
            if not os.path.isfile(exlib_file):
                continue
        elif not _module_exists(module_path):
            continue
        module = importlib.import_module(module_path)
        cls = getattr(module, model_name, None)
        if cls is not None:
            return cls
    raise ValueError(
        f"Unknown model '{model_name}'. Models of prism_recbole: {', '.join(list_prism_models())}; "
        "any other name must be a RecBole model (e.g. SASRec, GRU4Rec, BERT4Rec), "
        "spelled as RecBole spells it."
    )


def get_trainer(model_type, model_name):
    """RecBole's trainer for this model, with safe checkpoint saving and loading mixed in."""
    from recbole.utils import get_trainer as recbole_get_trainer

    from prism_recbole.trainer import PrismTrainer, with_safe_checkpoints

    own = _find_trainer(model_name)
    if own is not None:
        return own
    base = recbole_get_trainer(model_type, model_name)
    from recbole.trainer import Trainer

    if base is Trainer:
        return PrismTrainer
    return with_safe_checkpoints(base)


def _find_trainer(model_name):
    try:
        module = importlib.import_module("prism_recbole.trainer")
    except ImportError:  # pragma: no cover
        return None
    return getattr(module, model_name + "Trainer", None)


__all__ = ["get_model", "get_trainer", "list_prism_models", "ModelType"]
