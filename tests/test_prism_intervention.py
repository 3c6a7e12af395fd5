"""Diagnostic interventions at evaluation (PRISMLayer.intervention, PRISMPlugin.prism_intervention):
no_fusion (z = 0), swap_fusion (another user's z), uniform_gate (w_k = 1/K)."""
import pytest
import torch

from prism_recbole.model.prism_layer import PRISMLayer

B, L, D = 3, 5, 4
N_ITEMS = 7


def make_layer(**kwargs):
    torch.manual_seed(0)
    tables = [torch.randn(N_ITEMS, 6), torch.randn(N_ITEMS, 3)]
    missing = [torch.zeros(N_ITEMS, dtype=torch.bool), torch.zeros(N_ITEMS, dtype=torch.bool)]
    for t, m in zip(tables, missing):
        t[0], m[0] = 0, True
    return PRISMLayer(tables, missing, hidden_size=D, expert_hidden=8, gate_dropout=0.0,
                      modality_names=["img", "txt"], initializer_range=0.5,
                      **kwargs).eval()


def batch():
    seq = torch.tensor([[1, 2, 3, 4, 5], [6, 2, 6, 0, 0], [3, 0, 0, 0, 0]])  # lengths 5, 3, 1
    id_table = torch.randn(N_ITEMS, D, generator=torch.Generator().manual_seed(1))
    return seq, id_table[seq], seq > 0


def run(layer, intervention=None):
    seq, id_emb, real = batch()
    layer.intervention = intervention
    try:
        with torch.no_grad():
            return layer(seq, id_emb, real)
    finally:
        layer.intervention = None


def test_no_fusion_removes_exactly_z_and_swap_gives_the_previous_users_z():
    layer = make_layer()
    _, _, real = batch()
    mask = real.unsqueeze(-1).float()
    full, off, swap = run(layer), run(layer, "no_fusion"), run(layer, "swap_fusion")
    assert full.fused.abs().sum() > 0
    torch.testing.assert_close(full.add_emb - off.add_emb, full.fused.unsqueeze(1) * mask)
    torch.testing.assert_close(swap.add_emb - off.add_emb, full.fused.roll(1, 0).unsqueeze(1) * mask)
    # the users' z really differ, so the swap changes what is added
    assert (swap.add_emb - full.add_emb).abs().max() > 1e-4
    # the reported gate weights and z stay the model's own
    torch.testing.assert_close(swap.fused, full.fused)
    torch.testing.assert_close(off.gate_weights, full.gate_weights)


def test_causal_swap_takes_the_other_users_z_at_the_same_or_its_last_position():
    layer = make_layer(causal=True)
    seq, _, real = batch()
    full, off, swap = run(layer), run(layer, "no_fusion"), run(layer, "swap_fusion")
    z = full.add_emb - off.add_emb  # [B, L, D]: z_t at the real positions
    assert (z[0, 0] - z[0, 4]).abs().max() > 1e-5  # causal: z_t differs along the sequence
    lengths = real.sum(1).tolist()
    got = swap.add_emb - off.add_emb
    for b in range(B):
        other = (b - 1) % B
        for t in range(L):
            expected = z[other, min(t, lengths[other] - 1)] if t < lengths[b] else torch.zeros(D)
            torch.testing.assert_close(got[b, t], expected)


def test_uniform_gate_weighs_the_experts_equally():
    layer = make_layer()
    full, uniform = run(layer), run(layer, "uniform_gate")
    torch.testing.assert_close(uniform.gate_weights, torch.full((B, 4), 0.25))
    torch.testing.assert_close(uniform.fused, full.expert_outputs.mean(dim=1))
    assert (full.gate_weights - 0.25).abs().max() > 1e-3  # the gate itself is not uniform


def test_gate_on_the_backbone_state():
    layer = make_layer(gate_input="backbone_state")
    state = torch.randn(B, D, generator=torch.Generator().manual_seed(2))
    outs = {}
    for name in (None, "no_fusion", "swap_fusion"):
        out = run(layer, name)
        layer.intervention = name
        outs[name] = layer.fuse_state(out.deferred, state)
        layer.intervention = None
    new, z, _ = outs[None]
    torch.testing.assert_close(new, state + z)
    torch.testing.assert_close(outs["no_fusion"][0], state)
    torch.testing.assert_close(outs["swap_fusion"][0], state + z.roll(1, 0))


def test_swap_needs_a_per_user_z():
    layer = make_layer(fusion_level="item")
    run(layer, "no_fusion")  # works at item level
    with pytest.raises(ValueError, match="swap_fusion.*prism_fusion_level: sequence"):
        run(layer, "swap_fusion")
