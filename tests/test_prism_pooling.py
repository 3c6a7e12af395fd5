"""The PRISM pooling: equal to a plain loop, memory O(batch x length), projected once per
evaluation, and the authors' full_mean made true (fixed padding vector, no gradient to row 0)."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from prism_recbole.model.prism_layer import PRISMLayer

D = 4


def make_layer(n_items=40, **kwargs):
    torch.manual_seed(0)
    tables = [torch.randn(n_items, 6), torch.randn(n_items, 3)]
    missing = [torch.zeros(n_items, dtype=torch.bool), torch.zeros(n_items, dtype=torch.bool)]
    missing[0][5:9] = True  # items 5-8 have no first modality
    for t in tables:
        t[0] = 0
    defaults = dict(expert_hidden=8, gate_dropout=0.0, modality_names=["img", "txt"])
    defaults.update(kwargs)
    return PRISMLayer(tables, missing, hidden_size=D, **defaults)


def random_batch(n_items=40, B=6, L=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    seq = torch.randint(1, n_items, (B, L), generator=g)
    seq[torch.arange(L)[None] >= lengths[:, None]] = 0  # right padding
    id_table = torch.randn(n_items, D, generator=g)
    return seq, id_table[seq], seq > 0


def loop_pooling(layer, seq, id_emb, real):
    """x̄^m and ē by a plain Python loop over users and positions."""
    x, raw, present = layer.features(torch.arange(layer.features.present.shape[0]))
    B, L = seq.shape
    pooled, summary = torch.zeros(B, layer.n_modalities, D), torch.zeros(B, D)
    for b in range(B):
        for m in range(layer.n_modalities):
            if layer.pooling == "full_mean":
                pooled[b, m] = sum(raw[seq[b, t], m] for t in range(L)) / L
            else:
                ts = [t for t in range(L) if real[b, t] and present[seq[b, t], m]]
                if ts:
                    pooled[b, m] = sum(x[seq[b, t], m] for t in ts) / len(ts)
        if layer.pooling == "full_mean":
            summary[b] = id_emb[b].mean(0)
        else:
            summary[b] = id_emb[b][real[b]].mean(0)
    return pooled, summary


def capture_pooling(layer, seq, id_emb, real, grad):
    captured = {}
    h1 = layer.interaction_experts.register_forward_hook(lambda m, i, o: captured.update(pooled=i[0]))
    h2 = layer.adaptive_fusion.register_forward_hook(lambda m, i, o: captured.update(summary=i[1]))
    with torch.set_grad_enabled(grad):
        layer(seq, id_emb, real)
    h1.remove(), h2.remove()
    return captured["pooled"].detach(), captured["summary"].detach()


def test_pooling_equals_a_plain_loop_in_training_and_evaluation():
    for pooling in ("masked_mean", "full_mean"):
        layer = make_layer(pooling=pooling).eval()
        seq, id_emb, real = random_batch()
        with torch.no_grad():
            want_pooled, want_summary = loop_pooling(layer, seq, id_emb, real)
        for grad in (True, False):  # per-batch distinct items / catalogue projected once
            pooled, summary = capture_pooling(layer, seq, id_emb, real, grad)
            torch.testing.assert_close(pooled, want_pooled)
            torch.testing.assert_close(summary, want_summary)


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_grows_with_batch_times_length_not_batch_times_distinct_items():
    n_items, B, L = 5000, 256, 10
    for level in ("sequence", "item"):
        layer = make_layer(n_items=n_items, fusion_level=level).train()
        seq, id_emb, real = random_batch(n_items, B, L)
        distinct = torch.unique(seq).numel()
        assert B * distinct > 20 * B * L * D  # what a dense [B, U] pooling would build
        K = len(layer.expert_names)
        for grad, mode in ((True, layer.train), (False, layer.eval)):
            mode()
            spy = LargestTensor()
            with spy, torch.set_grad_enabled(grad):
                layer(seq, id_emb, real)
            # the largest tensor: the noise passes [1 + M, B, M·D], the per-position addition
            # [B, L, D], or (evaluation) the catalogue's projected vectors [N, M, D]
            bound = max((1 + 2) * B * 2 * D, B * L * D, distinct * K * D, 2 * n_items * D)
            assert spy.largest <= bound, (level, grad, spy.largest, bound)


def test_evaluation_projects_the_catalogue_once_until_a_parameter_changes():
    layer = make_layer().eval()
    calls = []
    for proj in layer.features.projections:
        # item rows (2-D); the padding vector is projected on its own (1-D)
        proj.register_forward_hook(lambda m, i, o: i[0].dim() == 2 and calls.append(i[0].shape[0]))
    seq, id_emb, real = random_batch()
    with torch.no_grad():
        first = layer(seq, id_emb, real).add_emb
        for seed in (2, 3, 4):
            layer(*random_batch(seed=seed))
    assert calls == [40, 40]  # once per modality, for the whole catalogue
    # an optimizer step changes a projection: the next evaluation projects again
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer.train()
    layer(seq, id_emb, real).add_emb.sum().backward()
    optimizer.step()
    layer.eval()
    calls.clear()
    with torch.no_grad():
        after = layer(seq, id_emb, real).add_emb
    assert calls == [40, 40]
    assert not torch.allclose(first, after)
    with torch.enable_grad():  # and it equals the per-batch (training-path) computation
        torch.testing.assert_close(after, layer(seq, id_emb, real).add_emb.detach())


def test_full_mean_padding_is_a_fixed_random_vector_that_never_trains():
    layer = make_layer(pooling="full_mean").train()
    seq, id_emb, real = random_batch()
    assert (seq == 0).any()
    pads = [layer.features.pad_0, layer.features.pad_1]
    assert all(p.abs().sum() > 0 for p in pads)  # like the authors' random padding row
    assert all(p.std().item() < 0.1 for p in pads)  # N(0, initializer_range²)
    out = layer(seq, id_emb, real)
    (out.add_emb.sum() + out.fused.sum() + out.aux_loss).backward()
    for table in layer.features.tables:
        assert table.weight.grad is not None
        assert (table.weight.grad[0] == 0).all()  # padding row: no gradient
        assert table.weight.grad[1:].abs().sum() > 0
    # a padding position contributes W·pad + b: changing the pad vector changes the pooled input
    layer.eval()
    with torch.no_grad():
        before, _ = capture_pooling(layer, seq, id_emb, real, grad=False)
        layer.features.pad_0.add_(1.0)
        after, _ = capture_pooling(layer, seq, id_emb, real, grad=False)
    short = real.sum(1) < seq.shape[1]
    assert not torch.allclose(before[short, 0], after[short, 0])
    torch.testing.assert_close(before[:, 1], after[:, 1])


def test_masked_mean_does_not_draw_random_numbers_for_padding_vectors():
    torch.manual_seed(5)
    make_layer(pooling="masked_mean")
    a = torch.rand(1)
    torch.manual_seed(5)
    make_layer(pooling="full_mean")
    assert torch.equal(a, torch.rand(1))  # the padding vectors use their own generator
