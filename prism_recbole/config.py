"""RecBole's Config, taught where PRISM models and their defaults live.

Same pattern as RecBole-GNN's ``recbole_gnn/config.py``.  On top of RecBole's own layers of
defaults this adds, in order:

1. ``prism_recbole/properties/overall.yaml`` (for every model run through this package, so a
   RecBole baseline sees exactly the same data as a PRISM model);
2. for a PRISM model, its backbone's RecBole defaults (``recbole/properties/model/SASRec.yaml``
   for PRISM_SASRec), then the PRISM options ``prism_recbole/properties/prism.yaml``, then
   ``prism_recbole/properties/model/<Model>.yaml``;
3. instead of 2., for a model of ours that adapts a RecBole model without PRISM (class
   attribute ``recbole_defaults``, e.g. ``"SASRecF"`` for SASRecF_MM), that RecBole model's
   defaults, then ``prism_recbole/properties/model/<Model>.yaml``.

Config files, the config dict and ``--key=value`` on the command line still override all of
these, as in RecBole.  A few conveniences, each only when the user did not set the key:
``data_path`` points at the bundled ``atomic_data/`` when the dataset is there;
``train_neg_sample_args`` follows ``loss_type`` (none for CE, one uniform negative for BPR);
the modality fields are added to ``load_col``.  Unknown ``prism_*`` options of a PRISM model
are an error that names them.

Distributed training (``run(..., nproc=N)``): ``_init_device`` replaces RecBole's, which
hard-codes nccl and CUDA, by the same process-group set-up with a choice of backend
(option ``ddp_backend``: gloo on CPU where there is no GPU).  One-process runs go through
RecBole's own ``_init_device`` unchanged.
"""
import os

from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from prism_recbole.utils import get_model

DDP_BACKENDS = ("auto", "nccl", "gloo")
PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))
PROPERTIES_DIR = os.path.join(PACKAGE_DIR, "properties")
REPO_DIR = os.path.dirname(PACKAGE_DIR)
BUNDLED_DATA_DIR = os.path.join(REPO_DIR, "atomic_data")
RECBOLE_PROPERTIES_DIR = os.path.join(
    os.path.dirname(os.path.realpath(__import__("recbole").__file__)), "properties"
)


