"""Captured reference queries: the sample a session keeps, RoPE moves, compaction on them."""

import pytest
import torch
from transformers import DynamicCache

import agentmem
from agentmem import ConfigError, CorruptSessionError, compact, hf
from agentmem.captured import QuerySample
from agentmem.hf import rope

from conftest import VOCAB, prefill, tiny_gemma3, tiny_llama


def full_layers(model):
    return set(hf.full_attention_layers(model))


def captured_prefill(model, ids, sample, *, first=0, cache=None, position_ids=None):
    """Run ids (on top of `cache`) and record the queries of every full layer into `sample`."""
    cache = DynamicCache(config=model.config) if cache is None else cache
    hf.enable(model)
    with torch.no_grad(), hf.capture_queries(layers=full_layers(model)) as capture:
        model(input_ids=ids, past_key_values=cache, position_ids=position_ids)
    sample.add({i: capture.stacked(i) for i in capture.queries}, first)
    return cache


# ------------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_rotating_a_query_equals_asking_it_from_later(make, ids):
    """The first full layer's queries depend on the token and its position only, so the
    query of token x at p, rotated by d, is the query of x at p + d."""
    model = make()
    layer = min(full_layers(model))
    if layer != 0:  # Gemma's first full layer sees sliding layers below it: compare through a 1-layer prefix
        model.model.layers = model.model.layers[: layer + 1]
    hf.enable(model)
    delta = 37
    asked = {}
    for shift in (0, delta):
        with torch.no_grad(), hf.capture_queries(layers={layer}) as capture:
            positions = torch.arange(ids.shape[1]).unsqueeze(0) + shift
            model(input_ids=ids, position_ids=positions, use_cache=False)
        asked[shift] = capture.stacked(layer)
    moved = rope.rotate(asked[0], rope.inverse_frequencies(model, layer), torch.full((ids.shape[1],), delta))
    if layer == 0:
        torch.testing.assert_close(moved, asked[delta], atol=1e-4, rtol=1e-4)
    else:
        assert not torch.allclose(asked[0], asked[delta])  # sanity: positions matter
        assert (moved - asked[delta]).abs().max() < (asked[0] - asked[delta]).abs().max()


def test_rotating_queries_and_keys_alike_keeps_their_scores():
    torch.manual_seed(0)
    freq = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    q, k = torch.randn(5, 16), torch.randn(5, 16)
    delta = torch.tensor([0, 3, 100, 7, 2048])
    torch.testing.assert_close((rope.rotate(q, freq, delta) * rope.rotate(k, freq, delta)).sum(-1),
                               (q * k).sum(-1), atol=1e-4, rtol=1e-4)


def test_a_model_without_rotary_embedding_is_refused():
    model = torch.nn.Linear(2, 2)
    model.config = tiny_llama().config
    with pytest.raises(agentmem.UnsupportedModelError, match="reference='repeat'"):
        rope.inverse_frequencies(model, 0)


# ------------------------------------------------------------------------- the sample


def fake_queries(layers, count, value=None, *, first=0):
    """(1, 4, count, 8) per layer whose rows hold their own position (or `value`)."""
    out = {}
    for i in layers:
        q = torch.arange(first, first + count, dtype=torch.float32).view(1, 1, count, 1).expand(1, 4, count, 8)
        out[i] = q.clone() if value is None else torch.full_like(q, value)
    return out


def test_the_sample_stays_within_capacity_and_covers_every_part_of_the_history():
    sample = QuerySample(100)
    first = 0
    for size in (64, 1, 1, 300, 17, 512, 1, 1, 1):  # prefill chunks and decode steps
        sample.add(fake_queries([0, 3], size, first=first), first)
        first += size
        assert len(sample) <= 100
        assert sample.queries[0].shape[2] == len(sample) == sample.queries[3].shape[2]
    positions = sample.positions
    assert bool((positions % sample.stride == 0).all())
    assert len(sample) > 50  # thinning halves at most: more than half the capacity stays
    gaps = positions[1:] - positions[:-1]
    assert int(gaps.max()) == sample.stride  # even coverage: no hole wider than the stride
    assert int(positions[0]) == 0 and first - int(positions[-1]) <= sample.stride
    assert torch.equal(sample.queries[3][0, 2, :, 5].long(), positions)  # each row is its own position's query


def test_adding_again_from_an_earlier_position_replaces_what_was_kept_after_it():
    sample = QuerySample(1000)
    sample.add(fake_queries([1], 40, value=1.0), 0)
    sample.add(fake_queries([1], 10, value=2.0), 30)  # a rewind to 30, then 10 new tokens
    assert sample.positions.tolist() == list(range(40))
    assert bool((sample.queries[1][:, :, 30:] == 2.0).all()) and bool((sample.queries[1][:, :, :30] == 1.0).all())


