"""Tiny random-init models built from a config: CPU, seeded, no network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

VOCAB = 128

# The tiny models spend their time in per-op overhead, which extra threads only add to (the
# fast tier runs about 12% quicker on one); a test that wants more threads sets them itself.
torch.set_num_threads(1)

# `python -m pytest` puts the checkout's root on sys.path, where agents/ (installed as
# agentmem.agents) would shadow openai-agents' own `agents` package; nothing imports from the root.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]


def tiny_llama(seed: int = 0, *, kv_heads: int = 2) -> LlamaForCausalLM:
    """Llama-like with GQA: 2 query heads share each of `kv_heads` KV heads (head width 16)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32 * kv_heads,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2 * kv_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def tiny_gemma3(seed: int = 0) -> Gemma3ForCausalLM:
    """Gemma3-like hybrid: sliding-window layers around one global layer."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=1024,
        query_pre_attn_scalar=24,
        attn_implementation="sdpa",
    )
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(params=["llama", "gemma3"])
def tiny_model(request):
    return tiny_llama() if request.param == "llama" else tiny_gemma3()


@pytest.fixture
def ids():
    torch.manual_seed(1)
    return torch.randint(3, VOCAB, (1, 48))


@pytest.fixture
def no_model_load(monkeypatch):
    """A CLI test that must refuse its arguments before any model is loaded."""
    import agentmem.loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(agentmem.loading, "load_model", refuse)


def builtin_or_skip(name: str):
    """A built-in model for the slow tier, or a skip that says how to install it."""
    import agentmem

    try:
        return agentmem.load_model(name)
    except agentmem.ModelNotAvailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M for the slow tier (skipped where its package is missing)."""
    return builtin_or_skip("smollm2-135m")


def prefill(model, ids):
    """A DynamicCache holding `ids` run through `model`."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache)
    return cache


def tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + ChatML specials) built offline, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from agentmem.chat_format import CHATML

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHATML
    return tokenizer


CHAT_VOCAB = 260


def tiny_chat_llama(seed: int = 0) -> LlamaForCausalLM:
    """tiny_llama with a vocabulary that fits `tiny_tokenizer`."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=CHAT_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def tiny_chat_gemma3(seed: int = 0) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=CHAT_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              max_position_embeddings=4096, query_pre_attn_scalar=24, attn_implementation="sdpa")
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny chat tokenizer, one per test module (a module may define its own)."""
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llama():
    """A tiny random-init chat llama, one per test module."""
    return tiny_chat_llama()
