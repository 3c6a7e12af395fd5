"""PRISM on every registered backbone through the one plug-in mechanism."""
import sys

import pytest
import torch
from conftest import tiny_config

import run_recbole
from prism_recbole.config import Config
from prism_recbole.quick_start import build_model, load_data
from prism_recbole.utils import get_model, list_prism_models

# backbone, whether its own output at the last real item ignores later positions
BACKBONES = [
    ("SASRec", True),
    ("GRU4Rec", True),
    ("NARM", False),  # NARM attends over every non-zero position
    ("STAMP", False),  # STAMP averages all L positions, padding included (RecBole's STAMP)
    ("Caser", False),  # Caser convolves the whole window of L positions
    ("BERT4Rec", False),  # bidirectional
]
NAMES = [b for b, _ in BACKBONES]


def small(tiny, **extra):
    return dict(tiny, embedding_size=16, epochs=1, **extra)


def build(name, config_dict):
    config = Config(model=name, dataset="tiny", config_dict=config_dict)
    _, train_data, _, test_data = load_data(config)
    return config, build_model(config, train_data), train_data, test_data


def test_every_backbone_is_registered():
    assert set(list_prism_models()) >= {f"PRISM_{b}" for b in NAMES}


@pytest.mark.parametrize("backbone", NAMES)
def test_trains_and_evaluates_through_run_recbole(backbone, tmp_path, tiny, monkeypatch):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small(tiny)))
    for model in (f"PRISM_{backbone}", backbone):
        argv = [f"--model={model}", "--dataset=tiny", f"--config_files={path}"]
        monkeypatch.setattr(sys, "argv", ["run_recbole.py"] + argv)
        result = run_recbole.main(argv)
        assert result["model"] == model and "ndcg@10" in result["test_result"]
        assert result["checkpoint"] is not None


@pytest.mark.parametrize("backbone,causal", BACKBONES)
def test_nothing_after_the_last_real_item_matters(backbone, causal, tiny):
    _, model, _, test_data = build(f"PRISM_{backbone}", small(tiny))
    model.eval()
    model.prism_keep_add_emb = True
    batch = next(iter(test_data))[0]
    seq, seq_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    after = torch.arange(seq.size(1)).unsqueeze(0) >= seq_len.unsqueeze(1)
    if backbone == "BERT4Rec":  # the appended mask token sits at position len
        after = torch.arange(seq.size(1)).unsqueeze(0) > seq_len.unsqueeze(1)
    assert after.any()
    with torch.no_grad():
        before_scores = model.full_sort_predict(batch)
        before = model.prism_output
        garbage = batch.copy() if hasattr(batch, "copy") else batch
        changed = seq.clone()
        changed[after] = torch.randint(1, model.n_items, (int(after.sum()),))
        garbage.interaction[model.ITEM_SEQ] = changed
        after_scores = model.full_sort_predict(garbage)
        later = model.prism_output
    garbage.interaction[model.ITEM_SEQ] = seq
    if backbone != "BERT4Rec":
        # PRISM's own part never looks past the last real item
        torch.testing.assert_close(before.fused, later.fused)
        torch.testing.assert_close(before.gate_weights, later.gate_weights)
        real = ~after
        torch.testing.assert_close(before.add_emb[real], later.add_emb[real])
        assert (later.add_emb[after] == 0).all()
    if causal:
        torch.testing.assert_close(before_scores, after_scores)


@pytest.mark.parametrize("backbone", NAMES)
def test_aux_loss_reaches_the_total_loss_and_the_experts(backbone, tiny):
    _, model, train_data, _ = build(f"PRISM_{backbone}", small(tiny))
    model.train()
    batch = next(iter(train_data))
    torch.manual_seed(0)
    total = model.calculate_loss(batch)
    aux = model._prism_aux_loss
    assert aux.item() > 0
    backbone_class = get_model(backbone)
    torch.manual_seed(0)
    rec = backbone_class.calculate_loss(model, batch)  # the backbone's loss, PRISM still applied
    torch.testing.assert_close(total, rec + model._prism_aux_loss, rtol=1e-4, atol=1e-5)
    total.backward()
    for expert in model.prism.interaction_experts.experts:
        assert expert.fc1.weight.grad.abs().sum() > 0
    assert model.prism.adaptive_fusion.gate[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", NAMES)
def test_switched_off_prism_equals_the_plain_backbone(backbone, tiny):
    config_dict = small(tiny)
    _, plain, train_data, test_data = build(backbone, config_dict)
    _, prism, _, _ = build(f"PRISM_{backbone}", config_dict)
    missing, unexpected = prism.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("prism.") for k in missing)
    prism.prism_active = False
    batch = next(iter(test_data))[0]
    plain.eval(), prism.eval()
    with torch.no_grad():
        torch.testing.assert_close(prism.full_sort_predict(batch), plain.full_sort_predict(batch), rtol=0, atol=0)
    plain.train(), prism.train()
    train_batch = next(iter(train_data))
    torch.manual_seed(1)
    loss_plain = plain.calculate_loss(train_batch)
    torch.manual_seed(1)
    loss_prism = prism.calculate_loss(train_batch)
    torch.testing.assert_close(loss_prism, loss_plain, rtol=0, atol=0)
    # and switched on, PRISM does change the scores (so the comparison above can fail)
    prism.prism_active = True
    prism.eval()
    with torch.no_grad():
        assert not torch.allclose(prism.full_sort_predict(batch), plain.full_sort_predict(batch))


