"""Recommending from a checkpoint: prism_recbole.recommend and run_recommend.py.

The expected lists are computed here from the raw atomic files (histories sorted by
timestamp), the model's own scores (argsort, exclusion), and RecBole's own test batches.
"""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_config, write_dataset
from prism_recbole.quick_start import load_model, run
from prism_recbole.recommend import Recommender, UnknownTokenError, recommend
from prism_recbole.trainer import CHECKPOINT_FORMAT

import run_recommend

N_ITEMS = 24
MAX_LEN = 8  # tiny_config's MAX_ITEM_LIST_LENGTH; some users have up to 11 interactions


def title_of(token):
    return None if token == "5" else f"Movie {token} (the {int(token) * 3}th)"


def write_titled_dataset(root, title_column="title:token_seq"):
    """The conftest dataset with a title column (item 5's cell empty) and the .inter rows
    shuffled, so that the time order is not the file order."""
    write_dataset(root, n_items=N_ITEMS)
    folder = os.path.join(root, "tiny")
    item_file = os.path.join(folder, "tiny.item")
    with open(item_file) as f:
        lines = f.read().splitlines()
    out = [lines[0].split("\t")[0] + "\t" + title_column + "\t" + "\t".join(lines[0].split("\t")[1:])]
    for line in lines[1:]:
        token, rest = line.split("\t", 1)
        out.append(f"{token}\t{title_of(token) or ''}\t{rest}")
    with open(item_file, "w") as f:
        f.write("\n".join(out) + "\n")
    inter_file = os.path.join(folder, "tiny.inter")
    with open(inter_file) as f:
        header, *rows = f.read().splitlines()
    rows = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    with open(inter_file, "w") as f:
        f.write("\n".join([header] + rows) + "\n")
    return root


def raw_histories(data_path):
    """user token -> item tokens sorted by timestamp, read from the .inter file."""
    rows = {}
    with open(os.path.join(data_path, "tiny", "tiny.inter")) as f:
        next(f)
        for line in f:
            user, item, ts = line.rstrip("\n").split("\t")
            rows.setdefault(user, []).append((float(ts), item))
    return {u: [item for _, item in sorted(r)] for u, r in rows.items()}


_TRAINED = {}


def trained(tmp_path_factory, model, title_column="title:token_seq"):
    """One checkpoint per (model, title column) for the whole module."""
    key = (model, title_column)
    if key not in _TRAINED:
        root = str(tmp_path_factory.mktemp(f"rec-{model}"))
        data = write_titled_dataset(os.path.join(root, "data"), title_column)
        config = tiny_config(data, os.path.join(root, "saved"), epochs=1)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["pytest"])
            mp.chdir(root)
            out = run(model=model, dataset="tiny", config_dict=config)
        _TRAINED[key] = (out["checkpoint"], data)
    return _TRAINED[key]


def expected_top_k(loaded, history_tokens, k, exclude=True, user_token=None):
    """Independent top-k: pad the sequence as RecBole does, the model's full_sort_predict,
    argsort, drop padding and (optionally) the history."""
    from recbole.data.interaction import Interaction

    ds, model, config = loaded.dataset, loaded.model, loaded.config
    tok2id = ds.field2token_id[ds.iid_field]
    ids = [tok2id[t] for t in history_tokens]
    tail = ids[-config["MAX_ITEM_LIST_LENGTH"]:]
    seq = torch.zeros(1, config["MAX_ITEM_LIST_LENGTH"], dtype=torch.long)
    seq[0, :len(tail)] = torch.tensor(tail)
    user = ds.field2token_id[ds.uid_field][user_token] if user_token else 0
    inter = Interaction({"user_id": torch.tensor([user]), "item_id_list": seq,
                         "item_length": torch.tensor([len(tail)])})
    with torch.no_grad():
        scores = model.full_sort_predict(inter).reshape(-1).numpy()
    assert scores.shape == (ds.item_num,)
    id2tok = ds.field2id_token[ds.iid_field]
    out = []
    for i in np.argsort(-scores, kind="stable"):
        if i == 0 or (exclude and i in ids):
            continue
        out.append((str(id2tok[i]), float(scores[i])))
    return out[:k]


def assert_same(got, want):
    assert [item for item, _, _ in got] == [item for item, _ in want]
    assert [score for _, score, _ in got] == pytest.approx([score for _, score in want], abs=1e-5)