def parse_list_option(value):
    """``[a, b]`` / ``a,b`` / ``a`` from the command line or YAML -> ``["a", "b"]``."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [part.strip().strip("'\"") for part in text.split(",") if part.strip().strip("'\"")]


class Config(RecBoleConfig):
    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError(
                    "model need to be specified in at least one of the these ways: "
                    "[model variable, config file, config dict, command line] "
                )
        if isinstance(model, str):
            model = get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        self._update_internal_config_dict(os.path.join(PROPERTIES_DIR, "overall.yaml"))
        backbone = getattr(model_class, "backbone_name", None)
        recbole_model = backbone or getattr(model_class, "recbole_defaults", None)
        if recbole_model:
            backbone_file = os.path.join(RECBOLE_PROPERTIES_DIR, "model", recbole_model + ".yaml")
            if not os.path.isfile(backbone_file):  # a backbone of this package (STOSA)
                backbone_file = os.path.join(PROPERTIES_DIR, "model", recbole_model + ".yaml")
            if os.path.isfile(backbone_file):
                self._update_internal_config_dict(backbone_file)
        if backbone:
            self._own_model_options = set(
                self._update_internal_config_dict(os.path.join(PROPERTIES_DIR, "prism.yaml")) or {}
            )
        else:
            self._own_model_options = set()
        own_file = os.path.join(PROPERTIES_DIR, "model", model + ".yaml")
        if os.path.isfile(own_file):
            own = self._update_internal_config_dict(own_file) or {}
            self._own_model_options |= set(own)

    def _get_final_config_dict(self):
        final = super()._get_final_config_dict()
        external = self.external_config_dict

        if "data_path" not in external:
            default_dir = os.path.join(final.get("data_path") or "dataset/", self.dataset)
            bundled_dir = os.path.join(BUNDLED_DATA_DIR, self.dataset)
            if not os.path.isdir(default_dir) and os.path.isdir(bundled_dir):
                final["data_path"] = BUNDLED_DATA_DIR

        if "train_neg_sample_args" not in external and final.get("MODEL_TYPE") == ModelType.SEQUENTIAL:
            loss_type = final.get("loss_type")
            if str(final.get("train_positions") or "last").lower() == "all":
                final["train_neg_sample_args"] = None  # negatives are drawn in the model
            elif loss_type == "CE":
                final["train_neg_sample_args"] = None
            elif loss_type == "BPR" and final.get("train_neg_sample_args") is None:
                final["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": 1}

        modalities = parse_list_option(final.get("modalities"))
        final["modalities"] = modalities or None
        load_col = final.get("load_col")
        if modalities and isinstance(load_col, dict):
            iid = final.get("ITEM_ID_FIELD", "item_id")
            item_cols = list(load_col.get("item") or [iid])
            for field in [iid] + modalities:
                if field not in item_cols:
                    item_cols.append(field)
            load_col = dict(load_col)
            load_col["item"] = item_cols
            final["load_col"] = load_col

        if final.get("MODEL_TYPE") == ModelType.SEQUENTIAL:
            self._load_time_field(final)
        if str(final.get("train_positions") or "last").strip().lower() != "last":
            from prism_recbole.data.positions import train_positions_option
            from prism_recbole.model.positions import with_all_positions

            train_positions_option(final)  # a bad value names the option
            with_all_positions(self.model_class)  # a model that cannot: say so before loading
            self._check_masked_item_options(external)
        if final.get("transform") == "mask_itemseq":  # BERT4Rec-style masked-item training
            # RecBole's transform keeps int(mask_ratio * M) masked items per row and fails
            # deep in a batch (a ragged tensor) when that is 0
            ratio, max_len = final.get("mask_ratio"), final.get("MAX_ITEM_LIST_LENGTH")
            if ratio is not None and max_len is not None and int(float(ratio) * int(max_len)) < 1:
                raise ValueError(
                    f"options mask_ratio ({ratio}) and MAX_ITEM_LIST_LENGTH ({max_len}): "
                    "mask_ratio x MAX_ITEM_LIST_LENGTH must be at least 1 (RecBole's masked-item "
                    "transform keeps int(mask_ratio x MAX_ITEM_LIST_LENGTH) masked items per row)"
                )

        if getattr(self.model_class, "backbone_name", None):
            known = {k for k in self._own_model_options if k.startswith("prism_")}
            unknown = sorted(k for k in external if k.startswith("prism_") and k not in known)
            if unknown:
                raise ValueError(
                    f"Unknown option(s) {', '.join(unknown)} for model {self.model}. "
                    f"Known PRISM options: {', '.join(sorted(known))}."
                )
            self._check_ablation_options(final, external)
        return final

    def _check_masked_item_options(self, external):
        """RecBole's BERT4Rec keeps its own masked-item loss in the window training: the loss
        and negative options of the every-position losses would be silently ignored."""
        from prism_recbole.model.positions import is_masked_item_model

        cls = self.model_class
        if not is_masked_item_model(cls):
            return
        for key in ("position_loss", "position_negatives", "position_negative_sharing",
                    "position_sampler", "gbce_t", "position_chunk_size"):
            if external.get(key) is not None:
                raise ValueError(
                    f"option {key} has no effect on {cls.__name__} with train_positions: all: "
                    f"it trains whole windows with its own masked-item loss (options "
                    f"mask_ratio and position_stride apply); remove {key}"
                )

    def _load_time_field(self, final):
        """Sequential models order each user's items by ``TIME_FIELD``: load it by default.

        RecBole's default ``load_col`` (``inter: [user_id, item_id]``) leaves the timestamp out,
        and a sequential model then stops with ``[timestamp] is not exist in interaction``.  When
        the ``.inter`` file has the column it is added to ``load_col``; when it has none, the
        error names the file and the fix."""
        load_col, time_field = final.get("load_col"), final.get("TIME_FIELD") or "timestamp"
        if not isinstance(load_col, dict) or not isinstance(load_col.get("inter"), (list, tuple)):
            return  # load_col: ~ loads every column
        if time_field in load_col["inter"]:
            return
        path = os.path.join(final.get("data_path") or "dataset/", self.dataset, f"{self.dataset}.inter")
        if not os.path.isfile(path):
            return  # benchmark files or a missing dataset: RecBole reports those
        with open(path, "r", encoding=final.get("encoding") or "utf-8") as f:
            header = f.readline().rstrip("\r\n").split(final.get("field_separator") or "\t")
        names = [column.split(":")[0] for column in header]
        if time_field not in names:
            raise ValueError(
                f"{path}: sequential model {self.model} orders each user's interactions by the "
                f"time field '{time_field}' (option TIME_FIELD), but the file has no such column "
                f"(columns: {', '.join(header)}). Add one (a timestamp, or the position in the "
                "user's history as a float), or set TIME_FIELD to the column that orders them."
            )
        load_col = dict(load_col)
        load_col["inter"] = list(load_col["inter"]) + [time_field]
        final["load_col"] = load_col

    @staticmethod
    def _check_ablation_options(final, external):
        """Settings that contradict each other are one error naming both options."""
        if str(final.get("prism_fusion")) != "none":
            return
        if "prism_aux_loss" in external and str(final.get("prism_aux_loss")).lower() == "true":
            raise ValueError(
                "prism_fusion: none has no experts, so prism_aux_loss: true contradicts it "
                "(set prism_aux_loss: false or choose another prism_fusion)"
            )
        if "prism_experts" in external:
            raise ValueError(
                "prism_fusion: none has no experts, so setting prism_experts contradicts it"
            )

    def _init_device(self):
        """Device and process group.  One process (no ``local_rank``): RecBole's own.

        A process of a distributed run (``local_rank`` set by
        :func:`prism_recbole.quick_start.run`) joins the process group as RecBole 1.2.1 does
        (``configurator.py`` ``_init_device``: rank ``local_rank + offset``, ``world_size``,
        ``tcp://ip:port``; ranks other than 0 log errors only), with the backend chosen by
        ``ddp_backend``: ``nccl`` (RecBole's: one GPU per process, ``cuda:<local_rank>``),
        ``gloo`` (CPU), or ``auto``: nccl when CUDA is available and ``gpu_id`` is not empty,
        else gloo.  With nccl and no ``gpu_id`` given, the first ``nproc`` GPUs are used
        (RecBole's default ``gpu_id: '0'`` would stop any ``nproc > 1`` run).  A process
        group that is already initialised (a second Config in the same process, or one
        started by the caller) is used as it is, if its rank and size match.
        """
        final = self.final_config_dict
        if "local_rank" not in final:
            return super()._init_device()
        import torch
        import torch.distributed as dist

        local_rank = int(final["local_rank"])
        nproc = int(final.get("nproc") or 1)
        world_size = int(final.get("world_size") or nproc)
        rank = local_rank + int(final.get("offset") or 0)
        backend = str(final.get("ddp_backend") or "auto").strip().lower()
        if backend not in DDP_BACKENDS:
            raise ValueError(
                f"option ddp_backend must be one of {', '.join(DDP_BACKENDS)}, got {backend!r}"
            )
        gpu_id = final["gpu_id"]
        if isinstance(gpu_id, (tuple, list)):
            gpu_id = ",".join(map(str, gpu_id))
        gpu_id = "" if gpu_id is None else str(gpu_id)
        if backend != "gloo" and "gpu_id" not in self.external_config_dict and gpu_id:
            gpu_id = ",".join(str(i) for i in range(max(nproc, 1)))
        final["gpu_id"] = gpu_id
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id  # before CUDA starts, as RecBole does
        if backend == "auto":
            backend = "nccl" if gpu_id and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            if len(gpu_id.split(",")) < nproc or not gpu_id:
                raise ValueError(
                    f"nproc={nproc} processes with ddp_backend nccl need {nproc} GPUs in "
                    f"gpu_id, got gpu_id '{gpu_id}' (e.g. --gpu_id=0,1; or ddp_backend: gloo "
                    "to train on CPU)"
                )
            if torch.cuda.device_count() < nproc:
                raise ValueError(
                    f"nproc={nproc} processes with ddp_backend nccl need {nproc} GPUs, "
                    f"{torch.cuda.device_count()} visible with gpu_id '{gpu_id}' "
                    "(or ddp_backend: gloo to train on CPU)"
                )
        if dist.is_initialized():
            if dist.get_rank() != rank or dist.get_world_size() != world_size:
                raise ValueError(
                    f"a process group is already initialised with rank {dist.get_rank()} of "
                    f"{dist.get_world_size()}, but this process is rank {rank} of {world_size}"
                )
        else:
            dist.init_process_group(
                backend=backend,
                rank=rank,
                world_size=world_size,
                init_method=f"tcp://{final.get('ip') or 'localhost'}:{final.get('port')}",
            )
        final["ddp_backend"] = backend
        final["single_spec"] = False
        if backend == "nccl":
            final["device"] = torch.device("cuda", local_rank)
            torch.cuda.set_device(local_rank)
        else:
            final["device"] = torch.device("cpu")
        if local_rank != 0:
            final["state"] = "error"
            final["show_progress"] = False
            final["verbose"] = False