def test_bert4rec_masked_items_do_not_leak(tiny):
    _, model, train_data, _ = build("PRISM_BERT4Rec", small(tiny, hidden_dropout_prob=0.0, attn_dropout_prob=0.0))
    model.train()
    batch = next(iter(train_data))
    masked_seq = batch[model.MASK_ITEM_SEQ]
    pos_items, mask_index = batch[model.POS_ITEMS], batch[model.MASK_INDEX]
    # a sequence whose hidden items do not also appear unmasked in it
    for b in range(masked_seq.size(0)):
        hidden = pos_items[b][pos_items[b] > 0]
        visible = masked_seq[b][(masked_seq[b] > 0) & (masked_seq[b] != model.mask_token)]
        if len(hidden) and not set(hidden.tolist()) & set(visible.tolist()):
            break
    else:
        pytest.skip("no suitable sequence in the first batch")
    seq = masked_seq[b:b + 1]
    positions = mask_index[b][pos_items[b] > 0]

    def masked_outputs():
        torch.manual_seed(0)
        return model.forward(seq)[0, positions]

    before = masked_outputs()
    with torch.no_grad():
        for table in model.prism.features.tables:
            table.weight[hidden] = torch.randn(len(hidden), table.weight.shape[1]) * 10
    torch.testing.assert_close(masked_outputs(), before, rtol=0, atol=0)
    # the check can fail: changing a visible item's vectors does change them
    with torch.no_grad():
        for table in model.prism.features.tables:
            table.weight[visible[:1]] = torch.randn(1, table.weight.shape[1]) * 10
    assert not torch.allclose(masked_outputs(), before)
    # at prediction time the appended mask token is skipped too
    model.eval()
    item_seq = model.reconstruct_test_data(batch[model.ITEM_SEQ][:2], batch[model.ITEM_SEQ_LEN][:2])
    with torch.no_grad():
        model.forward(item_seq)
    pool = model.prism_pool_mask(item_seq)
    assert not pool[item_seq == model.mask_token].any()


def test_freeze_features_keeps_the_tables_fixed(tiny):
    _, frozen, train_data, _ = build("PRISM_SASRec", small(tiny, prism_freeze_features=True))
    _, tuned, _, _ = build("PRISM_SASRec", small(tiny))
    n_frozen = sum(p.numel() for p in frozen.parameters())
    n_tuned = sum(p.numel() for p in tuned.parameters())
    table_size = sum(t.numel() for t in (frozen.prism.features.table(0), frozen.prism.features.table(1)))
    assert n_tuned - n_frozen == table_size
    assert "prism.features.table_0" in frozen._ddp_params_and_buffers_to_ignore
    before = frozen.prism.features.table(0).clone()
    opt = torch.optim.Adam(frozen.parameters(), lr=0.1)
    frozen.train()
    frozen.calculate_loss(next(iter(train_data))).backward()
    opt.step()
    assert torch.equal(frozen.prism.features.table(0), before)


def test_item_side_id_plus_modal_scores_candidates_with_their_vectors(tiny):
    _, model, _, test_data = build("PRISM_SASRec", small(tiny, prism_item_side="id+modal"))
    model.eval()
    batch = next(iter(test_data))[0][torch.arange(2)]  # two users, so some items are unseen
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        # an item that is in no input sequence of the batch: only the candidate side sees it
        used = set(batch[model.ITEM_SEQ].unique().tolist())
        cold = next(i for i in range(1, model.n_items) if i not in used)
        model.prism.features.tables[0].weight[cold] += 5.0
        changed = model.full_sort_predict(batch)
    assert not torch.allclose(changed[:, cold], scores[:, cold])
    others = [i for i in range(model.n_items) if i != cold]
    torch.testing.assert_close(changed[:, others], scores[:, others])
    # with the default item side, that item's vectors do not touch its score
    _, default, _, _ = build("PRISM_SASRec", small(tiny))
    default.eval()
    with torch.no_grad():
        s1 = default.full_sort_predict(batch)
        default.prism.features.tables[0].weight[cold] += 5.0
        torch.testing.assert_close(default.full_sort_predict(batch), s1)


