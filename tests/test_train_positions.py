"""train_positions: all -- windows, targets, causality, causal PRISM, the losses."""
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import small_prism_tables, tiny_config, write_dataset

import run_recbole
from prism_recbole.config import Config
from prism_recbole.data.positions import append_targets, window_rows
from prism_recbole.model.positions import (
    AllPositionsMixin,
    bce_loss,
    chunked_cross_entropy,
    gbce_beta,
    gbce_loss,
    next_item_targets,
    per_position_sampled_loss,
    sampled_softmax_loss,
    scored_targets,
)
from prism_recbole.model.prism_layer import PRISMLayer
from prism_recbole.quick_start import build_model, load_data

M = 4  # MAX_ITEM_LIST_LENGTH of these tests


def histories(u, n, rng):
    """User u's history: items 100u+1 .. 100u+n would not fit the tiny catalogue, so a
    deterministic pattern of distinct items per user."""
    return [(u * 7 + t * 3) % 24 + 1 for t in range(n)]


@pytest.fixture
def data(tmp_path):
    return write_dataset(str(tmp_path / "data"), n_users=12, inter_items=histories)


def config_for(model, data_path, tmp_path, **extra):
    options = tiny_config(data_path, str(tmp_path / "saved"), MAX_ITEM_LIST_LENGTH=M,
                          embedding_size=16, hidden_dropout_prob=0.0, attn_dropout_prob=0.0,
                          dropout_prob=0.0, prism_gate_dropout=0.0)
    options.update(extra)
    return Config(model=model, dataset="tiny", config_dict=options)


def user_histories(dataset):
    """token history per user token, in time order, from the raw .inter file."""
    path = os.path.join(dataset.dataset_path, "tiny.inter")
    rows = [line.split("\t") for line in open(path).read().splitlines()[1:]]
    out = {}
    for u, i, t in sorted(rows, key=lambda r: (int(r[0]), float(r[2]))):
        out.setdefault(u, []).append(i)
    return out


# ---- the data ---------------------------------------------------------------------------
def test_window_rows_keep_the_last_row_and_every_mth_before_it():
    users = np.array([1, 1, 1, 1, 1, 1, 1, 2, 2, 3])  # K = 7, 2, 1 rows
    assert window_rows(users, 3).tolist() == [0, 3, 6, 8, 9]
    assert window_rows(users, 10).tolist() == [6, 8, 9]
    interleaved = np.array([1, 2, 1, 2, 1])  # rows need not be grouped
    assert window_rows(interleaved, 2).tolist() == [0, 3, 4]


@pytest.mark.parametrize("stride", [None, 3, 1])
def test_windows_cover_every_training_target_once_and_never_a_held_out_one(stride, data, tmp_path):
    config = config_for("SASRec", data, tmp_path, train_positions="all", position_stride=stride)
    dataset, train_data, valid_data, test_data = load_data(config)
    inter = train_data.dataset.inter_feat
    uid, iid = dataset.uid_field, dataset.iid_field
    lengths = inter[dataset.item_list_length_field]
    targets = scored_targets(inter[dataset.item_id_list_field], lengths, inter[iid], stride or M)
    if stride is not None:  # a scored position has min(its index, M - S) items before it at least
        positions = torch.arange(M).expand_as(targets)
        assert ((positions >= M - stride) | (targets == 0) | (lengths < M).unsqueeze(1)).all()
    seen = {}
    for u, row in zip(inter[uid].tolist(), targets.tolist()):
        seen.setdefault(u, []).extend(i for i in row if i > 0)
    held_out = {}
    for split in (valid_data, test_data):
        feat = split.dataset.inter_feat
        for u, i in zip(feat[uid].tolist(), feat[iid].tolist()):
            held_out.setdefault(u, []).append(i)
    for token, items in user_histories(dataset).items():
        u = dataset.field2token_id[uid][token]
        ids = [dataset.field2token_id[iid][i] for i in items]
        # training targets: the 2nd .. (n-2)th items; valid = (n-1)th, test = nth
        assert sorted(seen[u]) == sorted(ids[1:-2]), token
        assert held_out[u] == ids[-2:]
        assert not set(held_out[u]) & set(seen[u]) or len(set(ids)) < len(ids)
    # and the prefix mode keeps one row per training target
    last = load_data(config_for("SASRec", data, tmp_path))[1].dataset.inter_feat
    assert len(last) == sum(len(v) for v in seen.values())
    assert len(inter) == len(last) if stride == 1 else len(inter) < len(last)  # stride 1: every row


