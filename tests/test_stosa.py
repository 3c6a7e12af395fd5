"""STOSA (Fan et al., WWW 2022): distance, attention, causality, legacy options, training."""
import math
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_config

import run_recbole
from prism_recbole.config import Config
from prism_recbole.model.positions import model_class_for, next_item_targets
from prism_recbole.model.sequential_recommender.stosa import (
    STOSA,
    DistSelfAttention,
    wasserstein_distance,
    wasserstein_distance_matmul,
)
from prism_recbole.quick_start import build_model, load_data
from prism_recbole.utils import get_model, list_prism_models


def stosa_options(tiny, **extra):
    options = dict(tiny, epochs=1, **extra)
    options.pop("modalities")  # STOSA reads no modality vectors
    return options


def build(tiny, **extra):
    config = Config(model="STOSA", dataset="tiny", config_dict=stosa_options(tiny, **extra))
    _, train_data, _, test_data = load_data(config)
    return config, build_model(config, train_data), train_data, test_data


def real_sequences(model, batch_size=5, seed=0):
    """Full-length sequences of real items ``[B, L]`` and their lengths."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, model.n_items, (batch_size, model.max_seq_length), generator=g)
    return seq, torch.full((batch_size,), model.max_seq_length)


# --------------------------------------------------------------------------- registry, config


def test_registered_and_defaults(tiny):
    assert get_model("STOSA") is STOSA and "STOSA" in list_prism_models()
    config, model, _, _ = build(tiny)
    assert config["loss_type"] == "BPR" and config["pvn_weight"] == 0.005
    assert config["distance_metric"] == "wasserstein" and config["initializer_range"] == 0.02
    assert config["train_neg_sample_args"]["distribution"] == "uniform"
    assert config["train_neg_sample_args"]["sample_num"] == 1
    assert model.item_mean_embeddings.padding_idx == 0 and model.item_cov_embeddings.padding_idx == 0
    assert not hasattr(model, "interest_encoder") and not hasattr(model, "user_margins")
    # train_positions: all: the model is used as it is, no negatives from the dataloader
    config, model, _, _ = build(tiny, train_positions="all")
    assert model_class_for(config, STOSA) is STOSA and type(model) is STOSA
    assert config["train_neg_sample_args"]["distribution"] == "none"


def test_init_is_the_authors(tiny):
    _, model, _, _ = build(tiny, hidden_size=64, inner_size=64, n_heads=2, initializer_range=0.02)
    w = torch.cat([model.item_mean_embeddings.weight.flatten(),
                   model.item_encoder.layers[0].attention.mean_query.weight.flatten()])
    assert abs(w.mean().item() - 0.01) < 0.002 and abs(w.std().item() - 0.02) < 0.002
    assert (model.item_encoder.layers[0].attention.mean_query.bias == 0).all()


@pytest.mark.parametrize("bad,match", [
    ({"stosa_legacy_typo": True}, "stosa_legacy_typo"),
    ({"distance_metric": "kl"}, "distance_metric"),
    ({"loss_type": "CE"}, "loss_type: BPR"),
])
def test_bad_options(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        build(tiny, **bad)


# --------------------------------------------------------------------------- distance, attention


def test_wasserstein_distance_by_hand():
    m1, c1 = torch.tensor([1.0, 2.0]), torch.tensor([4.0, 1.0])
    m2, c2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 9.0])
    # |m1 - m2|^2 = 1 + 4; |sqrt c1 - sqrt c2|^2 = (2 - 1)^2 + (1 - 3)^2 = 1 + 4
    assert wasserstein_distance(m1, c1, m2, c2).item() == pytest.approx(10.0)
    assert wasserstein_distance(m1, c1, m1, c1).item() == pytest.approx(0.0)
    g = torch.Generator().manual_seed(1)
    a_m, b_m = torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    a_c, b_c = torch.rand(2, 3, 4, generator=g, dtype=torch.float64) + 0.1, torch.rand(2, 5, 4, generator=g, dtype=torch.float64) + 0.1
    pairwise = wasserstein_distance_matmul(a_m, a_c, b_m, b_c)
    assert pairwise.shape == (2, 3, 5)
    for b in range(2):
        for i in range(3):
            for j in range(5):
                want = sum((a_m[b, i, k] - b_m[b, j, k]) ** 2 + (a_c[b, i, k].sqrt() - b_c[b, j, k].sqrt()) ** 2
                           for k in range(4))
                assert pairwise[b, i, j].item() == pytest.approx(want.item(), rel=1e-9, abs=1e-9)


def test_attention_by_hand():
    torch.manual_seed(0)
    D, H, L = 4, 2, 3
    d = D // H
    attn = DistSelfAttention(H, D, 0.0, 0.0, 1e-12).double().eval()
    mean = torch.randn(1, L, D, dtype=torch.float64)
    cov = torch.rand(1, L, D, dtype=torch.float64) + 0.5
    keys_real = torch.tensor([True, True, False])  # the third item is padding
    mask = torch.ones(L, L, dtype=torch.bool).tril().view(1, 1, L, L) & keys_real.view(1, 1, 1, L)
    probs = attn.attention_probs(mean, cov, mask)

    def lin(layer, x):
        return (layer.weight @ x + layer.bias).tolist()

    def elu1(v):
        return [x + 1 if x > 0 else math.exp(x) for x in v]  # ELU(x) + 1

    q_m = [lin(attn.mean_query, mean[0, t]) for t in range(L)]
    k_m = [lin(attn.mean_key, mean[0, t]) for t in range(L)]
    q_c = [elu1(lin(attn.cov_query, cov[0, t])) for t in range(L)]
    k_c = [elu1(lin(attn.cov_key, cov[0, t])) for t in range(L)]
    v_m = [lin(attn.mean_value, mean[0, t]) for t in range(L)]
    v_c = [elu1(lin(attn.cov_value, cov[0, t])) for t in range(L)]
    want = torch.zeros(H, L, L, dtype=torch.float64)
    ctx_m = torch.zeros(L, D, dtype=torch.float64)
    ctx_c = torch.zeros(L, D, dtype=torch.float64)
    for h in range(H):
        dims = range(h * d, (h + 1) * d)
        for t in range(L):
            allowed = [j for j in range(L) if j <= t and keys_real[j]]
            dist = {j: sum((q_m[t][k] - k_m[j][k]) ** 2 + (math.sqrt(q_c[t][k]) - math.sqrt(k_c[j][k])) ** 2
                           for k in dims) for j in allowed}
            z = sum(math.exp(-dist[j] / math.sqrt(d)) for j in allowed)
            for j in allowed:
                w = math.exp(-dist[j] / math.sqrt(d)) / z
                want[h, t, j] = w
                for k in dims:
                    ctx_m[t, k] += w * v_m[j][k]
                    ctx_c[t, k] += w * w * v_c[j][k]  # covariance: squared weights
    torch.testing.assert_close(probs[0], want)
    # the outputs: dense, residual, one LayerNorm shared by the two streams
    out_m, out_c = attn(mean, cov, mask)
    ln = attn.LayerNorm
    torch.testing.assert_close(out_m[0], ln(attn.mean_dense(ctx_m) + mean[0]))
    torch.testing.assert_close(out_c[0], ln(attn.cov_dense(ctx_c) + cov[0]))


# --------------------------------------------------------------------------- the model


def test_covariance_is_positive_everywhere(tiny):
    _, model, train_data, _ = build(tiny, hidden_dropout_prob=0.5)
    batch = next(iter(train_data))
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    for mode in (model.train, model.eval):
        mode()
        _, cov_in = model.input_embeddings(seq)
        mean, cov = model.forward(seq, lengths)
        assert mean.shape == cov.shape == (*seq.shape, model.hidden_size)
        assert (cov_in > 0).all() and (cov > 0).all()
    assert (model.item_distribution()[1] > 0).all()


def test_no_output_depends_on_later_items(tiny):
    _, model, _, _ = build(tiny)
    model.eval()
    seq, lengths = real_sequences(model)
    with torch.no_grad():
        mean, cov = model.forward(seq, lengths)
        for t in range(model.max_seq_length - 1):
            changed = seq.clone()
            changed[:, t + 1:] = torch.randint(1, model.n_items, changed[:, t + 1:].shape)
            changed[0, t + 1:] = 0  # and padding after t
            assert not torch.equal(changed, seq)
            mean2, cov2 = model.forward(changed, lengths)
            torch.testing.assert_close(mean2[:, :t + 1], mean[:, :t + 1], rtol=0, atol=1e-6)
            torch.testing.assert_close(cov2[:, :t + 1], cov[:, :t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(mean2[:, -1], mean[:, -1])  # the last position does see them


def test_forward_embeds_the_input_sequence_itself(tiny):
    """A plug-in hooks item_mean_embeddings(item_seq) and item_cov_embeddings(item_seq)."""
    _, model, _, _ = build(tiny)
    model.eval()
    seq, lengths = real_sequences(model)
    calls = []

    def hook(name):
        def record(module, inputs, output):
            calls.append((name, inputs[0] is seq))
            return output + torch.linspace(-1.0, 1.0, output.shape[-1])  # not constant: LN
        return record

    with torch.no_grad():
        before = model.forward(seq, lengths)
        handles = [getattr(model, n).register_forward_hook(hook(n))
                   for n in ("item_mean_embeddings", "item_cov_embeddings")]
        after = model.forward(seq, lengths)
        for handle in handles:
            handle.remove()
    assert sorted(calls) == [("item_cov_embeddings", True), ("item_mean_embeddings", True)]
    assert not torch.allclose(before[0], after[0]) and not torch.allclose(before[1], after[1])


def test_legacy_mean_skip(tiny):
    seq = None
    for legacy in (False, True):
        _, model, _, _ = build(tiny, stosa_legacy_mean_skip=legacy, n_layers=2)
        model.eval()
        if seq is None:
            seq, lengths = real_sequences(model)
        with torch.no_grad():
            mean_in, cov_in = model.input_embeddings(seq)
            mean, cov = model.forward(seq, lengths)
            # the input mean stream is ELU(LN(E_mean[s] + P_mean)) (no dropout in eval)
            by_hand = F.elu(model.LayerNorm(model.item_mean_embeddings.weight[seq]
                                            + model.position_mean_embeddings.weight[:seq.size(1)]))
        torch.testing.assert_close(mean_in, by_hand)
        if legacy:  # the typo: the encoder returns its input means; the covariance is encoded
            torch.testing.assert_close(mean, mean_in, rtol=0, atol=0)
        else:
            assert (mean - mean_in).abs().max() > 1e-3
        assert (cov - cov_in).abs().max() > 1e-3


def test_legacy_double_dropout(tiny):
    """With p = 0.5, one dropout zeroes half of the pre-ELU covariance inputs (ELU(0) + 1 = 1
    exactly), two dropouts three quarters; the mean stream is dropped once either way."""
    fractions = {}
    for legacy in (False, True):
        _, model, _, _ = build(tiny, hidden_dropout_prob=0.5, stosa_legacy_double_dropout=legacy)
        model.train()
        seq, _ = real_sequences(model, batch_size=40)
        torch.manual_seed(0)
        mean_in, cov_in = model.input_embeddings(seq)
        fractions[legacy] = ((cov_in == 1.0).float().mean().item(), (mean_in == 0.0).float().mean().item())
    assert 0.45 < fractions[False][0] < 0.55 and 0.70 < fractions[True][0] < 0.80
    assert 0.45 < fractions[False][1] < 0.55 and 0.45 < fractions[True][1] < 0.55


def test_full_sort_predict_is_minus_the_distance_to_every_item(tiny):
    _, model, _, test_data = build(tiny)
    model.eval()
    batch = next(iter(test_data))[0]
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        single = model.predict(batch)
        mean, cov = model.forward(seq, lengths)
    assert scores.shape == (len(seq), model.n_items)
    rows = torch.arange(len(seq))
    u_mean, u_cov = mean[rows, lengths - 1].double(), cov[rows, lengths - 1].double()  # last real item
    i_mean = model.item_mean_embeddings.weight.detach().double()
    i_cov = F.elu(model.item_cov_embeddings.weight.detach().double()) + 1
    want = torch.empty(len(seq), model.n_items, dtype=torch.float64)
    for b in range(len(seq)):
        for i in range(model.n_items):
            want[b, i] = ((u_mean[b] - i_mean[i]) ** 2).sum() + ((u_cov[b].sqrt() - i_cov[i].sqrt()) ** 2).sum()
    torch.testing.assert_close(scores.double(), -want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(single, scores[rows, batch[model.ITEM_ID]], rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- loss, training


def hand_loss(model, u_mean, u_cov, pos, neg):
    def item(i):
        return model.item_mean_embeddings.weight[i], F.elu(model.item_cov_embeddings.weight[i]) + 1

    def dist(m1, c1, m2, c2):
        return ((m1 - m2) ** 2).sum() + ((c1.sqrt() - c2.sqrt()) ** 2).sum()

    rank, pvn = 0.0, 0.0
    for k in range(len(pos)):
        if pos[k] == neg[k]:
            continue
        d_up = dist(u_mean[k], u_cov[k], *item(pos[k]))
        d_un = dist(u_mean[k], u_cov[k], *item(neg[k]))
        d_pn = dist(*item(pos[k]), *item(neg[k]))
        rank = rank - torch.log(torch.sigmoid(d_un - d_up))
        pvn = pvn + torch.clamp(d_up - d_pn, min=0)
    return (rank + model.pvn_weight * pvn) / len(pos)


def test_loss_last_position_by_hand(tiny):
    _, model, train_data, _ = build(tiny, pvn_weight=0.5)
    model.eval()  # no dropout: the two computations see the same representation
    batch = next(iter(train_data))
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    pos, neg = batch[model.POS_ITEM_ID], batch[model.NEG_ITEM_ID].clone()
    neg[0] = pos[0]  # a negative equal to its positive contributes nothing
    batch.interaction[model.NEG_ITEM_ID] = neg
    with torch.no_grad():
        got = model.calculate_loss(batch)
        mean, cov = model.forward(seq, lengths)
        rows = torch.arange(len(seq))
        want = hand_loss(model, mean[rows, lengths - 1], cov[rows, lengths - 1], pos, neg)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # no negative in the batch: drawn on the device
    del batch.interaction[model.NEG_ITEM_ID]
    with torch.no_grad():
        assert math.isfinite(model.calculate_loss(batch).item())


def test_loss_all_positions_by_hand(tiny, monkeypatch):
    _, model, train_data, _ = build(tiny, train_positions="all", pvn_weight=0.5)
    model.eval()
    batch = next(iter(train_data))
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    targets = next_item_targets(seq, lengths, batch[model.POS_ITEM_ID])
    n_real = int((targets > 0).sum())
    assert n_real == int(lengths.sum()) > len(seq)  # every real position has a target
    fixed = torch.randint(1, model.n_items, (n_real,), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(model, "sample_negatives", lambda shape, device: fixed.view(shape))
    with torch.no_grad():
        got = model.calculate_loss(batch)
        mean, cov = model.forward(seq, lengths)
        u_mean, u_cov, pos = [], [], []
        for b in range(len(seq)):
            for t in range(int(lengths[b])):  # position t predicts item t + 1, the last the target
                u_mean.append(mean[b, t])
                u_cov.append(cov[b, t])
                pos.append(int(seq[b, t + 1]) if t + 1 < lengths[b] else int(batch[model.POS_ITEM_ID][b]))
        want = hand_loss(model, torch.stack(u_mean), torch.stack(u_cov), torch.tensor(pos), fixed)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_loss_is_finite_and_decreases(tiny, positions):
    _, model, train_data, _ = build(tiny, train_positions=positions, hidden_dropout_prob=0.0)
    model.train()
    batch = next(iter(train_data))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for step in range(15):
        torch.manual_seed(step % 3)  # all: the same few negatives again and again
        loss = model.calculate_loss(batch)
        assert loss.dim() == 0 and math.isfinite(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses


@pytest.mark.parametrize("positions", ["last", "all"])
def test_trains_and_evaluates_through_run_recbole(tiny, tmp_path, monkeypatch, positions):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(stosa_options(tiny)))
    argv = ["--model=STOSA", "--dataset=tiny", f"--config_files={path}", "--epochs=1",
            f"--train_positions={positions}"]
    monkeypatch.setattr(sys, "argv", ["run_recbole.py"] + argv)
    result = run_recbole.main(argv)
    assert result["model"] == "STOSA" and "ndcg@10" in result["test_result"]
    assert all(math.isfinite(v) for v in result["test_result"].values())
    assert result["checkpoint"] is not None
