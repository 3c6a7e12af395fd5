"""prism_replace: what stands in for a modality in the experts' extra passes."""
import pytest
import torch

from prism_recbole.config import Config
from prism_recbole.model.prism_layer import InteractionExpertLayer
from prism_recbole.quick_start import build_model, load_data


def layer(replace, M=2, D=3):
    return InteractionExpertLayer(M, D, 8, 0.0, 1.0, 1.0, 0.1, 0.1, 0.1, replace=replace)


def test_shuffle_takes_the_same_modality_of_other_rows():
    torch.manual_seed(0)
    pooled = torch.randn(6, 2, 3)
    replaced = layer("shuffle")._replaced_inputs(pooled)  # [M, B, M·D]
    for m in range(2):
        got = replaced[m].view(6, 2, 3)
        other = 1 - m
        torch.testing.assert_close(got[:, other], pooled[:, other])  # the other modality kept
        # modality m: a permutation of the batch's rows of modality m
        rows = sorted(map(tuple, got[:, m].tolist()))
        assert rows == sorted(map(tuple, pooled[:, m].tolist()))
        assert not torch.equal(got[:, m], pooled[:, m])  # (seed 0: not the identity)


def test_mean_is_the_batch_mean_and_works_per_position():
    pooled = torch.randn(4, 5, 2, 3)  # causal mode: [B, L, M, D]
    replaced = layer("mean")._replaced_inputs(pooled).view(2, 4, 5, 2, 3)
    want = pooled[..., 0, :].reshape(-1, 3).mean(0)
    torch.testing.assert_close(replaced[0, ..., 0, :], want.expand(4, 5, 3))
    torch.testing.assert_close(replaced[0, ..., 1, :], pooled[..., 1, :])


def test_noise_is_the_default_and_other_replacements_draw_no_gradient():
    assert layer("noise").replace == "noise"
    pooled = torch.randn(6, 2, 3, requires_grad=True)
    for replace in ("shuffle", "mean"):
        replaced = layer(replace)._replaced_inputs(pooled)
        replaced[0].view(6, 2, 3)[:, 0].sum().backward(retain_graph=True)
        assert pooled.grad is None or (pooled.grad[:, 0] == 0).all()
    with pytest.raises(ValueError, match="prism_replace"):
        layer("zeros")


@pytest.mark.parametrize("replace", ["shuffle", "mean"])
def test_option_trains_a_batch(replace, tiny):
    config = Config(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, prism_replace=replace))
    _, train_data, _, _ = load_data(config)
    model = build_model(config, train_data).train()
    assert model.prism.interaction_experts.replace == replace
    loss = model.calculate_loss(next(iter(train_data)))
    loss.backward()
    assert torch.isfinite(loss)
