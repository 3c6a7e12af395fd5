"""Auxiliary-loss report: how hard the experts' auxiliary tasks still are for a trained model.

    python -m prism_recbole.aux_report saved/PRISM_SASRec-A.pth saved/PRISM_SASRec-B.pth --batches 50

For each checkpoint (a PRISM model written by :func:`prism_recbole.quick_start.run`), the model
is rebuilt with :func:`~prism_recbole.quick_start.load_model`, put in training mode (the
auxiliary passes run in training only) and run under ``torch.no_grad`` over the first
``--batches`` batches of its training split (drawn once after seeding with ``--seed``), each
batch run with the same random seed for every checkpoint and every setting.  Printed, as a
Markdown table, the mean over those batches of each auxiliary term as the model computes it
(``unique_<modality>``: the triplet loss of that modality's expert, ``synergy``: mean
cos(h, h^{¬m}), ``redundancy``: mean 1 - cos(h, h^{¬m})), once with the triplet distance the
model was trained with and once with each other distance (``prism_triplet_distance``: ``l2``,
``cosine``), so that two models trained with different distances can be read on the same scale.

Reading: a uniqueness term of 0 means every triplet is met by the margin (the expert tells
its own modality's replacement from the others' on every row); for the margin m it is at most
about m when the expert does not tell them apart.  A synergy term near 1 / redundancy near 0
means the expert's output barely changes when a modality is replaced.
"""
import argparse
import sys
from itertools import islice
from typing import Dict, List, Sequence

import torch

from prism_recbole.model.prism_layer import TRIPLET_DISTANCES


def first_batches(loaded, batches: int, seed: int = 0) -> list:
    """The first ``batches`` training batches, on the model's device, drawn once after seeding
    (the training loader shuffles with its own generator, reseeded here), so that every
    distance and every checkpoint of the same data reads the same batches."""
    torch.manual_seed(seed)
    generator = getattr(loaded.train_data, "generator", None)  # RecBole's shuffling generator
    if generator is not None:
        generator.manual_seed(seed)
    device = loaded.config["device"]
    return [interaction.to(device) for interaction in islice(loaded.train_data, batches)]


def aux_terms(loaded, batches: int = 50, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """{distance: {term: mean over the first ``batches`` training batches}} for one model.

    ``loaded`` is what :func:`prism_recbole.quick_start.load_model` returns.  The model's own
    ``prism_triplet_distance`` comes first; the model is left in eval mode with its distance.
    """
    model = loaded.model
    layer = getattr(model, "prism", None)
    experts = getattr(layer, "interaction_experts", None)
    if experts is None:
        raise ValueError(
            f"checkpoint {loaded.checkpoint} has no interaction experts (a PRISM model with "
            f"prism_fusion adaptive or uniform is needed; got {type(model).__name__}"
            f"{', prism_fusion: none' if layer is not None else ''})"
        )
    if not getattr(layer, "aux_loss", True):
        raise ValueError(f"checkpoint {loaded.checkpoint} was trained with prism_aux_loss: False")
    own = experts.triplet_distance
    distances = [own] + [d for d in TRIPLET_DISTANCES if d != own]
    result = {}
    data = first_batches(loaded, batches, seed)
    if not data:
        raise ValueError(f"checkpoint {loaded.checkpoint}: the training split has no batch")
    try:
        model.train()
        for distance in distances:
            experts.triplet_distance = distance
            sums: Dict[str, float] = {}
            for i, interaction in enumerate(data):
                torch.manual_seed(seed + i)  # the same replacements for every distance
                with torch.no_grad():
                    model.calculate_loss(interaction)
                for name, value in (model.prism_output.aux_terms or {}).items():
                    sums[name] = sums.get(name, 0.0) + float(value)
            result[distance] = {name: total / len(data) for name, total in sums.items()}
    finally:
        experts.triplet_distance = own
        model.eval()
    return result


def markdown(rows: List[tuple]) -> str:
    """rows: (checkpoint label, trained-with distance, {distance: {term: value}})."""
    terms = []
    for _, _, by_distance in rows:
        for values in by_distance.values():
            terms += [t for t in values if t not in terms]
    lines = ["| checkpoint | trained with | triplet distance read | " + " | ".join(terms) + " |",
             "|---|---|---|" + "---:|" * len(terms)]
    for label, own, by_distance in rows:
        for distance, values in by_distance.items():
            cells = [f"{values[t]:.4f}" if t in values else "-" for t in terms]
            lines.append(f"| {label} | {own} | {distance} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--names", nargs="+", default=None, help="one label per checkpoint")
    parser.add_argument("--batches", type=int, default=50, help="training batches (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.checkpoints):
        parser.error(f"--names has {len(args.names)} labels for {len(args.checkpoints)} checkpoints")
    if args.batches < 1:
        parser.error("--batches must be at least 1")
    from prism_recbole.quick_start import load_model

    rows = []
    for i, checkpoint in enumerate(args.checkpoints):
        loaded = load_model(checkpoint)
        label = args.names[i] if args.names else checkpoint
        by_distance = aux_terms(loaded, args.batches, args.seed)
        rows.append((label, next(iter(by_distance)), by_distance))
    print(markdown(rows))


if __name__ == "__main__":
    sys.exit(main())
