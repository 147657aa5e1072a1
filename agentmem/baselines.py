"""Token-selection baselines in the same frame as Attention Matching.

Each is an `am.Selection`: `select(span, width)` returns, per head, the span positions to
keep, (G, width) long, G = batch x KV heads. Kept slots keep their own values and earlier
bias; nothing is fitted. KVzip is `am.TopAttention("peak")` with layer budgets shared by
one global ranking (`compaction.METHODS["kvzip"]`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .am import Selection, SpanScores, select_top

SINKS = 4  # StreamingLLM attention sinks
SNAPKV_WINDOW = 32  # SnapKV observation window (the span's last tokens)
SNAPKV_POOL = 7  # SnapKV max-pool kernel over positions


def _positions(valid: torch.Tensor) -> torch.Tensor:
    return torch.arange(valid.shape[1], device=valid.device).expand_as(valid).float()


class Recent(Selection):
    """The most recent tokens (truncation)."""

    name, scores = "truncate", None

    def select(self, span: SpanScores, width: int) -> torch.Tensor:
        return select_top(_positions(span.valid), span.valid, width)


class Streaming(Selection):
    """StreamingLLM: the attention sinks (when the span starts the context), then the most recent tokens."""

    name, scores = "streaming", None

    def __init__(self, sinks: int = SINKS):
        self.sinks = sinks

    def select(self, span: SpanScores, width: int) -> torch.Tensor:
        sinks = min(self.sinks if span.at_start else 0, width // 2)
        score = _positions(span.valid)
        score[:, :sinks] = span.valid.shape[1] + 1.0  # sinks first, then the most recent
        return select_top(score, span.valid, width)


class HeavyHitters(Selection):
    """H2O: half heavy hitters (attention accumulated over the reference queries), half most recent."""

    name, scores = "h2o", "probs"

    def select(self, span: SpanScores, width: int) -> torch.Tensor:
        recent = width // 2
        score = span.probs().sum(1)  # (G, T)
        T = span.valid.shape[1]
        score[:, T - recent :] = float("inf")
        return select_top(score, span.valid, width)


class SnapKV(Selection):
    """SnapKV: attention of the span's last `window` tokens, max-pooled over `pool` positions."""

    name, scores = "snapkv", "probs"

    def __init__(self, window: int = SNAPKV_WINDOW, pool: int = SNAPKV_POOL):
        self.window, self.pool = window, pool

    def select(self, span: SpanScores, width: int) -> torch.Tensor:
        scores = span.probs().sum(1)  # (G, T)
        scores = F.max_pool1d(scores.unsqueeze(1), self.pool, stride=1, padding=self.pool // 2).squeeze(1)
        return select_top(scores, span.valid, width)
