"""Train and evaluate one model: RecBole's ``run_recbole``, without ray, with our registry.

RecBole's ``recbole.quick_start`` imports ray (for its hyper-parameter search), which does not
import on today's numpy/setuptools; this module builds Config, dataset, model and trainer
itself, as RecBole-GNN's ``run_recbole_gnn`` does.  Its multi-process path (RecBole's
``run(..., nproc=N)`` -> ``torch.multiprocessing.spawn(run_recboles, ...)``) is reimplemented
here too: see :func:`run`.
"""
import contextlib
import os
import sys
import time

import torch
from dataclasses import dataclass
from logging import getLogger

from recbole.data import data_preparation
from recbole.utils import init_seed, set_color

from prism_recbole.config import Config
from prism_recbole.data import create_dataset
from prism_recbole.logger import init_logger
from prism_recbole.model.positions import model_class_for
from prism_recbole.utils import get_model, get_trainer


def load_data(config):
    """Dataset and the train/valid/test dataloaders for a :class:`~prism_recbole.config.Config`."""
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def set_reproducibility_flags(config):
    """With ``reproducibility: True`` (RecBole's default), torch's deterministic algorithms
    (RecBole's ``init_seed`` only sets cuDNN's flags).  Measured: without them PRISM_SASRec's training loss differs
    between two identical 2-thread CPU runs (2410.1150 vs 2410.1257 after one epoch on
    ml-100k-mm); with them, or with one thread, the runs are identical.  ``warn_only``: an op
    without a deterministic implementation warns instead of failing."""
    if config["reproducibility"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS determinism on GPU
        torch.use_deterministic_algorithms(True, warn_only=True)


def build_model(config, train_data):
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_class = model_class_for(config, get_model(config["model"]))
    return model_class(config, train_data._dataset).to(config["device"])


def run(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, *,
        nproc=1, world_size=-1, ip="localhost", port=5678, group_offset=0):
    """Train ``model`` on ``dataset`` and evaluate on the test split.

    Args:
        model (str or class): a PRISM model name, any RecBole model name, or a model class.
        dataset (str): dataset name (a folder ``<data_path>/<dataset>`` of atomic files).
        config_file_list (list[str]): YAML files, later ones override earlier ones.
        config_dict (dict): options that override the files.
        saved (bool): save the best checkpoint and evaluate the test split with it.
        nproc (int): processes to start on this machine.  With ``nproc == 1`` and
            ``world_size <= 0`` (the default) everything runs in this process, as before.
            Otherwise this is RecBole's distributed data parallel path: ``nproc`` processes
            (``torch.multiprocessing.spawn``), one model replica each, gradients all-reduced
            (see :mod:`prism_recbole.trainer`), process group backend from the option
            ``ddp_backend`` (nccl with one GPU per process, gloo on CPU; ``auto`` picks gloo
            where there is no GPU).  ``train_batch_size`` is the global batch, split over the
            processes.  Call it under ``if __name__ == "__main__":`` (spawned processes
            import the main module).
        world_size (int): processes over all machines (``-1``: ``nproc``).
        ip, port: address of the process with rank 0 (``tcp://ip:port``).
        group_offset (int): rank of this machine's first process (RecBole's ``offset``):
            0 on the machine of rank 0, then the number of processes started before.

    Returns:
        dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
        ``test_result``, ``checkpoint`` (path or None), ``log_file``, ``model``, ``dataset``,
        ``n_params``, ``epoch_times`` (seconds per training epoch).  A distributed run
        returns the dict of this machine's first process (local rank 0; RecBole's
        ``run_recboles`` passes it through a queue the same way), with ``world_size`` and
        ``ddp_backend`` added: the metrics are averaged over all processes (RecBole's
        ``_map_reduce``), the checkpoint is the file that process wrote (local rank 0 writes;
        all ranks hold the same weights), ``log_file`` and ``epoch_times`` are that process's.
    """
    if nproc == 1 and world_size <= 0:
        return _run_here(model, dataset, config_file_list, config_dict, saved)
    return _run_distributed(model, dataset, config_file_list, config_dict, saved, nproc=nproc,
                            world_size=world_size, ip=ip, port=port, group_offset=group_offset)


def device_label(device):
    """``cpu`` or the GPU's name (e.g. ``NVIDIA H200``): what a run's times were measured on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _run_here(model, dataset, config_file_list, config_dict, saved):
    """:func:`run` in this process (also the body of every process of a distributed run)."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    set_reproducibility_flags(config)
    if not config["single_spec"]:  # the processes would race in init_logger's ensure_dir
        os.makedirs(os.path.join("./log/", config["model"]), exist_ok=True)
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
    result = {
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
        "device": device_label(config["device"]),
    }
    if not config["single_spec"]:
        result["world_size"] = int(config["world_size"])
        result["ddp_backend"] = config["ddp_backend"]
    return result


# ---- distributed runs: RecBole's quick_start.run / run_recboles, without ray ----------------

# run()'s launch arguments: on the command line they are flags of run_recbole.py, not options;
# the processes get their values through config_dict, so RecBole's Config must not read them
# again from sys.argv (a --world_size=-1 there would override the real size).
LAUNCH_FLAGS = ("nproc", "world_size", "ip", "port", "group_offset")


def _without_launch_flags(argv):
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if name in LAUNCH_FLAGS:
            skip = "=" not in arg  # "--port 5678": drop the value too
            continue
        kept.append(arg)
    return kept


def _launch_options(nproc, world_size, ip, port, group_offset):
    """Check run()'s launch arguments; the options every process gets (RecBole's names)."""
    def as_int(name, value):
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
        if isinstance(value, float) and number != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return number

    nproc, world_size = as_int("nproc", nproc), as_int("world_size", world_size)
    group_offset, port = as_int("group_offset", group_offset), as_int("port", port)
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    if world_size == -1:
        world_size = nproc
    if group_offset < 0 or world_size < nproc + group_offset:
        raise ValueError(
            f"world_size ({world_size}) must cover this machine's processes: "
            f"group_offset ({group_offset}) + nproc ({nproc})"
        )
    if not 0 < port < 65536:
        raise ValueError(f"port must be a TCP port (1-65535), got {port}")
    return {"world_size": world_size, "ip": str(ip), "port": port, "nproc": nproc,
            "offset": group_offset}


def _run_distributed(model, dataset, config_file_list, config_dict, saved, *, nproc,
                     world_size, ip, port, group_offset):
    import torch.multiprocessing as mp

    options = dict(config_dict or {})
    options.update(_launch_options(nproc, world_size, ip, port, group_offset))
    queue = mp.get_context("spawn").SimpleQueue()
    context = mp.spawn(
        _distributed_process,
        args=(model, dataset, config_file_list, options, saved, queue),
        nprocs=options["nproc"],
        join=False,
    )
    messages = []
    try:
        while not context.join(timeout=0.25):
            _drain(queue, messages)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as failure:
        _drain(queue, messages)
        errors = sorted((m for m in messages if m[0] == "error"), key=lambda m: m[1])
        if errors:  # the process's own exception (ValueError ...), not only its traceback text
            raise errors[0][2] from failure
        raise
    _drain(queue, messages)
    results = [m[2] for m in messages if m[0] == "result"]
    return results[0] if results else None


def _drain(queue, messages):
    while not queue.empty():
        messages.append(queue.get())


def _distributed_process(local_rank, model, dataset, config_file_list, options, saved, queue):
    """One process of a distributed run (RecBole's ``run_recboles``): :func:`run` with
    ``local_rank``; local rank 0 puts its result on ``queue``."""
    import pickle

    import torch
    import torch.distributed as dist

    sys.argv = _without_launch_flags(sys.argv)
    if "OMP_NUM_THREADS" not in os.environ:  # the processes share this machine's cores
        torch.set_num_threads(max(1, torch.get_num_threads() // int(options["nproc"])))
    try:
        result = _run_here(model, dataset, config_file_list,
                           dict(options, local_rank=local_rank), saved)
        if local_rank == 0:
            queue.put(("result", local_rank, result))
        if dist.is_available() and dist.is_initialized():
            # Every rank is done with the group before any destroys it: a rank that tears
            # gloo down while its peer still reads a pair can abort that peer in C++
            # ("terminate called without an active exception"). Success path only: a failed
            # rank never reaches here, and spawn then ends the other.
            dist.barrier()
    except Exception as err:
        try:  # the parent must be able to rebuild it
            pickle.loads(pickle.dumps(err))
        except Exception:
            err = RuntimeError(f"{type(err).__name__}: {err}")
        queue.put(("error", local_rank, err))
        raise
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


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
    if str(options.get("prism_fusion")) == "none":
        # stored defaults, not choices: passed back explicitly they would contradict "none"
        options.pop("prism_aux_loss", None)
        options.pop("prism_experts", None)
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
    model = model_class_for(config, get_model(config["model"]))(config, train_data._dataset)
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
