"""Specs of the token-selection baselines (`agentmem.baselines`): which span positions each keeps.

The rules are checked on a stand-in for the running compactor (the few fields `select` reads),
with keys and captured queries built so that the expected choice is known.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from agentmem import baselines

G, T, D, WIDTH = 2, 40, 8, 10  # KV heads (batch 1), span length, head dim, kept slots per head


def _compactor(kind: str, keys: torch.Tensor, prior: torch.Tensor, *, start: int = 0, width: int = WIDTH):
    """The fields of `_Compactor` that `baselines.select` reads, for one layer (index 0)."""
    values = torch.zeros_like(keys)
    return SimpleNamespace(spec=SimpleNamespace(selection=kind), layers=[0], span=(start, start + keys.shape[1]),
                           budgets={0: torch.full((keys.shape[0],), width)}, num_kv=keys.shape[0], max_queries=64,
                           generator=torch.Generator().manual_seed(0), scalings={0: D ** -0.5},
                           _span=lambda idx: (keys, values, prior))


def _span(seed: int, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random keys (G, T, D) and a prior (G, T) with the first `pad` slots of head 1 padding (-inf)."""
    torch.manual_seed(seed)
    prior = torch.zeros(G, T)
    prior[1, :pad] = float("-inf")
    return torch.randn(G, T, D), prior


def _queries(n: int = 6, direction: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """Captured queries of layer 0, (1, H_q=2G, n, D): random, or all along `direction`."""
    if direction is None:
        return {0: torch.randn(1, 2 * G, n, D)}
    return {0: direction.expand(1, 2 * G, n, D).clone()}


SELECTIONS = ["truncate", "streaming", "h2o", "snapkv"]


@pytest.mark.parametrize("kind", SELECTIONS)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pad", [0, 17])
def test_every_selection_keeps_width_distinct_valid_slots(kind, seed, pad):
    keys, prior = _span(seed, pad)
    (index,) = baselines.select(_compactor(kind, keys, prior), _queries()).values()
    assert index.shape == (G, WIDTH) and index.dtype == torch.long
    for head in range(G):
        kept = index[head].tolist()
        assert len(set(kept)) == WIDTH and all(0 <= i < T for i in kept)
        assert all(torch.isfinite(prior[head, i]) for i in kept), (head, kept)  # never a padding slot


def test_truncate_keeps_the_most_recent():
    keys, prior = _span(0)
    (index,) = baselines.select(_compactor("truncate", keys, prior), _queries()).values()
    assert all(sorted(row) == list(range(T - WIDTH, T)) for row in index.tolist())


def test_streaming_keeps_the_sinks_and_the_most_recent():
    keys, prior = _span(0)
    (index,) = baselines.select(_compactor("streaming", keys, prior), _queries()).values()
    sinks = min(baselines.SINKS, WIDTH // 2)
    assert all(sorted(row) == list(range(sinks)) + list(range(T - WIDTH + sinks, T)) for row in index.tolist())


def test_streaming_keeps_no_sinks_past_the_sequence_start():
    """A later span does not hold the attention sinks (they are the sequence's first tokens)."""
    keys, prior = _span(0)
    (index,) = baselines.select(_compactor("streaming", keys, prior, start=100), _queries()).values()
    assert all(sorted(row) == list(range(T - WIDTH, T)) for row in index.tolist())


@pytest.mark.parametrize("kind", ["h2o", "snapkv"])
def test_attention_based_selections_keep_the_most_attended_old_key(kind):
    """A key every query attends to, far from the recent end, is kept; truncate and streaming drop it."""
    keys, prior = _span(0)
    keys = keys * 0.01
    heavy = 12
    direction = torch.randn(D)
    keys[:, heavy] = direction * 10  # the captured queries all point at it
    captured = _queries(direction=direction)
    (index,) = baselines.select(_compactor(kind, keys, prior), captured).values()
    assert all(heavy in row for row in index.tolist()), index
    for blind in ("truncate", "streaming"):
        (index,) = baselines.select(_compactor(blind, keys, prior), captured).values()
        assert not any(heavy in row for row in index.tolist())


def test_h2o_keeps_half_recent_and_the_heaviest_hitters():
    keys, prior = _span(1)
    keys = keys * 0.01
    heavy = [3, 7, 11, 15, 19]  # WIDTH // 2 old keys that draw the attention
    direction = torch.randn(D)
    for rank, position in enumerate(heavy):
        keys[:, position] = direction * (6 + rank)
    (index,) = baselines.select(_compactor("h2o", keys, prior), _queries(direction=direction)).values()
    assert all(sorted(row) == heavy + list(range(T - WIDTH // 2, T)) for row in index.tolist()), index


def test_snapkv_keeps_the_neighbourhood_of_a_hit():
    """SnapKV max-pools scores over nearby positions: the heavy key's window ties and outranks the rest."""
    keys, prior = _span(2)
    keys = keys * 0.01
    direction = torch.randn(D)
    keys[:, 20] = direction * 10
    (index,) = baselines.select(_compactor("snapkv", keys, prior, width=5), _queries(direction=direction)).values()
    half = baselines.SNAPKV_POOL // 2
    assert all(set(row) <= set(range(20 - half, 20 + half + 1)) for row in index.tolist()), index


def test_unknown_selection_is_refused():
    keys, prior = _span(0)
    with pytest.raises(ValueError, match="unknown selection 'top-p'"):
        baselines.select(_compactor("top-p", keys, prior), _queries())
