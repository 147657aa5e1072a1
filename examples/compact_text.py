"""Compact a long real text with every method and compare the next-token predictions.

Run: python examples/compact_text.py [--model smollm2-135m] [--ratio 10]
"""

import argparse

import torch

import agentmem
from agentmem import hf
from agentmem.bench.compaction import contexts, kl, teacher_force


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", type=float, default=10)
    parser.add_argument("--context", type=int, default=1024)
    args = parser.parse_args()

    model, tokenizer = agentmem.load_model(args.model)
    agentmem.enable(model)
    (ctx, cont), = contexts(tokenizer, count=1, context=args.context, continuation=64)
    cache = hf.new_cache(model)
    with torch.no_grad():
        last = model(input_ids=ctx, past_key_values=cache).logits[:, -1:].float()
    full = agentmem.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
    layers = set(full.full_layers())
    ref, _ = teacher_force(model, full, cont, last, layers)
    for method in agentmem.METHODS:
        small = agentmem.compact(model, cache, ctx, ratio=args.ratio, method=method, tokenizer=tokenizer)
        got, _ = teacher_force(model, small, cont, last, layers)
        print(f"{method:12s} {full.nbytes() / 2**20:6.1f} MB -> {small.nbytes() / 2**20:5.2f} MB  "
              f"KL {kl(ref, got):.4f}")


if __name__ == "__main__":
    main()
