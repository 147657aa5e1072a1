"""What a run reports while it goes: small event records (token usage is `agentmem.usage.Usage`).

Every event has a `type` string (as in openai-agents' stream events) and the `turn` it
belongs to (1 for the first model reply). A streamed run yields, per turn: `token` deltas
(with `compaction_started` / `compaction_finished` in between, in the order they
happened), then `tool_call` and `tool_result` per call, then `turn_done`; the last event
is `final_output`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agentmem.memory import Plan
from agentmem.segments import CompactionEvent
from agentmem.toolcalls import ToolCall
from agentmem.usage import Usage

__all__ = ["CompactionFinishedEvent", "CompactionStartedEvent", "FinalOutputEvent", "RunEvent", "TokenEvent",
           "ToolCallEvent", "ToolResultEvent", "TurnDoneEvent", "Usage"]


@dataclass(frozen=True)
class TokenEvent:
    """A piece of reply text, as decoded."""

    text: str
    turn: int
    type: Literal["token"] = field(default="token", init=False)


@dataclass(frozen=True)
class ToolCallEvent:
    """The model asked for a tool."""

    call: ToolCall
    turn: int
    type: Literal["tool_call"] = field(default="tool_call", init=False)


@dataclass(frozen=True)
class ToolResultEvent:
    """A tool's output (or the error the model gets back); `call` is None for an unreadable call."""

    call: ToolCall | None
    output: str
    is_error: bool
    turn: int
    type: Literal["tool_result"] = field(default="tool_result", init=False)


@dataclass(frozen=True)
class CompactionStartedEvent:
    """The engine is about to compact: `plan` has reason, spans and stats; `vetoed` if a hook said no."""

    plan: Plan
    vetoed: bool
    turn: int
    type: Literal["compaction_started"] = field(default="compaction_started", init=False)


@dataclass(frozen=True)
class CompactionFinishedEvent:
    """A compaction (or fallback drop) happened."""

    event: CompactionEvent
    turn: int
    type: Literal["compaction_finished"] = field(default="compaction_finished", init=False)


@dataclass(frozen=True)
class TurnDoneEvent:
    """A model reply and its tool calls are done."""

    turn: int
    usage: Usage
    finish_reason: str
    text: str
    type: Literal["turn_done"] = field(default="turn_done", init=False)


@dataclass(frozen=True)
class FinalOutputEvent:
    """The run's answer (a reply's text, or a `stop_at_tools` tool's output)."""

    output: Any
    turn: int
    type: Literal["final_output"] = field(default="final_output", init=False)


RunEvent = (TokenEvent | ToolCallEvent | ToolResultEvent | CompactionStartedEvent | CompactionFinishedEvent
            | TurnDoneEvent | FinalOutputEvent)
