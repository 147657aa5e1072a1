"""The example coding agent: an `agentmem.agents.Agent` fixing a failing test under a KV limit.

`run` copies the bundled sample project into a workspace, starts (or resumes) a session in
an SQLite file, and streams the agent's run to a console: each tool call, each compaction
(tokens before -> after, seconds) and the final result. The policy keeps the physical KV
cache under `limit` tokens, so a long run compacts its older turns again and again.

The harness is built so that a small model can finish the job (README, "The coding
agent"): the tests, docs and config are read-only; a file must be read before it is
patched; a patch runs the tests and the run ends at the patch that makes them pass;
while a reply is decoded, read_file takes only a path (the file fits one read) and
patch_file's `old` is one whole line of a file the agent has read (`Steer`). The default
model, Qwen2.5-Coder-1.5B-Instruct, fixes the demo's bug this way; the arguments are
still the model's own.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agentmem.agents import Agent, LocalModel, ModelSettings, RunHooks, Runner, SQLiteSession
from agentmem.agents.events import (
    CompactionFinishedEvent,
    CompactionStartedEvent,
    FinalOutputEvent,
    ToolCallEvent,
    ToolResultEvent,
    TurnDoneEvent,
)
from agentmem.errors import ConfigError, MaxTurnsExceeded
from agentmem.policies import Policy

from . import DEMO_MODEL, MIN_LIMIT, SAMPLE_PROJECT
from .tools import RepeatGuard, workspace_tools
from .workspace import Workspace, WorkspaceError

INSTRUCTIONS = (
    "You are a careful coding agent working in a small Python project. Use the tools to "
    "look at the files, run the tests, find the bug and fix it with patch_file. Make one "
    "tool call per reply. You are done when run_tests passes."
)
TASK = "The tests of this project fail. Find the bug in the code and fix it so that all tests pass."
READ_ONLY = ("test_*.py", "tests/*", "*.md", "*.ini", "*.toml", "*.cfg")  # it fixes the code, not the tests,
# the docs or the configuration (those say what the code must do)
TOOLS = ("list_files", "read_file", "patch_file", "run_tests")  # a small project needs no search or write_file
MAX_NARROWED = 200  # files: above it, Steer leaves read_file's schema alone (it reads each file every turn)
MARKER = ".agentmem-demo.json"  # in the workspace: which store and session it belongs to


def demo_policy(limit: int, ratio: float, method: str = "am-fast", again: float | None = None) -> Policy:
    """Compact everything but the instructions, the tools, the task and the newest tokens.

    `again`: the ratio for a segment compacted before (None: `ratio` once more at every
    compaction, so an old turn goes x4, x16, ...; 1: each turn is compacted once).
    """
    if limit < MIN_LIMIT:
        raise ConfigError(f"--limit {limit} is too small for the agent's prompt; use {MIN_LIMIT} or more")
    return Policy.budget(limit, ratio, method=method, pins=["system", "tools", "first_user"],
                         protect_recent=min(128, limit // 8), again=again)


def build_agent(workspace: Workspace, *, model: Any = DEMO_MODEL, policy: Policy | str = "default",
                temperature: float = 0.2, max_new_tokens: int = 160) -> Agent:
    """The coding agent: the `TOOLS` of the workspace; the run ends when the tests pass.

    A patch runs the tests (`test_after_patch`), so the run ends at `run_tests` or at the
    patch that made them pass. The tools share a `RepeatGuard` (reachable as
    `agent.guard`); `Steer(agent.guard, workspace)` as the run's hooks keeps replies from
    calling tools that have nothing new to show and narrows what calls may say.
    """
    guard = RepeatGuard(workspace.files())
    tools = [t for t in workspace_tools(workspace, guard=guard, known_paths=True, test_after_patch=True)
             if t.name in TOOLS]
    agent = Agent("coding-agent", instructions=INSTRUCTIONS, tools=tools, model=model, policy=policy,
                  settings=ModelSettings(max_new_tokens=max_new_tokens, temperature=temperature,
                                         tool_choice="required"),
                  stop_at_tools=["run_tests", "patch_file"], reset_tool_choice=False,
                  repeat_guard=None)  # its RepeatGuard knows when a file changed; the SDK's does not
    agent.guard = guard
    return agent


class Steer(RunHooks):
    """Lets a reply call only tools that can still show something new (see `RepeatGuard.exhausted`).

    A tool whose call just failed also sits out the next reply: small models otherwise
    repeat the same failing call until the turns run out. patch_file waits until a file it
    may change has been read, and then its `old` is held to one whole line of such a file
    (`whole_lines`; a line that occurs once in it): the edit a small model gets wrong most
    is quoting text that is not there.
    """

    def __init__(self, guard: RepeatGuard, workspace: Workspace | None = None, *, whole_lines: bool = True):
        self.guard = guard
        self.workspace = workspace
        self.whole_lines = whole_lines and workspace is not None

    def tool_parameters(self, agent: Agent, turn: int, tool: Any) -> dict | None:
        if tool.name == "read_file" and self.workspace is not None:
            return self._read_parameters(tool.parameters)
        if tool.name != "patch_file" or not self.whole_lines:
            return None
        branches = []
        for path in self._patchable():
            try:
                lines = patchable_lines(self.workspace.text(path))
            except WorkspaceError:  # gone or unreadable since it was read: the tool says why if called
                continue
            if lines:
                branches.append({"type": "object", "properties": {
                    "path": {"const": path}, "old": {"enum": lines}, "new": {"type": "string"}},
                    "required": ["path", "old", "new"]})
        return None if not branches else branches[0] if len(branches) == 1 else {"anyOf": branches}

    def _read_parameters(self, parameters: dict) -> dict | None:
        """read_file's path is a file not read since it last changed (else any), and only a path for a file
        that fits one read: small models re-read what they have, and ask for line 1 to 1 of the rest."""
        files = self.workspace.files()
        if len(files) > MAX_NARROWED:  # a big project: the schema as it is
            return None
        unread = self.guard.unread()  # a file read since it last changed has nothing new to show
        files = [f for f in files if f in unread] or files
        whole, ranged = [], []
        for path in files:
            try:
                size = len(self.workspace.read_file(path))
            except WorkspaceError:
                continue
            (whole if size <= self.workspace.read_cap else ranged).append(path)
        if not whole:
            return None
        branches = [{"type": "object", "properties": {"path": {"enum": whole}}, "required": ["path"]}]
        if ranged:
            branches.append({**parameters, "properties": {**parameters["properties"], "path": {"enum": ranged}}})
        return branches[0] if len(branches) == 1 else {"anyOf": branches}

    def _patchable(self) -> list[str]:
        if self.workspace is None:
            return sorted(self.guard.read)
        return [p for p in sorted(self.guard.read) if self.workspace.is_writable(p)]

    def on_tool_end(self, agent: Agent, call: Any, output: str) -> None:
        if output.startswith("error") and call.name != "run_tests":
            self.guard.rest(call.name)  # a failed call is not retried the very next turn

    def allowed_tools(self, agent: Agent, turn: int) -> list[str] | None:
        names = [t.name for t in agent.tools]
        if not self._patchable():  # nothing read that patch_file may change: it cannot be used yet
            names = [n for n in names if n != "patch_file"]
        allowed = [n for n in names if not self.guard.exhausted(n)]
        if not allowed:  # every tool rests: let them try again, but not the one that just failed
            allowed = [n for n in names if not self.guard.exhausted(n, resting=False)]
            allowed = [n for n in allowed if n != self.guard.last_failed] or allowed
        return allowed or names


def patchable_lines(text: str, *, longest: int = 200, most: int = 300) -> list[str]:
    """The lines of a file's `text` that patch_file could take as `old`, without their indentation.

    Only lines that are not blank and whose text occurs once in the file (so the patch
    applies); the indentation stays where it is, and `new` replaces what follows it.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip() and len(line) <= longest]
    return [line for line in dict.fromkeys(lines) if text.count(line) == 1][:most]


