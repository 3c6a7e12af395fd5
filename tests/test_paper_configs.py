"""configs/paper/*.yaml: the PRISM authors' training, read as written, trains a batch."""
import os

import pytest
import torch

from prism_recbole.config import Config
from prism_recbole.model.positions import AllPositionsMixin
from prism_recbole.quick_start import build_model, load_data

PAPER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "paper")
MODEL_KEYS = ("hidden_size", "inner_size", "n_layers", "n_heads", "hidden_dropout_prob",
              "attn_dropout_prob", "MAX_ITEM_LIST_LENGTH", "train_batch_size", "epochs", "topk",
              "valid_metric", "seed")


@pytest.mark.parametrize("model,file", [("SASRec", "sasrec.yaml"), ("PRISM_SASRec", "sasrec.yaml"),
                                        ("STOSA", "stosa.yaml"), ("PRISM_STOSA", "stosa.yaml")])
def test_paper_config_reads_the_authors_values_and_trains(model, file, tiny):
    options = {k: v for k, v in tiny.items() if k not in MODEL_KEYS}
    if "PRISM" not in model:
        options.pop("prism_expert_hidden")
        if model == "STOSA":
            options.pop("modalities")
    config = Config(model=model, dataset="tiny", config_file_list=[os.path.join(PAPER, file)],
                    config_dict=options)
    assert config["train_positions"] == "all" and config["hidden_size"] == 256
    assert config["MAX_ITEM_LIST_LENGTH"] == 100 and config["n_heads"] == 4
    assert config["hidden_dropout_prob"] == 0.3 and config["valid_metric"] == "NDCG@20"
    assert config["train_neg_sample_args"] is None or config["train_neg_sample_args"].get("distribution") == "none"
    _, train_data, _, _ = load_data(config)
    net = build_model(config, train_data).train()
    if "SASRec" in model:
        assert isinstance(net, AllPositionsMixin) and net.position_loss == "bce"
    loss = net.calculate_loss(next(iter(train_data)))
    assert torch.isfinite(loss)
    loss.backward()