def test_append_targets_by_hand():
    from recbole.data.interaction import Interaction

    inter = Interaction({"item_id_list": torch.tensor([[5, 6, 0, 0], [8, 9, 10, 11], [3, 0, 0, 0]]),
                         "item_length": torch.tensor([2, 4, 1]), "item_id": torch.tensor([7, 12, 4])})
    append_targets(inter, "item_id_list", "item_length", "item_id")
    assert inter["item_id_list"].tolist() == [[5, 6, 7, 0], [9, 10, 11, 12], [3, 4, 0, 0]]
    assert inter["item_length"].tolist() == [3, 4, 2]


@pytest.mark.parametrize("stride", [None, 2])
def test_bert4rec_windows_hold_every_training_target_and_end_with_it(stride, data, tmp_path):
    """BERT4Rec (masked items) with train_positions: all: one window per M training targets,
    each ending with its row's target; with the default stride every training target once."""
    # mask_ratio x M must be >= 1: RecBole's transform keeps int(mask_ratio * M) masked items
    config = config_for("BERT4Rec", data, tmp_path, train_positions="all", position_stride=stride,
                        mask_ratio=0.5)
    dataset, train_data, valid_data, _ = load_data(config)
    inter = train_data.dataset.inter_feat
    uid, iid = dataset.uid_field, dataset.iid_field
    seq, lengths = inter[dataset.item_id_list_field], inter[dataset.item_list_length_field]
    assert (seq[torch.arange(len(seq)), lengths - 1] == inter[iid]).all()  # ends with its target
    assert ((seq > 0).sum(1) == lengths).all() and (lengths <= M).all()
    windows = {}
    for u, row, n in zip(inter[uid].tolist(), seq.tolist(), lengths.tolist()):
        windows.setdefault(u, []).append(row[:n])
    for token, items in user_histories(dataset).items():
        u = dataset.field2token_id[uid][token]
        ids = [dataset.field2token_id[iid][i] for i in items]
        held = [i for w in windows[u] for i in w]
        # training targets: the 2nd .. (n-2)th items; the 1st is in the first window if it fits
        if stride is None:  # disjoint windows: every training target once
            assert held in (ids[:-2], ids[1:-2]), token
        else:  # overlapping windows: every training target in at least one
            assert set(ids[1:-2]) <= set(held) <= set(ids[:-2]), token
        assert windows[u][-1] == ids[:-2][-M:], token
    # it trains with its own masked-item loss (RecBole's class, no every-position mixin)
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec

    model = build_model(config, train_data)
    assert type(model) is BERT4Rec
    loss = model.calculate_loss(next(iter(train_data)))
    assert torch.isfinite(loss) and loss.item() > 0


def test_with_a_stride_only_the_last_positions_are_scored():
    seq = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11], [3, 0, 0, 0]])
    lengths = torch.tensor([3, 4, 1])
    last = torch.tensor([12, 13, 4])
    assert scored_targets(seq, lengths, last, 2).tolist() == [
        [0, 7, 12, 0], [0, 0, 11, 13], [4, 0, 0, 0]]
    assert scored_targets(seq, lengths, last, 4).tolist() == next_item_targets(seq, lengths, last).tolist()


def test_targets_are_the_next_items_on_a_hand_made_history():
    seq = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11], [3, 0, 0, 0]])
    lengths = torch.tensor([3, 4, 1])
    last = torch.tensor([12, 13, 4])
    assert next_item_targets(seq, lengths, last).tolist() == [
        [6, 7, 12, 0], [9, 10, 11, 13], [4, 0, 0, 0]]


# ---- the model ---------------------------------------------------------------------------
CAUSAL_MODELS = ["SASRec", "GRU4Rec", "PRISM_SASRec", "PRISM_GRU4Rec", "SASRecF_MM", "FDSA_MM"]


def all_outputs(model, seq, lengths):
    model._all_positions = True
    try:
        return model.forward(seq, lengths)
    finally:
        model._all_positions = False


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_items_after_t_change_no_output_up_to_t(name, data, tmp_path):
    config = config_for(name, data, tmp_path, train_positions="all")
    _, train_data, _, _ = load_data(config)
    model = build_model(config, train_data).eval()
    assert isinstance(model, AllPositionsMixin)
    batch = next(iter(train_data))
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    full = lengths == M
    assert full.any()
    seq, lengths = seq[full], lengths[full]
    with torch.no_grad():
        before = all_outputs(model, seq, lengths)
        for t in range(M - 1):
            changed = seq.clone()
            changed[:, t + 1:] = torch.randint(1, model.n_items, changed[:, t + 1:].shape)
            after = all_outputs(model, changed, lengths)
            torch.testing.assert_close(after[:, :t + 1], before[:, :t + 1])
            assert not torch.allclose(after[:, t + 1:], before[:, t + 1:])  # the check can fail


