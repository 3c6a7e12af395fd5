"""aux_report: the auxiliary terms of trained checkpoints, read under each triplet distance."""
import sys

import pytest
import torch

from conftest import tiny_config, write_dataset
from prism_recbole import aux_report
from prism_recbole.quick_start import load_model, run

EXPERTS = ["unique_img_emb", "unique_txt_emb", "synergy", "redundancy"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("aux")
    data = write_dataset(str(root / "data"))
    outs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["pytest"])
        mp.chdir(root)
        for i, (name, extra) in enumerate([("l2", {}), ("cosine", {"prism_triplet_distance": "cosine"}),
                                           ("none", {"prism_fusion": "none"})]):
            config = tiny_config(data, str(root / f"saved{i}"), epochs=1, initializer_range=0.3, **extra)
            outs[name] = run(model="PRISM_SASRec", dataset="tiny", config_dict=config)["checkpoint"]
    return outs


def test_terms_under_both_distances_and_the_model_left_as_it_was(checkpoints):
    loaded = load_model(checkpoints["cosine"])
    got = aux_report.aux_terms(loaded, batches=2, seed=3)
    assert list(got) == ["cosine", "l2"]  # the model's own distance first
    for values in got.values():
        assert sorted(values) == sorted(EXPERTS)
    # only the triplet depends on the distance; the same seeds give the same replacements
    for name in ("synergy", "redundancy"):
        assert got["cosine"][name] == pytest.approx(got["l2"][name], rel=1e-6)
    assert got["cosine"]["unique_img_emb"] != pytest.approx(got["l2"]["unique_img_emb"], rel=1e-3)
    assert -1.0 <= got["l2"]["synergy"] <= 1.0 and 0.0 <= got["l2"]["redundancy"] <= 2.0
    assert loaded.model.prism.interaction_experts.triplet_distance == "cosine"
    assert not loaded.model.training


def test_own_distance_equals_a_training_forward_with_the_same_seed(checkpoints):
    loaded = load_model(checkpoints["l2"])
    got = aux_report.aux_terms(loaded, batches=1, seed=5)["l2"]
    batch = aux_report.first_batches(loaded, 1, seed=5)[0]
    model = loaded.model.train()
    torch.manual_seed(5)
    with torch.no_grad():
        model.calculate_loss(batch)
    want = {k: float(v) for k, v in model.prism_output.aux_terms.items()}
    assert got == pytest.approx(want, rel=1e-6)


def test_cli_table_and_errors(checkpoints, capsys):
    aux_report.main([checkpoints["l2"], checkpoints["cosine"], "--names", "ref", "cos", "--batches", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("| checkpoint | trained with | triplet distance read | unique_img_emb")
    assert [line.split(" | ")[:3] for line in out[2:]] == [
        ["| ref", "l2", "l2"], ["| ref", "l2", "cosine"], ["| cos", "cosine", "cosine"], ["| cos", "cosine", "l2"]]
    with pytest.raises(ValueError, match="prism_fusion: none"):
        aux_report.aux_terms(load_model(checkpoints["none"]), batches=1)
    with pytest.raises(SystemExit):
        aux_report.main([checkpoints["l2"], "--names", "a", "b"])
