"""RecBole's trainer with checkpoints that load with ``torch.load(weights_only=True)``.

torch >= 2.6 loads with ``weights_only=True`` by default.  RecBole 1.2.1 saves
``{"config": Config, ...}`` with pickle protocol 4, which that loader rejects (the Config
object drags in RecBole classes, yaml loaders and numpy scalars; protocol 4 adds the FRAME
opcode), so ``evaluate(load_best_model=True)`` and ``resume_checkpoint`` fail.

We keep safe loading on and change what is written instead: the same keys as RecBole's
checkpoint, but the config as a plain dict of strings, numbers, lists and dicts, the best
score as a Python float, and a ``format`` tag.  Loading uses ``weights_only=True``; a file
that holds anything else (a RecBole checkpoint, a pickled object) is refused with
:class:`UnsafeCheckpointError` instead of being executed.

Distributed runs (``run(..., nproc=N)``; RecBole's trainer wraps the model in
``DistributedDataParallel``, calls ``model.calculate_loss`` itself and makes every parameter
part of each batch's loss with ``sync_grad_loss``, so every gradient is all-reduced, the
auxiliary-loss experts included): the mixin below adds what RecBole 1.2.1 lacks.
``DistributedDataParallel(model, device_ids=[local_rank])`` is refused by torch for a model
on the CPU (the gloo backend), so while RecBole's ``__init__`` runs, its module-level name
``recbole.trainer.trainer.DistributedDataParallel`` points at a wrapper that drops
``device_ids`` for CPU models and passes everything else through.  Every rank takes rank 0's
checkpoint file name (RecBole names it after the local time, to the second, per process),
and ranks wait for rank 0 to finish writing before they read it.
"""
import contextlib
import enum
import numbers
import os
import pickle
import re

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

CHECKPOINT_FORMAT = "prism_recbole.checkpoint/1"


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded with ``weights_only=True`` or is not ours."""


def _to_plain(value):
    """Turn a config value into something the weights-only unpickler accepts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return str(value)


def _is_safe(value):
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_safe(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_safe(v) for k, v in value.items())
    return False


def config_to_dict(config):
    """The final config of a RecBole ``Config`` (or a dict) as plain Python values."""
    items = config.final_config_dict if hasattr(config, "final_config_dict") else config
    return {str(k): _to_plain(v) for k, v in items.items()}


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _unpickler_reason(err):
    """The useful part of torch's weights-only error ('Unsupported global: ...')."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if match:
        return f"torch.load(weights_only=True): {match.group(1).strip()}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"torch.load(weights_only=True): {lines[0] if lines else type(err).__name__}"


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by prism_recbole, with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file holds objects other than tensors and plain Python
            values, or was not written by prism_recbole.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"Refusing to load checkpoint {path}: it holds objects other than tensors and "
            f"plain Python values, so it cannot be loaded safely ({_unpickler_reason(err)}). "
            "prism_recbole only loads checkpoints it wrote itself; RecBole's own checkpoints "
            "pickle the whole Config object and are refused for that reason."
        ) from None
    except EOFError:
        raise UnsafeCheckpointError(f"Checkpoint {path} is empty or truncated") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UnsafeCheckpointError(
            f"Refusing to load checkpoint {path}: it is not a prism_recbole checkpoint "
            f"(expected format tag '{CHECKPOINT_FORMAT}')."
        )
    return checkpoint


def _ddp_for_cpu_models(module, device_ids=None, **kwargs):
    """``DistributedDataParallel`` that leaves out ``device_ids`` for a CPU model (torch
    refuses them there); models on a GPU get exactly RecBole's call."""
    from torch.nn.parallel import DistributedDataParallel

    if device_ids is not None and all(p.device.type == "cpu" for p in module.parameters()):
        device_ids = None
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


@contextlib.contextmanager
def _cpu_ddp_shim():
    """While RecBole's trainer ``__init__`` runs, its ``DistributedDataParallel`` is
    :func:`_ddp_for_cpu_models` (nothing in site-packages is edited; restored afterwards)."""
    import recbole.trainer.trainer as recbole_trainer

    saved = recbole_trainer.DistributedDataParallel
    recbole_trainer.DistributedDataParallel = _ddp_for_cpu_models
    try:
        yield
    finally:
        recbole_trainer.DistributedDataParallel = saved


class SafeCheckpointMixin:
    """Overrides the three places where RecBole's Trainer writes or reads a checkpoint
    (and, in a distributed run, the DDP set-up: see the module docstring)."""

    def __init__(self, config, model):
        if config["single_spec"]:
            super().__init__(config, model)
            return
        # RecBole's ensure_dir (exists? then makedirs) fails on the rank that loses the race
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        with _cpu_ddp_shim():
            super().__init__(config, model)
        # one file name for every rank: rank 0's (ranks may start in different seconds)
        name = [self.saved_model_file]
        torch.distributed.broadcast_object_list(name, src=0)
        self.saved_model_file = name[0]

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        other = self.model.other_parameter()
        safe_other = {}
        for key, value in (other or {}).items():
            if _is_safe(value):
                safe_other[key] = value
            else:
                self.logger.warning(
                    f"Not saving other_parameter '{key}' ({type(value).__name__}) in the "
                    "checkpoint: it cannot be loaded safely; its tensors are in state_dict."
                )
        best = self.best_valid_score
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": config_to_dict(self.config),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": None if best is None else float(best),
            "state_dict": self.model.state_dict(),
            "other_parameter": safe_other or None,
            "optimizer": self.optimizer.state_dict(),
        }
        save_checkpoint(state, saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _barrier(self):
        if not self.config["single_spec"] and torch.distributed.is_initialized():
            # rank 0 writes the file; the others must not read it before it is complete
            torch.distributed.barrier()

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        self._barrier()
        self.saved_model_file = resume_file
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if str(checkpoint["config"].get("model", "")).lower() != self.config["model"].lower():
            self.logger.warning(
                f"Checkpoint {resume_file} was written by model "
                f"{checkpoint['config'].get('model')}, not {self.config['model']}."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            self._barrier()
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(
            eval_data, load_best_model=False, model_file=None, show_progress=show_progress
        )


class PrismTrainer(SafeCheckpointMixin, Trainer):
    """RecBole's :class:`~recbole.trainer.Trainer` with safe checkpoints."""


_SAFE_TRAINERS = {}


def with_safe_checkpoints(trainer_class):
    """A subclass of any RecBole trainer class with :class:`SafeCheckpointMixin` mixed in."""
    if issubclass(trainer_class, SafeCheckpointMixin):
        return trainer_class
    if trainer_class not in _SAFE_TRAINERS:
        _SAFE_TRAINERS[trainer_class] = type(
            "Safe" + trainer_class.__name__, (SafeCheckpointMixin, trainer_class), {}
        )
    return _SAFE_TRAINERS[trainer_class]