def test_mismatched_calls_are_refused():
    sample = QuerySample(10)
    sample.add(fake_queries([0, 1], 4), 0)
    with pytest.raises(ConfigError, match="do not match"):
        sample.add(fake_queries([0], 4), 4)
    with pytest.raises(ConfigError, match="same tokens"):
        sample.add({0: torch.zeros(1, 4, 2, 8), 1: torch.zeros(1, 4, 3, 8)}, 4)
    with pytest.raises(ConfigError, match="capacity"):
        QuerySample(0)


def test_state_round_trip_and_damage():
    sample = QuerySample(50)
    sample.add(fake_queries([0, 2], 170), 0)
    back = QuerySample.from_state(sample.state(), session="s")
    assert back.stride == sample.stride and torch.equal(back.positions, sample.positions)
    for i in (0, 2):
        assert torch.equal(back.queries[i], sample.queries[i])
    damaged = sample.state()
    damaged[1]["blocks"][0]["positions"] = damaged[1]["blocks"][0]["positions"] + 1
    with pytest.raises(CorruptSessionError, match="positions differ"):
        QuerySample.from_state(damaged, session="s")
    damaged = sample.state()
    damaged[0]["blocks"][0]["queries"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CorruptSessionError, match="NaN"):
        QuerySample.from_state(damaged, session="s")
    damaged = sample.state()
    damaged[0]["meta"]["stride"] = 3
    with pytest.raises(CorruptSessionError, match="stride"):
        QuerySample.from_state(damaged, session="s")


def test_reference_moves_every_query_to_ask_from_the_cache_end():
    model = tiny_llama()
    torch.manual_seed(0)
    ids = torch.randint(3, VOCAB, (1, 40))
    sample = QuerySample(1000, dtype=torch.float32)
    captured_prefill(model, ids, sample)
    layer = 0
    out = sample.reference(model, 10, 30, 40, [layer])[layer]  # positions 10..39
    assert out.shape[2] == 30
    freq = rope.inverse_frequencies(model, layer)
    raw = sample.queries[layer]
    torch.testing.assert_close(out, rope.rotate(raw[:, :, 10:40].float(), freq, 40 - torch.arange(10, 40)))
    assert sample.reference(model, 41, 45, 50, [layer]) == {}


# ------------------------------------------------------------------------- compaction


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
@pytest.mark.parametrize("reference", ["captured", "both"])
def test_compaction_on_captured_queries(make, ids, reference):
    model = make()
    sample = QuerySample(1000)
    cache = captured_prefill(model, ids, sample)
    stats = {}
    out = compact(model, cache, ids, ratio=4, method="am-fast", captured=sample, reference=reference, stats=stats)
    assert out.get_seq_length() == ids.shape[1]
    assert out.physical_length() == ids.shape[1] // 4
    assert cache.get_seq_length() == ids.shape[1]
    same = compact(model, cache, ids, ratio=1, method="am-fast", captured=sample, reference=reference)
    for i in same.full_layers():
        assert torch.equal(same.layers[i].keys[..., : cache.layers[i].keys.shape[-1]], cache.layers[i].keys)


def test_captured_queries_fit_the_span_for_later_questions():
    """Fitted on the prefill's own queries, AM answers held-out later queries better than
    keeping recent tokens does (attention output of the full layers)."""
    model = tiny_llama()
    torch.manual_seed(3)
    ids = torch.randint(3, 100, (1, 96))
    new = torch.randint(3, 100, (1, 16))
    sample = QuerySample(1000)
    captured_prefill(model, ids, sample)
    with torch.no_grad():
        ref = model(input_ids=new, past_key_values=prefill(model, ids)).logits
    scores = {}
    for name, options in {"captured": {"captured": sample, "reference": "captured"}, "repeat": {},
                          "truncate": None}.items():
        method = "truncate" if options is None else "am-fast"
        out = compact(model, prefill(model, ids), ids, ratio=6, method=method, **(options or {}))
        with torch.no_grad():
            logits = model(input_ids=new, past_key_values=out).logits
        scores[name] = torch.nn.functional.kl_div(logits.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                                  reduction="batchmean").item()
    assert scores["captured"] < scores["truncate"], scores


