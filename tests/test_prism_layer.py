"""The PRISM math on small tensors: shapes, pooling, losses by hand, gate, evaluation mode."""
import math

import numpy as np
import pytest
import torch

from prism_recbole.model.prism_layer import (
    AdaptiveFusionLayer,
    InteractionExpertLayer,
    PRISMLayer,
    redundancy_loss,
    synergy_loss,
    uniqueness_loss,
)

B, L, D = 3, 5, 4
N_ITEMS = 7


def make_layer(**kwargs):
    torch.manual_seed(0)
    tables = [torch.randn(N_ITEMS, 6), torch.randn(N_ITEMS, 3)]
    tables[0][0] = 0
    tables[1][0] = 0
    missing = [torch.zeros(N_ITEMS, dtype=torch.bool), torch.zeros(N_ITEMS, dtype=torch.bool)]
    missing[0][0] = missing[1][0] = True
    defaults = dict(expert_hidden=8, gate_dropout=0.0, modality_names=["img", "txt"])
    defaults.update(kwargs)
    return PRISMLayer(tables, missing, hidden_size=D, **defaults)


def batch():
    # right-padded sequences of lengths 5, 3, 1
    seq = torch.tensor([[1, 2, 3, 4, 5], [6, 2, 6, 0, 0], [3, 0, 0, 0, 0]])
    id_table = torch.randn(N_ITEMS, D, generator=torch.Generator().manual_seed(1))
    return seq, id_table[seq], seq > 0, id_table


def test_shapes_and_gate_sums_to_one():
    layer = make_layer().train()
    seq, id_emb, real, _ = batch()
    out = layer(seq, id_emb, real)
    assert out.add_emb.shape == (B, L, D)
    assert out.gate_weights.shape == (B, 4)
    assert out.fused.shape == (B, D)
    assert out.expert_outputs.shape == (B, 4, D)
    assert out.aux_loss.dim() == 0 and out.aux_loss.item() > 0
    torch.testing.assert_close(out.gate_weights.sum(-1), torch.ones(B))
    assert (out.gate_weights > 0).all()
    assert layer.expert_names == ["unique_img", "unique_txt", "synergy", "redundancy"]


def test_masked_pooling_is_the_mean_over_real_items():
    layer = make_layer().eval()
    seq, id_emb, real, _ = batch()
    captured = {}
    layer.interaction_experts.register_forward_hook(lambda m, inp, out: captured.update(pooled=inp[0]))
    layer(seq, id_emb, real)
    x, _, _ = layer.features(torch.arange(N_ITEMS))  # [N, M, D]
    for b in range(B):
        ids = seq[b][real[b]]
        torch.testing.assert_close(captured["pooled"][b], x[ids].mean(0))


def test_padding_rows_and_positions_change_nothing():
    layer = make_layer().eval()
    seq, id_emb, real, id_table = batch()
    before = layer(seq, id_emb, real)
    # new values in the padding row of every feature table and of the ID table
    with torch.no_grad():
        for table in layer.features.tables:
            table.weight[0] = 100.0
    id_table = id_table.clone()
    id_table[0] = -50.0
    after = layer(seq, id_table[seq], real)
    torch.testing.assert_close(before.fused, after.fused)
    torch.testing.assert_close(before.gate_weights, after.gate_weights)
    torch.testing.assert_close(before.add_emb, after.add_emb)
    assert (after.add_emb[~real] == 0).all()


def test_positions_after_the_sequence_change_nothing():
    layer = make_layer().eval()
    seq, id_emb, real, id_table = batch()
    before = layer(seq, id_emb, real)
    garbage = seq.clone()
    garbage[~real] = 4  # a real item id where only padding should be
    after = layer(garbage, id_table[garbage], real)
    torch.testing.assert_close(before.fused, after.fused)
    torch.testing.assert_close(before.add_emb, after.add_emb)


def test_full_mean_reproduces_the_unmasked_mean():
    layer = make_layer(pooling="full_mean").eval()
    seq, id_emb, real, _ = batch()
    captured = {}
    layer.interaction_experts.register_forward_hook(lambda m, inp, out: captured.update(pooled=inp[0]))
    layer.adaptive_fusion.register_forward_hook(lambda m, inp, out: captured.update(summary=inp[1]))
    layer(seq, id_emb, real)
    _, raw, _ = layer.features(torch.arange(N_ITEMS))
    torch.testing.assert_close(captured["pooled"], raw[seq].mean(1))  # padding included
    torch.testing.assert_close(captured["summary"], id_emb.mean(1))


