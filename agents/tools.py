"""Function tools: a Python function, its JSON schema, and a safe way to call it.

`@tool` reads the function's signature and Google-style docstring: the type hints become a
pydantic model (the JSON schema the model sees and the validator of its arguments), the
summary becomes the description and the `Args:` section the per-argument descriptions.
A tool's own failure (bad arguments, an exception in its body) is an *observation* the
model can react to; it is returned as text starting with ``error:``. Bugs in this module
raise as usual.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import to_jsonable_python

from agentmem.errors import ConfigError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Yields|Raises|Examples?|Notes?|Attributes)\s*:\s*$")
_ARG = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


@dataclass
class ToolOutput:
    """What one tool call produced: the text for the model and whether it is an error."""

    text: str
    is_error: bool = False


class FunctionTool:
    """A function the model may call, with its name, description and argument schema.

    Args:
        function: a sync or async function whose parameters all have simple names (no
            ``*args`` / ``**kwargs``).
        name: the tool's name (default: the function's name).
        description: what it does (default: the docstring's summary).
    """

    def __init__(self, function: Callable[..., Any], *, name: str | None = None, description: str | None = None):
        if not callable(function):
            raise ConfigError(f"a tool needs a function, got {type(function).__name__}")
        self.function = function
        self.name = name or getattr(function, "__name__", "")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}", self.name or ""):
            raise ConfigError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'; pass name=...")
        summary, arg_docs = parse_docstring(inspect.getdoc(function) or "")
        self.description = description if description is not None else summary
        self.is_async = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
            getattr(function, "__call__", None))
        self.arguments_model = _arguments_model(function, self.name, arg_docs)
        self.parameters: dict[str, Any] = _clean_schema(self.arguments_model.model_json_schema())

    @property
    def params_json_schema(self) -> dict[str, Any]:
        """`parameters`, by openai-agents' name."""
        return self.parameters

    def schema(self) -> dict[str, Any]:
        """The tool in OpenAI function format: ``{"type": "function", "function": {...}}``."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def invoke(self, arguments: dict[str, Any]) -> str:
        """Validate `arguments`, call the function and return its result as a string.

        Async functions are run to completion (in a helper thread if this thread already
        runs an event loop). Failures come back as ``error: ...`` text, never as exceptions.
        """
        return self.run(arguments).text

    async def ainvoke(self, arguments: dict[str, Any]) -> str:
        """`invoke` for async callers: an async tool runs on the caller's event loop."""
        prepared = self._prepare(arguments)
        if isinstance(prepared, ToolOutput):
            return prepared.text
        if self.is_async:
            return (await self._finish(lambda: self.function(**prepared))).text
        return (await asyncio.to_thread(self._call_sync, prepared)).text

    def run(self, arguments: dict[str, Any], *, run_coroutine: Callable[[Awaitable[Any]], Any] | None = None
            ) -> ToolOutput:
        """Like `invoke`, but says whether the text is an error; `run_coroutine` runs async bodies."""
        prepared = self._prepare(arguments)
        if isinstance(prepared, ToolOutput):
            return prepared
        if not self.is_async:
            return self._call_sync(prepared)
        runner = run_coroutine or run_coroutine_blocking
        try:
            value = runner(self.function(**prepared))
        except Exception as exc:  # the tool's own failure: an observation for the model
            return _failure(self.name, exc)
        return ToolOutput(to_text(value))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped function directly (no validation, errors raise)."""
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"FunctionTool({self.name!r})"

    # ------------------------------------------------------------------ helpers
    def _prepare(self, arguments: dict[str, Any]) -> dict[str, Any] | ToolOutput:
        if not isinstance(arguments, dict):
            return ToolOutput(f"error: arguments of {self.name} must be a JSON object, got "
                              f"{type(arguments).__name__}", True)
        try:
            parsed = self.arguments_model.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                                 for e in exc.errors())
            return ToolOutput(f"error: invalid arguments for {self.name}: {problems}", True)
        return {field: getattr(parsed, field) for field in type(parsed).model_fields}

    def _call_sync(self, prepared: dict[str, Any]) -> ToolOutput:
        try:
            value = self.function(**prepared)
        except Exception as exc:  # the tool's own failure: an observation for the model
            return _failure(self.name, exc)
        return ToolOutput(to_text(value))

    async def _finish(self, start: Callable[[], Awaitable[Any]]) -> ToolOutput:
        try:
            value = await start()
        except Exception as exc:
            return _failure(self.name, exc)
        return ToolOutput(to_text(value))


@overload
def tool(function: F, /) -> FunctionTool: ...
@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[[F], FunctionTool]: ...


def tool(function: Callable[..., Any] | None = None, /, *, name: str | None = None,
         description: str | None = None) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a `FunctionTool` from a function: `@tool`, `@tool()` or `@tool(name=..., description=...)`.

    Args:
        function: the function (when used as a bare decorator or called directly).
        name: the tool's name (default: the function's name).
        description: what it does (default: the docstring's summary).
    """
    if function is not None:
        return FunctionTool(function, name=name, description=description)
    return lambda f: FunctionTool(f, name=name, description=description)


def function_tool(function: Callable[..., Any] | None = None, /, *, name_override: str | None = None,
                  description_override: str | None = None
                  ) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """`tool` by openai-agents' name and keywords: `@function_tool` or `@function_tool(name_override=...)`."""
    return tool(function, name=name_override, description=description_override)  # type: ignore[call-overload]


def as_tool(value: Any) -> FunctionTool:
    """A `FunctionTool` as is, or a plain callable wrapped in one."""
    if isinstance(value, FunctionTool):
        return value
    if callable(value):
        return FunctionTool(value)
    raise ConfigError(f"tools must be functions or FunctionTool objects, got {value!r}")


def to_text(value: Any) -> str:
    """A tool's return value as the text the model reads (strings as is, the rest as JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable_python(value, fallback=str), ensure_ascii=False)


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {argument: description}).

    The description is everything before the first section header; the `Args:` section
    gives one entry per ``name: text`` or ``name (type): text`` line, with more-indented
    lines continuing it.
    """
    lines = doc.expandtabs().splitlines()
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    indent = 0
    for line in lines:
        stripped = line.strip()
        header = _SECTION.match(stripped)
        if header and len(line) - len(line.lstrip()) == 0:
            section, current = header.group(1), None
            continue
        if section is None:
            summary.append(stripped)
            continue
        if section not in ("Args", "Arguments", "Parameters") or not stripped:
            continue
        level = len(line) - len(line.lstrip())
        match = _ARG.match(stripped)
        if match and (current is None or level <= indent):
            current, indent = match.group(1), level
            args[current] = match.group(2).strip()
        elif current is not None:
            args[current] = (args[current] + " " + stripped).strip()
    description = "\n".join(summary).strip()
    description = re.sub(r"\n{2,}", "\n\n", description)
    return description, args


def run_coroutine_blocking(coroutine: Awaitable[Any]) -> Any:
    """Run a coroutine to completion from sync code (in a new thread if a loop runs here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(coroutine))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_await(coroutine))
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="agentmem-tool")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _failure(name: str, exc: Exception) -> ToolOutput:
    log.info("tool %s failed: %s: %s", name, type(exc).__name__, exc)
    return ToolOutput(f"error: {type(exc).__name__}: {exc}", True)


def _arguments_model(function: Callable[..., Any], name: str, docs: dict[str, str]) -> type[BaseModel]:
    signature = inspect.signature(function)
    try:
        hints = get_type_hints(function)
    except (NameError, TypeError) as exc:
        raise ConfigError(f"cannot read the type hints of tool {name!r}: {exc}") from exc
    fields: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigError(f"tool {name!r}: *args / **kwargs cannot be described to a model; "
                              f"give every argument a name and a type")
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise ConfigError(f"tool {name!r}: positional-only argument {parameter.name!r} is not supported")
        annotation = hints.get(parameter.name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, Field(default, description=docs.get(parameter.name)))
    model_name = "".join(part.capitalize() for part in re.split(r"[_\-]", name)) + "Arguments"
    return create_model(model_name, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
                        **fields)


def _clean_schema(schema: Any) -> Any:
    """The schema without pydantic's auto-generated titles (short prompts for small models)."""
    if isinstance(schema, dict):
        properties = schema.get("properties")
        cleaned = {k: _clean_schema(v) for k, v in schema.items() if k != "title" or not isinstance(v, str)}
        if isinstance(properties, dict):  # property *names* may well be "title"
            cleaned["properties"] = {k: _clean_schema(v) for k, v in properties.items()}
        return cleaned
    if isinstance(schema, list):
        return [_clean_schema(v) for v in schema]
    return schema
