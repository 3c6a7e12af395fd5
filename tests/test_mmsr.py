"""MMSR: the graph by hand and against the authors' builder, the gate, k-means, end to end."""
import os
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config, write_dataset

import run_recbole
from prism_recbole.config import Config
from prism_recbole.model.sequential_recommender.mmsr import (
    MMSR,
    AttentionMasks,
    MSGraphBuilder,
    kmeans,
    nearest_centroids,
)
from prism_recbole.quick_start import build_model, load_data, run
from prism_recbole.utils import get_model, get_trainer

METRICS = {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (5, 10)}
SMALL = {"embedding_size": 16, "mmsr_n_clusters": 4, "mmsr_link_k": 2}


def mmsr_config(tiny, **overrides):
    return dict(tiny, **SMALL, **overrides)


def model_and_data(tiny, **overrides):
    config = Config(model="MMSR", dataset="tiny", config_dict=mmsr_config(tiny, **overrides))
    _, train_data, _, test_data = load_data(config)
    return build_model(config, train_data), train_data, test_data


# --------------------------------------------------------------------------- the graph

# Items 1..3 (0 is padding), two modalities with one link each (k = 1):
#   image codes: item 1 -> 0, item 2 -> 1, item 3 -> 0 (items 1 and 3 share a code)
#   text codes:  item 1 -> 1, item 2 -> 0, item 3 -> none (missing text)
IMG = torch.tensor([[-1], [0], [1], [0]])
TXT = torch.tensor([[-1], [1], [0], [-1]])


def hand_builder(**kwargs):
    return MSGraphBuilder([IMG, TXT], n_nodes=[2, 2], n_items=4, **kwargs)


def test_graph_of_a_hand_made_sequence():
    # row 0: 1, 2, 1, 3 (item 1 repeated); row 1: 3, 3 then garbage after its length
    seq = torch.tensor([[1, 2, 1, 3], [3, 3, 2, 1]])
    graph = hand_builder()(seq, torch.tensor([4, 2]))
    # blocks: items (3 columns: row 0 has 3 distinct items), image codes (2), text codes (2)
    assert graph.blocks == ((0, 3), (3, 2), (5, 2))
    # row 0 nodes: item 1, item 2, item 3 | img 0, img 1 | txt 0, txt 1  (item 1 is one node)
    assert graph.node_id[0].tolist() == [1, 2, 3, 0, 1, 0, 1]
    assert graph.node_type[0].tolist() == [1, 1, 1, 2, 2, 3, 3]
    # row 1 nodes: item 3 | img 0 | no text (item 3 has none); the rest is padding
    assert graph.node_id[1].tolist() == [3, -1, -1, 0, -1, -1, -1]
    assert graph.node_type[1].tolist() == [1, 0, 0, 2, 0, 0, 0]
    # relation ids: 1 self, 2 out, 3 in, 4 both directions, 5/6 item<->img,
    # 7/8 item<->txt, 9/10 img<->txt
    expected_row0 = [
        #   i1  i2  i3  m0  m1  t0  t1
        [1, 4, 2, 5, 0, 0, 7],  # item 1: 1->2 and 2->1, 1->3; its img 0 and txt 1
        [4, 1, 0, 0, 5, 7, 0],  # item 2: img 1, txt 0
        [3, 0, 1, 5, 0, 0, 0],  # item 3: reached from 1; img 0 (shared); no text node
        [6, 0, 6, 1, 4, 0, 9],  # img 0: 0->1->0 (the repeat 0->0 at 1->3 adds nothing)
        [0, 6, 0, 4, 1, 9, 0],  # img 1
        [0, 8, 0, 0, 10, 1, 4],  # txt 0: 1->0->1
        [8, 0, 0, 10, 0, 4, 1],  # txt 1 (nothing after position 2: item 3 has no text)
    ]
    expected_row1 = [[0] * 7 for _ in range(7)]
    expected_row1[0][0] = expected_row1[3][3] = 1  # item 3 repeated: one node, no 3->3 edge
    expected_row1[0][3], expected_row1[3][0] = 5, 6
    assert graph.adj.dtype == torch.uint8
    assert graph.adj[0].tolist() == expected_row0
    assert graph.adj[1].tolist() == expected_row1
    # readout: the node of the last real item (row 0: item 3, row 1: item 3)
    assert graph.last_node.tolist() == [2, 0]
    # slot -> node: position 2 of row 0 holds item 1 (node 0), img 0 (node 3), txt 1 (node 6)
    assert graph.slot_node[0, 2].tolist() == [0, 3, 6]
    assert graph.slot_node[0, 3].tolist() == [2, 3, -1]  # item 3: no text slot
    assert (graph.slot_node[1, 2:] == -1).all()  # after the length: nothing