def test_missing_modality_is_left_out_of_its_pooling():
    layer = make_layer().eval()
    layer.features.present[2, 0] = False  # item 2 has no image
    seq, id_emb, real, _ = batch()
    captured = {}
    layer.interaction_experts.register_forward_hook(lambda m, inp, out: captured.update(pooled=inp[0]))
    layer(seq, id_emb, real)
    x, _, _ = layer.features(torch.arange(N_ITEMS))
    assert (x[2, 0] == 0).all() and (x[2, 1] != 0).any()
    # sequence 1 = [6, 2, 6]: image mean over items 6, 6 only; text mean over all three
    torch.testing.assert_close(captured["pooled"][1, 0], x[6, 0])
    torch.testing.assert_close(captured["pooled"][1, 1], x[[6, 2, 6], 1].mean(0))


# ---- the auxiliary losses by hand ------------------------------------------------------------
def _np(t):
    return t.detach().numpy().astype(np.float64)


def test_uniqueness_loss_by_hand():
    g = torch.Generator().manual_seed(3)
    h, r_img, r_txt = (torch.randn(4, 3, generator=g) for _ in range(3))
    margin = 0.5
    # unique-img expert: negative = image replaced, positive = text replaced
    got = uniqueness_loss(h, [r_img, r_txt], 0, margin).item()
    a, p, n = _np(h), _np(r_txt), _np(r_img)
    expected = np.mean(np.maximum(
        np.linalg.norm(a - p, axis=1) - np.linalg.norm(a - n, axis=1) + margin, 0.0))
    assert got == pytest.approx(expected, abs=1e-5)
    # three modalities: mean over the two positives
    r3 = torch.randn(4, 3, generator=g)
    got3 = uniqueness_loss(h, [r_img, r_txt, r3], 1, margin).item()
    n = _np(r_txt)
    e1 = np.mean(np.maximum(np.linalg.norm(a - _np(r_img), axis=1) - np.linalg.norm(a - n, axis=1) + margin, 0))
    e2 = np.mean(np.maximum(np.linalg.norm(a - _np(r3), axis=1) - np.linalg.norm(a - n, axis=1) + margin, 0))
    assert got3 == pytest.approx((e1 + e2) / 2, abs=1e-5)
    # one modality: no positive, no loss
    assert uniqueness_loss(h, [r_img], 0, margin).item() == 0.0


