"""The ablation switches of every PRISM model: prism_fusion, prism_experts, prism_aux_loss,
prism_item_features."""
import sys

import pytest
import torch

from prism_recbole.config import Config
from prism_recbole.quick_start import build_model, load_data, run


def build(tiny, **extra):
    config = Config(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, **extra))
    _, train_data, _, test_data = load_data(config)
    return build_model(config, train_data), train_data, test_data


@pytest.mark.parametrize("extra", [
    {"prism_fusion": "none"},
    {"prism_fusion": "uniform"},
    {"prism_experts": ["synergy"]},
    {"prism_experts": ["unique", "redundancy"]},
    {"prism_aux_loss": False},
    {"prism_item_features": False},
    {"prism_noise_std": "match"},
], ids=["none", "uniform", "synergy-only", "no-synergy", "no-aux", "no-item-features", "noise-match"])
def test_each_option_trains_one_epoch(tiny, extra):
    result = run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1, **extra))
    assert "ndcg@10" in result["test_result"]


def test_none_has_no_experts_no_gate_and_no_aux_loss(tiny):
    model, train_data, _ = build(tiny, prism_fusion="none")
    names = [n for n, _ in model.named_parameters()]
    assert not any("interaction_experts" in n or "adaptive_fusion" in n for n in names)
    assert any(n.startswith("prism.features.projections") for n in names)
    model.train()
    draws = []
    real = torch.randn_like
    torch.randn_like = lambda *a, **k: draws.append(1) or real(*a, **k)
    try:
        model.calculate_loss(next(iter(train_data)))
    finally:
        torch.randn_like = real
    assert model._prism_aux_loss.item() == 0.0 and draws == []  # no noise passes


def test_uniform_gate_weights_are_exactly_one_over_k(tiny):
    model, _, test_data = build(tiny, prism_fusion="uniform")
    assert not any("adaptive_fusion" in n for n, _ in model.named_parameters())
    model.eval()
    with torch.no_grad():
        model.full_sort_predict(next(iter(test_data))[0])
    assert (model.prism_gate_weights == 0.25).all()


def test_synergy_only_has_one_expert(tiny):
    model, train_data, _ = build(tiny, prism_experts=["synergy"])
    assert model.prism_expert_names == ["synergy"]
    assert len(model.prism.interaction_experts.experts) == 1
    model.train()
    loss = model.calculate_loss(next(iter(train_data)))
    loss.backward()
    assert model.prism.interaction_experts.experts[0].fc1.weight.grad.abs().sum() > 0


def test_no_aux_loss_trains_the_experts_through_the_recommendation_loss_only(tiny):
    model, train_data, _ = build(tiny, prism_aux_loss=False)
    model.train()
    loss = model.calculate_loss(next(iter(train_data)))
    assert model._prism_aux_loss.item() == 0.0
    loss.backward()
    assert model.prism.interaction_experts.experts[0].fc1.weight.grad.abs().sum() > 0


def test_no_item_features_adds_only_the_fused_vector(tiny):
    model, _, test_data = build(tiny, prism_item_features=False)
    model.eval()
    model.prism_keep_add_emb = True
    with torch.no_grad():
        model.full_sort_predict(next(iter(test_data))[0])
    out = model.prism_output
    # every real position gets the same vector: the user's fused vector
    batch = next(iter(test_data))[0]
    real = batch[model.ITEM_SEQ] > 0
    first = out.add_emb[0][real[0]]
    torch.testing.assert_close(first, out.fused[0].expand_as(first))


def test_contradictions_name_both_options(tiny, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x", "--prism_fusion=none", "--prism_aux_loss=true"])
    with pytest.raises(ValueError, match="prism_fusion: none .* prism_aux_loss: true"):
        Config(model="PRISM_SASRec", dataset="tiny", config_dict=tiny)
    monkeypatch.setattr(sys, "argv", ["x"])
    with pytest.raises(ValueError, match="prism_fusion: none .*prism_experts"):
        Config(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, prism_fusion="none", prism_experts=["synergy"]))
    with pytest.raises(ValueError, match="prism_fusion: none with prism_item_features: false"):
        build(tiny, prism_fusion="none", prism_item_features=False)
    with pytest.raises(ValueError, match="prism_experts"):
        build(tiny, prism_experts=["unique", "magic"])
    with pytest.raises(ValueError, match="prism_fusion must be one of"):
        build(tiny, prism_fusion="mean")
    # the command-line form from the issue works
    monkeypatch.setattr(sys, "argv", ["x", "--prism_fusion=none"])
    assert Config(model="PRISM_SASRec", dataset="tiny", config_dict=tiny)["prism_fusion"] == "none"


def test_bad_noise_std_names_the_option(tiny):
    with pytest.raises(ValueError, match="prism_noise_std must be a number or 'match'"):
        build(tiny, prism_noise_std="loud")
