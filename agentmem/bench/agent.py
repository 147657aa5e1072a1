"""`agentmem bench agent`: does the coding agent still finish its tasks when its memory is compacted?

The example coding agent (`agentmem.coding_agent`) works on each bundled task (a small
project whose tests fail; `coding_agent/tasks/tasks.json` says what each one is) once per
memory mode and seed, under a physical KV limit low enough that a run compacts several
times. The modes:

- `full`: no limit (the reference);
- `am`, `am-fast`: Attention Matching;
- `streaming`: attention sinks + the most recent tokens of each compacted span;
- `drop-oldest`: the most recent tokens of each span (`truncate`): the oldest go;
- `summary`: the model summarises the span in text, whose tokens replace it (as
  auto-compact and summarisation middleware do).

Every limited mode shares the policy (what is pinned, the ratio, the protected tail), so
they differ only in what a compacted span keeps. Reports success (the tests pass at the
end), turns, tokens prefilled and reused, peak physical KV, compaction seconds and wall
time per run and per mode.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..agents import LocalModel, MemorySession
from ..errors import ConfigError

MODES = {"full": None, "am": "am", "am-fast": "am-fast", "streaming": "streaming", "drop-oldest": "truncate",
         "summary": "summary"}  # mode -> compaction method (None: no limit)


@dataclass(frozen=True)
class Task:
    """One bundled coding task: a project folder whose tests fail, and what the agent is told."""

    name: str
    path: Path
    task: str  # the user message that starts the run
    bug: str
    needs_fact: str | None  # a fact read early that the fix needs (a config value, a README rule)


def tasks(names: Sequence[str] | None = None) -> list[Task]:
    """The bundled tasks (all, or those named, in the order given)."""
    from ..coding_agent import TASKS

    listed = json.loads((TASKS / "tasks.json").read_text())
    names = list(names) if names else list(listed)
    unknown = [n for n in names if n not in listed]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(listed)}")
    return [Task(n, TASKS / n, listed[n]["task"], listed[n]["bug"], listed[n]["needs_fact"]) for n in names]


def check_args(*, modes: Sequence[str], limit: int, seeds: int, max_turns: int) -> None:
    """Refuse bad settings before any model loads."""
    from ..coding_agent import MIN_LIMIT

    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if limit < MIN_LIMIT:
        raise ConfigError(f"--limit {limit} is too small for the agent's prompt; use {MIN_LIMIT} or more")
    if seeds < 1 or max_turns < 1:
        raise ConfigError("--seeds and --max-turns must be at least 1")


class _Watched(LocalModel):
    """A LocalModel that keeps the engine sessions it opens, to read their KV size."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sessions: list = []

    def open(self, **kwargs):
        session = super().open(**kwargs)
        self.sessions.append(session)
        return session