def test_repeated_item_keeps_its_code_edges_unless_legacy():
    # k = 2: item 1 -> image codes {0, 1}; the sequence 1, 1 steps from code 0 to code 1
    links = torch.tensor([[-1, -1], [0, 1]])
    seq, length = torch.tensor([[1, 1]]), torch.tensor([2])
    fixed = MSGraphBuilder([links], n_nodes=[2], n_items=2)(seq, length)
    legacy = MSGraphBuilder([links], n_nodes=[2], n_items=2, legacy_repeat_edges=True)(seq, length)
    # nodes: item 1 | code 0, code 1
    assert fixed.adj[0].tolist() == [[1, 5, 5], [6, 1, 4], [6, 4, 1]]
    assert legacy.adj[0].tolist() == [[1, 5, 5], [6, 1, 0], [6, 0, 1]]


def reference_adjacency(seq, links, legacy):
    """The authors' per-user builder (data_utils.Data.__getitem__), loop by loop, for any
    number of modalities; nodes ordered items, then modality 1, ... each sorted by id."""
    n_types = 1 + len(links)
    slots = [[(0, i)] + [(m + 1, int(c)) for m, link in enumerate(links) for c in link[i] if c >= 0]
             for i in seq]
    nodes = sorted({s for pos in slots for s in pos})
    index = {node: k for k, node in enumerate(nodes)}
    pair_id, p = {}, 0
    for a in range(n_types):
        for b in range(a + 1, n_types):
            pair_id[a, b], pair_id[b, a] = 5 + 2 * p, 6 + 2 * p
            p += 1
    adj = np.zeros((len(nodes), len(nodes)), dtype=int)
    for pos in slots:
        for node in pos:
            adj[index[node], index[node]] = 1
        for x in pos:
            for y in pos:
                if x[0] != y[0]:
                    adj[index[x], index[y]] = pair_id[x[0], y[0]]

    def sequential(u, v):
        if u == v or adj[u, v] == 4:
            return False
        if adj[v, u] == 2:
            adj[u, v] = adj[v, u] = 4
        else:
            adj[u, v], adj[v, u] = 2, 3
        return True

    for t in range(len(seq) - 1):
        added = sequential(index[slots[t][0]], index[slots[t + 1][0]])
        if legacy and not added:
            continue  # the authors' `continue` also skips this step's modality edges
        for tau in range(1, n_types):
            for x in (s for s in slots[t] if s[0] == tau):
                for y in (s for s in slots[t + 1] if s[0] == tau):
                    sequential(index[x], index[y])
    return adj


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("mode", ["cluster", "item"])
def test_graph_matches_the_authors_builder_on_random_sequences(legacy, mode):
    rng = np.random.default_rng(0)
    n_items = 9
    if mode == "cluster":  # three modalities, k = 2, 2, 1 codes out of 5, 4, 3
        n_codes, ks = [5, 4, 3], [2, 2, 1]
        links = [torch.tensor(np.stack([rng.choice(n, size=k, replace=False) for _ in range(n_items)]))
                 for n, k in zip(n_codes, ks)]
    else:  # one node per item and modality (item-aligned layout)
        n_codes = [n_items] * 3
        links = [torch.arange(n_items).unsqueeze(1) for _ in range(3)]
    for link in links:
        link[0] = -1
        link[rng.random(n_items) < 0.3] = -1  # missing vectors: no node of this modality
    builder = MSGraphBuilder(links, n_nodes=n_codes, n_items=n_items, legacy_repeat_edges=legacy,
                             item_aligned=mode == "item")
    batch, length = 16, 10
    seq = torch.tensor(rng.integers(1, 5, size=(batch, length)))  # few items: many repeats
    seq_len = torch.tensor(rng.integers(1, length + 1, size=batch))
    graph = builder(seq, seq_len)
    for b in range(batch):
        real = (graph.node_type[b] > 0).nonzero().squeeze(1)
        got = graph.adj[b][real][:, real].numpy()
        expected = reference_adjacency(seq[b, :seq_len[b]].tolist(), links, legacy)
        np.testing.assert_array_equal(got, expected)
    # every slot points at a node of its own type holding its id
    slot_ids = builder.slot_ids(seq, seq_len)
    has = graph.slot_node >= 0
    assert torch.equal(has, slot_ids >= 0)
    rows = torch.arange(batch).view(-1, 1, 1).expand_as(has)
    assert torch.equal(graph.node_id[rows[has], graph.slot_node[has]], slot_ids[has])


