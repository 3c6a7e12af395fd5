"""PRISM_STOSA: PRISM's addition reaches both STOSA streams; its loss is STOSA's + L_aux."""
import sys

import pytest
import torch
import yaml

import run_recbole
from prism_recbole.config import Config
from prism_recbole.model.sequential_recommender.prism_stosa import PRISM_STOSA
from prism_recbole.model.sequential_recommender.stosa import STOSA
from prism_recbole.quick_start import build_model, load_data
from prism_recbole.utils import get_model


def build(tiny, **extra):
    options = dict(tiny, epochs=1, hidden_dropout_prob=0.0, prism_gate_dropout=0.0, **extra)
    config = Config(model="PRISM_STOSA", dataset="tiny", config_dict=options)
    _, train_data, _, test_data = load_data(config)
    return config, build_model(config, train_data), train_data, test_data


def test_registered_with_stosas_and_prisms_defaults(tiny):
    config, model, _, _ = build(tiny)
    assert get_model("PRISM_STOSA") is PRISM_STOSA
    assert config["pvn_weight"] == 0.005 and config["loss_type"] == "BPR"  # STOSA.yaml
    assert config["prism_temperature"] == 0.7  # prism.yaml
    assert len(model.prism_extra_streams) == 1
    # shared experts, gate and tables; own projections
    cov = model.prism_extra_streams[0]
    assert cov.interaction_experts is model.prism.interaction_experts
    assert cov.adaptive_fusion is model.prism.adaptive_fusion
    assert cov.features.tables is model.prism.features.tables
    assert cov.features.projections is not model.prism.features.projections


def test_the_addition_reaches_both_streams(tiny):
    _, model, _, test_data = build(tiny)
    model.eval()
    model.prism_keep_add_emb = True
    batch = next(iter(test_data))[0]
    seq = batch[model.ITEM_SEQ]
    captured = {}
    model.item_encoder.register_forward_hook(lambda m, i, o: captured.update(inputs=(i[0], i[1])))
    with torch.no_grad():
        model.full_sort_predict(batch)
        with_prism = captured["inputs"]
        outs = dict(model._prism_stream_outputs)
        model.prism_active = False
        model.full_sort_predict(batch)
        without = captured["inputs"]
        model.prism_active = True
    real = seq > 0
    for stream in (0, 1):  # mean, covariance
        assert not torch.allclose(with_prism[stream][real], without[stream][real])
    # each stream's encoder input is STOSA's, computed from E + PRISM's addition of that stream
    assert set(outs) == {0, 1} and not torch.allclose(outs[0].add_emb, outs[1].add_emb)
    assert (with_prism[1] > 0).all()  # the covariance stays positive


def test_loss_is_stosas_plus_the_mean_of_the_streams_aux_losses(tiny):
    _, model, train_data, _ = build(tiny)
    model.train()
    batch = next(iter(train_data))
    torch.manual_seed(0)
    total = model.calculate_loss(batch)
    aux = [o.aux_loss for o in model._prism_stream_outputs.values()]
    assert len(aux) == 2 and all(a.item() > 0 for a in aux)
    # STOSA's loss of the same forward: the plug-in's total minus the averaged aux loss
    torch.manual_seed(0)
    with model._prism_call(batch):
        stosa = STOSA.calculate_loss(model, batch)
    torch.testing.assert_close(total, stosa + (aux[0] + aux[1]) / 2)
    total.backward()
    for proj in (model.prism.features.projections[0], model.prism_extra_streams[0].features.projections[0]):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("positions", ["last", "all"])
def test_trains_and_evaluates_through_run_recbole(positions, tiny, tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(dict(tiny, epochs=1)))
    argv = ["--model=PRISM_STOSA", "--dataset=tiny", f"--config_files={path}",
            f"--train_positions={positions}"]
    monkeypatch.setattr(sys, "argv", ["run_recbole.py"] + argv)
    result = run_recbole.main(argv)
    assert "ndcg@10" in result["test_result"]


def test_id_plus_modal_is_refused_for_two_streams(tiny):
    with pytest.raises(ValueError, match="id\\+modal"):
        build(tiny, prism_item_side="id+modal")
