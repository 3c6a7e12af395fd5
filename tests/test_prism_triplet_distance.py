"""prism_triplet_distance: the uniqueness triplet on the outputs as they are, or scale-free."""
import pytest
import torch

from prism_recbole.config import Config
from prism_recbole.model.prism_layer import InteractionExpertLayer, _triplet, uniqueness_loss
from prism_recbole.quick_start import build_model, load_data


def test_cosine_distance_is_the_l2_triplet_of_normalised_vectors():
    torch.manual_seed(0)
    a, p, n = torch.randn(3, 5, 4).unbind(0)
    got = _triplet(a, p, n, 0.5, distance="cosine")
    unit = [t / t.norm(dim=-1, keepdim=True) for t in (a, p, n)]
    want = ((unit[0] - unit[1]).norm(dim=-1) - (unit[0] - unit[2]).norm(dim=-1) + 0.5).clamp(min=0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cosine_distance_cannot_be_met_by_inflating_norms():
    torch.manual_seed(1)
    a, p, n = torch.randn(3, 64, 8).unbind(0)
    clean = a  # modality 0: negative replaced[0] = n, positive replaced[1] = p
    l2 = uniqueness_loss(clean, [n, p], 0, 1.0)
    l2_big = uniqueness_loss(100 * clean, [100 * n, 100 * p], 0, 1.0)
    cos = uniqueness_loss(clean, [n, p], 0, 1.0, distance="cosine")
    cos_big = uniqueness_loss(100 * clean, [100 * n, 100 * p], 0, 1.0, distance="cosine")
    assert l2_big != pytest.approx(l2.item(), rel=0.1)  # the L2 loss depends on the scale
    assert cos_big.item() == pytest.approx(cos.item(), rel=1e-4)  # the cosine one does not


def test_unknown_distance_is_a_clear_error():
    with pytest.raises(ValueError, match="prism_triplet_distance"):
        InteractionExpertLayer(2, 3, 8, 0.0, 1.0, 1.0, 0.1, 0.1, 0.1, triplet_distance="l1")


def test_option_trains_a_batch_and_changes_the_uniqueness_term(tiny):
    terms = {}
    for distance in ("l2", "cosine"):
        config = Config(model="PRISM_SASRec", dataset="tiny",
                        config_dict=dict(tiny, prism_triplet_distance=distance))
        _, train_data, _, _ = load_data(config)
        torch.manual_seed(0)
        model = build_model(config, train_data).train()
        assert model.prism.interaction_experts.triplet_distance == distance
        torch.manual_seed(0)
        loss = model.calculate_loss(next(iter(train_data)))
        loss.backward()
        assert torch.isfinite(loss)
        terms[distance] = loss.item()
    # same seed, same weights and batch: only the uniqueness term differs
    assert terms["l2"] != pytest.approx(terms["cosine"], rel=1e-6)
