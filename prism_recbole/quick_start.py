"""Train and evaluate one model: RecBole's ``run_recbole``, without ray, with our registry.

RecBole's ``recbole.quick_start`` imports ray (for its hyper-parameter search), which does not
import on today's numpy/setuptools; this module builds Config, dataset, model and trainer
itself, as RecBole-GNN's ``run_recbole_gnn`` does.
"""
import os
import sys
import time
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