def run(model, tokenizer, *, name: str = "model", task_names: Sequence[str] | None = None,
        modes: Sequence[str] = tuple(MODES), limit: int = 1536, ratio: float = 4.0,
        again: float | None = None, max_turns: int = 20,
        seeds: int = 1, temperature: float = 0.2, max_new_tokens: int = 160,
        progress: Callable[[str], None] | None = None, workdir: Path | None = None,
        transcripts: Path | None = None) -> dict:
    """Every task x mode x seed; returns `{"settings", "rows", "summary"}` (`summary` per mode).

    `transcripts`: a folder that gets each run's calls and compactions as
    `TASK-MODE-SEED.txt` (what the coding agent's console shows), to read why a run failed.
    """
    check_args(modes=modes, limit=limit, seeds=seeds, max_turns=max_turns)
    if transcripts is not None:
        Path(transcripts).mkdir(parents=True, exist_ok=True)
    chosen = tasks(task_names)
    say = progress or (lambda _: None)
    settings = dict(model=name, tasks=[t.name for t in chosen], modes=list(modes), limit=limit, ratio=ratio,
                    again=again, max_turns=max_turns, seeds=seeds, temperature=temperature,
                    max_new_tokens=max_new_tokens)
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="agentmem-bench-agent-", dir=workdir))
    try:
        for task in chosen:
            for mode in modes:
                for seed in range(seeds):
                    row = attempt(model, tokenizer, task, mode, name=name, limit=limit, ratio=ratio, again=again,
                                  max_turns=max_turns, seed=seed, temperature=temperature,
                                  max_new_tokens=max_new_tokens, scratch=scratch, transcripts=transcripts)
                    rows.append(row)
                    say(f"{task.name:<12} {mode:<12} seed {seed}: {'PASS' if row['tests_pass'] else 'fail'} "
                        f"in {row['turns']} turns, {row['compactions']} compactions, {row['seconds']:.0f} s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"settings": settings, "rows": rows, "summary": summarise(rows, modes)}


def attempt(model, tokenizer, task: Task, mode: str, *, name: str, limit: int, ratio: float,
            again: float | None = None, max_turns: int,
            seed: int, temperature: float, max_new_tokens: int, scratch: Path,
            transcripts: Path | None = None) -> dict:
    """One run of the coding agent on a fresh copy of `task` in memory mode `mode`."""
    from ..coding_agent.agent import READ_ONLY, DemoResult, build_agent, demo_policy, solve
    from ..coding_agent.workspace import Workspace

    workspace = Workspace.from_template(task.path, scratch / f"{task.name}-{mode}-{seed}", read_only=READ_ONLY)
    policy = "off" if MODES[mode] is None else demo_policy(limit, ratio, MODES[mode], again)
    local = _Watched.from_pretrained(model, tokenizer, name=name, seed=seed)
    agent = build_agent(workspace, model=local, policy=policy, temperature=temperature,
                        max_new_tokens=max_new_tokens)
    result = DemoResult(session_id=f"{task.name}-{mode}-{seed}", store="", workspace=str(workspace.root))
    with contextlib.ExitStack() as stack:
        console = None
        if transcripts is not None:
            console = stack.enter_context(open(Path(transcripts) / f"{task.name}-{mode}-{seed}.txt", "w",
                                               encoding="utf-8"))
            console.write(f"{task.name}, mode {mode}, seed {seed}, KV limit {limit}, x{ratio:g}\n")
            stack.callback(lambda: console.write(f"\ntests pass: {result.tests_pass}\n"))
        solve(agent, workspace, MemorySession(), task.task, max_turns=max_turns, result=result, console=console)
    end_kv = max((s.stats().physical_tokens for s in local.sessions), default=0)
    return {"task": task.name, "mode": mode, "seed": seed, "tests_pass": result.tests_pass,
            "turns": result.turns, "tool_calls": result.tool_calls, "tool_errors": result.tool_errors,
            "compactions": result.compactions, "compaction_seconds": result.compaction_seconds,
            "prompt_tokens": result.prompt_tokens, "cached_tokens": result.cached_tokens,
            "completion_tokens": result.completion_tokens,
            "peak_kv_tokens": max(result.peak_physical_tokens, end_kv), "seconds": result.seconds}


def summarise(rows: list[dict], modes: Sequence[str]) -> dict:
    """Per mode: successes out of runs, and the means of the other columns."""
    out = {}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        n = len(mine)
        out[mode] = {"passed": sum(r["tests_pass"] for r in mine), "runs": n,
                     "success": sum(r["tests_pass"] for r in mine) / n,
                     **{key: sum(r[key] for r in mine) / n
                        for key in ("turns", "compactions", "prompt_tokens", "cached_tokens", "peak_kv_tokens",
                                    "compaction_seconds", "seconds")}}
    return out


def table(result: dict) -> str:
    """The per-mode table, then one line per run."""
    s = result["settings"]
    lines = [f"{s['model']}: {len(s['tasks'])} tasks x {s['seeds']} seed(s), KV limit {s['limit']} tokens, "
             f"x{s['ratio']:g}{_again(s)}, at most {s['max_turns']} turns",
             f"{'mode':<12} {'success':>9} {'turns':>6} {'compact':>8} {'prefilled':>10} {'reused':>9} "
             f"{'peak KV':>8} {'compact s':>10} {'wall s':>7}",
             "-" * 86]
    for mode, m in result["summary"].items():
        lines.append(f"{mode:<12} {m['passed']:>4}/{m['runs']:<4} {m['turns']:>6.1f} {m['compactions']:>8.1f} "
                     f"{m['prompt_tokens']:>10.0f} {m['cached_tokens']:>9.0f} {m['peak_kv_tokens']:>8.0f} "
                     f"{m['compaction_seconds']:>10.1f} {m['seconds']:>7.0f}")
    lines.append("")
    lines.append(f"{'task':<12} {'mode':<12} {'seed':>4} {'tests':>6} {'turns':>6} {'compact':>8} {'wall s':>7}")
    for r in result["rows"]:
        lines.append(f"{r['task']:<12} {r['mode']:<12} {r['seed']:>4} {'pass' if r['tests_pass'] else 'fail':>6} "
                     f"{r['turns']:>6} {r['compactions']:>8} {r['seconds']:>7.0f}")
    return "\n".join(lines)


def _again(settings: dict) -> str:
    again = settings.get("again")
    return "" if again is None else f" (x{again:g} for a turn compacted before)"


def plot(result: dict, path: Path) -> Path:
    """Success rate and mean wall time per mode, side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    modes = list(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(modes, [100 * summary[m]["success"] for m in modes], color="tab:blue")
    for i, m in enumerate(modes):  # the count says it where a bar has no height
        left.text(i, 100 * summary[m]["success"] + 2, f"{summary[m]['passed']}/{summary[m]['runs']}", ha="center")
    left.set_ylabel("tasks whose tests pass (%)")
    left.set_ylim(0, 100)
    right.bar(modes, [summary[m]["seconds"] for m in modes], color="tab:gray", label="run")
    right.bar(modes, [summary[m]["compaction_seconds"] for m in modes], color="tab:orange", label="compaction")
    right.set_ylabel("seconds per run (mean)")
    right.legend()
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30)
    s = result["settings"]
    fig.suptitle(f"{s['model']}: coding tasks under a {s['limit']}-token KV limit (x{s['ratio']:g}{_again(s)})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_line(result: dict) -> str:
    """The one JSON line: settings and per-mode figures."""
    return json.dumps({"bench": "agent", **result["settings"], "results": result["summary"]})
