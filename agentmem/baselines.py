"""Token-selection baselines in the same frame as Attention Matching.

Each returns, per full layer, the span positions to keep: (G, width) long, G = batch x
KV heads. Kept slots keep their own values and earlier bias; nothing is fitted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import am, profiles, queries

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


def _probs(c, idx: int, captured) -> torch.Tensor:
    """Attention probabilities of the captured queries over the span: (G, n, T)."""
    keys, values, prior = c._span(idx)
    q = queries.combine(queries.group_queries(captured[idx], c.num_kv), [], c.max_queries, c.generator,
                        positions=captured[idx].shape[-2])
    logits = am.span_logits(q, keys.float(), prior.float(), c.scalings[idx])
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
    scores = {idx: _probs(c, idx, captured).amax(1) for idx in c.layers}  # (G, T) each
    valid = {idx: torch.isfinite(c._span(idx)[2]) for idx in c.layers}
    total = sum(int(c.budgets[idx].max()) for idx in c.layers)  # slots per head, summed over layers
    out = {}
    for idx, width in profiles.global_widths(scores, valid, total).items():
        c.budgets[idx] = torch.full_like(c.budgets[idx], width)
        out[idx] = am.select_top(scores[idx], valid[idx], width)
    return out
