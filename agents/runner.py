"""`Runner`: the agent loop, and what a run returns.

The loop is one generator, `_run_stream`: ask the model for a reply (streaming its
tokens), run the tool it calls, give the output back as a ``tool`` message, repeat until a
reply calls no tool (its text is the final output), a `stop_at_tools` tool succeeds, or
`max_turns` replies were used (`MaxTurnsExceeded`).

Tool choice follows openai-agents: "required" or a tool name forces the first reply of a
run; once the run has used a tool it goes back to "auto" (`Agent.reset_tool_choice`, on by
default). The repeat guard (`Agent.repeat_guard`, `agents.guard`) keeps the model from
running the same call twice: the call is masked while decoding and, if written anyway,
not run, and the next reply is a plain-text answer. A reply that opens a call under the
call constraint ends when the call's JSON object is complete and closed (a
``</tool_call>`` inside a string argument does not end it). A model's mistake (an unreadable call,
an unknown tool, bad arguments) or a tool's exception becomes the next observation; a bug
in this package raises. `run_sync`, `run` and `run_streamed` all consume the same
generator; the async ones run it in a worker thread (the model is torch work), and async
tools then run on the caller's event loop.

Compaction hooks fire inside `Session.stream`; the run buffers them and yields them in
order between the tokens they happened between.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentmem.engine import Reply
from agentmem.errors import CompactionVetoed, ConfigError, MaxTurnsExceeded
from agentmem.memory import Plan
from agentmem.segments import CompactionEvent
from agentmem.tool_choice import Forcing, forcing
from agentmem.toolcalls import OPEN, ToolCall, call_done, parse_tool_calls

from .agent import Agent
from .events import (
    CompactionFinishedEvent,
    CompactionStartedEvent,
    FinalOutputEvent,
    RunEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    TurnDoneEvent,
    Usage,
)
from .guard import RepeatGuard, call_texts
from .sessions import Session, SQLiteSession, check_items, close_call
from .tools import ToolOutput, run_coroutine_blocking

log = logging.getLogger(__name__)

RunCoroutine = Callable[[Awaitable[Any]], Any]


class RunHooks:
    """Callbacks for a run; subclass and override what you need (all run in the model's thread)."""

    def on_turn_start(self, agent: Agent, turn: int) -> None:
        """Before model reply number `turn` (1-based)."""

    def on_turn_end(self, agent: Agent, turn: int, reply: Reply) -> None:
        """After a reply and its tool calls."""

    def on_tool_start(self, agent: Agent, call: ToolCall) -> None:
        """Before a tool runs."""

    def on_tool_end(self, agent: Agent, call: ToolCall, output: str) -> None:
        """After a tool ran (output may be an ``error: ...`` observation)."""

    def on_compaction(self, agent: Agent, plan: Plan) -> bool | None:
        """Before a compaction; return False to veto it."""
        return None

    def on_compaction_end(self, agent: Agent, event: CompactionEvent) -> None:
        """After a compaction (or a fallback drop)."""

    def allowed_tools(self, agent: Agent, turn: int) -> Sequence[str] | None:
        """Tool names reply `turn` may call (None: all of them).

        With constrained decoding (`ModelSettings.constrain_calls`) the model cannot name
        any other tool; without it, calling one is answered with an error observation.
        """
        return None

    def tool_parameters(self, agent: Agent, turn: int, tool: Any) -> dict[str, Any] | None:
        """The JSON schema reply `turn` decodes `tool`'s arguments under (None: the tool's own).

        A narrower schema than the tool's, e.g. an enum of the values that make sense now,
        holds a small model to them while it writes the call; the prompt still shows the
        tool's own schema, and the tool still validates what it gets. Only used with
        constrained decoding (`ModelSettings.constrain_calls`).
        """
        return None


@dataclass
class RunResult:
    """What a run did: its answer, the items it added, and what it cost."""

    agent: Agent
    input: str | list[dict]
    final_output: Any = None
    new_items: list[dict] = field(default_factory=list)  # role/content items this run added
    usage: Usage = field(default_factory=Usage)
    compactions: list[CompactionEvent] = field(default_factory=list)
    turns: int = 0  # model replies
    replies: list[Reply] = field(default_factory=list)

    @property
    def messages(self) -> list[dict]:
        """Alias of `new_items`."""
        return self.new_items

    def to_input_list(self) -> list[dict]:
        """The run's items, input first (pass them as the next run's input to chain runs without a session)."""
        return [dict(i) for i in self.new_items]

    def _record(self, reply: Reply) -> None:
        self.replies.append(reply)
        self.usage.add(Usage.of(reply))
        self.compactions.extend(reply.compactions)


class Runner:
    """Runs agents (class methods only)."""

    @classmethod
    def run_sync(cls, agent: Agent, input: str | Sequence[dict], *, session: Session | None = None,
                 max_turns: int = 10, hooks: RunHooks | None = None) -> RunResult:
        """Run `agent` on `input` in this thread and return the result.

        Args:
            agent: the agent.
            input: a user message, or a list of role/content items.
            session: conversation memory (`SQLiteSession`, `MemorySession` or any `Session`).
            max_turns: model replies allowed before `MaxTurnsExceeded`.
            hooks: `RunHooks` callbacks.
        """
        result = RunResult(agent, _input(input))
        for _ in _run_stream(agent, result, session=session, max_turns=max_turns, hooks=hooks,
                             run_coroutine=run_coroutine_blocking):
            pass
        return result

    @classmethod
    async def run(cls, agent: Agent, input: str | Sequence[dict], *, session: Session | None = None,
                  max_turns: int = 10, hooks: RunHooks | None = None) -> RunResult:
        """`run_sync` for async code: the model runs in a worker thread, async tools on this loop."""
        loop = asyncio.get_running_loop()
        result = RunResult(agent, _input(input))

        def drain() -> None:
            for _ in _run_stream(agent, result, session=session, max_turns=max_turns, hooks=hooks,
                                 run_coroutine=_on_loop(loop)):
                pass

        await asyncio.to_thread(drain)
        return result

    @classmethod
    def run_streamed(cls, agent: Agent, input: str | Sequence[dict], *, session: Session | None = None,
                     max_turns: int = 10, hooks: RunHooks | None = None) -> RunResultStreaming:
        """A run that yields events as it goes: `for event in result` or `async for ... in result.stream_events()`.

        Nothing runs until the events are consumed; the result's fields fill in meanwhile.
        """
        return RunResultStreaming(agent, _input(input), session=session, max_turns=max_turns, hooks=hooks)


class RunResultStreaming(RunResult):
    """A `RunResult` filled in while its events are consumed (once, sync or async).

    `is_complete` turns True after the last event. Leaving the loop early stops the run
    after the current token (a `SQLiteSession` then resumes from its last committed turn).
    """

    def __init__(self, agent: Agent, input: str | list[dict], *, session: Session | None, max_turns: int,
                 hooks: RunHooks | None):
        super().__init__(agent, input)
        self.is_complete = False
        self._options = {"session": session, "max_turns": max_turns, "hooks": hooks}
        self._started = False

    def __iter__(self) -> Iterator[RunEvent]:
        yield from self._events(run_coroutine_blocking)

    async def stream_events(self) -> AsyncIterator[RunEvent]:
        """The events, with the model running in a worker thread (async tools run on this loop)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def worker() -> None:
            events = self._events(_on_loop(loop))
            try:
                for event in events:
                    loop.call_soon_threadsafe(queue.put_nowait, ("event", event))
                    if stop.is_set():
                        events.close()
                        break
            except BaseException as exc:  # handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
            else:
                loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

        thread = threading.Thread(target=worker, name="agentmem-run", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == "event":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)

    def _events(self, run_coroutine: RunCoroutine) -> Iterator[RunEvent]:
        if self._started:
            raise ConfigError("a streamed run's events can be consumed only once; start another run")
        self._started = True
        yield from _run_stream(self.agent, self, run_coroutine=run_coroutine, **self._options)
        self.is_complete = True


# ---------------------------------------------------------------------- the loop
def _run_stream(agent: Agent, result: RunResult, *, session: Session | None, max_turns: int,
                hooks: RunHooks | None, run_coroutine: RunCoroutine) -> Iterator[RunEvent]:
    """Run the agent loop, filling in `result` and yielding events (see the module docstring)."""
    if max_turns < 1:
        raise ConfigError(f"max_turns must be >= 1, got {max_turns}")
    hooks = hooks or RunHooks()
    settings, choice = agent.settings, agent.settings.tool_choice
    guard = agent.repeat_guard
    ran: dict[tuple[str, str], ToolCall] = {}  # calls handled in this run, by RepeatGuard.key
    written: list[str] = []  # those calls as the model wrote them
    answer_now = False  # the guard refused a repeated call: the next reply is a plain-text answer
    conversation, stored = _open(agent, session)
    buffer = _Compactions(agent, hooks)
    unhook = _hook(conversation, buffer)
    ok = False
    try:
        for item in check_items(_as_items(result.input)):
            conversation.add(item["role"], item["content"])
            result.new_items.append(item)
        while True:
            if result.turns >= max_turns:
                ok = True  # a clean stop: keep what was done
                raise MaxTurnsExceeded(f"agent {agent.name!r} used max_turns={max_turns} model replies without a "
                                       f"final output; raise max_turns, or read .result for the partial run",
                                       result)
            result.turns += 1
            turn = buffer.turn = result.turns
            hooks.on_turn_start(agent, turn)
            allowed = hooks.allowed_tools(agent, turn)
            reply_choice = "none" if answer_now else choice
            forbidden = call_texts(ran.values(), written) if guard is not None and guard.forbid else []
            forced = _forcing(agent, conversation, reply_choice, allowed, hooks=hooks, turn=turn)
            processor = forced.processor(getattr(conversation, "tokenizer", None),
                                         max_new_tokens=settings.max_new_tokens, forbidden=forbidden)
            shown: list[str] = []
            # A call ends where its JSON object does (a "</tool_call>" inside a string argument does not end it).
            extra = {"stop_when": lambda _: call_done("".join(shown), closed=True)} if forced.ends_at_call else {}
            for piece in conversation.stream(settings.max_new_tokens, stop=list(settings.stop) + list(forced.stops),
                                             temperature=settings.temperature, prefix=forced.prefix,
                                             logits_processor=processor, **extra):
                shown.append(piece)
                yield from buffer.drain()
                yield TokenEvent(piece, turn)
            yield from buffer.drain()
            reply = conversation.last_reply
            result._record(reply)
            result.new_items.append({"role": "assistant", "content": close_call(reply.text)})
            parsed = parse_tool_calls(reply.text)
            done, final = reply_choice == "none" or not (parsed.calls or parsed.errors), None
            if done:
                final = reply.text.strip() if reply_choice == "none" else parsed.content
            for call in [] if done else parsed.calls:
                yield ToolCallEvent(call, turn)
                hooks.on_tool_start(agent, call)
                key = RepeatGuard.key(call)
                if guard is not None and key in ran:
                    output = ToolOutput(guard.refusal(call), True)
                    answer_now = guard.then == "answer"
                    log.info("repeat guard: %s(%s) was already called in this run; not running it", *key)
                else:
                    output = _call_tool(agent, call, run_coroutine, allowed)
                    if allowed is None or call.name in allowed:
                        ran.setdefault(key, call)
                        written.extend(_written_calls(reply.text))
                hooks.on_tool_end(agent, call, output.text)
                _observe(conversation, result, output.text)
                yield ToolResultEvent(call, output.text, output.is_error, turn)
                if call.name in agent.stop_at_tools and not output.is_error:
                    done, final = True, output.text
                    break
            for error in [] if done else parsed.errors:
                _observe(conversation, result, f"error: {error}")
                yield ToolResultEvent(None, f"error: {error}", True, turn)
            if parsed.calls and agent.reset_tool_choice and choice != "none":
                choice = "auto"  # openai-agents' reset_tool_choice: a run that used a tool is not forced again
            hooks.on_turn_end(agent, turn, reply)
            yield TurnDoneEvent(turn, Usage.of(reply), reply.finish_reason, reply.text)
            if done:
                result.final_output = final
                ok = True
                yield FinalOutputEvent(final, turn)
                return
    finally:
        unhook()
        if stored is not None:
            stored.finish(conversation, ok=ok)
        elif session is not None and ok:
            session.add_items(result.new_items)


def _open(agent: Agent, session: Session | None) -> tuple[Any, SQLiteSession | None]:
    """The conversation for a run (resumed for a `SQLiteSession`, else new with the session's items replayed)."""
    tools = agent.schemas()
    if isinstance(session, SQLiteSession):
        return session.open(agent.model, system=agent.instructions, tools=tools, policy=agent.policy), session
    if session is not None and not isinstance(session, Session):
        raise ConfigError(f"session must implement agentmem.agents.Session (get_items, add_items, pop_item, "
                          f"clear_session), got {session!r}")
    conversation = agent.model.open(system=agent.instructions, tools=tools, policy=agent.policy)
    for item in check_items(session.get_items()) if session is not None else []:
        conversation.add(item["role"], item["content"])
    return conversation, None


def _forcing(agent: Agent, conversation: Any, choice: str, allowed: Sequence[str] | None = None, *,
             hooks: RunHooks | None = None, turn: int = 0) -> Forcing:
    """How the reply is decoded under this tool choice (`agentmem.tool_choice`) and the hooks' narrowed schemas."""
    constrained = agent.settings.constrain_calls and getattr(conversation, "tokenizer", None) is not None
    schemas = []
    for tool in agent.tools:
        schema = tool.schema()
        narrowed = hooks.tool_parameters(agent, turn, tool) if hooks is not None and constrained else None
        if narrowed is not None:
            schema = {**schema, "function": {**schema["function"], "parameters": narrowed}}
        schemas.append(schema)
    return forcing(choice, schemas, allowed=allowed, constrain=constrained)


def _written_calls(text: str) -> list[str]:
    """Each call in a reply as written, from ``<tool_call>`` to the end of its JSON object."""
    out, start = [], text.find(OPEN)
    while start >= 0:
        body = text[start + len(OPEN):]
        try:
            _, end = json.JSONDecoder().raw_decode(body)
        except ValueError:
            pass
        else:
            out.append(text[start:start + len(OPEN) + end])
        start = text.find(OPEN, start + len(OPEN))
    return out


def _call_tool(agent: Agent, call: ToolCall, run_coroutine: RunCoroutine,
               allowed: Sequence[str] | None = None) -> ToolOutput:
    tool = agent.tool(call.name)
    if tool is not None and allowed is not None and call.name not in allowed:
        return ToolOutput(f"error: {call.name} cannot be used now; the tools you can call are: "
                          f"{', '.join(allowed) or 'none'}", True)
    if tool is None:
        names = ", ".join(t.name for t in agent.tools)
        return ToolOutput(f"error: there is no tool {call.name!r}; the tools are: {names}", True)
    return tool.run(call.arguments, run_coroutine=run_coroutine)


def _observe(conversation: Any, result: RunResult, text: str) -> None:
    conversation.add("tool", text)
    result.new_items.append({"role": "tool", "content": text})


class _Compactions:
    """Compaction hook targets for one run: ask the vetoes, buffer events for the stream."""

    def __init__(self, agent: Agent, hooks: RunHooks):
        self.agent, self.hooks = agent, hooks
        self.pending: list[RunEvent] = []
        self.turn = 0

    def before(self, plan: Plan) -> bool | None:
        vetoed = False
        try:
            if self.agent.on_compaction is not None and self.agent.on_compaction(plan) is False:
                vetoed = True
            if not vetoed and self.hooks.on_compaction(self.agent, plan) is False:
                vetoed = True
        except CompactionVetoed:
            vetoed = True
        self.pending.append(CompactionStartedEvent(plan, vetoed, self.turn))
        return False if vetoed else None

    def after(self, event: CompactionEvent) -> None:
        self.hooks.on_compaction_end(self.agent, event)
        self.pending.append(CompactionFinishedEvent(event, self.turn))

    def drain(self) -> list[RunEvent]:
        out, self.pending = self.pending, []
        return out


def _hook(conversation: Any, buffer: _Compactions) -> Callable[[], None]:
    """Register the run's compaction hooks on the conversation; returns what unregisters them."""
    handles = [conversation.on_before_compaction(buffer.before), conversation.on_after_compaction(buffer.after)]
    if not all(callable(getattr(h, "remove", None)) for h in handles):
        raise ConfigError(f"{type(conversation).__name__}.on_before_compaction and on_after_compaction must return "
                          f"a handle whose remove() unregisters the hook (agentmem.hooks.register makes one)")

    def unhook() -> None:
        for handle in handles:
            handle.remove()
    return unhook


def _on_loop(loop: asyncio.AbstractEventLoop) -> RunCoroutine:
    """Run coroutines on `loop` (the caller's) from the worker thread, waiting for the result."""
    return lambda coroutine: asyncio.run_coroutine_threadsafe(_wrap(coroutine), loop).result()


async def _wrap(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _input(input: str | Sequence[dict]) -> str | list[dict]:
    if isinstance(input, str):
        return input
    return check_items(input)


def _as_items(input: str | list[dict]) -> list[dict]:
    return [{"role": "user", "content": input}] if isinstance(input, str) else list(input)

