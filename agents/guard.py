"""The repeat guard: a run does not call the same tool with the same arguments twice.

Small models that just got a tool's result often write the very same call again, and an
agent loop then spins until `max_turns`. A call identical to one already run gives the
model nothing new, so the guard acts at two points:

- **While decoding** (local models with `ModelSettings.constrain_calls`): `ForbidText`
  (`agentmem.forbid`) wraps the call constraint and masks the token that would complete a call already run
  in this run, so the model answers or writes a different call. Where the schema leaves
  no other way to go on (e.g. an enum argument with a single value left) the mask gives
  way and the next point catches the call.
- **After decoding**: a repeated call is not run. With ``then="answer"`` (the default)
  the model is told so and its next reply is a plain-text answer (tool calls masked),
  which ends the run; with ``then="refuse"`` the model only gets the error observation
  and goes on.

Calls are identical when their tool names and arguments (as JSON, keys sorted) are
equal. The guard only knows the calls of the current run: a tool whose output changes
between identical calls (polling a job, re-reading a file the agent just patched) needs
``Agent(repeat_guard=None)`` or a guard of its own (the coding agent has one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agentmem.errors import ConfigError
from agentmem.forbid import ForbidText, call_texts, no_calls
from agentmem.toolcalls import ToolCall

__all__ = ["ForbidText", "RepeatGuard", "call_texts", "no_calls"]

_THEN = ("answer", "refuse")


@dataclass(frozen=True)
class RepeatGuard:
    """What a run does about a tool call identical to one it already ran (see the module docstring).

    Args:
        forbid: also mask such calls while decoding (local models with constrained calls).
            Off by default: SmolLM2-135M then wrote a slightly different, failing call
            (a longer path) instead of answering, and the run went on (docs/LOG.md).
        then: what happens to a repeated call that was written anyway: "answer" (not run;
            the next reply is a plain-text final answer) or "refuse" (not run; the model
            gets an error observation and may go on).
    """

    forbid: bool = False
    then: str = "answer"

    def __post_init__(self) -> None:
        if self.then not in _THEN:
            raise ConfigError(f"RepeatGuard.then must be one of {_THEN}, got {self.then!r}")

    @staticmethod
    def key(call: ToolCall) -> tuple[str, str]:
        """What makes two calls identical: the name and the arguments as sorted JSON."""
        return call.name, json.dumps(call.arguments, sort_keys=True, ensure_ascii=False, default=str)

    def refusal(self, call: ToolCall) -> str:
        """The observation the model gets instead of a repeated call's output."""
        advice = ("Answer the user now from the results you have" if self.then == "answer"
                  else "Use its result, call another tool or other arguments, or answer")
        return (f"error: you already called {call.name} with these arguments in this run; its result is above. "
                f"{advice}.")
