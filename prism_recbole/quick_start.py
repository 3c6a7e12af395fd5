"""Train and evaluate one model: RecBole's ``run_recbole``, without ray, with our registry.

RecBole's ``recbole.quick_start`` imports ray (for its hyper-parameter search), which does not
import on today's numpy/setuptools; this module builds Config, dataset, model and trainer
itself, as RecBole-GNN's ``run_recbole_gnn`` does.
"""
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from logging import getLogger

from recbole.data import data_preparation
from recbole.utils import init_seed, set_color

from prism_recbole.config import Config
from prism_recbole.data import create_dataset
from prism_recbole.logger import init_logger
from prism_recbole.utils import get_model, get_trainer


def load_data(config):
    """Dataset and the train/valid/test dataloaders for a :class:`~prism_recbole.config.Config`."""
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def build_model(config, train_data):
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    return get_model(config["model"])(config, train_data._dataset).to(config["device"])


def run(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True):
    """Train ``model`` on ``dataset`` and evaluate on the test split.

    Args:
        model (str or class): a PRISM model name, any RecBole model name, or a model class.
        dataset (str): dataset name (a folder ``<data_path>/<dataset>`` of atomic files).
        config_file_list (list[str]): YAML files, later ones override earlier ones.
        config_dict (dict): options that override the files.
        saved (bool): save the best checkpoint and evaluate the test split with it.

    Returns:
        dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
        ``test_result``, ``checkpoint`` (path or None), ``log_file``, ``model``, ``dataset``,
        ``n_params``, ``epoch_times`` (seconds per training epoch).
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    log_file = init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset, train_data, valid_data, test_data = load_data(config)
    logger.info(dataset)

    model = build_model(config, train_data)
    logger.info(model)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epoch_times = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        try:
            return train_epoch(*args, **kwargs)
        finally:
            epoch_times.append(time.perf_counter() - start)

    trainer._train_epoch = timed_train_epoch
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    checkpoint = None
    if saved and os.path.isfile(trainer.saved_model_file):
        checkpoint = os.path.abspath(trainer.saved_model_file)
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "checkpoint": checkpoint,
        "log_file": log_file,
        "n_params": n_params,
        "epoch_times": epoch_times,
    }


# Entries of a stored final config that RecBole derives itself and refuses as input.
_DERIVED_OPTIONS = {
    "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec", "local_rank",
    "is_ddp", "eval_neg_sample_args", "valid_neg_sample_args", "test_neg_sample_args",
}


@dataclass
class LoadedModel:
    """What :func:`load_model` returns: the model in eval mode, its config and its data."""
    config: Config
    model: object
    dataset: object
    train_data: object
    valid_data: object
    test_data: object
    checkpoint: str


@contextlib.contextmanager
def _no_command_line():
    """RecBole's Config reads --key=value from sys.argv: a loading command's own flags must
    not leak into the stored configuration."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def config_from_checkpoint(stored, config_dict=None):
    """Rebuild a :class:`Config` from the final config stored in a checkpoint."""
    options = {k: v for k, v in stored.items() if k not in _DERIVED_OPTIONS}
    neg = options.get("train_neg_sample_args")
    if isinstance(neg, dict) and neg.get("distribution") == "none":
        options["train_neg_sample_args"] = None
    data_path = str(options.get("data_path") or "")
    # the stored data_path ends with the dataset folder, which Config appends again
    if os.path.basename(os.path.normpath(data_path)) == str(stored.get("dataset")):
        options["data_path"] = os.path.dirname(os.path.normpath(data_path))
    options.update(config_dict or {})
    with _no_command_line():
        return Config(model=stored["model"], dataset=stored["dataset"], config_dict=options)


def load_model(checkpoint, config_dict=None):
    """Load a model saved by :func:`run` (any PRISM model, MMSR or a RecBole model).

    The checkpoint is read with ``torch.load(weights_only=True)`` (see
    :func:`prism_recbole.trainer.load_checkpoint`); its stored configuration rebuilds the
    dataset and the model, then the weights are loaded.  ``config_dict`` overrides stored
    options, e.g. ``{"data_path": "elsewhere/", "gpu_id": ""}``.

    Raises:
        FileNotFoundError, UnsafeCheckpointError: see ``load_checkpoint``.
        ValueError: the dataset no longer matches the checkpoint (other items or users).
    """
    from prism_recbole.trainer import load_checkpoint

    state = load_checkpoint(checkpoint)
    config = config_from_checkpoint(state["config"], config_dict)
    dataset, train_data, valid_data, test_data = load_data(config)
    model = get_model(config["model"])(config, train_data._dataset)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(
            f"Checkpoint {checkpoint} does not match dataset {config['dataset']} under "
            f"{config['data_path']} (was the dataset changed since training?): "
            f"{' '.join(line.strip() for line in first[:3])}"
        ) from None
    model.load_other_parameter(state.get("other_parameter"))
    model = model.to(config["device"]).eval()
    return LoadedModel(config, model, dataset, train_data, valid_data, test_data,
                       os.path.abspath(str(checkpoint)))
