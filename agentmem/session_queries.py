"""The queries a session keeps from its own forward passes, as reference queries for compaction.

Two stores, both per full-attention layer: a ring of the most recent decode queries
(`recent`, fitted on by the Attention Matching methods so a compaction keeps what the
reply is reading now), and an optional `QuerySample` spread over the whole history
(`agentmem.captured`), which can replace a compaction's repeat pass. Both travel with the
session's checkpoint, so a resumed session compacts like the one that was saved.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import torch

from .captured import QuerySample
from .checkpoint import recent_state
from .compaction import METHODS

FIT_METHODS = tuple(name for name, method in METHODS.items() if method.fit)


class SessionQueries:
    """Keeps a session's recent decode queries and its captured sample (see the module docstring).

    Args:
        layers: indices of the model's full-attention layers (`hf.full_attention_layers`).
        recent: decode queries kept per layer (0 keeps none).
        captured: positions per layer of the `QuerySample` (0: no sample).
    """

    def __init__(self, layers: Sequence[int], *, recent: int = 64, captured: int = 0):
        self.layers = tuple(layers)
        self.recent_size = max(0, int(recent))
        self.recent: dict[int, collections.deque] = {}  # layer -> deque of (B, H_q, 1, D) queries
        self.sample = QuerySample(captured) if captured else None

    def capture_layers(self, *, decode: bool, method: str) -> set[int]:
        """The layers whose queries the next forward pass should record."""
        return set(self.layers) if self.sample is not None or self._keeps_recent(decode, method) else set()

    def remember(self, capture, first: int, *, decode: bool, method: str) -> None:
        """Keep the queries `capture` recorded for tokens first, first + 1, ..."""
        if self.sample is not None and capture.queries:
            self.sample.add({idx: capture.stacked(idx) for idx in capture.queries}, first)
        if not self._keeps_recent(decode, method):
            return
        for idx, parts in capture.queries.items():
            self._ring(idx).extend(parts)

    def recent_queries(self) -> dict[int, torch.Tensor] | None:
        """Per layer, the recent decode queries (B, H_q, n, D), or None when there are none."""
        return {i: torch.cat(list(r), dim=2) for i, r in self.recent.items() if r} or None

    def state(self) -> list[dict]:
        """Checkpoint entries of both stores."""
        return recent_state(self.recent) + ([] if self.sample is None else self.sample.state())

    def restore(self, recent: dict[int, torch.Tensor], sample: QuerySample | None) -> None:
        """Take back stored queries: `recent` per layer (B, H_q, n, D), and the sample if one is kept."""
        if self.sample is not None:
            self.sample = sample
        if not self.recent_size:
            return
        for layer, tensor in recent.items():
            self._ring(layer).extend(tensor.split(1, dim=2))

    def copy(self) -> SessionQueries:
        """An independent copy (the tensors are shared; they are never changed in place)."""
        twin = SessionQueries(self.layers, recent=self.recent_size)
        twin.recent = {i: collections.deque(r, maxlen=r.maxlen) for i, r in self.recent.items()}
        twin.sample = None if self.sample is None else self.sample.copy()
        return twin

    def _keeps_recent(self, decode: bool, method: str) -> bool:
        return decode and self.recent_size > 0 and method in FIT_METHODS

    def _ring(self, layer: int) -> collections.deque:
        return self.recent.setdefault(layer, collections.deque(maxlen=self.recent_size))