def _cos(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_synergy_and_redundancy_losses_by_hand():
    g = torch.Generator().manual_seed(4)
    h, r1, r2 = (torch.randn(5, 3, generator=g) for _ in range(3))
    a = _np(h)
    expected_syn = (np.mean(_cos(a, _np(r1))) + np.mean(_cos(a, _np(r2)))) / 2
    expected_red = (np.mean(1 - _cos(a, _np(r1))) + np.mean(1 - _cos(a, _np(r2)))) / 2
    assert synergy_loss(h, [r1, r2]).item() == pytest.approx(expected_syn, abs=1e-6)
    assert redundancy_loss(h, [r1, r2]).item() == pytest.approx(expected_red, abs=1e-6)


def test_total_aux_loss_is_the_weighted_sum_and_uses_the_right_experts():
    torch.manual_seed(0)
    layer = InteractionExpertLayer(2, 4, 8, 0.0, noise_std=1.0, margin=1.0,
                                   lambda_uni=0.3, lambda_syn=0.2, lambda_red=0.05,
                                   modality_names=["img", "txt"])
    pooled = torch.randn(6, 2, 4)
    noise = []
    real_randn_like = torch.randn_like

    def recording_randn_like(t, *a, **k):
        out = real_randn_like(t, *a, **k)
        noise.append(out)
        return out

    torch.randn_like = recording_randn_like
    try:
        clean, aux, terms = layer(pooled, with_aux=True)
    finally:
        torch.randn_like = real_randn_like
    assert len(noise) == 4 * 2  # each of 4 experts, each modality replaced once
    # recompute expert k's replaced passes by hand with the recorded noise
    def passes(k):
        f = layer.experts[k]
        x = pooled.flatten(1)
        r_img = f(torch.cat([noise[2 * k], pooled[:, 1]], -1))
        r_txt = f(torch.cat([pooled[:, 0], noise[2 * k + 1]], -1))
        return f(x), r_img, r_txt

    h0, i0, t0 = passes(0)
    h1, i1, t1 = passes(1)
    h2, i2, t2 = passes(2)
    h3, i3, t3 = passes(3)
    torch.testing.assert_close(clean[:, 0], h0)
    expected = (
        0.3 * (uniqueness_loss(h0, [i0, t0], 0, 1.0) + uniqueness_loss(h1, [i1, t1], 1, 1.0))
        + 0.2 * synergy_loss(h2, [i2, t2])
        + 0.05 * redundancy_loss(h3, [i3, t3])
    )
    torch.testing.assert_close(aux, expected)
    assert set(terms) == {"unique_img", "unique_txt", "synergy", "redundancy"}


def test_gate_is_a_temperature_softmax_of_the_mlp():
    torch.manual_seed(0)
    fusion = AdaptiveFusionLayer(n_experts=3, hidden_size=4, gate_hidden=6, dropout=0.0, temperature=0.5).eval()
    experts = torch.randn(2, 3, 4)
    summary = torch.randn(2, 4)
    fused, w = fusion(experts, summary)
    logits = fusion.gate(torch.cat([experts.flatten(1), summary], -1))
    torch.testing.assert_close(w, torch.softmax(logits / 0.5, -1))
    torch.testing.assert_close(fused, (w.unsqueeze(-1) * experts).sum(1))


def test_evaluation_runs_no_noise_pass_and_is_deterministic(monkeypatch):
    layer = make_layer(expert_dropout=0.5, gate_dropout=0.3).eval()
    seq, id_emb, real, _ = batch()

    def no_noise(*a, **k):
        raise AssertionError("a noise pass ran in evaluation")

    monkeypatch.setattr(layer.interaction_experts, "_replaced_inputs", no_noise)
    state = torch.get_rng_state()
    first = layer(seq, id_emb, real)
    second = layer(seq, id_emb, real)
    assert torch.equal(state, torch.get_rng_state())  # no random numbers drawn
    assert torch.equal(first.add_emb, second.add_emb)
    assert first.aux_loss.item() == 0.0


def test_expert_dropout_acts_on_the_hidden_activation():
    layer = make_layer(expert_dropout=0.5).train()
    expert = layer.interaction_experts.experts[0]
    x = torch.randn(64, 2 * D)
    assert not torch.equal(expert(x), expert(x))  # dropout is live (the reference's is not)
    assert torch.equal(make_layer(expert_dropout=0.0).train().interaction_experts.experts[0](x),
                       make_layer(expert_dropout=0.0).train().interaction_experts.experts[0](x))


def test_one_modality_and_three_modalities():
    for m in (1, 3):
        torch.manual_seed(0)
        tables = [torch.randn(N_ITEMS, 5) for _ in range(m)]
        missing = [torch.zeros(N_ITEMS, dtype=torch.bool) for _ in range(m)]
        layer = PRISMLayer(tables, missing, hidden_size=D, expert_hidden=8).train()
        seq, id_emb, real, _ = batch()
        out = layer(seq, id_emb, real)
        assert out.gate_weights.shape == (B, m + 2)
        assert math.isfinite(out.aux_loss.item())


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="prism_pooling"):
        make_layer(pooling="mean")
    with pytest.raises(ValueError, match="prism_temperature"):
        make_layer(temperature=0.0)


def test_noise_std_match_puts_the_noise_on_the_scale_of_the_replaced_modality():
    layer = InteractionExpertLayer(2, 4, 8, 0.0, noise_std="match", margin=1.0,
                                   lambda_uni=0.1, lambda_syn=0.1, lambda_red=0.1)
    torch.manual_seed(0)
    pooled = torch.randn(4096, 2, 4) * torch.tensor([0.03, 5.0]).view(1, 2, 1)
    replaced = layer._replaced_inputs(pooled)  # [M, B, M*D]
    # modality 0 replaced: its noise has std ~0.03, modality 1 is kept as it is
    assert replaced[0, :, :4].std().item() == pytest.approx(0.03, rel=0.05)
    torch.testing.assert_close(replaced[0, :, 4:], pooled[:, 1])
    assert replaced[1, :, 4:].std().item() == pytest.approx(5.0, rel=0.05)
    fixed = InteractionExpertLayer(2, 4, 8, 0.0, noise_std=1.0, margin=1.0,
                                   lambda_uni=0.1, lambda_syn=0.1, lambda_red=0.1)
    assert fixed._replaced_inputs(pooled)[0, :, :4].std().item() == pytest.approx(1.0, rel=0.05)
