"""Specs of one reply's decoding (`agentmem.decoding`): the filters' order, the seeded choice, the text."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from agentmem.decoding import Decoder, ReplyText, reply_config
from agentmem.sampling import Choices, Sampler, generation_config


def test_reply_config_layers_base_defaults_and_overrides():
    base = GenerationConfig(do_sample=True, temperature=0.5, top_k=7)
    config = reply_config({"top_k": 3, "top_p": 0.9}, base, top_p=0.5, temperature=None)
    assert (config.temperature, config.top_k, config.top_p) == (0.5, 3, 0.5)
    assert reply_config({}).do_sample is False  # greedy by default


def test_stop_ids_are_banned_until_min_new_tokens():
    logits = torch.tensor([0.0, 5.0, 1.0])  # token 1 (a stop id) is the argmax
    decoder = Decoder(generation_config(min_new_tokens=2), seed=0, stop_ids=[1])
    assert decoder.next_token(logits, generated=[], text="", history=[]) == 2
    assert decoder.next_token(logits, generated=[7], text="", history=[]) == 2
    assert decoder.next_token(logits, generated=[7, 7], text="", history=[]) == 1
    assert logits[1] == 5.0  # the caller's logits are left alone


def test_filters_run_in_order_choices_then_the_processor(tokenizer):
    seen = []

    def processor(generated, logits):
        seen.append((list(generated), logits.clone()))
        return logits

    choices = Choices(tokenizer, ["ab", "b"])
    decoder = Decoder(generation_config(), seed=0, choices=choices, logits_processor=processor)
    logits = torch.zeros(len(tokenizer))
    token = decoder.next_token(logits, generated=[3], text="a", history=[])
    assert tokenizer.decode([token]) == "b"  # only "b" goes on with an option after "a"
    (generated, filtered), = seen
    assert generated == [3] and torch.isfinite(filtered).sum() == 1  # the processor saw the masked logits
    assert decoder.filter(logits, [], "b").eq(0).all()  # free once an option is written


def test_the_processor_decides_last_before_the_sampler():
    decoder = Decoder(generation_config(), seed=0, logits_processor=lambda ids, x: -x)
    assert decoder.next_token(torch.tensor([0.0, 3.0, 1.0]), generated=[], text="", history=[]) == 0


def test_same_seed_same_tokens_as_the_sampler():
    config = generation_config(temperature=1.0)
    logits = torch.zeros(50)
    decoder, sampler = Decoder(config, seed=11), Sampler(config, seed=11)
    empty = torch.empty(1, 0, dtype=torch.long)
    assert [decoder.next_token(logits, generated=[], text="", history=[1, 2]) for _ in range(20)] == \
        [sampler.choose(logits, empty) for _ in range(20)]


def test_the_repetition_penalty_reads_the_history_tail():
    decoder = Decoder(generation_config(repetition_penalty=2.0), seed=0)
    logits = torch.tensor([0.0, 2.0, 1.9, -1.0])
    assert decoder.next_token(logits, generated=[], text="", history=[1] + [0] * 2000) == 1  # 1 fell off the tail
    assert decoder.next_token(logits, generated=[], text="", history=[0, 1]) == 2


def test_reply_text_holds_back_a_possible_stop_and_ends_before_it(tokenizer):
    reply = ReplyText(tokenizer, prefix="> ", stop="</end>")
    assert reply.shown == "> "
    pieces = [reply.push(t) for t in tokenizer.encode("hi </en")]
    assert "".join(pieces) == "hi " and not reply.stopped and reply.generated == "hi </en"
    assert reply.push(tokenizer.encode("d>")[0]) == "" and not reply.stopped
    reply.push(tokenizer.encode("d>")[1])
    assert reply.stopped and reply.shown == "> hi " and reply.rest() == ""


def test_reply_text_rest_gives_back_what_was_held(tokenizer):
    reply = ReplyText(tokenizer, stop=["</end>"])
    assert "".join(reply.push(t) for t in tokenizer.encode("ok </e")) == "ok "
    assert reply.rest() == "</e" and reply.shown == "ok </e" and reply.rest() == ""


def test_a_stop_inside_the_prefix_does_not_count(tokenizer):
    reply = ReplyText(tokenizer, prefix="</end>", stop="</end>")
    assert reply.push(tokenizer.encode("x")[0]) == "x" and not reply.stopped