@dataclass
class DemoResult:
    """What a demo run did (also printed as the last JSON line)."""

    session_id: str
    store: str
    workspace: str
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    tokens_before: list[int] = field(default_factory=list)
    tokens_after: list[int] = field(default_factory=list)
    compaction_seconds: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    peak_physical_tokens: int = 0  # physical KV size when a compaction was triggered (0: none was)
    tests_pass: bool = False
    finished: bool = False
    seconds: float = 0.0

    @property
    def compactions(self) -> int:
        return len(self.tokens_before)

    def to_dict(self) -> dict:
        return {**self.__dict__, "compactions": self.compactions}


def prepare(workspace_dir: Path, store: Path, *, resume: bool, fresh: bool) -> tuple[Workspace, str | None]:
    """The workspace to use and the session id to resume (None for a new session)."""
    marker = workspace_dir / MARKER
    if workspace_dir.exists() and any(workspace_dir.iterdir()):
        if not marker.exists():
            raise ConfigError(f"{workspace_dir} exists and was not made by the demo; pass another --workspace")
        info = json.loads(marker.read_text())
        if resume:
            if Path(info["store"]) != store.resolve():
                raise ConfigError(f"{workspace_dir} belongs to the store {info['store']}; pass --store with it")
            return Workspace(workspace_dir, read_only=READ_ONLY), info["session_id"]
        if not fresh:
            raise ConfigError(f"{workspace_dir} holds an earlier demo run: pass --resume to continue it "
                              "or --fresh to start over")
        import shutil

        shutil.rmtree(workspace_dir)
    elif resume:
        raise ConfigError(f"nothing to resume: {workspace_dir} does not exist; run without --resume first")
    return Workspace.from_template(SAMPLE_PROJECT, workspace_dir, read_only=READ_ONLY), None


