"""Decode speed of the engine vs plain `model.generate` on the same prompt.

Both decode greedily from the same prompt for the same number of tokens (the engine's
policy never fires here, so the figure is the bookkeeping cost: trigger checks, KV
watching, query capture, incremental detokenization). Runs alternate and the median of
`repeats` is reported, since this machine is noisy. Prints a table, ends with one JSON line.
"""

from __future__ import annotations

import statistics
import time

import torch

from .. import hf
from ..engine import Session
from ..policies import Policy, TokenLimit
from .compaction import reference_text


def run(model, tokenizer, *, prompt_tokens: int = 512, new_tokens: int = 128, repeats: int = 3,
        progress=None) -> dict:
    text = tokenizer.decode(tokenizer(reference_text(), add_special_tokens=False).input_ids[:prompt_tokens])
    message = [{"role": "user", "content": f"Summarise this text:\n{text}"}]
    ids = tokenizer.apply_chat_template(message, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    policy = Policy(trigger=TokenLimit(10 * (ids.shape[1] + new_tokens)))
    plain: list[float] = []
    engine: list[float] = []
    for i in range(repeats):
        # decode rate = (N - 1) / (time for N tokens - time for 1 token): the prefill cancels out
        plain.append(_rate(lambda n: _generate(model, ids, n), new_tokens))
        engine.append(_rate(lambda n: _engine(model, tokenizer, policy, message, n), new_tokens))
        if progress:
            progress(f"repeat {i + 1}/{repeats}: generate {plain[-1]:.1f} tok/s, engine {engine[-1]:.1f} tok/s")
    hf.enable(model)
    plain_rate, engine_rate = statistics.median(plain), statistics.median(engine)
    return {"prompt_tokens": int(ids.shape[1]), "new_tokens": new_tokens, "repeats": repeats,
            "generate_tokens_per_s": plain_rate, "engine_tokens_per_s": engine_rate,
            "overhead": 1 - engine_rate / plain_rate, "runs": {"generate": plain, "engine": engine}}


def _rate(timed, tokens: int) -> float:
    return (tokens - 1) / (timed(tokens) - timed(1))


def _generate(model, ids, tokens: int) -> float:
    hf.disable(model, "sdpa")
    began = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return time.perf_counter() - began


def _engine(model, tokenizer, policy, message, tokens: int) -> float:
    session = Session(model, tokenizer, policy=policy)
    session.add("user", message[0]["content"])
    began = time.perf_counter()
    reply = session.generate(tokens, min_new_tokens=tokens)
    if len(reply.token_ids) != tokens:
        raise RuntimeError(f"engine generated {len(reply.token_ids)} tokens, expected {tokens}")
    return time.perf_counter() - began


def table(result: dict) -> str:
    return "\n".join([
        f"prompt {result['prompt_tokens']} tokens, {result['new_tokens']} new tokens, median of "
        f"{result['repeats']}; decode rate = (N-1) / (t(N) - t(1)), so the prefill cancels out",
        f"model.generate   {result['generate_tokens_per_s']:.2f} tok/s",
        f"agentmem engine  {result['engine_tokens_per_s']:.2f} tok/s",
        f"overhead         {result['overhead']:+.1%} (target: under 10%)",
    ])
