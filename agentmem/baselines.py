"""Token-selection baselines in the same frame as Attention Matching.

Each returns, per full layer, the span positions to keep: (G, width) long, G = batch x
KV heads. Kept slots keep their own values and earlier bias; nothing is fitted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import am, queries

SINKS = 4  # StreamingLLM attention sinks
SNAPKV_WINDOW = 32  # SnapKV observation window (the span's last tokens)
SNAPKV_POOL = 7  # SnapKV max-pool kernel over positions


def select(c, captured: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Dispatch on `c.spec.selection` (c is the running `_Compactor`)."""
    kind = c.spec.selection
    if kind == "kvzip":
        return _kvzip(c, captured)
    out = {}
    for idx in c.layers:
        keys, _, prior = c._span(idx)
        width = int(c.budgets[idx].max())
        valid = torch.isfinite(prior)
        if kind == "truncate":
            out[idx] = _recent(valid, width)
        elif kind == "streaming":
            out[idx] = _streaming(valid, width, sinks=SINKS if c.span[0] == 0 else 0)
        elif kind == "h2o":
            out[idx] = _h2o(_probs(c, idx, captured), valid, width)
        elif kind == "snapkv":
            scores = _probs(c, idx, captured).sum(1)  # (G, T)
            scores = F.max_pool1d(scores.unsqueeze(1), SNAPKV_POOL, stride=1, padding=SNAPKV_POOL // 2).squeeze(1)
            out[idx] = am.select_top(scores, valid, width)
        else:
            raise ValueError(f"unknown selection {kind!r}")
    return out


def _queries(c, idx: int, captured) -> torch.Tensor:
    """The captured queries of layer idx grouped per KV head and capped: (G, n, D)."""
    return queries.combine(queries.group_queries(captured[idx], c.num_kv), [], c.max_queries, c.generator,
                           positions=captured[idx].shape[-2])


def _probs(c, idx: int, captured) -> torch.Tensor:
    """Attention probabilities of the captured queries over the span: (G, n, T)."""
    keys, values, prior = c._span(idx)
    logits = am.span_logits(_queries(c, idx, captured), keys.float(), prior.float(), c.scalings[idx])
    return torch.softmax(logits, dim=-1)


def _positions(valid: torch.Tensor) -> torch.Tensor:
    return torch.arange(valid.shape[1], device=valid.device).expand_as(valid).float()


def _recent(valid: torch.Tensor, width: int) -> torch.Tensor:
    return am.select_top(_positions(valid), valid, width)


def _streaming(valid: torch.Tensor, width: int, *, sinks: int) -> torch.Tensor:
    sinks = min(sinks, width // 2)
    score = _positions(valid)
    score[:, :sinks] = valid.shape[1] + 1.0  # sinks first, then the most recent
    return am.select_top(score, valid, width)


def _h2o(probs: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
    """Half heavy hitters (accumulated attention), half most recent tokens."""
    recent = width // 2
    score = probs.sum(1)  # (G, T)
    T = valid.shape[1]
    score[:, T - recent :] = float("inf")
    return am.select_top(score, valid, width)


def _kvzip(c, captured) -> dict[int, torch.Tensor]:
    """Max attention over repeat queries; layers share the budget by one global ranking."""
    scores = c.share_globally({idx: c.layer_queries(idx, captured, {}) for idx in c.layers})
    return {idx: am.select_top(s, torch.isfinite(c._span(idx)[2]), int(c.budgets[idx].max()))
            for idx, s in scores.items()}
