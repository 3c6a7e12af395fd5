"""End to end through run_recbole.py: train, save, reload, evaluate; reproducibility."""
import os
import sys

import pytest
import torch
import yaml
from conftest import tiny_config

import run_recbole
from prism_recbole.config import Config
from prism_recbole.quick_start import build_model, load_data, run
from prism_recbole.trainer import load_checkpoint
from prism_recbole.utils import get_trainer

METRICS = {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (5, 10)}


def write_yaml(tmp_path, config):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("model", ["PRISM_SASRec", "SASRec"])
def test_train_and_evaluate_through_run_recbole(tmp_path, tiny, monkeypatch, model, capsys):
    config_file = write_yaml(tmp_path, tiny)
    argv = [f"--model={model}", "--dataset=tiny", f"--config_files={config_file}", "--epochs=2", "--state=INFO"]
    monkeypatch.setattr(sys, "argv", ["run_recbole.py"] + argv)
    result = run_recbole.main(argv)
    assert result["model"] == model
    assert set(result["test_result"]) == METRICS
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())
    assert len(result["epoch_times"]) == 2  # --epochs=2 from the command line was applied
    assert os.path.isfile(result["checkpoint"]) and os.path.isfile(result["log_file"])
    printed = capsys.readouterr().out
    assert "test:" in printed and result["checkpoint"] in printed and result["log_file"] in printed
    with open(result["log_file"]) as f:
        assert "test result" in f.read()


def test_reloaded_checkpoint_gives_the_same_metrics(tmp_path, tiny):
    result = run(model="PRISM_SASRec", dataset="tiny", config_dict=tiny)
    checkpoint = load_checkpoint(result["checkpoint"])
    assert checkpoint["config"]["model"] == "PRISM_SASRec"
    # a fresh process would rebuild everything from the config; do the same here
    config = Config(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, seed=999))
    _, train_data, _, test_data = load_data(config)
    model = build_model(config, train_data)  # different random init (seed 999)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    reloaded = trainer.evaluate(test_data, load_best_model=True, model_file=result["checkpoint"])
    assert dict(reloaded) == dict(result["test_result"])
    # and training can resume from it
    trainer.resume_checkpoint(result["checkpoint"])
    assert trainer.start_epoch == checkpoint["epoch"] + 1


def test_same_seed_same_metrics(tmp_path, tiny):
    first = run(model="PRISM_SASRec", dataset="tiny", config_dict=tiny)
    second = run(model="PRISM_SASRec", dataset="tiny", config_dict=tiny)
    assert dict(first["best_valid_result"]) == dict(second["best_valid_result"])
    assert dict(first["test_result"]) == dict(second["test_result"])
    other = run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, seed=7))
    # a different seed must be able to change something (else the comparison proves nothing)
    assert (dict(other["best_valid_result"]), dict(other["test_result"])) != (
        dict(first["best_valid_result"]), dict(first["test_result"]))


def test_bpr_loss_trains(tmp_path, tiny):
    result = run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, loss_type="BPR", epochs=1))
    assert set(result["test_result"]) == METRICS


def _model_and_batch(tiny):
    config = Config(model="PRISM_SASRec", dataset="tiny", config_dict=tiny)
    _, train_data, _, test_data = load_data(config)
    model = build_model(config, train_data)
    batch = next(iter(test_data))[0]
    return model, batch, train_data


def test_output_ignores_everything_after_the_last_real_item(tiny):
    model, batch, _ = _model_and_batch(tiny)
    model.eval()
    seq, seq_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        before = model.forward(seq, seq_len)
        after_mask = torch.arange(seq.size(1)).unsqueeze(0) >= seq_len.unsqueeze(1)
        assert after_mask.any()
        garbage = seq.clone()
        garbage[after_mask] = torch.randint(1, model.n_items, (int(after_mask.sum()),))
        after = model.forward(garbage, seq_len)
    torch.testing.assert_close(before, after)


def test_gate_weights_are_readable_after_a_forward_pass(tiny):
    model, batch, _ = _model_and_batch(tiny)
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
    weights = model.prism_gate_weights
    assert scores.shape == (len(batch), model.n_items)
    assert weights.shape == (len(batch), 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(batch)))
    assert model.prism_expert_names == ["unique_img_emb", "unique_txt_emb", "synergy", "redundancy"]


def test_aux_loss_is_added_and_reaches_the_experts(tiny):
    model, _, train_data = _model_and_batch(tiny)
    model.train()
    batch = next(iter(train_data))
    torch.manual_seed(0)
    loss = model.calculate_loss(batch)
    aux = model._prism_aux_loss
    assert aux.item() > 0
    loss.backward()
    for expert in model.prism.interaction_experts.experts:
        assert expert.fc1.weight.grad is not None and expert.fc1.weight.grad.abs().sum() > 0
    assert model.prism.adaptive_fusion.gate[0].weight.grad.abs().sum() > 0
    # the total is the backbone's loss plus the aux loss
    torch.manual_seed(0)
    total = model.calculate_loss(batch)
    from recbole.model.sequential_recommender.sasrec import SASRec

    torch.manual_seed(0)
    rec_only = SASRec.calculate_loss(model, batch)
    torch.testing.assert_close(total, rec_only + model._prism_aux_loss, rtol=1e-4, atol=1e-5)


def test_reproducibility_switches_on_deterministic_algorithms(tiny):
    import torch

    from prism_recbole.quick_start import run

    torch.use_deterministic_algorithms(False)
    try:
        run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1, reproducibility=False))
        assert not torch.are_deterministic_algorithms_enabled()
        run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_new_dataset_without_a_config_loads_the_timestamp(tmp_path, tiny_data, monkeypatch):
    """run_recbole.py --model=... --dataset=mine --modalities=[...] with nothing else: RecBole's
    default load_col leaves the timestamp out, which a sequential model needs."""
    argv = ["--model=PRISM_SASRec", "--dataset=tiny", f"--data_path={tiny_data}",
            "--modalities=[img_emb,txt_emb]", "--epochs=1", "--state=ERROR", "--show_progress=False",
            f"--checkpoint_dir={tmp_path / 'saved'}", "--gpu_id=", "--MAX_ITEM_LIST_LENGTH=8"]
    monkeypatch.setattr(sys, "argv", ["run_recbole.py"] + argv)
    result = run_recbole.main(argv)
    assert "ndcg@10" in result["test_result"]


def test_an_inter_file_without_time_column_names_the_file_and_the_fix(tmp_path, tiny_data):
    path = os.path.join(tiny_data, "tiny", "tiny.inter")
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join("\t".join(line.split("\t")[:2]) for line in lines) + "\n")
    with pytest.raises(ValueError, match=r"tiny\.inter.*TIME_FIELD.*position"):
        Config(model="SASRec", dataset="tiny", config_dict={"data_path": tiny_data})
