"""Specs of next-token choice (`agentmem.sampling`): settings, the sampler, stop strings, choices."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from agentmem.errors import ConfigError
from agentmem.sampling import Choices, Detokenizer, Sampler, StopText, generation_config

# --------------------------------------------------------------------------- settings


def test_default_is_greedy_and_temperature_zero_means_greedy():
    assert generation_config().do_sample is False
    config = generation_config(temperature=0)
    assert config.do_sample is False
    config = generation_config(temperature=0.7)
    assert config.do_sample is True and config.temperature == 0.7
    assert generation_config(temperature=0.7, do_sample=False).do_sample is False  # an explicit choice wins


def test_overrides_copy_the_base_and_skip_none():
    base = GenerationConfig(do_sample=True, temperature=0.5, top_k=7)
    config = generation_config(base, temperature=None, top_k=3)
    assert (config.temperature, config.top_k) == (0.5, 3)
    assert base.top_k == 7  # the base is left alone


@pytest.mark.parametrize("overrides, words", [
    ({"temperature": -0.1}, r"temperature must be >= 0 \(0 is greedy\), got -0.1"),
    ({"top_p": 0}, r"top_p must be in \(0, 1\], got 0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
])
def test_bad_settings_are_refused(overrides, words):
    with pytest.raises(ConfigError, match=words):
        generation_config(**overrides)


# --------------------------------------------------------------------------- the sampler


def _logits(seed: int, vocab: int = 50) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_argmax(seed):
    logits = _logits(seed)
    sampler = Sampler(generation_config())
    assert sampler.processors == [] and sampler.needs_history is False
    assert sampler.choose(logits, torch.zeros(1, 0, dtype=torch.long)) == int(logits.argmax())


def test_sampling_is_seeded_and_spreads():
    logits = torch.zeros(50)  # uniform
    history = torch.zeros(1, 0, dtype=torch.long)
    config = generation_config(temperature=1.0)
    first = [Sampler(config, seed=3).choose(logits, history) for _ in range(3)]
    assert len(set(first)) == 1  # a fresh sampler with the same seed picks the same token
    sampler = Sampler(config, seed=3)
    picks = [sampler.choose(logits, history) for _ in range(200)]
    assert picks[0] == first[0] and len(set(picks)) > 20  # and one sampler goes on drawing


@pytest.mark.parametrize("seed", range(3))
def test_top_k_and_top_p_limit_the_draws(seed):
    logits = _logits(seed)
    history = torch.zeros(1, 0, dtype=torch.long)
    best3 = set(logits.topk(3).indices.tolist())
    sampler = Sampler(generation_config(temperature=2.0, top_k=3), seed=seed)
    assert {sampler.choose(logits, history) for _ in range(100)} <= best3
    sampler = Sampler(generation_config(temperature=1.0, top_p=1e-6), seed=seed)  # only the top token is left
    assert {sampler.choose(logits, history) for _ in range(20)} == {int(logits.argmax())}


def test_low_temperature_concentrates_on_the_argmax():
    logits = _logits(0)
    history = torch.zeros(1, 0, dtype=torch.long)
    sampler = Sampler(generation_config(temperature=0.01), seed=0)
    assert {sampler.choose(logits, history) for _ in range(50)} == {int(logits.argmax())}


def test_repetition_penalty_reads_the_history():
    logits = torch.tensor([0.0, 2.0, 1.9, -1.0])
    sampler = Sampler(generation_config(repetition_penalty=2.0))
    assert sampler.needs_history
    assert sampler.choose(logits, torch.tensor([[0]])) == 1
    assert sampler.choose(logits, torch.tensor([[1]])) == 2  # the repeated token is pushed below the next


# --------------------------------------------------------------------------- stop strings


def test_stop_text_finds_the_first_stop():
    stops = StopText(["</tool_call>", "\nUser:", ""])
    assert stops.stops == ["</tool_call>", "\nUser:"]
    text = "call\nUser: more </tool_call>"
    assert stops.find(text) == 4
    assert stops.find(text, start=5) == text.index("</tool_call>")
    assert stops.find("nothing here") is None
    assert StopText(None).find("anything") is None and StopText("x").stops == ["x"]


@pytest.mark.parametrize("text, end", [
    ("hello", 5), ("hello </tool", 6), ("hello <", 6), ("hello </tool_call", 6), ("a\nUs", 1), ("", 0),
])
def test_safe_end_holds_back_what_may_become_a_stop(text, end):
    assert StopText(["</tool_call>", "\nUser:"]).safe_end(text) == end


# --------------------------------------------------------------------------- choices and detokenizing


@pytest.mark.parametrize("seed", range(4))
def test_choices_hold_the_text_to_one_option(tokenizer, seed):
    options = ['read_file", "arguments": ', 'run", "arguments": ', 'read_dir", "arguments": ']
    choices = Choices(tokenizer, options)
    generator = torch.Generator().manual_seed(seed)
    text = ""
    while (allowed := choices.allowed(text)) is not None:
        assert allowed, text
        token = allowed[int(torch.randint(len(allowed), (1,), generator=generator))]
        text += tokenizer.decode([token])
    assert any(text.startswith(o) for o in options), text
    assert choices.allowed(text + "anything") is None  # free once an option is written


def test_choices_need_an_option(tokenizer):
    assert Choices(tokenizer, ["a", "a", ""]).options == ["a"]
    with pytest.raises(ConfigError, match="choices must hold at least one non-empty string"):
        Choices(tokenizer, ["", ""])


def test_detokenizer_never_yields_half_a_character(tokenizer):
    text = "naïve 你好 ok"
    detok = Detokenizer(tokenizer)
    pieces = [detok.push(t) for t in tokenizer.encode(text)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces) and "" in pieces  # multi-byte characters wait for their bytes