# --------------------------------------------------------------------------- k-means


def test_kmeans_is_deterministic_and_finds_separated_clusters():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.tensor(np.concatenate([c + rng.normal(scale=0.1, size=(20, 2)) for c in centres]))
    first, again = kmeans(x, 3, seed=5), kmeans(x, 3, seed=5)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    found = sorted(map(tuple, first.round().tolist()))
    assert found == sorted(map(tuple, centres.tolist()))
    links = nearest_centroids(x, first, 2)
    assert links.shape == (60, 2) and (links[:, 0] != links[:, 1]).all()
    # fewer distinct points than clusters: fewer centroids, no error
    assert len(kmeans(torch.ones(5, 2), 3, seed=0)) == 1


def test_cluster_links_are_deterministic_under_the_seed(tiny):
    a, _, _ = model_and_data(tiny, mmsr_modality_node="cluster")
    b, _, _ = model_and_data(tiny, mmsr_modality_node="cluster")
    for m in range(2):
        assert torch.equal(a.graph_builder.links(m), b.graph_builder.links(m))
        torch.testing.assert_close(a.code_embeddings[m].weight, b.code_embeddings[m].weight)
    assert a.graph_builder.links(0).shape == (a.n_items, 2)
    assert (a.graph_builder.links(0)[0] == -1).all()  # padding item: no node


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("node", ["cluster", "item"])
def test_update_gate_weights_sum_to_one_per_node(tiny, node):
    model, _, test_data = model_and_data(tiny, mmsr_modality_node=node)
    model.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        _, gate, graph = model.node_states(batch["item_id_list"], batch["item_length"])
    assert scores.shape == (len(batch), model.n_items)
    assert gate.shape == graph.node_type.shape + (2,)
    assert (gate >= 0).all()
    torch.testing.assert_close(gate.sum(-1), torch.ones(gate.shape[:2]))
    assert (graph.node_type >= 2).any()  # modality nodes are there
    # forward keeps the gate of the readout node (the last item's)
    torch.testing.assert_close(model.mmsr_gate_weights, gate[torch.arange(len(batch)), graph.last_node])


@pytest.mark.parametrize("node, legacy", [("cluster", False), ("cluster", True),
                                          ("item", False), ("item", True)])
def test_readout_only_last_layer_equals_the_full_layer(tiny, node, legacy):
    model, _, test_data = model_and_data(tiny, mmsr_modality_node=node, mmsr_legacy_order=legacy,
                                         mmsr_legacy_qkv=legacy, n_layers=2)
    model.eval()
    batch = next(iter(test_data))[0]
    seq, seq_len = batch["item_id_list"], batch["item_length"]
    with torch.no_grad():
        states, _, graph = model.node_states(seq, seq_len)
        torch.testing.assert_close(model(seq, seq_len), states[torch.arange(len(batch)), graph.last_node])


