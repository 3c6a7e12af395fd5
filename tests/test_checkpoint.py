"""Checkpoints load with weights_only=True; anything else is refused, never executed."""
import os
import pickle

import pytest
import torch

from prism_recbole.config import Config
from prism_recbole.quick_start import run
from prism_recbole.trainer import CHECKPOINT_FORMAT, UnsafeCheckpointError, load_checkpoint

RAN = []


class Payload:
    def __reduce__(self):
        return (RAN.append, ("code ran",))


def test_our_checkpoint_loads_with_plain_weights_only(tiny):
    result = run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1))
    raw = torch.load(result["checkpoint"], weights_only=True)  # torch's own safe loader
    assert raw["format"] == CHECKPOINT_FORMAT
    assert raw["config"]["model"] == "PRISM_SASRec"
    assert raw["config"]["MODEL_TYPE"] == "SEQUENTIAL"
    assert isinstance(raw["best_valid_score"], float)
    assert any(k.startswith("prism.") for k in raw["state_dict"])


def test_recbole_style_checkpoint_is_refused(tmp_path, tiny):
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny)
    path = str(tmp_path / "recbole.pth")
    # what RecBole 1.2.1's Trainer._save_checkpoint writes
    torch.save({"config": config, "epoch": 0, "state_dict": {}}, path, pickle_protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load checkpoint .*recbole.pth"):
        load_checkpoint(path)


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    path = str(tmp_path / "evil.pth")
    with open(path, "wb") as f:
        pickle.dump({"format": CHECKPOINT_FORMAT, "state_dict": Payload()}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert RAN == []


def test_foreign_tensor_file_is_refused_and_missing_file_is_clear(tmp_path):
    path = str(tmp_path / "plain.pth")
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(UnsafeCheckpointError, match="not a prism_recbole checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_checkpoint(os.path.join(str(tmp_path), "nothere.pth"))
