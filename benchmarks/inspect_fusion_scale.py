"""Scales inside a trained PRISM model: why does the fusion add little?

Loads a checkpoint (safely, via ``prism_recbole.quick_start.load_model``), runs the test users'
input sequences through the PRISM module and prints

* the std of the ID embeddings, of each projected modality vector x^m and of the pooled
  vectors x̄^m the experts read, next to the std of the noise that replaces a modality;
* the std of the expert outputs h_k and of the fused vector z, i.e. what z adds to E[s_t];
* the auxiliary loss terms on these users: each expert's output with one modality replaced by
  noise, compared with its clean output (uniqueness: triplet with margin; synergy: mean cosine,
  pushed down; redundancy: mean 1 - cosine, pulled down);
* the gate: mean weight per expert, mean largest weight and mean entropy (log K = uniform).

    python benchmarks/inspect_fusion_scale.py --checkpoint saved/PRISM_SASRec-....pth
"""
import argparse
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def inspect(checkpoint, max_batches=None):
    from prism_recbole.quick_start import load_model

    loaded = load_model(checkpoint)
    model, config = loaded.model, loaded.config
    prism = model.prism
    if prism.interaction_experts is None:
        raise ValueError(f"{checkpoint}: prism_fusion none has no experts to inspect")
    names = list(loaded.config["modalities"])
    stats = {k: [] for k in ("pooled", "experts", "fused", "gate")}
    terms_sum, n_batches = {}, 0
    with torch.no_grad():
        ids = torch.arange(1, prism.features.present.shape[0], device=prism.features.present.device)
        x, _, present = prism.features(ids)  # [N, M, D]
        id_std = model.item_embedding.weight[1:].std().item()
        x_std = [x[present[:, m], m].std().item() for m in range(x.shape[1])]
        for batch_idx, batch in enumerate(loaded.test_data):
            interaction = batch[0].to(config["device"])
            seq = interaction[model.ITEM_SEQ]
            model.full_sort_predict(interaction)
            out = model.prism_output
            # the pooled vectors x̄^m, as the module builds them (masked mean over real items)
            mask = (seq > 0).to(x.dtype)
            feats = prism.features(seq.flatten())[0].view(*seq.shape, *x.shape[1:])  # [B, L, M, D]
            pooled = (feats * mask[..., None, None]).sum(1) / mask.sum(1).clamp(min=1)[:, None, None]
            _, _, terms = prism.interaction_experts(pooled, with_aux=True)
            for key, value in terms.items():
                terms_sum[key] = terms_sum.get(key, 0.0) + value.item()
            stats["pooled"].append(pooled)
            stats["experts"].append(out.expert_outputs)
            stats["fused"].append(out.fused)
            stats["gate"].append(out.gate_weights)
            n_batches += 1
            if max_batches and n_batches >= max_batches:
                break
    pooled = torch.cat(stats["pooled"])
    experts = torch.cat(stats["experts"])
    fused = torch.cat(stats["fused"])
    gate = torch.cat(stats["gate"])
    entropy = -(gate.clamp(min=1e-12).log() * gate).sum(1)
    noise = config["prism_noise_std"]
    lines = [f"checkpoint: {checkpoint}",
             f"model: {config['model']}, dataset: {config['dataset']}, users: {gate.shape[0]}",
             "",
             "| quantity | std |", "|---|---|",
             f"| ID embedding rows E[i] | {id_std:.4f} |"]
    lines += [f"| projected x^m, {n} | {s:.4f} |" for n, s in zip(names, x_std)]
    lines += [f"| pooled x̄^m, {n} (what the experts read) | {pooled[:, m].std().item():.4f} |"
              for m, n in enumerate(names)]
    lines += [f"| noise replacing a modality (prism_noise_std) | {noise} |"]
    lines += [f"| expert output h_k, {n} | {experts[:, k].std().item():.4f} |"
              for k, n in enumerate(prism.expert_names)]
    lines += [f"| fused z (added to every position) | {fused.std().item():.4f} |", ""]
    lines += ["| auxiliary term (test users) | value |", "|---|---|"]
    lines += [f"| {k} | {v / n_batches:.4f} |" for k, v in terms_sum.items()]
    lines += ["", "| gate | value |", "|---|---|"]
    lines += [f"| mean w({n}) | {gate[:, k].mean().item():.3f} |" for k, n in enumerate(prism.expert_names)]
    lines += [f"| mean largest weight | {gate.max(1).values.mean().item():.3f} |",
              f"| mean entropy (uniform = log K = {math.log(gate.shape[1]):.3f}) | {entropy.mean().item():.3f} |"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--max_batches", type=int, default=None)
    args = parser.parse_args(argv)
    print(inspect(args.checkpoint, args.max_batches))


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