@pytest.mark.parametrize("legacy_order", [False, True])
def test_item_groups_give_the_dense_heterogeneous_attention(tiny, legacy_order):
    """With one node per item and modality, attention within each item's group of nodes is
    the masked N x N heterogeneous attention, computed cheaply."""
    model, _, test_data = model_and_data(tiny, mmsr_modality_node="item", mmsr_legacy_order=legacy_order)
    model.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        graph = model.graph_builder(batch["item_id_list"], batch["item_length"])
        h = model.node_inputs(graph)
        dense, dense_gate = model.layer(h, AttentionMasks.of(graph, item_groups=False))
        grouped, grouped_gate = model.layer(h, AttentionMasks.of(graph, item_groups=True))
    real = graph.node_mask
    torch.testing.assert_close(grouped[real], dense[real])
    torch.testing.assert_close(grouped_gate[real], dense_gate[real])


def test_output_ignores_everything_after_the_last_real_item(tiny):
    model, _, test_data = model_and_data(tiny, mmsr_modality_node="item")
    model.eval()
    batch = next(iter(test_data))[0]
    seq, seq_len = batch["item_id_list"], batch["item_length"]
    after = torch.arange(seq.size(1)).unsqueeze(0) >= seq_len.unsqueeze(1)
    assert after.any()
    garbage = seq.clone()
    garbage[after] = torch.randint(1, model.n_items, (int(after.sum()),))
    with torch.no_grad():
        torch.testing.assert_close(model(seq, seq_len), model(garbage, seq_len))


@pytest.mark.parametrize("node", ["cluster", "item"])
def test_no_batch_node_node_hidden_tensor_is_kept(tiny, node):
    """Nothing of size [B, N, N, D] is saved for backward (the authors build one)."""
    model, train_data, _ = model_and_data(tiny, MAX_ITEM_LIST_LENGTH=12, mmsr_modality_node=node)
    model.train()
    batch = next(iter(train_data))
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.calculate_loss(batch)
    loss.backward()
    n_nodes = model.graph_builder(batch["item_id_list"], batch["item_length"]).node_type.size(1)
    B, D = len(batch), model.embedding_size
    assert n_nodes > 10
    assert max(sizes) < B * n_nodes * n_nodes * D / 4


@pytest.mark.parametrize("legacy_qkv, legacy_order", [(True, True), (False, False)])
def test_legacy_options(tiny, legacy_qkv, legacy_order):
    model, train_data, _ = model_and_data(tiny, mmsr_legacy_qkv=legacy_qkv, mmsr_legacy_order=legacy_order)
    names = {n for n, _ in model.named_parameters()}
    assert ("layer.W_K" in names) == (not legacy_qkv) and ("layer.W_V" in names) == (not legacy_qkv)
    model.train()
    model.calculate_loss(next(iter(train_data))).backward()
    assert model.layer.W_Q.grad.abs().sum() > 0
    assert model.layer.gate[0].weight.grad.abs().sum() > 0
    # the content-attention vectors get gradients (from the heterogeneous-then-homogeneous branch)
    assert model.layer.relation_attention.grad.abs().sum() > 0


def test_unknown_option_and_missing_modalities_are_errors(tiny):
    with pytest.raises(ValueError, match="mmsr_modality_nodes"):
        model_and_data(tiny, mmsr_modality_nodes="item")
    with pytest.raises(ValueError, match="mmsr_modality_node must be one of"):
        model_and_data(tiny, mmsr_modality_node="code")
    assert get_model("MMSR") is MMSR


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("node", ["cluster", "item"])
def test_train_and_evaluate(tiny, node):
    result = run(model="MMSR", dataset="tiny", config_dict=mmsr_config(tiny, mmsr_modality_node=node))
    assert set(result["test_result"]) == METRICS
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())
    assert len(result["epoch_times"]) == 2 and os.path.isfile(result["checkpoint"])