# ---- users and typed items against an independent computation ---------------------------

def test_users_get_next_item_after_their_whole_time_ordered_history(tmp_path_factory):
    checkpoint, data = trained(tmp_path_factory, "PRISM_SASRec")
    loaded = load_model(checkpoint)
    histories = raw_histories(data)
    users = sorted(histories, key=int)
    results = recommend(loaded, users=users, k=7)
    assert [q.user for q, _ in results] == users
    long_users = 0
    for (query, recs), user in zip(results, users):
        assert list(query.history) == histories[user]  # train + valid + test, by timestamp
        assert list(query.model_input) == histories[user][-MAX_LEN:]
        long_users += len(histories[user]) > MAX_LEN
        assert len(recs) == 7
        assert_same(recs, expected_top_k(loaded, histories[user], 7, user_token=user))
        assert all(item not in histories[user] and item != "[PAD]" for item, _, _ in recs)
    assert long_users > 0  # truncation to MAX_ITEM_LIST_LENGTH was exercised


def test_user_history_is_recbole_test_sequence_plus_test_item(tmp_path_factory):
    """The history is what RecBole's test split sees, plus the test target itself."""
    checkpoint, _ = trained(tmp_path_factory, "PRISM_SASRec")
    loaded = load_model(checkpoint)
    ds = loaded.dataset
    test = loaded.test_data._dataset.inter_feat
    recommender = Recommender(loaded)
    for row in range(len(test)):
        user = str(ds.field2id_token[ds.uid_field][int(test["user_id"][row])])
        n = int(test["item_length"][row])
        before = [str(ds.field2id_token[ds.iid_field][int(i)]) for i in test["item_id_list"][row][:n]]
        target = str(ds.field2id_token[ds.iid_field][int(test["item_id"][row])])
        (query, _), = recommender.recommend(users=[user], k=1)
        assert list(query.history[:-1][-n:]) == before and query.history[-1] == target


def test_typed_items_match_recbole_test_batch_scores(tmp_path_factory):
    """Typed items build the interaction RecBole's full-sort evaluation builds: the scores
    equal the model's on RecBole's own test batch, for every item but padding."""
    checkpoint, _ = trained(tmp_path_factory, "PRISM_SASRec")
    loaded = load_model(checkpoint)
    ds = loaded.dataset
    id2tok = ds.field2id_token[ds.iid_field]
    interaction = next(iter(loaded.test_data))[0]
    with torch.no_grad():
        reference = loaded.model.full_sort_predict(interaction).reshape(len(interaction), -1)
    sequences = [[str(id2tok[int(i)]) for i in interaction["item_id_list"][r][:int(interaction["item_length"][r])]]
                 for r in range(len(interaction))]
    results = recommend(loaded, items=sequences, k=N_ITEMS + 5, exclude_history=False)
    assert len(results) == len(sequences)
    for row, (query, recs) in enumerate(results):
        assert query.user is None and list(query.history) == sequences[row]
        assert len(recs) == N_ITEMS  # every item but padding
        got = {item: score for item, score, _ in recs}
        want = {str(id2tok[i]): float(reference[row, i]) for i in range(1, ds.item_num)}
        assert got == pytest.approx(want, abs=1e-5)


def test_typed_items_top_k_and_exclusion(tmp_path_factory):
    checkpoint, _ = trained(tmp_path_factory, "PRISM_SASRec")
    loaded = load_model(checkpoint)
    typed = ["3", "17", "3", "9"]
    (query, recs), = recommend(loaded, items=typed, k=5)
    assert str(query) == "items 3 17 3 9"
    assert_same(recs, expected_top_k(loaded, typed, 5))
    assert not {"3", "17", "9"} & {item for item, _, _ in recs}
    (_, recs), = recommend(loaded, items=typed, k=5, exclude_history=False)
    assert_same(recs, expected_top_k(loaded, typed, 5, exclude=False))
    # a sequence longer than MAX_ITEM_LIST_LENGTH: the model sees the last items only, but
    # every typed item is left out
    long = [str(i) for i in range(1, 13)]
    (query, recs), = recommend(loaded, items=long, k=N_ITEMS)
    assert list(query.model_input) == long[-MAX_LEN:]
    assert [item for item, _, _ in recs] == [item for item, _ in expected_top_k(loaded, long, N_ITEMS)]
    assert sorted(int(item) for item, _, _ in recs) == list(range(13, N_ITEMS + 1))


