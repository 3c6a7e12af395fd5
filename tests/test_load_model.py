"""load_model: a checkpoint written by run() rebuilds the same model, scores and data."""
import sys

import pytest
import torch

from conftest import write_dataset
from prism_recbole.quick_start import load_model, run


@pytest.mark.parametrize("model", ["PRISM_SASRec", "SASRec", "MMSR"])
def test_load_model_gives_the_trained_weights_and_the_same_test_result(tiny, model, monkeypatch):
    out = run(model=model, dataset="tiny", config_dict=dict(tiny, epochs=1))
    # the loading command's own flags must not be read as options
    monkeypatch.setattr(sys, "argv", ["recommend", "--topk=3", "--model=GRU4Rec"])
    loaded = load_model(out["checkpoint"])
    assert loaded.config["model"] == model and not loaded.model.training
    state = torch.load(out["checkpoint"], weights_only=True)["state_dict"]
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    from prism_recbole.utils import get_trainer
    trainer = get_trainer(loaded.config["MODEL_TYPE"], loaded.config["model"])(loaded.config, loaded.model)
    result = trainer.evaluate(loaded.test_data, load_best_model=False)
    assert result == pytest.approx(out["test_result"])


def test_load_model_of_a_features_only_model(tiny):
    out = run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1, prism_fusion="none"))
    loaded = load_model(out["checkpoint"])
    assert loaded.config["prism_fusion"] == "none" and loaded.model.prism.interaction_experts is None


def test_load_model_names_a_changed_dataset(tiny, tmp_path):
    out = run(model="SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1))
    other = write_dataset(str(tmp_path / "other"), n_items=30)
    with pytest.raises(ValueError, match="does not match dataset tiny"):
        load_model(out["checkpoint"], config_dict={"data_path": other})
