"""Tool choice: which call a reply must make, and how its decoding makes it.

Both surfaces decode a reply under a tool choice with `forcing`: the agent `Runner` and
`ChatAgentMem`. A choice is "auto" (the model decides), "none" (no call), "required" (some
call) or a tool's name; `resolve_choice` reads the spellings LangChain and OpenAI use.

A forced reply starts with the call's text up to the tool's name, or past it
(`toolcalls.call_prefix`, cut from the call format itself), so even a 135M model writes a
call. Once a reply opens a call, the call constraint (`agentmem.constrain`) holds it to a
tool's schema, and the reply ends where the call's JSON object does (`toolcalls.call_done`):
not at a ``</tool_call>`` stop string, which a string argument may contain. Without the
constraint (a scripted model, or `constrain=False`) ``</tool_call>`` is a stop string.

The two surfaces differ on purpose in two ways, each an argument of `forcing`:

- `fill` (ChatAgentMem): a forced call also gets what the schema already fixes, before
  the model runs: the name of the only tool, the key of the first required argument (small
  models otherwise copy the prompt's ``{...}`` placeholder), or the whole call of a tool
  without parameters (`Forcing.complete`: no model step at all).
- `none`: how a reply that may not call is kept from it. "mask" (the agents): the token
  filter masks ``<tool_call>`` (`agentmem.forbid.no_calls`; with the constraint only).
  "stop" (ChatAgentMem): the reply ends where a call would begin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .constrain import call_constraint
from .errors import ConfigError
from .forbid import ForbidText, LogitsProcessor, no_calls
from .toolcalls import CLOSE, OPEN, call_prefix, format_tool_call

AUTO, NONE, REQUIRED = "auto", "none", "required"
CHOICES = (AUTO, NONE, REQUIRED)
NONE_WAYS = ("mask", "stop")


def tool_name(tool: dict) -> str:
    """The name in a tool schema (OpenAI's ``{"type": "function", "function": {...}}`` or a bare function)."""
    return tool["function"]["name"] if "function" in tool else tool["name"]


def tool_parameters(tool: dict) -> dict:
    """The JSON schema of a tool's arguments ({} if it has none)."""
    spec = tool["function"] if "function" in tool else tool
    return spec.get("parameters") or {}


def resolve_choice(choice: Any, names: Sequence[str]) -> str:
    """`choice` as "auto", "none", "required" or one of `names`.

    None and False mean "auto", True and "any" mean "required", and a dict names a tool
    (``{"name": ...}`` or OpenAI's ``{"type": "function", "function": {"name": ...}}``).

    Raises:
        ConfigError: `choice` is none of these, or names a tool not in `names`.
    """
    if choice is None or choice is False:
        return AUTO
    if choice is True or choice == "any":
        return REQUIRED
    if isinstance(choice, dict):
        choice = (choice.get("function") or choice).get("name")
    if isinstance(choice, str) and (choice in CHOICES or choice in names):
        return choice
    raise ConfigError(f"tool_choice {choice!r} names no bound tool; use 'auto', 'any', 'required', 'none', None "
                      f"or one of {list(names)}")


@dataclass(frozen=True)
class Forcing:
    """How one reply is decoded under a tool choice; `processor` adds its token filter."""

    choice: str  # "auto", "none", "required" or a tool name, as narrowed to the tools callable now
    tools: tuple[dict, ...] = ()  # the schemas the reply may call
    prefix: str | None = None  # text the reply starts with
    complete: str | None = None  # the whole reply: written without running the model
    stops: tuple[str, ...] = ()  # stop strings the choice adds
    constrained: bool = False  # the token filter holds a call to the tools' schemas
    mask_calls: bool = False  # the token filter keeps the reply from opening a call

    @property
    def calls(self) -> bool:
        """Whether the reply may call a tool."""
        return self.choice != NONE

    @property
    def ends_at_call(self) -> bool:
        """Whether the reply ends once its call's JSON object is complete (`toolcalls.call_done`)."""
        return self.constrained and self.calls

    def processor(self, tokenizer: Any, *, max_new_tokens: int,
                  forbidden: Sequence[str] = ()) -> LogitsProcessor | None:
        """The token filter for this reply (None: decode freely).

        Args:
            tokenizer: the model's tokenizer (None for a scripted model: no filter).
            max_new_tokens: the reply's budget; the call constraint closes a call within it.
            forbidden: call texts the reply may not write (`agentmem.forbid.call_texts`).
        """
        if tokenizer is None:
            return None
        if not self.calls:
            if not self.mask_calls:
                return None
            return no_calls(tokenizer)
        if not self.constrained:
            return None
        processor = call_constraint(tokenizer, list(self.tools), max_new_tokens=max_new_tokens,
                                    prefix=self.prefix or "")
        if forbidden:
            processor = ForbidText(tokenizer, forbidden, inner=processor, prefix=self.prefix or "")
        return processor


def forcing(choice: str, tools: Sequence[dict], *, allowed: Sequence[str] | None = None, constrain: bool = True,
            fill: bool = False, none: str = "mask") -> Forcing:
    """How a reply is decoded under `choice` (see the module docstring).

    Args:
        choice: "auto", "none", "required" or a tool name (`resolve_choice` reads other spellings).
        tools: the schemas in the prompt (OpenAI function format).
        allowed: the names the reply may call now (None: all). A named choice that is not
            allowed becomes "required" (or "none" when no tool is allowed).
        constrain: hold a call to its tool's schema with the token filter; False ends a call
            at a ``</tool_call>`` stop string instead.
        fill: also force what the schema fixes (the only tool's name, the first argument's
            key, the whole call of a tool without parameters).
        none: "mask" or "stop": how a reply that may not call is kept from it.

    Raises:
        ConfigError: `none` is not "mask" or "stop".
    """
    if none not in NONE_WAYS:
        raise ConfigError(f"none must be one of {NONE_WAYS}, got {none!r}")
    names = [tool_name(t) for t in tools if allowed is None or tool_name(t) in allowed]
    if choice not in CHOICES and choice not in names:  # a tool that may not be called now
        choice = REQUIRED if names else NONE
    if choice == NONE or not names:
        held = bool(tools)  # tools are in the prompt: keep the reply from calling one
        return Forcing(NONE, stops=(OPEN,) if held and none == "stop" else (), constrained=constrain,
                       mask_calls=held and none == "mask" and constrain)
    callable_tools = tuple(t for t in tools if tool_name(t) in names)
    if choice == REQUIRED and fill and len(names) == 1:
        choice = names[0]
    stops = () if constrain else (CLOSE,)  # unconstrained, one call per reply: stop when it is closed
    if choice == AUTO:
        return Forcing(choice, callable_tools, stops=stops, constrained=constrain)
    if choice == REQUIRED:
        return Forcing(choice, callable_tools, call_prefix(), stops=stops, constrained=constrain)
    if not fill:
        return Forcing(choice, callable_tools, call_prefix(choice), stops=stops, constrained=constrain)
    parameters = tool_parameters(next(t for t in callable_tools if tool_name(t) == choice))
    properties = parameters.get("properties") or {}
    if not properties:
        return Forcing(choice, callable_tools, complete=format_tool_call(choice, {}), stops=stops,
                       constrained=constrain)
    # The schema's first required key (in the schema's order, which the grammar keeps keys in).
    required = set(parameters.get("required") or [])
    first = next((k for k in properties if k in required), next(iter(properties)))
    prefix = call_prefix(choice, argument=first, string=properties[first].get("type") == "string")
    return Forcing(choice, callable_tools, prefix, stops=stops, constrained=constrain)
