"""`Agent` (instructions, tools, model, policy) and `ModelSettings` (how it decodes)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentmem.errors import ConfigError
from agentmem.memory import Plan

from .guard import RepeatGuard
from .models import as_model
from .tools import FunctionTool, as_tool

TOOL_CHOICES = ("auto", "required", "none")


@dataclass(frozen=True)
class ModelSettings:
    """How an agent's model decodes each reply.

    Args:
        max_new_tokens: tokens per reply at most.
        max_tokens: openai-agents' name for `max_new_tokens`: when given, it sets
            `max_new_tokens` and is then None again (so `with_` and `dataclasses.replace`
            change `max_new_tokens` alone).
        temperature: 0 decodes greedily (the default: reproducible runs).
        tool_choice: "auto" (the model decides), "required" (the reply starts with
            ``<tool_call>{"name": "``), "none" (replies are final answers: calls in them
            are not run, and a local model with `constrain_calls` cannot start one) or a
            tool name (the reply starts with ``<tool_call>{"name": "NAME", "arguments": ``).
            Forcing is done with the engine's reply prefix, so even a 135M model produces
            a call. As in openai-agents, "required" and a tool name hold for the replies
            of a run until it has used a tool, then the run goes on with "auto"
            (`Agent.reset_tool_choice`).
        stop: extra stop strings (a reply also ends once its tool call is complete, so
            one reply holds at most one call).
        reset_tool_choice: deprecated, use `Agent(reset_tool_choice=...)`; when set, it
            overrides the agent's.
        constrain_calls: once a reply opens ``<tool_call>``, allow only tokens that keep the
            call to a known tool's JSON schema (local models only).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    tool_choice: str = "auto"
    stop: tuple[str, ...] = ()
    reset_tool_choice: bool | None = None
    constrain_calls: bool = True
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None:
            if self.max_new_tokens not in (256, self.max_tokens):
                raise ConfigError(f"max_tokens={self.max_tokens} and max_new_tokens={self.max_new_tokens} disagree; "
                                  f"pass one of them")
            object.__setattr__(self, "max_new_tokens", self.max_tokens)
            object.__setattr__(self, "max_tokens", None)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))

    def with_(self, **changes: Any) -> ModelSettings:
        """A copy with some fields changed (`max_tokens` changes `max_new_tokens`)."""
        if changes.get("max_tokens") is not None:
            changes["max_new_tokens"] = changes.pop("max_tokens")
        return dataclasses.replace(self, **changes)


@dataclass
class Agent:
    """An LLM with instructions and tools, run by `Runner`.

    Args:
        name: the agent's name (for logs).
        instructions: its system prompt (pinned in the cache by the default policies).
        tools: `FunctionTool`s or plain functions (wrapped with `tool`).
        model: a built-in name / HuggingFace id / path (a `LocalModel`, loaded once per
            process on first use), a `LocalModel`, or a `ScriptedModel`.
        policy: the compaction policy (a `Policy`, a preset name, a dict or a TOML path).
        settings: decoding settings (`ModelSettings`); `model_settings` is openai-agents'
            name for it (either may be passed; both read the same).
        stop_at_tools: tool names whose output, when they succeed, is the final output.
        on_compaction: called with the `Plan` before each compaction; False vetoes it.
        reset_tool_choice: once a run has used a tool, its later replies use "auto"
            instead of the settings' "required" / tool name (openai-agents' semantics: a
            forced choice cannot loop forever). False keeps forcing every reply.
        repeat_guard: what to do about a call identical to one already run in this run
            (`RepeatGuard`: masked while decoding; if written anyway, not run and the next
            reply is a plain-text answer). None turns the guard off.
    """

    name: str
    instructions: str | None = None
    tools: Sequence[Any] = ()
    model: Any = "smollm2-135m"
    policy: Any = None
    settings: ModelSettings = field(default_factory=ModelSettings)
    stop_at_tools: Sequence[str] = ()
    on_compaction: Callable[[Plan], bool | None] | None = None
    reset_tool_choice: bool = True
    repeat_guard: RepeatGuard | None = field(default_factory=RepeatGuard)
    model_settings: ModelSettings | None = None

    def __post_init__(self) -> None:
        if self.model_settings is not None and self.model_settings is not self.settings:
            if self.settings != ModelSettings():
                raise ConfigError("pass settings= or model_settings= (the same thing), not both")
            self.settings = self.model_settings
        self.model_settings = self.settings
        if self.settings.reset_tool_choice is not None:
            warnings.warn("ModelSettings(reset_tool_choice=...) is deprecated; pass Agent(reset_tool_choice=...)",
                          DeprecationWarning, stacklevel=3)
            self.reset_tool_choice = self.settings.reset_tool_choice
        if self.repeat_guard is not None and not isinstance(self.repeat_guard, RepeatGuard):
            raise ConfigError(f"repeat_guard must be a RepeatGuard or None, got {self.repeat_guard!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("an agent needs a name, e.g. Agent('assistant', instructions=...)")
        self.tools = [as_tool(t) for t in self.tools]
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ConfigError(f"tool names must be unique, got {names}")
        self.model = as_model(self.model)
        self.stop_at_tools = tuple(self.stop_at_tools)
        unknown = [n for n in self.stop_at_tools if n not in names]
        if unknown:
            raise ConfigError(f"stop_at_tools names unknown tools {unknown}; the agent's tools are {names}")
        choice = self.settings.tool_choice
        if choice not in TOOL_CHOICES and choice not in names:
            raise ConfigError(f"tool_choice must be one of {TOOL_CHOICES} or a tool name {names}, got {choice!r}")
        if choice != "none" and choice != "auto" and not names:
            raise ConfigError(f"tool_choice={choice!r} needs tools; this agent has none")

    def tool(self, name: str) -> FunctionTool | None:
        """The tool called `name`, or None."""
        return next((t for t in self.tools if t.name == name), None)

    def schemas(self) -> list[dict]:
        """The tools' schemas in OpenAI function format."""
        return [t.schema() for t in self.tools]

    def clone(self, **changes: Any) -> Agent:
        """A copy with some fields changed (the model object is shared; `model_settings` changes `settings`)."""
        if "model_settings" in changes:
            if "settings" in changes:
                raise ConfigError("pass settings= or model_settings= (the same thing), not both")
            changes["settings"] = changes.pop("model_settings")
        return dataclasses.replace(self, **changes, model_settings=None)
