"""Model look-up, default YAML, option checks, and the shims."""
import sys

import numpy as np
import pytest
import torch
from recbole.model.sequential_recommender.gru4rec import GRU4Rec
from recbole.model.sequential_recommender.sasrec import SASRec

import run_recbole
from prism_recbole.config import Config
from prism_recbole.model.sequential_recommender import PRISM_SASRec
from prism_recbole.utils import get_model, list_prism_models


def test_prism_names_come_from_us_and_others_from_recbole():
    assert get_model("PRISM_SASRec") is PRISM_SASRec
    assert get_model("SASRec") is SASRec
    assert get_model("GRU4Rec") is GRU4Rec
    assert "PRISM_SASRec" in list_prism_models()


def test_unknown_model_lists_the_prism_models(monkeypatch):
    with pytest.raises(ValueError, match=r"Unknown model 'PRISM_Foo'\. Models of prism_recbole: .*PRISM_SASRec"):
        get_model("PRISM_Foo")
    monkeypatch.setattr(sys, "argv", ["run_recbole.py", "--model=NoSuchModel"])
    with pytest.raises(ValueError, match="Unknown model 'NoSuchModel'"):
        run_recbole.main(["--model=NoSuchModel"])


def test_command_line_reports_bad_input_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run_recbole.py", "--model=NoSuchModel"])
    monkeypatch.delenv("PRISM_RECBOLE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as info:
        run_recbole.cli()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown model 'NoSuchModel'") and "Traceback" not in err


def test_default_yaml_is_loaded_with_floats(tiny):
    for key in ("data_path",):
        tiny.pop(key)
    tiny["data_path"] = "unused/"
    config = Config(model="PRISM_SASRec", dataset="tiny",
                    config_dict={k: v for k, v in tiny.items() if k != "prism_expert_hidden"})
    assert config["prism_temperature"] == 0.7 and isinstance(config["prism_temperature"], float)
    for key in ("prism_lambda_uni", "prism_lambda_syn", "prism_lambda_red", "prism_margin", "prism_noise_std"):
        assert isinstance(config[key], float), key
    assert config["prism_expert_hidden"] == 128
    assert config["prism_gate_dropout"] == 0.3
    assert config["prism_pooling"] == "masked_mean"
    assert config["train_neg_sample_args"]["distribution"] == "none"  # CE: no negatives
    assert config["inner_size"] == 32  # user value beats SASRec.yaml
    assert config["hidden_act"] == "gelu"  # from RecBole's SASRec.yaml


def test_command_line_overrides_and_unknown_prism_option(monkeypatch, tiny):
    monkeypatch.setattr(sys, "argv", ["x", "--prism_temperature=1.5"])
    assert Config(model="PRISM_SASRec", dataset="tiny", config_dict=tiny)["prism_temperature"] == 1.5
    monkeypatch.setattr(sys, "argv", ["x", "--prism_temprature=1.5"])
    with pytest.raises(ValueError, match="Unknown option.*prism_temprature.*Known PRISM options"):
        Config(model="PRISM_SASRec", dataset="tiny", config_dict=tiny)


def test_bad_option_values_name_the_option(tiny):
    from prism_recbole.quick_start import run

    with pytest.raises(ValueError, match="prism_pooling"):
        run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, prism_pooling="avg"))
    with pytest.raises(ValueError, match="prism_expert_hidden"):
        run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, prism_expert_hidden=-3))
    with pytest.raises(ValueError, match="needs item modality vectors"):
        run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, modalities=None))


def test_bpr_gets_negatives_by_default(tiny):
    config = Config(model="SASRec", dataset="tiny", config_dict=dict(tiny, loss_type="BPR"))
    assert config["train_neg_sample_args"]["distribution"] == "uniform"


def test_shims():
    assert np.float_ is np.float64
    import recbole.model.sequential_recommender  # noqa: F401  (imports sine.py)

    assert not torch.is_anomaly_enabled()
    assert "ray" not in sys.modules
