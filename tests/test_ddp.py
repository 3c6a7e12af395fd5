"""Distributed data parallel on the CPU: two processes, gloo, tiny data.

What a GPU machine would run with nccl, rehearsed with ``ddp_backend: gloo``: RecBole's DDP
path through our ``run(..., nproc=2)``, and, in one process group, each PRISM ablation variant,
MMSR and SASRec trained by the real trainer, with every rank's weights written to files that
this process compares.  No GPU is needed (nor used).
"""
import glob
import os
import random
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny_config, write_dataset
from prism_recbole.quick_start import _without_launch_flags, load_model, run

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed gloo backend, which the CPU test needs",
)

WORLD = 2


_PORT_RNG = random.Random(os.getpid())


def _ephemeral_low():
    """The first port of the kernel's ephemeral (connect-time) range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; the IANA range (macOS, Windows) starts at 49152


def free_port():
    """A free TCP port *below* the kernel's ephemeral range.

    ``bind(("127.0.0.1", 0))`` (what this helper did before) returns a port inside that range,
    released before rank 0's store binds it; meanwhile rank 1 keeps connecting to it, and each
    connect draws an ephemeral source port, which can be that very port: a TCP self-connect
    (simultaneous open) that steals the port and leaves rank 1 talking to itself (a known class
    of flaky tests, e.g. ZOOKEEPER-2101, KAFKA-1836).  A port outside the range is never drawn
    by connect()."""
    low = _ephemeral_low()
    ports = list(range(max(1024, low - 12000), low))
    _PORT_RNG.shuffle(ports)  # one generator per test process: each call starts elsewhere
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def test_free_port_is_bindable_and_never_a_connect_time_port():
    port = free_port()
    assert 1024 <= port < _ephemeral_low()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def ddp_options(port, **overrides):
    return dict(overrides, ddp_backend="gloo", ip="127.0.0.1", port=port)


# ---- run(..., nproc=2): the user's path -------------------------------------------------------

def test_run_with_two_processes_returns_rank0_metrics_and_one_loadable_checkpoint(tmp_path, tiny):
    config = dict(tiny, epochs=2, metric_decimal_place=6)  # ddp_backend auto: gloo (gpu_id '')
    result = run(model="PRISM_SASRec", dataset="tiny", config_dict=config, nproc=2,
                 ip="127.0.0.1", port=free_port())
    # both processes ended with exit code 0 (spawn raises otherwise); rank 0's dict came back
    assert result["world_size"] == 2 and result["ddp_backend"] == "gloo"
    assert result["model"] == "PRISM_SASRec" and len(result["epoch_times"]) == 2
    assert set(result["test_result"]) == {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (5, 10)}
    assert "local_rank" not in config  # the caller's dict is not modified
    checkpoints = glob.glob(os.path.join(tiny["checkpoint_dir"], "*"))
    assert checkpoints == [result["checkpoint"]]  # written once (rank 0), no temporary left

    loaded = load_model(result["checkpoint"])
    assert loaded.config["single_spec"] and loaded.config["device"].type == "cpu"
    state = torch.load(result["checkpoint"], weights_only=True)["state_dict"]
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    # the test metrics of the two ranks, all-reduced, are those of one process on all users
    # (30 test users split 15/15: DistributedSampler pads nothing here)
    from prism_recbole.utils import get_trainer

    trainer = get_trainer(loaded.config["MODEL_TYPE"], loaded.config["model"])(loaded.config, loaded.model)
    alone = trainer.evaluate(loaded.test_data, load_best_model=False)
    assert dict(alone) == pytest.approx(dict(result["test_result"]), abs=2e-6)


class _InProcessSpawn:
    """``torch.multiprocessing.spawn(join=False)`` run in this process, rank 0 only: its
    context's ``join`` fails as spawn's does when the process raised."""

    def __init__(self, fn, args, nprocs, join):
        import traceback

        assert not join and nprocs == 2
        self.error = None
        try:
            fn(0, *args)
        except Exception:
            self.error = traceback.format_exc()

    def join(self, timeout=None):
        if self.error:
            raise mp.ProcessRaisedException(self.error, 0, os.getpid())
        return True


def test_a_processs_error_is_raised_as_itself(tiny, monkeypatch):
    """A bad option fails in every process (in Config); run() raises that ValueError, so
    run_recbole.py prints one error line as for one process (spawn would only give text)."""
    monkeypatch.setattr(mp, "spawn", _InProcessSpawn)
    with pytest.raises(ValueError, match="prism_nonsense") as info:
        run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, prism_nonsense=1),
            nproc=2, port=free_port())
    assert isinstance(info.value.__cause__, mp.ProcessRaisedException)
    assert not dist.is_initialized()


@pytest.mark.parametrize("kwargs, message", [
    ({"nproc": 0}, "nproc must be at least 1"),
    ({"nproc": 2, "world_size": 3, "group_offset": 2}, "world_size"),
    ({"nproc": 2, "port": 70000}, "port"),
])
def test_launch_arguments_are_checked_before_any_process_starts(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(model="SASRec", dataset="tiny", config_dict=tiny, **kwargs)


def _process_options(tiny, port, **overrides):
    options = dict(tiny, local_rank=0, nproc=2, world_size=2, offset=0, ip="127.0.0.1",
                   port=port)
    options.update(overrides)
    return {k: v for k, v in options.items() if v is not None}


def test_nccl_without_enough_gpus_is_an_error_before_any_process_group(tiny, monkeypatch):
    from prism_recbole.config import Config

    if torch.cuda.is_available():
        pytest.skip("checks the messages of a machine without CUDA; this one has CUDA")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # Config sets it; restored afterwards
    # no gpu_id given: the first nproc GPUs, as the message says
    with pytest.raises(ValueError, match=r"need 2 GPUs.*gpu_id '0,1'.*ddp_backend: gloo"):
        Config(model="SASRec", dataset="tiny",
               config_dict=_process_options(tiny, free_port(), ddp_backend="nccl", gpu_id=None))
    with pytest.raises(ValueError, match=r"need 2 GPUs in gpu_id, got gpu_id ''"):
        Config(model="SASRec", dataset="tiny",
               config_dict=_process_options(tiny, free_port(), ddp_backend="nccl"))
    with pytest.raises(ValueError, match="ddp_backend must be one of auto, nccl, gloo"):
        Config(model="SASRec", dataset="tiny",
               config_dict=_process_options(tiny, free_port(), ddp_backend="mpi"))
    assert not dist.is_initialized()


def test_one_process_runs_keep_recboles_device_set_up(tiny):
    from prism_recbole.config import Config

    config = Config(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, ddp_backend="gloo"))
    assert config["single_spec"] and config["local_rank"] == 0
    assert config["device"] == torch.device("cpu") and not dist.is_initialized()


def test_launch_flags_are_not_read_again_as_options():
    argv = ["run_recbole.py", "--nproc=2", "--world_size", "-1", "--port=1", "--epochs=3",
            "--ip=h", "--group_offset=0", "--model=X"]
    assert _without_launch_flags(argv) == ["run_recbole.py", "--epochs=3", "--model=X"]


# ---- each variant in one process group: weights compared rank against rank ---------------------

VARIANTS = {
    "prism": ("PRISM_SASRec", {}),
    "no_aux": ("PRISM_SASRec", {"prism_aux_loss": False}),
    "uniform": ("PRISM_SASRec", {"prism_fusion": "uniform", "prism_experts": ["synergy", "redundancy"]}),
    "none": ("PRISM_SASRec", {"prism_fusion": "none"}),
    "frozen_item_level": ("PRISM_SASRec", {"prism_freeze_features": True,
                                           "prism_fusion_level": "item",
                                           "prism_item_side": "id+modal"}),
    "mmsr": ("MMSR", {"embedding_size": 16, "n_layers": 1}),
    "sasrec": ("SASRec", {}),
}


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _variants_process(rank, data_path, out_dir, port):
    """One rank: every variant trained for one epoch by the real trainer under DDP."""
    torch.set_num_threads(1)
    from prism_recbole.config import Config
    from prism_recbole.quick_start import build_model, load_data
    from prism_recbole.utils import get_trainer

    try:
        for index, (name, (model_name, extra)) in enumerate(VARIANTS.items()):
            options = tiny_config(data_path, os.path.join(out_dir, "saved"), epochs=1,
                                  train_batch_size=32, **extra)
            options.update(ddp_options(port, local_rank=rank, nproc=WORLD, world_size=WORLD, offset=0))
            config = Config(model=model_name, dataset="tiny", config_dict=options)
            assert dist.is_initialized() and dist.get_backend() == "gloo"
            _, train_data, valid_data, test_data = load_data(config)
            model = build_model(config, train_data)  # seeded with seed + rank: differs per rank
            built = _state(model)
            if index == 0 and rank == 1:  # as if rank 1 had started in another second
                import recbole.trainer.trainer as recbole_trainer

                recbole_trainer.get_local_time = lambda: "another-second"
            trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
            assert trainer.model is model
            start = _state(model)  # after DistributedDataParallel broadcast rank 0's weights
            aux, first_batch = [], []
            calculate_loss = model.calculate_loss

            def recording_loss(interaction, calculate_loss=calculate_loss, model=model):
                if not first_batch:
                    first_batch.append(interaction[model.ITEM_SEQ].clone())
                loss = calculate_loss(interaction)
                value = getattr(model, "_prism_aux_loss", None)
                aux.append(None if value is None else float(value))
                return loss

            model.calculate_loss = recording_loss
            trainer.fit(train_data, valid_data, saved=index == 0, show_progress=False)
            final = _state(model)
            buffers = {k: v.clone() for k, v in model.named_buffers()}
            test_result = None
            if index == 0:  # every rank reads rank 0's checkpoint, after it is written
                test_result = trainer.evaluate(test_data, load_best_model=True)
            torch.save({
                "built": built, "start": start, "final": final, "buffers": buffers,
                "aux": aux, "first_batch": first_batch[0], "n_batches": len(aux),
                "checkpoint": trainer.saved_model_file, "test_result": test_result,
                "ignored": sorted(trainer.distributed_model.parameters_to_ignore),
                "synced_buffers": sorted(trainer.distributed_model.named_module_buffers),
            }, os.path.join(out_dir, f"{name}-rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_every_variant_trains_under_ddp_with_the_same_weights_on_both_ranks(tmp_path):
    data = write_dataset(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    os.makedirs(out)
    mp.spawn(_variants_process, args=(data, out, free_port()), nprocs=WORLD, join=True)

    for name, (model_name, extra) in VARIANTS.items():
        ranks = [torch.load(os.path.join(out, f"{name}-rank{r}.pt"), weights_only=True)
                 for r in range(WORLD)]
        r0, r1 = ranks
        # each rank trained on its own half of the data (DistributedSampler), same batch count
        assert r0["n_batches"] == r1["n_batches"] > 0, name
        assert not torch.equal(r0["first_batch"], r1["first_batch"]), name
        # different initialisation per rank, made equal by DDP, then trained identically
        assert any(not torch.equal(r0["built"][k], r1["built"][k]) for k in r0["built"]), name
        for key in r0["final"]:
            torch.testing.assert_close(r0["start"][key], r1["start"][key], rtol=0, atol=0)
            torch.testing.assert_close(r0["final"][key], r1["final"][key], rtol=0, atol=0,
                                       msg=f"{name}: {key} differs between the ranks")
        for key in r0["buffers"]:  # feature tables and graph buffers: the same on each rank
            torch.testing.assert_close(r0["buffers"][key], r1["buffers"][key], rtol=0, atol=0)
        # no buffer is broadcast by DDP on each batch (they are built from the data alike)
        assert r0["synced_buffers"] == [], name
        assert set(r0["ignored"]) == set(r0["buffers"]), name
        changed = [k for k in r0["final"] if not torch.equal(r0["start"][k], r0["final"][k])]
        assert changed, name

        if model_name.startswith("PRISM"):
            aux = [a for r in ranks for a in r["aux"]]
            experts = [k for k in r0["final"] if ".interaction_experts." in k or ".adaptive_fusion." in k]
            if name in ("prism", "uniform", "frozen_item_level"):
                assert all(a is not None and a != 0.0 for a in aux), (name, aux)
            else:
                assert all(a == 0.0 for a in aux), (name, aux)
            if name != "none":
                assert experts and all(k in changed for k in experts), (name, set(experts) - set(changed))

    prism = [torch.load(os.path.join(out, f"prism-rank{r}.pt"), weights_only=True) for r in range(WORLD)]
    # one checkpoint name (rank 0's) for both ranks, although rank 1 chose another
    assert prism[0]["checkpoint"] == prism[1]["checkpoint"]
    assert glob.glob(os.path.join(out, "saved", "*")) == [prism[0]["checkpoint"]]
    assert prism[0]["test_result"] == prism[1]["test_result"]
    # one epoch: the checkpoint rank 0 wrote holds the weights rank 1 ended training with
    saved = torch.load(prism[0]["checkpoint"], weights_only=True)["state_dict"]
    assert set(saved) == set(prism[1]["final"])
    for key, value in prism[1]["final"].items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)
