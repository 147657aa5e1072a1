"""Next-token choice for the engine's decode loop, built from transformers' own pieces.

`Sampler` turns a `GenerationConfig` (greedy or sampling, temperature, top-k, top-p,
min-p, repetition penalty) into transformers' logits processors and picks one token per
step; `StopText` watches the decoded text for stop strings; `Choices` constrains the text
to go on with one of a few strings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .errors import ConfigError


def generation_config(base: GenerationConfig | None = None, **overrides) -> GenerationConfig:
    """A copy of `base` (or a greedy default) with the non-None `overrides` applied.

    `temperature` > 0 without an explicit `do_sample` turns sampling on; 0 means greedy.
    """
    config = GenerationConfig(**base.to_dict()) if base is not None else GenerationConfig(do_sample=False)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    temperature = overrides.get("temperature")
    if temperature is not None:
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        if "do_sample" not in overrides:
            overrides["do_sample"] = temperature > 0
        if temperature == 0:
            overrides.pop("temperature")
    for key, value in overrides.items():
        setattr(config, key, value)
    top_p = getattr(config, "top_p", None)
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    return config


class Sampler:
    """Chooses next tokens with the processors a `GenerationConfig` asks for."""

    def __init__(self, config: GenerationConfig, *, seed: int | None = None):
        self.config = config
        self.processors = LogitsProcessorList()
        penalty = getattr(config, "repetition_penalty", None)
        self.needs_history = penalty is not None and penalty != 1.0  # only this processor reads past ids
        if self.needs_history:
            self.processors.append(RepetitionPenaltyLogitsProcessor(penalty))
        if config.do_sample:
            if config.temperature is not None and config.temperature != 1.0:
                self.processors.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k:
                self.processors.append(TopKLogitsWarper(config.top_k))
            if config.top_p is not None and config.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(config.top_p))
            if getattr(config, "min_p", None):
                self.processors.append(MinPLogitsWarper(config.min_p))
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)

    def choose(self, logits: torch.Tensor, history: torch.Tensor) -> int:
        """One token id from `logits` (vocab,) given `history` (1, n) of ids so far."""
        scores = self.processors(history, logits.float().unsqueeze(0)) if self.processors else logits.unsqueeze(0)
        if not self.config.do_sample:
            return int(scores.argmax(-1))
        probs = torch.softmax(scores, dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=self.generator))


class StopText:
    """Finds the first stop string in growing text; only the tail is searched each step."""

    def __init__(self, stops: Sequence[str] | str | None):
        if isinstance(stops, str):
            stops = [stops]
        self.stops = [s for s in (stops or []) if s]
        self.longest = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, start: int = 0) -> int | None:
        """Index where the first stop string in `text[start:]` starts, if any."""
        hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def safe_end(self, text: str) -> int:
        """Length of the prefix of `text` that can no longer turn into a stop string."""
        keep = len(text)
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    keep = min(keep, len(text) - size)
                    break
        return keep


class Choices:
    """Constrained decoding: the text must go on with exactly one of `options`, then is free.

    Used to make small models pick a real tool name: after a forced `<tool_call>{"name": "`
    prefix the options are `read_file", "arguments": ` and so on. Each step allows only the
    tokens whose text keeps what was generated a prefix of some option.
    """

    def __init__(self, tokenizer, options: Sequence[str]):
        self.options = [o for o in dict.fromkeys(options) if o]
        if not self.options:
            raise ConfigError("choices must hold at least one non-empty string")
        self.by_first = _pieces_by_first_char(tokenizer)

    def allowed(self, text: str) -> list[int] | None:
        """Token ids allowed after `text` (what was generated so far), or None once free."""
        if any(text.startswith(o) for o in self.options):
            return None
        rests = [o[len(text):] for o in self.options if o.startswith(text)]
        if not rests:
            return None  # cannot happen while the mask is applied; be permissive if it does
        ids: list[int] = []
        for first in {r[0] for r in rests}:
            ids.extend(i for i, piece in self.by_first.get(first, ()) if any(r.startswith(piece) for r in rests))
        return ids


def _pieces_by_first_char(tokenizer) -> dict[str, list[tuple[int, str]]]:
    """Every token's text, grouped by its first character (computed once per tokenizer)."""
    groups = getattr(tokenizer, "_agentmem_pieces", None)
    if groups is None:
        groups: dict[str, list[tuple[int, str]]] = {}
        for i in range(len(tokenizer)):
            piece = tokenizer.decode([i])
            if piece and "\ufffd" not in piece:
                groups.setdefault(piece[0], []).append((i, piece))
        tokenizer._agentmem_pieces = groups
    return groups


class Detokenizer:
    """Incremental decoding: yields text only once it no longer ends in a partial character."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        done = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done):]
        return ""