def test_captured_options_are_checked(ids):
    model = tiny_llama()
    cache = prefill(model, ids)
    with pytest.raises(ConfigError, match="needs captured"):
        compact(model, cache, ids, ratio=4, method="am-fast", reference="captured")
    with pytest.raises(ConfigError, match="reference must be one of"):
        compact(model, cache, ids, ratio=4, method="am-fast", reference="self")
    with pytest.raises(ConfigError, match="QuerySample"):
        compact(model, cache, ids, ratio=4, method="am-fast", captured={0: torch.zeros(1, 4, 3, 16)})
    other = QuerySample(100)
    other.add(fake_queries([0, 1], 5), 0)  # 4 heads of width 8: not this model's (4 heads of 16)
    with pytest.raises(ConfigError, match="capture them with this model"):
        compact(model, cache, ids, ratio=4, method="am-fast", captured=other)
    early = QuerySample(100)
    captured_prefill(model, ids[:, :20], early)  # a sample that stopped before the span
    with pytest.raises(ConfigError, match="no query at or after token 30"):
        compact(model, cache, ids, ratio=4, method="am-fast", captured=early, start=30, end=40)


# ---------------------------------------------------------------------------- sessions


@pytest.fixture
def modes(monkeypatch):
    """The reference mode of every compaction run while the test runs (a list it fills)."""
    from agentmem import compaction

    seen = []
    real = compaction._CompactionRun._reference

    def spy(self):
        seen.append(self.reference_mode())
        return real(self)

    monkeypatch.setattr(compaction._CompactionRun, "_reference", spy)
    return seen


def _session(tmp_path, make, **kwargs):
    from agentmem.engine import Session
    from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit
    from agentmem.store import Store

    from conftest import tiny_tokenizer

    policy = Policy(trigger=TokenLimit(120), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                    protect_recent=16)
    store = Store(tmp_path / "s.db")
    return Session(make(), tiny_tokenizer(), policy=policy, store=store, system="sys", **kwargs), policy


@pytest.mark.parametrize("make_name", ["llama", "gemma3"])
def test_a_session_keeps_its_queries_compacts_on_them_and_resumes_with_them(tmp_path, make_name, modes):
    from agentmem.engine import Session
    from agentmem.store import Store

    from conftest import tiny_chat_gemma3, tiny_chat_llama, tiny_tokenizer

    make = tiny_chat_llama if make_name == "llama" else tiny_chat_gemma3
    session, policy = _session(tmp_path, make, captured_queries=32)
    for turn in range(3):
        session.add("user", f"message {turn}")
        session.generate(30)
    assert any(e.status == "ok" for e in session.events)
    assert modes and set(modes) == {"captured"}  # no repeat pass
    sample = session.queries.sample
    assert 16 < len(sample) <= 32 and int(sample.positions[-1]) < session.cached
    assert int(sample.positions[0]) == 0  # the whole history, not a recent window
    session.save()
    again = Session.resume(Store(tmp_path / "s.db"), session.id, make(), tiny_tokenizer(), policy=policy,
                           captured_queries=32)
    assert torch.equal(again.queries.sample.positions, sample.positions)
    for idx, q in sample.queries.items():
        assert torch.equal(again.queries.sample.queries[idx], q)
    torch.testing.assert_close(again.next_token_logits(), session.next_token_logits(), rtol=0, atol=1e-6)


def test_reference_both_in_a_session_and_a_sample_that_began_late(tmp_path, modes):
    from agentmem.engine import Session
    from agentmem.store import Store

    from conftest import tiny_chat_llama, tiny_tokenizer

    session, policy = _session(tmp_path, tiny_chat_llama)  # no sample: saved without one
    session.add("user", "a first message that is long enough to be compacted later on")
    session.generate(20)
    session.save()
    again = Session.resume(Store(tmp_path / "s.db"), session.id, tiny_chat_llama(), tiny_tokenizer(),
                           policy=policy, captured_queries=64, compaction_options={"reference": "both"})
    assert len(again.queries.sample) == 0
    again.add("user", "message two")
    again.generate(40)
    assert any(e.status == "ok" for e in again.events)
    assert modes and set(modes) == {"repeat"}  # the sample began after the span: a repeat pass instead


def test_a_sample_past_the_cache_is_reported_as_damage(tmp_path):
    from types import SimpleNamespace

    from agentmem import integrity
    from agentmem.engine import Session
    from agentmem.store import Store

    from conftest import tiny_chat_llama, tiny_tokenizer

    session, policy = _session(tmp_path, tiny_chat_llama, captured_queries=16)
    session.add("user", "hello there")
    session.generate(5)
    session.save()
    sample = session.queries.sample
    damaged = QuerySample(16)
    damaged.stride, damaged.positions = sample.stride, sample.positions + 1000
    damaged.queries = dict(sample.queries)
    loaded = SimpleNamespace(id=session.id, checkpoint=damaged.state())
    with pytest.raises(CorruptSessionError, match="reach token"):
        integrity.captured_sample(loaded, 16, session.cached)
    Session.resume(Store(tmp_path / "s.db"), session.id, tiny_chat_llama(), tiny_tokenizer(), policy=policy,
                   captured_queries=16)
