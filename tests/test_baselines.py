"""Specs of the token-selection baselines (`agentmem.baselines`): which span positions each keeps.

Each selection is asked directly (`select(span, width)` on an `am.SpanScores`), with keys and
reference queries built so that the expected choice is known.
"""

from __future__ import annotations

import pytest
import torch

from agentmem import am, baselines, queries

G, T, D, WIDTH = 2, 40, 8, 10  # KV heads (batch 1), span length, head dim, kept slots per head


SELECTIONS = {"truncate": baselines.Recent(), "streaming": baselines.Streaming(), "h2o": baselines.HeavyHitters(),
              "snapkv": baselines.SnapKV()}


def _select(kind: str, keys: torch.Tensor, prior: torch.Tensor, asked: torch.Tensor, *, start: int = 0,
            width: int = WIDTH) -> torch.Tensor:
    """The kept positions (G, width) of selection `kind` on one layer's span, with queries `asked` (1, H_q, n, D)."""
    span = am.SpanScores(queries.group_queries(asked, keys.shape[0]), keys, torch.zeros_like(keys), prior, D ** -0.5,
                         at_start=start == 0)
    return SELECTIONS[kind].select(span, width)


def _span(seed: int, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random keys (G, T, D) and a prior (G, T) with the first `pad` slots of head 1 padding (-inf)."""
    torch.manual_seed(seed)
    prior = torch.zeros(G, T)
    prior[1, :pad] = float("-inf")
    return torch.randn(G, T, D), prior


def _queries(n: int = 6, direction: torch.Tensor | None = None) -> torch.Tensor:
    """Reference queries of the layer, (1, H_q=2G, n, D): random, or all along `direction`."""
    if direction is None:
        return torch.randn(1, 2 * G, n, D)
    return direction.expand(1, 2 * G, n, D).clone()


@pytest.mark.parametrize("kind", SELECTIONS)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pad", [0, 17])
def test_every_selection_keeps_width_distinct_valid_slots(kind, seed, pad):
    keys, prior = _span(seed, pad)
    index = _select(kind, keys, prior, _queries())
    assert index.shape == (G, WIDTH) and index.dtype == torch.long
    for head in range(G):
        kept = index[head].tolist()
        assert len(set(kept)) == WIDTH and all(0 <= i < T for i in kept)
        assert all(torch.isfinite(prior[head, i]) for i in kept), (head, kept)  # never a padding slot


def test_truncate_keeps_the_most_recent():
    keys, prior = _span(0)
    index = _select("truncate", keys, prior, _queries())
    assert all(sorted(row) == list(range(T - WIDTH, T)) for row in index.tolist())


def test_streaming_keeps_the_sinks_and_the_most_recent():
    keys, prior = _span(0)
    index = _select("streaming", keys, prior, _queries())
    sinks = min(baselines.SINKS, WIDTH // 2)
    assert all(sorted(row) == list(range(sinks)) + list(range(T - WIDTH + sinks, T)) for row in index.tolist())


def test_streaming_keeps_no_sinks_past_the_sequence_start():
    """A later span does not hold the attention sinks (they are the sequence's first tokens)."""
    keys, prior = _span(0)
    index = _select("streaming", keys, prior, _queries(), start=100)
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
    index = _select(kind, keys, prior, captured)
    assert all(heavy in row for row in index.tolist()), index
    for blind in ("truncate", "streaming"):
        index = _select(blind, keys, prior, captured)
        assert not any(heavy in row for row in index.tolist())


def test_h2o_keeps_half_recent_and_the_heaviest_hitters():
    keys, prior = _span(1)
    keys = keys * 0.01
    heavy = [3, 7, 11, 15, 19]  # WIDTH // 2 old keys that draw the attention
    direction = torch.randn(D)
    for rank, position in enumerate(heavy):
        keys[:, position] = direction * (6 + rank)
    index = _select("h2o", keys, prior, _queries(direction=direction))
    assert all(sorted(row) == heavy + list(range(T - WIDTH // 2, T)) for row in index.tolist()), index


def test_snapkv_keeps_the_neighbourhood_of_a_hit():
    """SnapKV max-pools scores over nearby positions: the heavy key's window ties and outranks the rest."""
    keys, prior = _span(2)
    keys = keys * 0.01
    direction = torch.randn(D)
    keys[:, 20] = direction * 10
    index = _select("snapkv", keys, prior, _queries(direction=direction), width=5)
    half = baselines.SNAPKV_POOL // 2
    assert all(set(row) <= set(range(20 - half, 20 + half + 1)) for row in index.tolist()), index


@pytest.mark.parametrize("kind", ["h2o", "snapkv"])
def test_a_selection_that_reads_attention_refuses_to_run_without_queries(kind):
    keys, prior = _span(0)
    span = am.SpanScores(None, keys, torch.zeros_like(keys), prior, D ** -0.5)
    with pytest.raises(ValueError, match="needs reference queries"):
        SELECTIONS[kind].select(span, WIDTH)


class Oldest(am.Selection):
    """An experiment's selection: the span's first tokens (a new class, no patching)."""

    scores = None

    def select(self, span, width):
        return am.select_top(-baselines._positions(span.valid), span.valid, width)


def test_a_new_selection_class_is_a_new_method(monkeypatch, ids):
    from agentmem import compact, compaction, hf

    from conftest import prefill, tiny_llama

    model = tiny_llama()
    monkeypatch.setitem(compaction.METHODS, "oldest", compaction.Method("oldest", "first tokens", Oldest(),
                                                                       repeat_queries=False, fit=False))
    cache = prefill(model, ids)
    out = compact(model, cache, ids, ratio=4, method="oldest", start=8, end=40)
    view = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
    for idx in view.full_layers():
        torch.testing.assert_close(out.layers[idx].keys[:, :, 8:16], view.layers[idx].keys[:, :, 8:16])


def test_a_fitted_method_with_a_positional_selection_still_gathers_queries(monkeypatch, ids):
    """The fit needs reference queries even when the selection reads none."""
    from agentmem import compact, compaction

    from conftest import prefill, tiny_llama

    model = tiny_llama()
    monkeypatch.setitem(compaction.METHODS, "oldest-fit", compaction.Method("oldest-fit", "first tokens, fitted",
                                                                           Oldest()))
    out = compact(model, prefill(model, ids), ids, ratio=4, method="oldest-fit", start=8, end=40)
    assert torch.isfinite(out.layers[0].values).all()
