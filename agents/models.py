"""Where the Runner meets a model: the `Conversation` seam and `LocalModel`.

The Runner only ever talks to a *conversation*: it adds messages, streams a reply, reads
`last_reply`, registers compaction hooks and asks for `stats()`. `agentmem.engine.Session`
is one (a real model with a compacted KV cache); `ScriptedModel` makes fake ones for
tests. A *model* (`Model` protocol) opens conversations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from agentmem.engine import Reply, Session
from agentmem.errors import ConfigError
from agentmem.hooks import RemovableHandle
from agentmem.loading import DEFAULT_MODEL, model_fingerprint, shared_model
from agentmem.memory import AfterHook, BeforeHook
from agentmem.segments import KVStats

log = logging.getLogger(__name__)

LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


@runtime_checkable
class Conversation(Protocol):
    """What the Runner needs from a chat with a model (the engine `Session` has all of it)."""

    tokenizer: Any  # None for fake models: no token-level constraints then
    last_reply: Reply

    def add(self, role: str, content: str) -> Any:
        """Append a message (system, user, assistant or tool)."""
        ...

    def stream(self, max_new_tokens: int = 256, *, stop: Sequence[str] | str | None = None,
               temperature: float | None = None, prefix: str | None = None,
               logits_processor: LogitsProcessor | None = None) -> Iterator[str]:
        """Yield the reply's text; afterwards the `Reply` is in `last_reply`."""
        ...

    def on_before_compaction(self, hook: BeforeHook) -> RemovableHandle:
        """Call `hook(plan)` before each compaction; False vetoes it. Returns a handle whose
        `remove()` unregisters it (`agentmem.hooks.register` makes one)."""
        ...

    def on_after_compaction(self, hook: AfterHook) -> RemovableHandle:
        """Call `hook(event)` after each compaction. Returns a handle, as `on_before_compaction`."""
        ...

    def stats(self) -> KVStats:
        """The KV cache's size now."""
        ...


@runtime_checkable
class Model(Protocol):
    """Opens conversations: `LocalModel` and `ScriptedModel` implement it."""

    name: str

    def open(self, *, system: str | None, tools: Sequence[dict], policy: Any) -> Conversation:
        """A new conversation with `system` instructions and `tools` schemas (OpenAI format)."""
        ...


class LocalModel:
    """A transformers model run in this process by `agentmem.engine.Session`.

    Args:
        name: a built-in name (e.g. "smollm2-135m"), a HuggingFace id or a local path;
            loaded on first use, once per process (`agentmem.loading.shared_model`).
        device: where to run it (default: CPU).
        dtype: its dtype (default: float32).
        seed: the sampler seed of the sessions it opens (replies at a temperature above 0
            differ between seeds; the same seed repeats a run).
    """

    def __init__(self, name: str = DEFAULT_MODEL, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | str | None = None, seed: int = 0):
        self.name, self.device, self.dtype, self.seed = name, device, dtype, seed
        self._loaded: tuple[Any, Any] | None = None
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(cls, model: Any, tokenizer: Any, *, name: str | None = None, seed: int = 0) -> LocalModel:
        """Wrap a model and tokenizer that are already loaded."""
        local = cls(name or str(getattr(model.config, "name_or_path", "") or "model"), seed=seed)
        local._loaded = (model, tokenizer)
        return local

    def load(self) -> tuple[Any, Any]:
        """The (model, tokenizer) pair, loading it on first use."""
        if self._loaded is None:
            log.info("loading model %s", self.name)
            self._loaded = shared_model(self.name, device=self.device, dtype=self.dtype)
        return self._loaded

    @property
    def fingerprint(self) -> str:
        """`agentmem.loading.model_fingerprint` of the loaded model."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.load()[0])
        return self._fingerprint

    def open(self, *, system: str | None, tools: Sequence[dict], policy: Any, store: Any = None,
             session_id: str | None = None) -> Session:
        """A new engine session; with `store` and `session_id` it is committed under that id.

        The store row must exist already (`create_session`); the engine commits every turn.
        """
        model, tokenizer = self.load()
        return Session(model, tokenizer, policy=policy, system=system or None, tools=list(tools) or None,
                       store=store, session_id=session_id, model_name=self.name, seed=self.seed)

    def resume(self, store: Any, session_id: str, *, policy: Any) -> Session:
        """Reopen a stored engine session (raises `ModelMismatchError` for another model)."""
        model, tokenizer = self.load()
        return Session.resume(store, session_id, model, tokenizer, policy=policy, seed=self.seed)

    def __repr__(self) -> str:
        return f"LocalModel({self.name!r})"


def as_model(value: Any) -> Any:
    """A model object for `Agent(model=...)`: strings become a `LocalModel`."""
    if isinstance(value, str):
        if not value:
            raise ConfigError("model name is empty; pass e.g. 'smollm2-135m' or a HuggingFace id")
        return LocalModel(value)
    if hasattr(value, "open") and hasattr(value, "name"):
        return value
    raise ConfigError(f"model must be a name, a LocalModel or a ScriptedModel, got {value!r}")
