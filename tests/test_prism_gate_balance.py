"""prism_gate_balance: Shazeer et al.'s importance loss on the gate (an extension, off by default)."""
import math

import pytest
import torch

from conftest import small_prism_tables
from prism_recbole.config import Config
from prism_recbole.model.prism_layer import PRISMLayer, gate_balance_loss
from prism_recbole.quick_start import build_model, load_data


def test_loss_is_the_squared_coefficient_of_variation_of_the_mean_weights():
    K = 4
    uniform = torch.full((6, K), 1.0 / K)
    assert gate_balance_loss(uniform).item() == pytest.approx(0.0, abs=1e-7)
    collapsed = torch.zeros(6, K)
    collapsed[:, 2] = 1.0
    assert gate_balance_loss(collapsed).item() == pytest.approx(K - 1)
    # every row on one expert, but each expert as often: balanced on average, 0
    rotating = torch.eye(K).repeat(2, 1)
    assert gate_balance_loss(rotating).item() == pytest.approx(0.0, abs=1e-7)
    torch.manual_seed(0)
    w = torch.softmax(torch.randn(50, K, dtype=torch.float64), dim=-1)
    m = w.mean(dim=0)
    cv2 = m.var(unbiased=False) / m.mean() ** 2
    assert gate_balance_loss(w).item() == pytest.approx(cv2.item(), rel=1e-9)


def _layer(**kw):
    tables, missing, common = small_prism_tables()
    return PRISMLayer(tables, missing, **common, **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(gate_balance=-0.1), "prism_gate_balance must be >= 0"),
    (dict(gate_balance=math.nan), "prism_gate_balance must be >= 0"),
    (dict(gate_balance=0.1, fusion="uniform"), "prism_fusion: uniform"),
    (dict(gate_balance=0.1, gate_input="backbone_state"), "prism_gate_input: backbone_state"),
])
def test_bad_settings_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _layer(**kw)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_option_adds_lambda_times_the_term_in_training_only(tiny, positions):
    losses, terms = {}, {}
    for weight in (0.0, 0.5):
        config = Config(model="PRISM_SASRec", dataset="tiny",
                        config_dict=dict(tiny, prism_gate_balance=weight, train_positions=positions))
        _, train_data, _, _ = load_data(config)
        torch.manual_seed(0)
        model = build_model(config, train_data).train()
        assert model.prism.gate_balance == weight
        with torch.no_grad():  # a gate that favours one expert (at initialisation it is ~uniform)
            model.prism.adaptive_fusion.gate[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        batch = next(iter(train_data))
        torch.manual_seed(1)  # the same noise passes and dropout for both weights
        loss = model.calculate_loss(batch)
        loss.backward()
        assert torch.isfinite(loss)
        losses[weight] = loss.item()
        terms[weight] = dict(model.prism_output.aux_terms)
        gate = model.prism.adaptive_fusion.gate[-1].weight.grad
        assert gate is not None and torch.isfinite(gate).all()
        model.eval()
        with torch.no_grad():
            model.full_sort_predict(batch)
        assert model.prism_output.aux_loss.item() == 0.0  # evaluation: no auxiliary term at all
    assert "gate_balance" not in terms[0.0]
    balance = terms[0.5]["gate_balance"].item()
    assert 0.0 < balance < 3.0  # K = 4 experts: between balanced and collapsed
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * balance, rel=1e-4, abs=1e-6)


def test_training_with_the_option_spreads_a_collapsed_gate():
    torch.manual_seed(0)
    layer = _layer(gate_balance=1.0, aux_loss=False)
    last = layer.adaptive_fusion.gate[-1]
    with torch.no_grad():  # start with every user on the first expert
        last.bias.copy_(torch.tensor([6.0, 0.0, 0.0, 0.0]))
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    seq = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [2, 3, 4, 5]])
    mask = seq > 0
    before = None
    for _ in range(40):
        id_emb = torch.randn(3, 4, 8) * 0.1
        out = layer(seq, id_emb, mask)
        before = out.aux_terms["gate_balance"].item() if before is None else before
        optimizer.zero_grad()
        out.aux_loss.backward()
        optimizer.step()
    assert before > 2.0
    assert out.aux_terms["gate_balance"].item() < 0.5 * before


def test_item_level_fusion_adds_the_term_over_the_sequences_with_items():
    torch.manual_seed(0)
    layer = _layer(gate_balance=2.0, fusion_level="item", aux_loss=False).train()
    with torch.no_grad():
        layer.adaptive_fusion.gate[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    seq = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [0, 0, 0, 0]])  # the last sequence is empty
    out = layer(seq, torch.randn(3, 4, 8) * 0.1, seq > 0)
    want = gate_balance_loss(out.gate_weights[:2])  # the empty sequence is left out
    torch.testing.assert_close(out.aux_terms["gate_balance"], want.detach())
    torch.testing.assert_close(out.aux_loss, 2.0 * want)