def test_train_and_evaluate_through_run_recbole(tmp_path, tiny, monkeypatch, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(mmsr_config(tiny)))
    argv = ["--model=MMSR", "--dataset=tiny", f"--config_files={config_file}", "--epochs=1",
            "--mmsr_modality_node=cluster", "--state=INFO"]
    monkeypatch.setattr(sys, "argv", ["run_recbole.py"] + argv)
    result = run_recbole.main(argv)
    assert result["model"] == "MMSR" and set(result["test_result"]) == METRICS
    assert len(result["epoch_times"]) == 1
    with open(result["log_file"]) as f:
        log = f.read()
    assert "mmsr_modality_node = cluster" in log and "test result" in log
    assert "test:" in capsys.readouterr().out


def test_thirty_percent_of_image_vectors_missing(tmp_path):
    blank = {str(i): {"img_emb": ""} for i in range(1, 25) if i % 10 in (1, 4, 7)}  # 8 of 24
    assert len(blank) / 24 >= 0.3
    data = write_dataset(str(tmp_path / "d"), item_rows=blank)
    tiny = tiny_config(data, str(tmp_path / "saved"))
    for node in ("cluster", "item"):
        model, train_data, _ = model_and_data(tiny, mmsr_modality_node=node)
        dataset = train_data._dataset
        missing = dataset.modality_missing["img_emb"]
        assert int(missing[1:].sum()) == len(blank)
        links = model.graph_builder.links(0)
        assert (links[missing] == -1).all() and (links[~missing] >= 0).all()
        # no image node for them in a graph: the sequence of every missing item alone
        ids = missing.nonzero().squeeze(1)[1:]  # skip padding
        seq = torch.zeros(len(ids), model.max_seq_length, dtype=torch.long)
        seq[:, 0] = ids
        length = torch.ones(len(ids), dtype=torch.long)
        graph = model.graph_builder(seq, length)
        assert not (graph.node_type == 2).any() and (graph.node_type == 3).any(1).all()
        model.eval()
        with torch.no_grad():  # a batch without any image node (an empty block in cluster mode)
            assert torch.isfinite(model(seq, length)).all()
        result = run(model="MMSR", dataset="tiny", config_dict=mmsr_config(tiny, mmsr_modality_node=node))
        assert set(result["test_result"]) == METRICS


def test_reloaded_checkpoint_gives_the_same_metrics(tiny):
    """The checkpoint carries the item -> code links, so a model built under another seed
    (other k-means codes, other init) evaluates exactly like the saved one."""
    config = mmsr_config(tiny, epochs=1, mmsr_modality_node="cluster")
    result = run(model="MMSR", dataset="tiny", config_dict=config)
    config = Config(model="MMSR", dataset="tiny", config_dict=dict(config, seed=999))
    _, train_data, _, test_data = load_data(config)
    model = build_model(config, train_data)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    reloaded = trainer.evaluate(test_data, load_best_model=True, model_file=result["checkpoint"])
    assert dict(reloaded) == dict(result["test_result"])


def test_same_seed_same_metrics(tiny):
    config = mmsr_config(tiny, epochs=1, mmsr_modality_node="cluster")  # k-means included
    first = run(model="MMSR", dataset="tiny", config_dict=config)
    second = run(model="MMSR", dataset="tiny", config_dict=config)
    assert dict(first["best_valid_result"]) == dict(second["best_valid_result"])
    assert dict(first["test_result"]) == dict(second["test_result"])
    other = run(model="MMSR", dataset="tiny", config_dict=dict(config, seed=7))
    assert (dict(other["best_valid_result"]), dict(other["test_result"])) != (
        dict(first["best_valid_result"]), dict(first["test_result"]))


def test_bpr_loss_trains(tiny):
    result = run(model="MMSR", dataset="tiny", config_dict=mmsr_config(tiny, loss_type="BPR", epochs=1))
    assert set(result["test_result"]) == METRICS