def test_item_level_fusion_runs_the_experts_once_per_distinct_item(tiny):
    _, model, train_data, _ = build("PRISM_GRU4Rec", small(tiny, prism_fusion_level="item"))
    model.train()
    model.prism_keep_add_emb = True
    batch = next(iter(train_data))
    rows = []
    model.prism.interaction_experts.experts[0].register_forward_hook(lambda m, i, o: rows.append(i[0].shape))
    model.calculate_loss(batch)
    distinct = batch[model.ITEM_SEQ].unique()
    n_real = int((distinct > 0).sum())
    # one clean pass + one pass per modality replaced, each over the distinct real items
    assert rows == [torch.Size([3, n_real, 2 * model.item_embedding.embedding_dim])]
    out = model.prism_output
    assert out.add_emb.shape == (*batch[model.ITEM_SEQ].shape, model.item_embedding.embedding_dim)
    torch.testing.assert_close(model.prism_gate_weights.sum(-1), torch.ones(len(batch)))


def test_bad_choice_options_name_the_option(tiny):
    with pytest.raises(ValueError, match="prism_item_side"):
        build("PRISM_SASRec", small(tiny, prism_item_side="modal"))
    with pytest.raises(ValueError, match="prism_fusion_level"):
        build("PRISM_SASRec", small(tiny, prism_fusion_level="user"))


def test_prediction_raises_when_the_backbone_skips_the_embedding_hook(tiny, monkeypatch):
    """A backbone that rebuilds its sequence tensor would be evaluated without PRISM: every
    entry point (not only calculate_loss) must refuse."""
    _, model, train_data, test_data = build("PRISM_SASRec", small(tiny))
    model.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        model.full_sort_predict(batch)  # fine as it is
    from recbole.model.sequential_recommender.sasrec import SASRec

    original = SASRec.forward

    def rebuilding_forward(self, item_seq, item_seq_len):
        return original(self, item_seq.clone(), item_seq_len)  # a new tensor: the hook misses it

    monkeypatch.setattr(SASRec, "forward", rebuilding_forward)
    for call in (model.full_sort_predict, model.predict, model.calculate_loss):
        data = next(iter(train_data)) if call == model.calculate_loss else batch
        with pytest.raises(RuntimeError, match="PRISM was not applied"):
            with torch.no_grad():
                call(data)


def test_item_level_bert4rec_gives_the_masked_position_the_users_vector(tiny):
    _, model, _, test_data = build("PRISM_BERT4Rec", small(tiny, prism_fusion_level="item"))
    model.eval()
    model.prism_keep_add_emb = True
    batch = next(iter(test_data))[0]
    item_seq = model.reconstruct_test_data(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    with torch.no_grad():
        model.forward(item_seq)
    out = model.prism_output
    at_mask = out.add_emb[item_seq == model.mask_token]  # [B, D]
    assert at_mask.shape[0] == item_seq.shape[0] and at_mask.abs().sum(-1).gt(0).all()
    torch.testing.assert_close(at_mask, out.fused)  # z = Σ_k w_k h̄_k of the visible items


def test_what_prism_added_is_not_kept_unless_asked(tiny):
    _, model, _, test_data = build("PRISM_SASRec", small(tiny))
    model.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        model.full_sort_predict(batch)
        assert model.prism_output.add_emb is None and model.prism_output.fused is not None
        model.prism_keep_add_emb = True
        model.full_sort_predict(batch)
    assert model.prism_output.add_emb.shape[:2] == batch[model.ITEM_SEQ].shape


def test_id_dropout_zeroes_the_id_embedding_of_some_positions_in_training_only(tiny):
    _, model, train_data, _ = build("PRISM_SASRec", small(tiny, prism_id_dropout=0.5))
    batch = next(iter(train_data))
    seq, seq_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    model.prism_keep_add_emb = True
    seen = []
    model.item_embedding.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    ids = model.item_embedding.weight.detach()[seq]
    real = model.prism_pool_mask(seq, seq_len)
    for training in (True, False):
        model.train(training)
        seen.clear()
        torch.manual_seed(3)
        with torch.no_grad():
            model.forward(seq, seq_len)
        added = model.prism_output.add_emb
        id_part = seen[0] - added  # what is left of E[s_t] at each position
        kept = torch.isclose(id_part, ids, atol=1e-6).all(-1)
        dropped = torch.isclose(id_part, torch.zeros_like(ids), atol=1e-6).all(-1)
        assert (kept | dropped)[real].all()
        share = dropped[real].float().mean().item()
        if training:
            assert 0.3 < share < 0.7, share
        else:
            assert share == 0
    with pytest.raises(ValueError, match="prism_id_dropout must be in"):
        build("PRISM_SASRec", small(tiny, prism_id_dropout=1.0))