def test_causal_prism_at_t_equals_the_last_mode_on_the_prefix():
    tables, missing, common = small_prism_tables()
    D = common["hidden_size"]
    causal = PRISMLayer(tables, missing, causal=True, **common).eval()
    last = PRISMLayer(tables, missing, **common).eval()
    last.load_state_dict(causal.state_dict())
    seq = torch.tensor([[4, 5, 9, 2, 0, 0], [1, 3, 8, 11, 12, 7]])
    id_emb = torch.randn(2, 6, D)
    real = seq > 0
    with torch.no_grad():
        out = causal(seq, id_emb, real)
        for t in range(6):
            prefix = seq.clone()
            prefix[:, t + 1:] = 0
            ref = last(prefix, id_emb, prefix > 0)
            for b in range(2):
                if real[b, t]:  # position t of the causal pass = the last position of the prefix
                    torch.testing.assert_close(out.add_emb[b, t], ref.add_emb[b, t])
        # what it reports (z, gate) is the last real position's
        torch.testing.assert_close(out.fused, last(seq, id_emb, real).fused)
        torch.testing.assert_close(out.gate_weights, last(seq, id_emb, real).gate_weights)


def test_causal_prism_aux_loss_averages_over_real_positions_only():
    torch.manual_seed(0)
    n, D = 30, 8
    tables = [torch.randn(n, 6), torch.randn(n, 5)]
    missing = [torch.zeros(n, dtype=torch.bool)] * 2
    # noise_std 0: the replaced modality is a zero vector, so the passes are deterministic
    layer = PRISMLayer(tables, missing, hidden_size=D, expert_hidden=16, causal=True,
                       noise_std=0.0, gate_dropout=0.0).train()
    seq = torch.tensor([[4, 5, 9, 0, 0, 0]])
    id_emb = torch.randn(1, 6, D)
    a = layer(seq, id_emb, seq > 0).aux_loss
    longer = torch.cat([id_emb, torch.randn(1, 3, D)], dim=1)  # more padding: same loss
    b = layer(torch.cat([seq, torch.zeros(1, 3, dtype=torch.long)], 1), longer,
              torch.cat([seq, torch.zeros(1, 3, dtype=torch.long)], 1) > 0).aux_loss
    assert a.item() > 0
    torch.testing.assert_close(a, b)
    # = the mean of the per-position losses of the three prefixes, each computed alone
    per_prefix = []
    for t in range(3):
        prefix = seq.clone()
        prefix[:, t + 1:] = 0
        last = PRISMLayer(tables, missing, hidden_size=D, expert_hidden=16, noise_std=0.0,
                          gate_dropout=0.0).train()
        last.load_state_dict(layer.state_dict())
        per_prefix.append(last(prefix, id_emb, prefix > 0).aux_loss)
    torch.testing.assert_close(a, torch.stack(per_prefix).mean())


def test_causal_prism_refuses_full_mean_and_item_level():
    tables, missing = [torch.randn(5, 3)], [torch.zeros(5, dtype=torch.bool)]
    for bad in (dict(pooling="full_mean"), dict(fusion_level="item")):
        with pytest.raises(ValueError, match="train_positions: all"):
            PRISMLayer(tables, missing, hidden_size=4, causal=True, **bad)


@pytest.mark.parametrize("name", ["PRISM_BERT4Rec", "MMSR", "NARM", "STAMP", "Caser",
                                  "PRISM_NARM"])
def test_models_that_cannot_score_every_position_get_one_clear_error(name, data, tmp_path):
    with pytest.raises(ValueError, match=f"train_positions: all.*{name}.*train_positions: last"):
        config_for(name, data, tmp_path, train_positions="all")


