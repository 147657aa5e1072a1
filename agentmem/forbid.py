"""Token filters that keep a reply from writing given text: a repeated tool call, or any call.

`ForbidText` wraps another `logits_processor` (typically the call constraint) and masks
every token that would complete one of its texts in the reply. The agent SDK's repeat
guard (`agentmem.agents.guard`) and `ChatAgentMem` use it to keep a model from writing a
call it already made; `no_calls` keeps a plain-text reply from opening ``<tool_call>``.
"""

from __future__ import annotations

import bisect
import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from .toolcalls import CLOSE, OPEN, ToolCall, format_tool_call

log = logging.getLogger(__name__)

LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


def call_texts(calls: Iterable[ToolCall], written: Iterable[str] = ()) -> list[str]:
    """The texts a model writes for `calls`, to forbid them.

    Each text runs from ``<tool_call>`` to the last value of the arguments (the closing
    brackets after it are left out: the schema forces them, so masking them would leave
    the model nowhere to go). `written` adds the calls as the model wrote them, in case its
    spelling differs from the canonical JSON.
    """
    texts = {format_tool_call(c.name, c.arguments)[: -len(CLOSE)] for c in calls}
    texts.update(t for t in written if t.startswith(OPEN))
    return sorted({t.rstrip("}] \n") for t in texts})


class ForbidText:
    """A `logits_processor` that keeps a reply from containing any of `texts`.

    It runs `inner` first (e.g. the call constraint), then masks every token that would
    complete one of the texts in the reply (the forced `prefix` counts). If that leaves no
    token at all, the mask gives way for this step (logged once per reply).

    Args:
        tokenizer: the model's tokenizer.
        texts: the strings the reply must not contain.
        inner: a logits processor to run first.
        prefix: the text the reply was forced to start with.
    """

    def __init__(self, tokenizer: Any, texts: Sequence[str], *, inner: LogitsProcessor | None = None,
                 prefix: str = ""):
        self.tokenizer, self.inner, self.prefix = tokenizer, inner, prefix
        self.texts = [t for t in texts if t]
        self.index = _index(tokenizer)
        self.gave_way = False

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        if self.inner is not None:
            logits = self.inner(generated, logits)
        if not self.texts:
            return logits
        text = self.prefix + self.tokenizer.decode(generated)
        banned = sorted({t for f in self.texts for t in self.index.completing(text, f) if t < logits.shape[-1]})
        if not banned:
            return logits
        masked = logits.clone()
        masked[banned] = float("-inf")
        if not bool(torch.isfinite(masked).any()):
            if not self.gave_way:
                log.info("the only way to go on writes a forbidden text; letting it through (%r)", text[-60:])
                self.gave_way = True
            return logits
        return masked

    @property
    def done(self) -> bool:
        """The inner constraint's `done` (False without one)."""
        return bool(getattr(self.inner, "done", False))


def no_calls(tokenizer: Any, *, prefix: str = "") -> ForbidText:
    """A filter for plain-text replies: the reply cannot start a ``<tool_call>``."""
    return ForbidText(tokenizer, [OPEN[:5]], prefix=prefix)


class _TokenIndex:
    """The tokenizer's token texts, sorted, for 'which tokens start with this text' queries."""

    def __init__(self, tokenizer: Any):
        vocab = tokenizer.get_vocab()
        size = max(vocab.values(), default=-1) + 1
        texts: list[tuple[str, int]] = []
        for token in range(size):
            text = tokenizer.decode([token])
            if text and "\ufffd" not in text:
                texts.append((text, token))
        texts.sort()
        self.keys = [t for t, _ in texts]
        self.ids = [i for _, i in texts]
        self.longest = max((len(t) for t in self.keys), default=1)
        self._containing: dict[str, list[int]] = {}

    def starting_with(self, text: str) -> list[int]:
        at = bisect.bisect_left(self.keys, text)
        out = []
        while at < len(self.keys) and self.keys[at].startswith(text):
            out.append(self.ids[at])
            at += 1
        return out

    def containing(self, text: str) -> list[int]:
        if text not in self._containing:
            self._containing[text] = [i for k, i in zip(self.keys, self.ids) if text in k]
        return self._containing[text]

    def completing(self, text: str, forbidden: str) -> list[int]:
        """Tokens after which `text` would contain `forbidden` (when it does not yet)."""
        if forbidden in text:
            return []
        out = list(self.containing(forbidden)) if len(forbidden) <= self.longest else []
        for k in range(max(1, len(forbidden) - self.longest), len(forbidden)):
            if text.endswith(forbidden[:k]):
                out += self.starting_with(forbidden[k:])
        return out


_INDEXES: weakref.WeakKeyDictionary[Any, _TokenIndex] = weakref.WeakKeyDictionary()


def _index(tokenizer: Any) -> _TokenIndex:
    try:
        index = _INDEXES.get(tokenizer)
    except TypeError:  # not weak-referenceable
        return _TokenIndex(tokenizer)
    if index is None:
        index = _INDEXES[tokenizer] = _TokenIndex(tokenizer)
    return index
