"""prism_gate_input: backbone_state -- the gate reads the backbone's output, z joins it."""
import pytest
import torch
from conftest import run_cli, small_prism_tables, tiny_config, write_dataset

from prism_recbole.config import Config
from prism_recbole.model.prism_layer import PRISMLayer
from prism_recbole.quick_start import build_model, load_data

M = 4


@pytest.fixture
def data(tmp_path):
    return write_dataset(str(tmp_path / "data"), n_users=12,
                         inter_items=lambda u, n, rng: [(u * 7 + t * 3) % 24 + 1 for t in range(n)])


def config_for(model, data_path, tmp_path, **extra):
    options = tiny_config(data_path, str(tmp_path / "saved"), MAX_ITEM_LIST_LENGTH=M,
                          embedding_size=16, hidden_dropout_prob=0.0, attn_dropout_prob=0.0,
                          dropout_prob=0.0, prism_gate_dropout=0.0, prism_gate_input="backbone_state")
    options.update(extra)
    return Config(model=model, dataset="tiny", config_dict=options)


def layers(causal):
    tables, missing, common = small_prism_tables()
    D = common["hidden_size"]
    late = PRISMLayer(tables, missing, causal=causal, gate_input="backbone_state", **common).eval()
    early = PRISMLayer(tables, missing, causal=causal, **common).eval()
    early.load_state_dict(late.state_dict())
    return late, early, D


def test_input_gets_the_features_alone_and_the_gate_reads_the_state():
    late, early, D = layers(causal=False)
    seq = torch.tensor([[4, 5, 9, 2, 0, 0], [1, 3, 8, 11, 12, 7]])
    id_emb, state = torch.randn(2, 6, D), torch.randn(2, D)
    with torch.no_grad():
        out = late(seq, id_emb, seq > 0)
        ref = early(seq, id_emb, seq > 0)
        # the input: Σ_m x^m_t only (the early layer adds z on top of the same features)
        torch.testing.assert_close(out.add_emb + (seq > 0).unsqueeze(-1) * ref.fused.unsqueeze(1),
                                   ref.add_emb)
        h, fused, weights = late.fuse_state(out.deferred, state)
        gate_in = torch.cat([ref.expert_outputs.flatten(1), state], dim=-1)
        want_w = torch.softmax(late.adaptive_fusion.gate(gate_in) / late.adaptive_fusion.temperature, -1)
        torch.testing.assert_close(weights, want_w)
        torch.testing.assert_close(h, state + (want_w.unsqueeze(-1) * ref.expert_outputs).sum(1))
        torch.testing.assert_close(fused, h - state)
        assert not torch.allclose(weights, ref.gate_weights)  # a different gate input: the check can fail


def test_causal_fusion_at_t_equals_the_last_mode_on_the_prefix():
    causal, _, D = layers(causal=True)
    last, _, _ = layers(causal=False)
    last.load_state_dict(causal.state_dict())
    seq = torch.tensor([[4, 5, 9, 2, 0, 0], [1, 3, 8, 11, 12, 7]])
    id_emb, state = torch.randn(2, 6, D), torch.randn(2, 6, D)
    real = seq > 0
    with torch.no_grad():
        h_all, _, _ = causal.fuse_state(causal(seq, id_emb, real).deferred, state)
        for t in range(6):
            prefix = seq.clone()
            prefix[:, t + 1:] = 0
            h_t, _, _ = last.fuse_state(last(prefix, id_emb, prefix > 0).deferred, state[:, t])
            for b in range(2):
                if real[b, t]:
                    torch.testing.assert_close(h_all[b, t], h_t[b])
                else:  # padding gets nothing
                    torch.testing.assert_close(h_all[b, t], state[b, t])
        # the last-position call of a causal layer = every-position call at the last real position
        lengths = real.sum(1)
        h_last, _, _ = causal.fuse_state(causal(seq, id_emb, real).deferred,
                                         state[torch.arange(2), lengths - 1])
        torch.testing.assert_close(h_last, h_all[torch.arange(2), lengths - 1])


@pytest.mark.parametrize("name", ["PRISM_SASRec", "PRISM_GRU4Rec"])
def test_every_position_model_is_causal_and_matches_its_evaluation(name, data, tmp_path):
    config = config_for(name, data, tmp_path, train_positions="all")
    _, train_data, _, _ = load_data(config)
    model = build_model(config, train_data).eval()
    batch = next(iter(train_data))
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]

    def every(s, n):
        with model._prism_call(batch):
            model._all_positions = True
            try:
                return model.forward(s, n)
            finally:
                model._all_positions = False

    with torch.no_grad():
        before = every(seq, lengths)
        with model._prism_call(batch):
            at_last = model.forward(seq, lengths)
        torch.testing.assert_close(at_last, before[torch.arange(len(seq)), lengths - 1])
        full = lengths == M
        assert full.any()
        changed = seq.clone()
        changed[full, 2:] = torch.randint(1, model.n_items, changed[full, 2:].shape)
        after = every(changed, lengths)
        torch.testing.assert_close(after[full, :2], before[full, :2])
        assert not torch.allclose(after[full, 2:], before[full, 2:])
        # z does reach the output: without the fusion the output differs
        model.prism.adaptive_fusion.gate[-1].bias.data += torch.arange(
            float(len(model.prism_expert_names)))
        assert not torch.allclose(every(seq, lengths), before)


def test_only_for_backbones_that_end_with_gather_indexes(data, tmp_path):
    for name in ("PRISM_NARM", "PRISM_BERT4Rec"):
        # mask_ratio 0.5: RecBole's 0.2 keeps no masked item at length 4 (its own clear error)
        config = config_for(name, data, tmp_path, mask_ratio=0.5)
        _, train_data, _, _ = load_data(config)
        with pytest.raises(ValueError, match="prism_gate_input"):
            build_model(config, train_data)
    with pytest.raises(ValueError, match="prism_gate_input"):
        PRISMLayer([torch.randn(5, 3)], [torch.zeros(5, dtype=torch.bool)], hidden_size=4,
                   gate_input="user")


@pytest.mark.parametrize("positions", ["last", "all"])
def test_trains_and_evaluates_through_run_recbole(positions, data, tmp_path, monkeypatch):
    options = tiny_config(data, str(tmp_path / "saved"), MAX_ITEM_LIST_LENGTH=M, embedding_size=16)
    result = run_cli(monkeypatch, tmp_path, options, "--model=PRISM_SASRec", "--dataset=tiny",
                     "--epochs=2", f"--train_positions={positions}", "--prism_gate_input=backbone_state")
    assert "ndcg@10" in result["test_result"]
