"""The text-summary baseline: the model summarises a span, and the summary's tokens replace it.

This is what Claude Code's auto-compact and LangChain's summarisation middleware do with a
conversation's old turns, done in the cache: the span's text goes to the model with a
request to summarise it for its own later use; the summary (at most the slots the ratio
allows) is encoded at the span's place, after the tokens before it; those slots then stand
for the span's logical tokens, as an attention-matched span's would. Everything after the
span keeps its slots, so a later token sees the summary where the span was.

It needs a model whose layers all attend to the whole context: the summary's keys are
computed after the tokens before the span, which a sliding-window layer no longer holds.
"""

from __future__ import annotations

import torch

from . import hf
from .chat_format import ChatFormat
from .decoding import greedy
from .errors import ConfigError

INSTRUCTION = (
    "Summarise the following earlier part of our conversation so that you can go on with the "
    "work without it. Keep every file name, number, setting, rule, error message, tool result "
    "and decision that may matter later. Be brief.\n\n<earlier>\n{text}\n</earlier>"
)
HEADER = "Summary of earlier turns: "


def summarise_span(model, cache, input_ids: torch.Tensor, *, start: int, end: int, ratio: float, tokenizer,
                   stats: dict | None = None) -> hf.CompactedCache:
    """A new cache in which logical tokens [start, end) are held by the slots of a text summary.

    The summary gets at most (the span's slots / `ratio`) tokens, including a header
    (`HEADER`) when that takes at most half of them; the model writes it greedily from a
    prompt holding the span's text. At ratio 1 the cache is returned as it is. `stats`
    (if given) receives the summary text and its token count.

    Raises:
        ConfigError: no tokenizer, a batch of more than one, or a model with sliding-window layers.
    """
    if tokenizer is None:
        raise ConfigError("method 'summary' needs the tokenizer (pass tokenizer=...)")
    if input_ids.shape[0] != 1:
        raise ConfigError(f"method 'summary' compacts one sequence at a time, got a batch of {input_ids.shape[0]}")
    check_model(model)
    slots = hf.span_slots(cache, start, end)
    budget = max(1, int(slots / ratio))
    if budget >= slots:  # nothing to gain (ratio 1): the span keeps its slots
        return hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
    header = tokenizer.encode(HEADER, add_special_tokens=False)
    header = header if 2 * len(header) <= budget else []  # a tight budget goes to the summary itself
    text = tokenizer.decode(input_ids[0, start:end].tolist())
    chat = ChatFormat(tokenizer)
    prompt = chat.render([{"role": "user", "content": INSTRUCTION.format(text=text)}], add_generation_prompt=True)
    written = greedy(model, chat.encode(prompt), budget - len(header), stop=chat.stop_ids)
    summary = header + written
    if stats is not None:
        stats.update(summary=tokenizer.decode(summary), summary_tokens=len(summary))
    return hf.replace_span(model, cache, start, end, summary)


def check_model(model) -> None:
    """ConfigError for a model the summary cannot serve (one with sliding-window layers)."""
    if hf.sliding_layers(model):
        raise ConfigError("method 'summary' needs a model whose layers all attend to the whole context "
                          "(this one has sliding-window layers); use am-fast or am")