def test_history_excluded_by_default_and_kept_on_request(tmp_path_factory):
    checkpoint, data = trained(tmp_path_factory, "PRISM_SASRec")
    histories = raw_histories(data)
    user = next(u for u, h in histories.items()
                if set(h[:-MAX_LEN]) - set(h[-MAX_LEN:]))  # an item the model does not see
    loaded = load_model(checkpoint)
    (_, recs), = recommend(loaded, users=[user], k=100)
    items = [item for item, _, _ in recs]
    assert not set(items) & set(histories[user])
    assert len(items) == N_ITEMS - len(set(histories[user]))
    (_, recs), = recommend(loaded, users=[user], k=100, exclude_history=False)
    items = [item for item, _, _ in recs]
    assert set(histories[user]) <= set(items) and len(items) == N_ITEMS  # padding never
    assert_same(recs, expected_top_k(loaded, histories[user], 100, exclude=False, user_token=user))


def test_batches_give_the_same_lists_with_one_model_call_per_batch(tmp_path_factory, monkeypatch):
    checkpoint, data = trained(tmp_path_factory, "PRISM_SASRec")
    loaded = load_model(checkpoint)
    users = sorted(raw_histories(data), key=int)
    whole = Recommender(loaded).recommend(users=users, k=4)
    calls = []
    original = loaded.model.full_sort_predict
    monkeypatch.setattr(loaded.model, "full_sort_predict",
                        lambda inter: calls.append(len(inter)) or original(inter))
    batched = Recommender(loaded, batch_size=7).recommend(users=users, k=4)
    assert calls == [7, 7, 7, 7, 2]
    for (q1, r1), (q2, r2) in zip(whole, batched):
        assert q1 == q2 and [i for i, _, _ in r1] == [i for i, _, _ in r2]
        assert [s for _, s, _ in r1] == pytest.approx([s for _, s, _ in r2], abs=1e-5)


# ---- titles ------------------------------------------------------------------------------

@pytest.mark.parametrize("column", ["title:token_seq", "movie_title:token_seq"])
def test_titles_come_from_the_item_file(tmp_path_factory, column):
    checkpoint, _ = trained(tmp_path_factory, "SASRec", column)
    results = recommend(checkpoint, users=["1", "2"], k=N_ITEMS, exclude_history=False)
    for _, recs in results:
        assert len(recs) == N_ITEMS
        assert all(title == title_of(item) for item, _, title in recs)  # item 5: None
    assert Recommender(checkpoint).title_field == column.split(":")[0]


