"""One reply's decoding: the next token from the logits, and the reply's text as it grows.

`Decoder` owns every change made to the next-token logits and the choice itself. Each
step it applies, in this order: the ban on end-of-turn tokens until `min_new_tokens`, the
`choices` constraint, the caller's `logits_processor`, then the `Sampler`'s own
processors (repetition penalty, temperature, top-k, top-p, min-p) and its seeded pick.
`ReplyText` turns the chosen tokens into text, holding back a tail that could still
become a stop string. `Session.stream` is the loop around these two: forward pass,
`Decoder.next_token`, `ReplyText.push`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import GenerationConfig

from . import hf
from .sampling import Choices, Detokenizer, Sampler, StopText, generation_config

# logits_processor(generated_ids, logits (vocab,)) -> changed logits (vocab,)
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]

HISTORY_TOKENS = 1024  # ids handed to the repetition penalty (the only processor that reads them)


@torch.no_grad()
def greedy(model, prompt: Sequence[int], steps: int, *, cache=None, stop: Sequence[int] = ()) -> list[int]:
    """Up to `steps` greedy tokens after `prompt` (on `cache`, which grows, else a fresh one);
    a token of `stop` ends it and is not returned."""
    cache = hf.new_cache(model) if cache is None else cache
    device = next(model.parameters()).device
    ids, out = torch.tensor([list(prompt)], device=device), []
    for _ in range(steps):
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, **hf.last_logits_only(model)).logits
        token = int(logits[0, -1].argmax())
        if token in stop:
            break
        out.append(token)
        ids = torch.tensor([[token]], device=device)
    return out


def reply_config(defaults: dict, config: GenerationConfig | None = None, **overrides) -> GenerationConfig:
    """The `GenerationConfig` of one reply: `config` (or greedy), then the session's
    `defaults`, then the non-None per-call `overrides`."""
    merged = dict(defaults)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return generation_config(config, **merged)


class Decoder:
    """Turns (generated ids, logits) into the next token of one reply.

    Args:
        config: the reply's `GenerationConfig` (see `reply_config`).
        seed: the sampler's seed; the same seed and logits give the same tokens.
        stop_ids: end-of-turn ids, banned while fewer than `config.min_new_tokens`
            tokens were generated.
        choices: a `Choices` constraint on the text after the reply's prefix, or None.
        logits_processor: `f(generated_ids, logits) -> logits`, applied after the
            constraints and before the sampler.
    """

    def __init__(self, config: GenerationConfig, *, seed: int, stop_ids: Sequence[int] = (),
                 choices: Choices | None = None, logits_processor: LogitsProcessor | None = None):
        self.sampler = Sampler(config, seed=seed)
        self.min_new_tokens = config.min_new_tokens or 0
        self.stop_ids = list(stop_ids)
        self.choices = choices
        self.logits_processor = logits_processor

    def filter(self, logits: torch.Tensor, generated: list[int], text: str) -> torch.Tensor:
        """`logits` (vocab,) after the end-of-turn ban, `choices` and the `logits_processor`.

        `text` is what the reply decoded so far after its prefix (what `choices` constrains).
        """
        if len(generated) < self.min_new_tokens:
            logits = logits.clone()
            logits[self.stop_ids] = float("-inf")
        allowed = self.choices.allowed(text) if self.choices is not None else None
        if allowed is not None:
            mask = torch.full_like(logits, float("-inf"))
            mask[allowed] = 0.0
            logits = logits + mask
        if self.logits_processor is not None:
            logits = self.logits_processor(generated, logits)
        return logits

    def next_token(self, logits: torch.Tensor, *, generated: list[int], text: str, history: Sequence[int]) -> int:
        """The next token id: `logits` (vocab,) filtered, then chosen by the sampler.

        `history` is the conversation's ids so far (the repetition penalty reads its tail).
        """
        return self.sampler.choose(self.filter(logits, generated, text), self._history(history))

    def _history(self, ids: Sequence[int]) -> torch.Tensor:
        if not self.sampler.needs_history:
            return torch.empty(1, 0, dtype=torch.long)
        return torch.tensor([list(ids[-HISTORY_TOKENS:])])


class ReplyText:
    """A reply's text as its tokens arrive; `push` returns what may be shown now.

    The reply starts with `prefix` (already shown: `shown` begins as it). Text that could
    still turn into a stop string is held back; a stop string found after the prefix ends
    the text before it (`stopped` turns True).
    """

    def __init__(self, tokenizer, *, prefix: str = "", stop: Sequence[str] | str | None = None):
        self.prefix = prefix
        self.stops = StopText(stop)
        self.detokenizer = Detokenizer(tokenizer)
        self.full = prefix  # decoded so far
        self.shown = prefix  # returned so far (the reply's text)
        self.stopped = False

    @property
    def generated(self) -> str:
        """The text decoded after the prefix."""
        return self.full[len(self.prefix):]

    def push(self, token: int) -> str:
        """Decode `token`; return the text that became safe to show (often empty)."""
        self.full += self.detokenizer.push(token)
        hit = self.stops.find(self.full, start=len(self.prefix))
        end = hit if hit is not None else max(self.stops.safe_end(self.full), len(self.prefix))
        self.stopped = hit is not None
        if end <= len(self.shown):
            return ""
        chunk = self.full[len(self.shown):end]
        self.shown = self.full[:end]
        return chunk

    def rest(self) -> str:
        """Once the reply ended without a stop string: the text held back as a possible one."""
        if self.stopped or len(self.full) <= len(self.shown):
            return ""
        chunk = self.full[len(self.shown):]
        self.shown = self.full
        return chunk
