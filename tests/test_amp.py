"""Mixed precision: every model of the package under fp16 / bf16 autocast, and RecBole's
``enable_amp`` training path (on CPU its autocast is bf16 and its GradScaler is off)."""
import math

import pytest
import torch

from prism_recbole.config import Config
from prism_recbole.quick_start import build_model, load_data, run
from prism_recbole.utils import list_prism_models

MMSR_SMALL = {"mmsr_n_clusters": 4, "mmsr_link_k": 2}
# model name as registered, id in the test report, extra options
CASES = [(name, name, {}) for name in list_prism_models() if name != "MMSR"] + [
    ("MMSR", "MMSR-item", dict(MMSR_SMALL, mmsr_modality_node="item")),
    ("MMSR", "MMSR-cluster", dict(MMSR_SMALL, mmsr_modality_node="cluster")),
]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
KNOWN = {}  # (case id, dtype) -> reason, for failures outside the model files
_BUILT = {}


def built(case_id, name, extra, tiny):
    """(model, train batch, test batch), built once per case for the whole module."""
    if case_id not in _BUILT:
        config = Config(model=name, dataset="tiny", config_dict=dict(tiny, embedding_size=16, **extra))
        _, train_data, _, test_data = load_data(config)
        model = build_model(config, train_data)
        _BUILT[case_id] = (model, next(iter(train_data)), next(iter(test_data))[0])
    return _BUILT[case_id]


def test_every_registered_model_is_covered():
    assert {name for name, _, _ in CASES} == set(list_prism_models())


def assert_scores_finite(scores, what):
    # no model of the package masks candidates with -inf: every score must be finite
    assert torch.isfinite(scores.float()).all(), f"{what}: non-finite scores"


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("name,case_id,extra", CASES, ids=[c for _, c, _ in CASES])
def test_loss_and_scores_under_autocast(name, case_id, extra, dtype, tiny, request):
    if (case_id, dtype) in KNOWN:
        request.applymarker(pytest.mark.xfail(reason=KNOWN[case_id, dtype], strict=False))
    model, train_batch, test_batch = built(case_id, name, extra, tiny)
    what = f"{case_id} under {dtype} autocast"
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=DTYPES[dtype]):
        loss = model.calculate_loss(train_batch)
    if isinstance(loss, tuple):  # RecBole allows several losses, summed by its trainer
        loss = sum(loss)
    assert math.isfinite(loss.item()), f"{what}: loss {loss.item()}"
    loss.backward()  # outside autocast, as RecBole's trainer does
    for pname, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{what}: non-finite gradient of {pname}"

    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=DTYPES[dtype]):
        full = model.full_sort_predict(test_batch)
        single = model.predict(test_batch)
    assert full.shape == (len(test_batch), model.n_items)
    assert single.shape == (len(test_batch),)
    assert_scores_finite(full, f"{what}, full_sort_predict")
    assert_scores_finite(single, f"{what}, predict")


@pytest.mark.parametrize("model", ["MMSR", "PRISM_SASRec"])
def test_one_epoch_with_enable_amp(model, tiny):
    """RecBole's trainer with ``enable_amp``: bf16 autocast on CPU, no GradScaler."""
    options = dict(tiny, embedding_size=16, epochs=1, enable_amp=True, **MMSR_SMALL)
    out = run(model=model, dataset="tiny", config_dict=options, saved=False)
    assert all(math.isfinite(v) for v in out["test_result"].values())
    assert math.isfinite(out["best_valid_score"])
