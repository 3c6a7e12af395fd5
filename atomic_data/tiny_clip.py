"""A tiny, randomly initialised CLIP model + processor in a folder, for tests and offline smoke runs.

    python -m atomic_data.tiny_clip /tmp/tiny-clip
    python -m atomic_data.extract_clip --name my-sample --model /tmp/tiny-clip --local-files-only

Nothing is downloaded: the model is built from a small ``CLIPConfig`` (about 77k
parameters, 16-d vectors by default) and the tokenizer from a byte-level vocabulary
(the 256 byte symbols, each also with CLIP's end-of-word mark, no merges), with CLIP's
77-token limit. Its vectors mean nothing; they only exercise the code path.
"""
import argparse
import sys


def build_tiny_clip(folder, projection_dim=16, image_size=32, max_length=77, seed=0):
    """Save a tiny random ``CLIPModel`` and ``CLIPProcessor`` to ``folder``; returns ``folder``."""
    import tokenizers
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    symbols = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [a + "</w>" for a in alphabet]
    tokenizer = CLIPTokenizer(vocab={s: n for n, s in enumerate(symbols)}, merges=[],
                              model_max_length=max_length)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=8),
        projection_dim=projection_dim,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = CLIPModel(config).eval()
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m atomic_data.tiny_clip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--dim", type=int, default=16, help="vector length (default: %(default)s)")
    args = parser.parse_args(argv)
    build_tiny_clip(args.folder, projection_dim=args.dim)
    print(f"tiny CLIP saved to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