def test_bad_options_name_the_option(data, tmp_path):
    with pytest.raises(ValueError, match="mask_ratio.*MAX_ITEM_LIST_LENGTH"):  # int(0.2 x 4) = 0
        config_for("BERT4Rec", data, tmp_path, mask_ratio=0.2)
    with pytest.raises(ValueError, match="train_positions"):
        config_for("SASRec", data, tmp_path, train_positions="every")
    for key, value in (("position_loss", "ce"), ("position_negatives", 64), ("gbce_t", 0.5)):
        with pytest.raises(ValueError, match=f"option {key} has no effect on BERT4Rec"):
            config_for("BERT4Rec", data, tmp_path, train_positions="all", mask_ratio=0.5, **{key: value})
    config_for("BERT4Rec", data, tmp_path, train_positions="all", mask_ratio=0.5, position_stride=2)
    for key, value in (("position_loss", "hinge"), ("position_negatives", 0),
                       ("position_sampler", "popular"), ("gbce_t", 2),
                       ("position_negative_sharing", "user")):
        config = config_for("SASRec", data, tmp_path, train_positions="all", **{key: value})
        _, train_data, _, _ = load_data(config)
        with pytest.raises(ValueError, match=key):
            build_model(config, train_data)
    for stride in (M + 1, 0, "half"):  # checked when the windows are cut
        config = config_for("SASRec", data, tmp_path, train_positions="all", position_stride=stride)
        with pytest.raises(ValueError, match="position_stride"):
            load_data(config)


def test_last_mode_is_unchanged(data, tmp_path):
    from recbole.model.sequential_recommender.sasrec import SASRec

    config = config_for("SASRec", data, tmp_path)
    _, train_data, _, _ = load_data(config)
    model = build_model(config, train_data)
    assert type(model) is SASRec  # RecBole's own class, RecBole's own loss
    batch = next(iter(train_data))
    torch.manual_seed(0)
    seq_output = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    logits = seq_output @ model.item_embedding.weight.t()
    torch.testing.assert_close(model.calculate_loss(batch), F.cross_entropy(logits, batch[model.POS_ITEM_ID]))


# ---- the losses against a hand computation ----------------------------------------------
def test_chunked_ce_equals_the_full_softmax_and_its_gradient():
    torch.manual_seed(0)
    h = torch.randn(37, 5, requires_grad=True)
    w = torch.randn(11, 5, requires_grad=True)
    y = torch.randint(0, 11, (37,))
    loss = chunked_cross_entropy(h, w, y, chunk_size=8)
    hand = torch.stack([-(torch.log_softmax(h[t] @ w.t(), -1)[y[t]]) for t in range(37)]).mean()
    torch.testing.assert_close(loss, hand)
    g1 = torch.autograd.grad(loss, (h, w))
    g2 = torch.autograd.grad(hand, (h, w))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_sampled_softmax_by_hand_with_an_accidental_hit_masked():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pos = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # the 2nd negative is position 1's own target
    hit = torch.tensor([[False, False], [False, True]])
    loss = sampled_softmax_loss(h, pos, neg, hit)
    l0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + math.exp(0)))
    l1 = -math.log(math.exp(2) / (math.exp(2) + math.exp(2)))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


@pytest.mark.parametrize("loss_name", ["sampled_softmax", "gbce"])
def test_per_position_negatives_by_hand_in_chunks_with_gradients(loss_name):
    torch.manual_seed(0)
    h = torch.randn(7, 3, requires_grad=True)
    w = torch.randn(9, 3, requires_grad=True)
    y = torch.tensor([1, 2, 3, 4, 5, 6, 7])
    neg = torch.randint(1, 9, (7, 4))
    neg[0, 2] = 1  # an accidental hit: position 0's own target among its negatives
    beta = gbce_beta(4, 8, 0.5)
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    terms = []
    for t in range(7):
        pos = h[t] @ w[y[t]]
        negs = [h[t] @ w[j] for j in neg[t] if j != y[t]]
        if loss_name == "sampled_softmax":
            terms.append(torch.logsumexp(torch.stack([pos] + negs), 0) - pos)
        else:
            terms.append(-(beta * F.logsigmoid(pos) + sum(F.logsigmoid(-x) for x in negs)) / 5)
    hand = torch.stack(terms).mean()
    got = per_position_sampled_loss(loss_name, h, w, y, neg, chunk_size=3, beta=beta)
    torch.testing.assert_close(got, hand)
    g1 = torch.autograd.grad(got, (h, w))
    g2 = torch.autograd.grad(hand, (h, w))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    del s