def test_no_title_field_gives_none_and_title_field_option(tiny, tmp_path):
    out = run(model="SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1))
    (_, recs), = recommend(out["checkpoint"], users=["1"], k=3)
    assert len(recs) == 3 and all(title is None for _, _, title in recs)
    # any text field can be named; a field that is not there is an error naming the fields
    with pytest.raises(ValueError, match=r"title_field 'genre' is not a field of .*tiny.item; "
                                         r"its fields: item_id, img_emb, txt_emb"):
        recommend(out["checkpoint"], users=["1"], title_field="genre")
    (_, recs), = recommend(out["checkpoint"], users=["1"], k=2, title_field="item_id:token")
    assert all(title == item for item, _, title in recs)


# ---- errors ------------------------------------------------------------------------------

def test_unknown_tokens_are_all_named(tmp_path_factory):
    checkpoint, _ = trained(tmp_path_factory, "PRISM_SASRec")
    loaded = load_model(checkpoint)
    with pytest.raises(UnknownTokenError, match=r"unknown user tokens 'ghost', '999': not in "
                                                r"dataset 'tiny'") as err:
        recommend(loaded, users=["1", "ghost", "2", "999"])
    assert err.value.users == ["ghost", "999"]
    with pytest.raises(UnknownTokenError, match=r"unknown item tokens '77', '\[PAD\]', 'x'") as err:
        recommend(loaded, items=["1", "77", "[PAD]", "x", "77"])
    assert err.value.items == ["77", "[PAD]", "x"]
    with pytest.raises(UnknownTokenError, match=r"unknown item token '0':"):
        recommend(loaded, items=["0"])
    with pytest.raises(ValueError, match="not both"):
        recommend(loaded, users=["1"], items=["2"])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recommend(loaded, users=["1"], k=0)


# ---- other models ------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["SASRec", "PRISM_BERT4Rec", "MMSR", "PRISM_GRU4Rec"])
def test_other_models(tmp_path_factory, model):
    checkpoint, data = trained(tmp_path_factory, model)
    loaded = load_model(checkpoint)
    histories = raw_histories(data)
    users = ["1", "4", "9"]
    for (query, recs), user in zip(recommend(loaded, users=users, k=6), users):
        assert list(query.history) == histories[user]
        assert_same(recs, expected_top_k(loaded, histories[user], 6, user_token=user))
    (_, recs), = recommend(loaded, items=["2", "11", "6"], k=6)
    assert_same(recs, expected_top_k(loaded, ["2", "11", "6"], 6))
    # the scores over all items equal the model's on RecBole's own test batch
    interaction = next(iter(loaded.test_data))[0]
    ds = loaded.dataset
    with torch.no_grad():
        reference = loaded.model.full_sort_predict(interaction).reshape(len(interaction), -1)
    id2tok = ds.field2id_token[ds.iid_field]
    for row in range(3):
        n = int(interaction["item_length"][row])
        seq = [str(id2tok[int(i)]) for i in interaction["item_id_list"][row][:n]]
        (_, recs), = recommend(loaded, items=seq, k=N_ITEMS, exclude_history=False)
        got = {item: score for item, score, _ in recs}
        assert got == pytest.approx({str(id2tok[i]): float(reference[row, i])
                                     for i in range(1, ds.item_num)}, abs=1e-5)


def test_sasrec_scores_by_hand(tmp_path_factory):
    """For SASRec the scores are also computed without full_sort_predict: the sequence
    output at the last position times the item embeddings."""
    checkpoint, data = trained(tmp_path_factory, "SASRec")
    loaded = load_model(checkpoint)
    model, ds = loaded.model, loaded.dataset
    history = raw_histories(data)["3"]
    ids = [ds.field2token_id[ds.iid_field][t] for t in history][-MAX_LEN:]
    seq = torch.zeros(1, MAX_LEN, dtype=torch.long)
    seq[0, :len(ids)] = torch.tensor(ids)
    with torch.no_grad():
        out = model.forward(seq, torch.tensor([len(ids)]))
        scores = (out[0] @ model.item_embedding.weight.T).numpy()
    scores[0] = -np.inf
    scores[[ds.field2token_id[ds.iid_field][t] for t in history]] = -np.inf  # the whole history
    top = np.argsort(-scores)[:5]
    (_, recs), = recommend(loaded, users=["3"], k=5)
    assert [item for item, _, _ in recs] == [str(ds.field2id_token[ds.iid_field][i]) for i in top]
    assert [s for _, s, _ in recs] == pytest.approx(scores[top].tolist(), abs=1e-5)


# ---- the command -------------------------------------------------------------------------

def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["run_recommend.py", *args])
    code = 0
    try:
        run_recommend.cli()
    except SystemExit as err:
        code = err.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prints_a_table_with_titles(tmp_path_factory, monkeypatch, capsys):
    checkpoint, data = trained(tmp_path_factory, "PRISM_SASRec")
    loaded = load_model(checkpoint)
    code, out, err = run_cli(monkeypatch, capsys, f"--checkpoint={checkpoint}", "--users", "1", "2", "--k", "3")
    assert code == 0, err
    want = {u: expected_top_k(loaded, raw_histories(data)[u], 3, user_token=u) for u in ("1", "2")}
    lines = out.splitlines()
    assert lines[0].startswith("PRISM_SASRec on tiny (")
    assert "left out (--include_history keeps them)" in lines[1]
    for user in ("1", "2"):
        start = next(i for i, line in enumerate(lines) if line.startswith(f"user {user}: "))
        assert lines[start + 1].split() == ["rank", "item", "score", "title"]
        for rank, (item, score) in enumerate(want[user], 1):
            cells = lines[start + 1 + rank].split(None, 3)
            assert cells[:3] == [str(rank), item, f"{score:.4f}"]
            assert cells[3] == (title_of(item) or "-")
    code, out, _ = run_cli(monkeypatch, capsys, "-c", checkpoint, "--items", "3", "17", "-k", "2",
                           "--include_history")
    assert code == 0 and "items 3 17\n" in out and "kept" in out
    rows = out.split("items 3 17\n")[1].splitlines()[1:3]
    assert [r.split()[1] for r in rows] == [i for i, _ in expected_top_k(loaded, ["3", "17"], 2, exclude=False)]