def run(*, model: Any = DEMO_MODEL, workspace_dir: Path = Path("agentmem-demo"),
        store: Path = Path("agentmem-demo.db"), limit: int = 1536, ratio: float = 4.0, method: str = "am-fast",
        max_turns: int = 40, temperature: float = 0.2, seed: int = 0, resume: bool = False, fresh: bool = False,
        console: TextIO | None = None) -> DemoResult:
    """Run (or resume) the coding agent on the sample project and report what happened.

    `model` is a built-in name, HF id or path (loaded with the sampler `seed`), or a model
    object the agent SDK takes (e.g. a `LocalModel`, which brings its own seed).
    """
    out = _Console(console)
    if isinstance(model, str):
        model = LocalModel(model, seed=seed)
    policy = demo_policy(limit, ratio, method)  # bad options fail before anything is written
    workspace, session_id = prepare(Path(workspace_dir), Path(store), resume=resume, fresh=fresh)
    agent = build_agent(workspace, model=model, policy=policy, temperature=temperature)
    # a new id for every fresh run, two in one second too (the same id would append to the old history)
    session = SQLiteSession(session_id or f"demo-{int(time.time())}-{secrets.token_hex(4)}", db_path=str(store))
    (workspace.root / MARKER).write_text(json.dumps({"store": str(Path(store).resolve()),
                                                     "session_id": session.session_id}))
    result = DemoResult(session_id=session.session_id, store=str(store), workspace=str(workspace.root))
    out.line(f"workspace {workspace.root}  |  store {store} (session {session.session_id})")
    out.line(f"model {getattr(agent.model, 'name', agent.model)}  |  KV limit {limit} tokens, compaction "
             f"x{ratio:g} ({method}), at most {max_turns} turns")
    task = "Continue: the tests still need to pass." if session_id else TASK
    solve(agent, workspace, session, task, max_turns=max_turns, result=result, console=out)
    share = result.compaction_seconds / max(result.seconds, 1e-9)
    out.line(f"result: tests {'pass' if result.tests_pass else 'still fail'}; {result.turns} turns, "
             f"{result.tool_calls} tool calls ({result.tool_errors} refused or failed), {result.compactions} "
             f"compaction{'' if result.compactions == 1 else 's'} ({result.compaction_seconds:.0f} s, {share:.0%} "
             f"of the run), {result.seconds:.0f} s")
    peak = f"; KV reached the {limit}-token limit at {result.peak_physical_tokens}" if result.compactions else ""
    out.line(f"tokens: {result.prompt_tokens} prefilled, {result.cached_tokens} reused from the KV cache, "
             f"{result.completion_tokens} generated{peak}")
    out.line(f"continue with: agentmem demo --resume   (compaction events: table `compactions` in {store})")
    return result