@pytest.mark.parametrize("sharing", ["position", "batch"])
def test_negative_sharing_draws_per_position_or_once(sharing, data, tmp_path, monkeypatch):
    config = config_for("SASRec", data, tmp_path, train_positions="all",
                        position_loss="sampled_softmax", position_negatives=5,
                        position_negative_sharing=sharing)
    _, train_data, _, _ = load_data(config)
    model = build_model(config, train_data)
    shapes = []
    real_randint = torch.randint

    def spy(*args, **kwargs):
        out = real_randint(*args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "randint", spy)
    h = torch.randn(6, model.item_embedding.embedding_dim)
    loss = model.positions_loss(h, torch.tensor([1, 2, 3, 4, 5, 6]))
    assert torch.isfinite(loss)
    assert shapes == ([(6, 5)] if sharing == "position" else [(5,)])


def test_bce_by_hand():
    pos, neg = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    keep = torch.tensor([True, False])
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    hand = (-math.log(s(2.0)) - math.log(1 - s(0.5)) + -math.log(s(-1.0))) / 2
    assert bce_loss(pos, neg, keep).item() == pytest.approx(hand, rel=1e-6)


def test_gbce_by_hand():
    # gSASRec: alpha = k / (|I| - 1); t = 0 -> beta = 1 (BCE); t = 1 -> beta = alpha
    assert gbce_beta(4, 101, 0.0) == pytest.approx(1.0)
    assert gbce_beta(4, 101, 1.0) == pytest.approx(0.04)
    beta = gbce_beta(4, 101, 0.75)
    assert beta == pytest.approx(0.04 * (0.75 * (1 - 25) + 25))
    pos = torch.tensor([1.5])
    neg = torch.tensor([[0.2, -0.3, 1.0, 0.0]])
    hit = torch.tensor([[False, False, True, False]])
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    hand = -(beta * math.log(s(1.5)) + math.log(1 - s(0.2)) + math.log(1 - s(-0.3))
             + math.log(1 - s(0.0))) / 5
    assert gbce_loss(pos, neg, hit, beta).item() == pytest.approx(hand, rel=1e-6)


def test_in_batch_softmax_is_log_q_corrected(data, tmp_path):
    config = config_for("SASRec", data, tmp_path, train_positions="all",
                        position_loss="sampled_softmax", position_sampler="in_batch")
    _, train_data, _, _ = load_data(config)
    model = build_model(config, train_data)
    h = torch.randn(3, model.item_embedding.embedding_dim)
    y = torch.tensor([2, 5, 2])
    w = model.item_embedding.weight.detach()
    cand = torch.tensor([2, 5])
    logits = h @ w[cand].t() - model.position_log_q[cand]
    hand = F.cross_entropy(logits, torch.tensor([0, 1, 0]))
    with torch.no_grad():
        torch.testing.assert_close(model.positions_loss(h, y), hand)
    assert torch.isfinite(model.position_log_q).all()


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce", "gbce"])
def test_all_positions_loss_on_a_batch_equals_the_loss_of_its_real_positions(loss, data, tmp_path):
    config = config_for("PRISM_SASRec", data, tmp_path, train_positions="all", position_loss=loss,
                        position_negatives=8, prism_aux_loss=False)
    _, train_data, _, _ = load_data(config)
    model = build_model(config, train_data).train()
    batch = next(iter(train_data))
    torch.manual_seed(3)
    got = model.calculate_loss(batch)
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    targets = next_item_targets(seq, lengths, batch[model.POS_ITEM_ID])
    with model._prism_call(batch):
        h = all_outputs(model, seq, lengths)
    torch.manual_seed(3)
    want = model.positions_loss(h[targets > 0], targets[targets > 0])
    torch.testing.assert_close(got, want)


def test_trains_and_evaluates_through_run_recbole(data, tmp_path, monkeypatch):
    options = tiny_config(data, str(tmp_path / "saved"), MAX_ITEM_LIST_LENGTH=M, embedding_size=16)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(options))
    results = {}
    for model in ("PRISM_SASRec", "SASRec"):
        argv = [f"--model={model}", "--dataset=tiny", f"--config_files={path}", "--epochs=2",
                "--train_positions=all", "--position_loss=sampled_softmax", "--position_negatives=16"]
        monkeypatch.setattr(sys, "argv", ["run_recbole.py"] + argv)
        results[model] = run_recbole.main(argv)
        assert "ndcg@10" in results[model]["test_result"]
    # the saved checkpoint reloads into the every-position class and gives the same numbers
    from prism_recbole.quick_start import load_model

    loaded = load_model(results["PRISM_SASRec"]["checkpoint"])
    assert isinstance(loaded.model, AllPositionsMixin) and loaded.model.prism.causal