def test_cli_command_line_without_titles(tiny, tmp_path):
    out = run(model="SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1))
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_recommend.py"), f"--checkpoint={out['checkpoint']}",
         "--items", "4", "5", "--k", "4"],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("items 4 5\n")[1].splitlines()
    assert table[0].split() == ["rank", "item", "score"]
    assert [row.split()[0] for row in table[1:5]] == ["1", "2", "3", "4"]
    assert not {"4", "5"} & {row.split()[1] for row in table[1:5]}


def test_cli_errors_are_one_line_exit_2(tmp_path_factory, tmp_path, monkeypatch, capsys):
    checkpoint, _ = trained(tmp_path_factory, "PRISM_SASRec")
    code, out, err = run_cli(monkeypatch, capsys, f"--checkpoint={checkpoint}", "--users", "1", "nobody", "0")
    assert code == 2 and out == ""
    assert err.splitlines()[0].startswith("error: unknown user tokens 'nobody', '0': not in dataset 'tiny'")
    code, _, err = run_cli(monkeypatch, capsys, f"--checkpoint={checkpoint}", "--items", "zz", "1", "99")
    assert code == 2 and err.startswith("error: unknown item tokens 'zz', '99'")

    # a checkpoint that cannot be loaded safely: refused, the payload never runs
    evil = str(tmp_path / "evil.pth")
    with open(evil, "wb") as f:
        pickle.dump({"format": CHECKPOINT_FORMAT, "state_dict": Evil()}, f, protocol=2)
    code, out, err = run_cli(monkeypatch, capsys, f"--checkpoint={evil}", "--users", "1")
    assert code == 2 and out == "" and not RAN
    assert err.startswith(f"error: Refusing to load checkpoint {evil}: it holds objects other than tensors")
    foreign = str(tmp_path / "foreign.pth")
    torch.save({"w": torch.zeros(2)}, foreign)
    code, _, err = run_cli(monkeypatch, capsys, f"--checkpoint={foreign}", "--users", "1")
    assert code == 2 and "error: Refusing to load checkpoint" in err and "not a prism_recbole checkpoint" in err
    code, _, err = run_cli(monkeypatch, capsys, "--checkpoint=nothere.pth", "--users", "1")
    assert code == 2 and err.startswith("error: Checkpoint not found: nothere.pth")
    code, _, err = run_cli(monkeypatch, capsys, f"--checkpoint={checkpoint}", "--users", "1", "--items", "2")
    assert code == 2 and "not allowed with argument" in err


RAN = []


class Evil:
    def __reduce__(self):
        return (RAN.append, ("code ran",))


def test_general_model_recommends_for_users_only(tiny):
    """A non-sequential RecBole model (BPR): users work, typed items are refused clearly."""
    out = run(model="BPR", dataset="tiny", config_dict=dict(
        tiny, epochs=1, train_neg_sample_args={"distribution": "uniform", "sample_num": 1}))
    loaded = load_model(out["checkpoint"])
    ds = loaded.dataset
    histories = raw_histories(tiny["data_path"])
    (query, recs), = recommend(loaded, users=["2"], k=4)
    assert list(query.history) == histories["2"]
    from recbole.data.interaction import Interaction
    with torch.no_grad():
        scores = loaded.model.full_sort_predict(Interaction(
            {"user_id": torch.tensor([ds.field2token_id["user_id"]["2"]])})).reshape(-1).numpy()
    seen = {ds.field2token_id["item_id"][t] for t in histories["2"]} | {0}
    top = [i for i in np.argsort(-scores) if i not in seen][:4]
    assert [item for item, _, _ in recs] == [str(ds.field2id_token["item_id"][i]) for i in top]
    with pytest.raises(ValueError, match="BPR is not a sequential model"):
        recommend(loaded, items=["1"])