def solve(agent: Agent, workspace: Workspace, session: Any, task: str, *, max_turns: int, result: DemoResult,
          console: TextIO | _Console | None = None) -> DemoResult:
    """Run `agent` on `task` until `run_tests` passes or `max_turns` replies; fills and returns `result`.

    `session` holds the conversation (an `SQLiteSession` resumes one); `console` shows each
    tool call and compaction as it happens. The tests are run once more at the end.
    """
    out = console if isinstance(console, _Console) else _Console(console)
    began = time.perf_counter()
    steer = Steer(agent.guard, workspace)
    streamed = Runner.run_streamed(agent, task, session=session, max_turns=max_turns, hooks=steer)
    try:
        for event in streamed:
            _show(event, result, out)
    except MaxTurnsExceeded:
        out.line(f"stopped after {max_turns} turns (--max-turns)")
    usage = streamed.usage
    result.prompt_tokens, result.cached_tokens = usage.prompt_tokens, usage.cached_tokens
    result.completion_tokens = usage.completion_tokens
    result.seconds = time.perf_counter() - began
    result.tests_pass = workspace.run_tests().startswith("exit code 0")
    return result


def _show(event: Any, result: DemoResult, out: _Console) -> None:
    if isinstance(event, ToolCallEvent):
        args = ", ".join(f"{k}={_short(v)}" for k, v in event.call.arguments.items())
        out.part(f"turn {event.turn:>2}  {event.call.name}({args})")
        result.tool_calls += 1
    elif isinstance(event, ToolResultEvent):
        if event.call is None:
            out.part(f"turn {event.turn:>2}  (unreadable call)")
        lines = event.output.strip().splitlines() or [""]
        note = lines[0][:70] + (f" (+{len(lines) - 1} lines)" if len(lines) > 1 else "")
        out.line(f"  -> {'error: ' if event.is_error and not note.startswith('error') else ''}{note}")
        result.tool_errors += int(event.is_error)
    elif isinstance(event, CompactionStartedEvent):
        result.peak_physical_tokens = max(result.peak_physical_tokens, event.plan.stats.physical_tokens)
        if event.vetoed:
            out.line("  compaction vetoed")
    elif isinstance(event, CompactionFinishedEvent):
        e = event.event
        result.tokens_before.append(e.tokens_before)
        result.tokens_after.append(e.tokens_after)
        result.compaction_seconds += e.seconds
        out.line(f"  compaction {result.compactions}: {e.tokens_before} -> {e.tokens_after} tokens "
                 f"({e.method} x{e.ratio:g}, {e.seconds:.1f} s, {e.status})")
    elif isinstance(event, TurnDoneEvent):
        result.turns = event.turn
    elif isinstance(event, FinalOutputEvent):
        result.finished = True
        out.line(f"finished: {_short(event.output, 200)}")


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + '..."'


class _Console:
    """Prints progress lines; `part` starts a line that the next `line` completes."""

    def __init__(self, stream: TextIO | None):
        self.stream = stream
        self.open = False

    def part(self, text: str) -> None:
        if self.stream is not None:
            if self.open:
                self.stream.write("\n")
            self.stream.write(text)
            self.stream.flush()
            self.open = True

    def line(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.open = False
