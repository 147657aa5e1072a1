"""agentmem.agents: a small agent SDK whose conversations stay inside a KV-cache budget.

The shapes follow openai-agents (Agent, Runner, sessions, streamed events) and smolagents
(one short generator runs the loop); the model is a local transformers model driven by
`agentmem.engine.Session`, so long runs are compacted instead of overflowing.

    from agentmem.agents import Agent, Runner, tool

    @tool
    def read_file(path: str, start: int = 1) -> str:
        '''Read a text file.

        Args:
            path: File to read, relative to the project.
            start: First line to return (1-based).
        '''
        return open(path).read()

    agent = Agent("coder", instructions="You fix bugs.", tools=[read_file],
                  model="smollm2-135m", settings=ModelSettings(max_new_tokens=128))
    result = Runner.run_sync(agent, "What is in calc.py?")
    print(result.final_output, result.usage, result.compactions)

API summary (all importable from `agentmem.agents`):

- `tool` / `FunctionTool`: `@tool`, `@tool()` or `@tool(name=..., description=...)` turn a
  sync or async function into a `FunctionTool` (`name`, `description`, `parameters` JSON
  schema built by pydantic from the type hints, per-argument descriptions from the
  Google-style `Args:` section; `schema()` in OpenAI function format; `invoke(arguments)
  -> str` validates and returns a string; non-strings are JSON-dumped). Invalid arguments
  and exceptions raised by the function become an observation ("error: ValueError: ...")
  for the model. Plain callables passed to `Agent(tools=...)` are wrapped automatically.
  `function_tool(name_override=..., description_override=...)` is `tool` by openai-agents'
  name, and `FunctionTool.params_json_schema` is `parameters`.
- `ModelSettings(max_new_tokens=256, temperature=0.0, tool_choice="auto", stop=(),
  constrain_calls=True)` (`max_tokens=` is openai-agents' name for `max_new_tokens`; so is
  `Agent(model_settings=...)` for `settings=`): tool_choice is "auto", "required", "none" or a tool name.
  "required" / a name force the reply to begin with `<tool_call>{"name": "` (or
  `<tool_call>{"name": "NAME", "arguments": `) through `Session.stream(prefix=...)`, and
  `constrain_calls` holds a started call to the tool's JSON schema (token filter), which
  is what makes a 135M model write valid calls.
- `Agent(name, instructions=None, tools=(), model="smollm2-135m", policy=None,
  settings=ModelSettings(), stop_at_tools=(), on_compaction=None, reset_tool_choice=True,
  repeat_guard=RepeatGuard())`; `model` is a built-in name / HF id / path (loaded once per
  process), a `LocalModel`, or a `ScriptedModel`. `on_compaction(plan)` returning False
  vetoes a compaction. `reset_tool_choice` (openai-agents' semantics): once a run has used
  a tool, tool_choice goes back to "auto" for the rest of that run (the next run is forced
  again). `repeat_guard`: a call identical to one already run in this run is masked while
  decoding; written anyway, it is not run and the next reply is a plain-text answer
  (`RepeatGuard(forbid=True, then="answer" | "refuse")`; None turns it off).
- `LocalModel(name, device=None, dtype=None)`, `LocalModel.from_pretrained(model, tokenizer)`.
- `ScriptedModel(script)`: strict fake model for tests: replies are strings,
  `ScriptedModel.call("read_file", path="a.py")`, callables receiving the messages, or
  `ScriptedModel.compaction(...)` events; `requests` records what it was sent;
  `assert_done()` fails when replies are left over; asking past the end raises `ScriptError`.
- `Runner.run(agent, input, *, session=None, max_turns=10, hooks=None)` (async),
  `Runner.run_sync(...)`, `Runner.run_streamed(...) -> RunResultStreaming` (iterate it with
  `for event in result` or `async for event in result.stream_events()`).
  `input` is a string or a list of role/content dicts.
- `RunResult`: `final_output`, `new_items` (role/content dicts added by this run),
  `usage` (`Usage`: requests, prompt_tokens, cached_tokens, completion_tokens),
  `compactions` (CompactionEvent list), `turns`, `replies` (engine `Reply` objects).
- `MaxTurnsExceeded` (in `agentmem.errors`): raised past `max_turns`; `.result` holds the
  partial `RunResult`.
- Events (dataclasses with a `type` field): `TokenEvent` ("token", text),
  `ToolCallEvent` ("tool_call", call), `ToolResultEvent` ("tool_result", call, output,
  is_error), `CompactionStartedEvent` ("compaction_started", plan, vetoed),
  `CompactionFinishedEvent` ("compaction_finished", event), `TurnDoneEvent` ("turn_done",
  turn, usage, finish_reason), `FinalOutputEvent` ("final_output", output).
- `RunHooks`: subclass and override `on_turn_start`, `on_tool_start`, `on_tool_end`,
  `on_compaction` (return False to veto), `on_compaction_end`, `on_turn_end`. Hooks run in
  the thread that runs the model (sync methods).
- `Session` protocol (`session_id`, `get_items()`, `add_items(items)`, `pop_item()`,
  `clear_session()`), `MemorySession` (replayed into a fresh engine session each run) and
  `SQLiteSession(session_id, db_path="agentmem.db")` (backed by `agentmem.store.Store`:
  the KV cache is checkpointed every turn and the next run, even in a new process,
  resumes it without prefilling the history again).

Modules: `tools` (tool, FunctionTool), `agent` (Agent, ModelSettings), `guard` (RepeatGuard), `models` (the
Conversation seam, LocalModel), `scripted` (ScriptedModel), `sessions` (Session,
MemorySession, SQLiteSession), `events` (events, Usage), `constrain` (well-formed tool
calls), `runner` (Runner, RunResult, RunResultStreaming, RunHooks).
"""

from agentmem.errors import MaxTurnsExceeded, ScriptError
from agentmem.toolcalls import ToolCall

from .agent import Agent, ModelSettings
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
from .guard import RepeatGuard
from .models import Conversation, LocalModel, Model
from .runner import RunHooks, Runner, RunResult, RunResultStreaming
from .scripted import ScriptedCompaction, ScriptedModel, ScriptedRequest
from .sessions import MemorySession, Session, SQLiteSession
from .tools import FunctionTool, function_tool, tool

__all__ = [
    "Agent",
    "CompactionFinishedEvent",
    "CompactionStartedEvent",
    "Conversation",
    "FinalOutputEvent",
    "FunctionTool",
    "LocalModel",
    "MaxTurnsExceeded",
    "MemorySession",
    "Model",
    "ModelSettings",
    "RepeatGuard",
    "RunEvent",
    "RunHooks",
    "RunResult",
    "RunResultStreaming",
    "Runner",
    "SQLiteSession",
    "ScriptError",
    "ScriptedCompaction",
    "ScriptedModel",
    "ScriptedRequest",
    "Session",
    "TokenEvent",
    "ToolCall",
    "ToolCallEvent",
    "ToolResultEvent",
    "TurnDoneEvent",
    "Usage",
    "function_tool",
    "tool",
]
