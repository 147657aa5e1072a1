"""The text-summary baseline (`method="summary"`) and the cache splice under it (`hf.replace_span`)."""

from __future__ import annotations

import pytest
import torch

from agentmem import compact, hf
from agentmem.engine import Session
from agentmem.errors import ConfigError
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit

from conftest import prefill, tiny_chat_gemma3, tiny_chat_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def text_ids():
    tokenizer = tiny_tokenizer()
    text = "The build server is called kestrel-7 and the deploy key lives in vault slot 42. " * 3
    return torch.tensor([tokenizer.encode(text)])


def _layers(cache):
    view = hf.CompactedCache.from_cache(cache)
    return [view.layers[i] for i in view.full_layers()]


def test_replacing_a_span_by_its_own_tokens_gives_the_same_cache(llama, text_ids):
    cache = prefill(llama, text_ids)
    again = hf.replace_span(llama, cache, 40, 120, text_ids[0, 40:120].tolist())
    assert again.get_seq_length() == text_ids.shape[1]
    for old, new in zip(_layers(cache), _layers(again)):
        torch.testing.assert_close(new.keys, old.keys, rtol=0, atol=1e-5)
        torch.testing.assert_close(new.values, old.values, rtol=0, atol=1e-5)
        assert new.runs == [[40, 40], [80, 80], [text_ids.shape[1] - 120] * 2]


def test_new_slots_are_encoded_after_the_prefix_and_the_rest_is_kept(llama, text_ids):
    cache = prefill(llama, text_ids)
    summary = [70, 71, 72, 73, 74]
    out = hf.replace_span(llama, cache, 30, 150, summary)
    fresh = prefill(llama, torch.cat([text_ids[:, :30], torch.tensor([summary])], dim=1))
    tail = text_ids.shape[1] - 150
    for old, new, ref in zip(_layers(cache), _layers(out), _layers(fresh)):
        assert new.physical_length == 30 + len(summary) + tail and new.logical_length == old.logical_length
        torch.testing.assert_close(new.keys[:, :, :35], ref.keys, rtol=0, atol=1e-5)  # as a prefill would give
        assert torch.equal(new.keys[:, :, 35:], old.keys[:, :, 150:])  # later slots untouched
        assert torch.equal(new.bias, torch.zeros_like(new.bias))
        assert new.runs == [[30, 30], [120, 5], [tail, tail]]
    assert _layers(cache)[0].physical_length == text_ids.shape[1]  # the input cache is not modified


def test_summary_method_keeps_the_budget_and_reports_its_text(llama, text_ids):
    tokenizer = tiny_tokenizer()
    cache = prefill(llama, text_ids)
    stats: dict = {}
    out = compact(llama, cache, text_ids, ratio=3, method="summary", start=0, end=160, tokenizer=tokenizer,
                  stats=stats)
    assert 1 <= stats["summary_tokens"] <= 160 // 3
    assert stats["summary"].startswith("Summary of earlier turns: ")
    assert out.get_seq_length() == text_ids.shape[1]
    assert hf.span_slots(out, 0, 160) == stats["summary_tokens"]
    with torch.no_grad():  # the compacted cache goes on decoding
        logits = llama(input_ids=text_ids[:, -1:], past_key_values=out).logits
    assert torch.isfinite(logits).all()
    tight: dict = {}  # a budget under twice the header's length goes to the summary alone
    compact(llama, cache, text_ids, ratio=16, method="summary", start=0, end=160, tokenizer=tokenizer, stats=tight)
    assert 1 <= tight["summary_tokens"] <= 10 and not tight["summary"].startswith("Summary")


def test_ratio_one_changes_nothing_and_a_ratio_is_a_memory_promise(llama, text_ids):
    tokenizer = tiny_tokenizer()
    cache = prefill(llama, text_ids)
    same = compact(llama, cache, text_ids, ratio=1, method="summary", tokenizer=tokenizer)
    for old, new in zip(_layers(cache), _layers(same)):
        assert torch.equal(old.keys, new.keys) and torch.equal(old.values, new.values)
    uniform = compact(llama, cache, text_ids, ratio=6, method="streaming", start=0, end=150)
    out = compact(llama, cache, text_ids, ratio=6, method="summary", start=0, end=150, tokenizer=tokenizer)
    assert out.nbytes() <= uniform.nbytes()


def test_summary_is_refused_where_it_cannot_work(llama, text_ids):
    cache = prefill(llama, text_ids)
    with pytest.raises(ConfigError, match="needs the tokenizer"):
        compact(llama, cache, text_ids, ratio=4, method="summary", start=0, end=100)
    gemma = tiny_chat_gemma3()
    with pytest.raises(ConfigError, match="sliding-window layers"):
        compact(gemma, prefill(gemma, text_ids), text_ids, ratio=4, method="summary", start=0, end=100,
                tokenizer=tiny_tokenizer())
    with pytest.raises(ValueError, match="sliding-window"):
        hf.replace_span(gemma, prefill(gemma, text_ids), 0, 100, [70])
    policy = Policy(trigger=TokenLimit(200), ratio=FixedRatio(8), method="summary")
    with pytest.raises(ConfigError, match="sliding-window layers"):  # when the session is made, not later
        Session(gemma, tiny_tokenizer(), policy=policy)


def test_a_session_under_a_limit_compacts_with_summaries():
    policy = Policy(trigger=TokenLimit(200), ratio=FixedRatio(8), pin=AnyPin((PinSystem(),)), method="summary",
                    protect_recent=16)
    session = Session(tiny_chat_llama(), tiny_tokenizer(), policy=policy, system="sys")
    for turn in range(6):
        session.add("user", f"turn {turn}: the value of key {turn} is {turn * 37 % 101}")
        session.generate(12)
    done = [e for e in session.events if e.status == "ok"]
    assert done and all(e.method == "summary" and e.tokens_after < e.tokens_before for e in done)
    assert session.stats().physical_tokens < session.stats().logical_tokens
