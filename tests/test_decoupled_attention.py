"""prism_attention: decoupled -- PRISM's addition enters SASRec's attention scores only."""
import math

import pytest
import torch
from conftest import run_cli, tiny_config, write_dataset

from prism_recbole.config import Config
from prism_recbole.model.decoupled_attention import DecoupledMultiHeadAttention
from prism_recbole.quick_start import build_model, load_data

M = 5


@pytest.fixture
def data(tmp_path):
    return write_dataset(str(tmp_path / "data"), n_users=12)


def config_for(model, data_path, tmp_path, **extra):
    options = tiny_config(data_path, str(tmp_path / "saved"), MAX_ITEM_LIST_LENGTH=M,
                          embedding_size=16, hidden_dropout_prob=0.0, attn_dropout_prob=0.0,
                          prism_gate_dropout=0.0, prism_attention="decoupled")
    options.update(extra)
    return Config(model=model, dataset="tiny", config_dict=options)


def built(data, tmp_path, **extra):
    config = config_for("PRISM_SASRec", data, tmp_path, **extra)
    _, train_data, _, _ = load_data(config)
    model = build_model(config, train_data).eval()
    return model, next(iter(train_data))


def output(model, batch, active=True, all_positions=False):
    model.prism_active = active
    try:
        with torch.no_grad(), model._prism_call(batch):
            model._all_positions = all_positions
            try:
                return model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
            finally:
                model._all_positions = False
    finally:
        model.prism_active = True


def test_attention_by_hand(data, tmp_path):
    model, batch = built(data, tmp_path)
    attention = model.trm_encoder.layer[0].multi_head_attention
    assert isinstance(attention, DecoupledMultiHeadAttention)
    B, L, D = 3, M, 16
    heads, d = attention.num_attention_heads, D // attention.num_attention_heads
    h, a = torch.randn(B, L, D), torch.randn(B, L, D)
    mask = torch.zeros(B, 1, L, L)
    mask[:, :, torch.triu(torch.ones(L, L, dtype=torch.bool), 1)] = -10000.0

    def split(x):
        return x.view(B, L, heads, d).transpose(1, 2)

    with torch.no_grad():
        for p in attention.side_norm.parameters():
            p.normal_()  # a LayerNorm that is not the identity: the check can see it
        attention.side.value = a
        got = attention(h, mask)
        attention.side.value = None
        side = attention.side_norm(a)
        scores = (split(attention.query(h)) @ split(attention.key(h)).transpose(-1, -2)
                  + split(attention.side_query(side)) @ split(attention.side_key(side)).transpose(-1, -2))
        probs = torch.softmax(scores / math.sqrt(d) + mask, dim=-1)
        context = (probs @ split(attention.value(h))).transpose(1, 2).reshape(B, L, D)
        want = attention.LayerNorm(attention.dense(context) + h)
        torch.testing.assert_close(got, want)
        # without a side stream: RecBole's own attention, parameter for parameter
        plain = super(DecoupledMultiHeadAttention, attention).forward(h, mask)
        torch.testing.assert_close(attention(h, mask), plain)
        assert not torch.allclose(got, plain)


def test_input_is_id_and_position_alone_and_side_stream_reaches_the_output(data, tmp_path):
    model, batch = built(data, tmp_path)
    layers = [layer.multi_head_attention for layer in model.trm_encoder.layer]
    with torch.no_grad():
        decoupled = output(model, batch)
        plain = output(model, batch, active=False)  # SASRec's forward on the same weights
        assert not torch.allclose(decoupled, plain)  # the features change the ranking state
        for attention in layers:  # with the side projections at zero, only the input is left
            attention.side_query.weight.zero_()
            attention.side_query.bias.zero_()
        # the input embedding carried no PRISM addition: exactly plain SASRec
        torch.testing.assert_close(output(model, batch), plain)
    assert model._prism_side.value is None  # not kept after the call


def test_parameters_keep_recbole_names_and_the_authors_design_is_untouched(data, tmp_path):
    model, _ = built(data, tmp_path)
    names = set(model.state_dict())
    assert "trm_encoder.layer.0.multi_head_attention.query.weight" in names
    for i in range(len(model.trm_encoder.layer)):
        assert f"trm_encoder.layer.{i}.multi_head_attention.side_key.weight" in names
    default, _ = built(data, tmp_path, prism_attention="input")
    assert type(default.trm_encoder.layer[0].multi_head_attention).__name__ == "MultiHeadAttention"
    assert default._prism_side is None


def test_every_position_training_stays_causal(data, tmp_path):
    model, batch = built(data, tmp_path, train_positions="all")
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    before = output(model, batch, all_positions=True)
    full = lengths == M
    assert full.any()
    changed = seq.clone()
    changed[full, 2:] = torch.randint(1, model.n_items, changed[full, 2:].shape)
    batch[model.ITEM_SEQ] = changed
    after = output(model, batch, all_positions=True)
    torch.testing.assert_close(after[full, :2], before[full, :2])
    assert not torch.allclose(after[full, 2:], before[full, 2:])


def test_other_backbones_and_bad_values_name_the_option(data, tmp_path):
    config = config_for("PRISM_GRU4Rec", data, tmp_path)
    _, train_data, _, _ = load_data(config)
    with pytest.raises(ValueError, match="prism_attention"):
        build_model(config, train_data)
    config = config_for("PRISM_SASRec", data, tmp_path, prism_attention="sideways")
    _, train_data, _, _ = load_data(config)
    with pytest.raises(ValueError, match="prism_attention"):
        build_model(config, train_data)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_trains_and_evaluates_through_run_recbole(positions, data, tmp_path, monkeypatch):
    options = tiny_config(data, str(tmp_path / "saved"), MAX_ITEM_LIST_LENGTH=M, embedding_size=16)
    result = run_cli(monkeypatch, tmp_path, options, "--model=PRISM_SASRec", "--dataset=tiny",
                     "--epochs=2", f"--train_positions={positions}", "--prism_attention=decoupled")
    assert "ndcg@10" in result["test_result"]


def test_input_plus_decoupled_keeps_the_input_sum(data, tmp_path):
    both, batch = built(data, tmp_path, prism_attention="input+decoupled")
    summed, _ = built(data, tmp_path, prism_attention="input")
    unexpected = summed.load_state_dict(both.state_dict(), strict=False).unexpected_keys
    assert unexpected and all(".side_" in key for key in unexpected)
    with torch.no_grad():
        assert not torch.allclose(output(both, batch), output(summed, batch))
        for layer in both.trm_encoder.layer:
            layer.multi_head_attention.side_key.weight.zero_()
            layer.multi_head_attention.side_key.bias.zero_()
        torch.testing.assert_close(output(both, batch), output(summed, batch))
        # and the input sum is what separates it from the decoupled model with the same weights
        both.prism_attention = "decoupled"
        assert not torch.allclose(output(both, batch), output(summed, batch))
