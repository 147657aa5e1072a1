"""`agentmem bench agent`: the bundled coding tasks, and whole runs per memory mode on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agentmem.agents import ScriptedModel
from agentmem.bench import agent as bench
from agentmem.cli import main
from agentmem.coding_agent import TASKS
from agentmem.coding_agent.agent import READ_ONLY, DemoResult, build_agent, solve
from agentmem.coding_agent.workspace import Workspace
from agentmem.errors import ConfigError

from conftest import tiny_chat_llama, tiny_tokenizer


def _tests_pass(folder) -> bool:
    done = subprocess.run([sys.executable, "-m", "unittest", "-q"], cwd=folder, capture_output=True, text=True,
                          timeout=60)
    return done.returncode == 0


@pytest.mark.parametrize("task", bench.tasks(), ids=lambda t: t.name)
def test_every_task_fails_as_shipped_and_passes_after_its_one_line_fix(task, tmp_path):
    listed = json.loads((TASKS / "tasks.json").read_text())[task.name]
    copy = Workspace.from_template(task.path, tmp_path / task.name).root
    assert not _tests_pass(copy)
    fix = listed["fix"]
    source = (copy / fix["path"]).read_text()
    assert source.count(fix["old"]) == 1
    (copy / fix["path"]).write_text(source.replace(fix["old"], fix["new"]))
    assert _tests_pass(copy)
    assert (copy / "README.md").exists() and task.task


def test_the_fact_tasks_need_a_file_the_failure_does_not_quote(tmp_path):
    listed = json.loads((TASKS / "tasks.json").read_text())
    facts = [t for t in bench.tasks() if t.needs_fact]
    assert len(facts) >= 4
    for task in facts:
        where, fact = task.needs_fact.split(":")[0], listed[task.name]["fact"]
        assert (task.path / where).exists() and where in task.task  # the task says to read it first
        assert fact in (task.path / where).read_text()
        copy = Workspace.from_template(task.path, tmp_path / task.name).root
        failure = subprocess.run([sys.executable, "-m", "unittest", "-q"], cwd=copy, capture_output=True,
                                 text=True, timeout=60).stderr
        assert "FAILED" in failure and fact not in failure  # only the file read earlier holds it
        assert all(fact not in f.read_text() for f in copy.glob("*.py"))  # nor does the code


def test_solve_reports_a_fixed_bug(tmp_path):
    task = bench.tasks(["pagination"])[0]
    workspace = Workspace.from_template(task.path, tmp_path / "w", read_only=READ_ONLY)
    model = ScriptedModel([ScriptedModel.call("read_file", path="pages.py"),
                           ScriptedModel.call("patch_file", path="pages.py", old="first = number * size",
                                              new="first = (number - 1) * size"),
                           ScriptedModel.call("run_tests")])
    agent = build_agent(workspace, model=model, policy="off")
    result = solve(agent, workspace, None, task.task, max_turns=5,
                   result=DemoResult(session_id="s", store="", workspace=str(workspace.root)))
    assert result.tests_pass and result.finished and result.turns == 2 and result.tool_errors == 0  # ends at the fix


def test_runs_cover_every_mode_and_the_limited_ones_compact(tmp_path):
    modes = ["full", "am-fast", "summary", "drop-oldest"]
    result = bench.run(tiny_chat_llama(), tiny_tokenizer(), name="tiny", task_names=["pagination"], modes=modes,
                       limit=2600, max_turns=6, max_new_tokens=24, workdir=tmp_path,
                       transcripts=tmp_path / "runs")
    rows = {r["mode"]: r for r in result["rows"]}
    for mode in modes:  # one transcript per run: its calls, and the limited modes' compactions
        transcript = (tmp_path / "runs" / f"pagination-{mode}-0.txt").read_text()
        assert transcript.count("turn ") == 6 and transcript.rstrip().endswith("tests pass: False")
        assert ("compact" in transcript) == (mode != "full")
    assert list(rows) == modes and all(r["turns"] == 6 for r in rows.values())
    assert rows["full"]["compactions"] == 0 and rows["full"]["peak_kv_tokens"] > 2600
    for mode in modes[1:]:
        assert rows[mode]["compactions"] >= 2 and rows[mode]["peak_kv_tokens"] <= 2600 + 24
        assert rows[mode]["cached_tokens"] > rows[mode]["prompt_tokens"]  # turns reuse the cache
    assert result["summary"]["full"]["runs"] == 1 and not any(r["tests_pass"] for r in rows.values())
    text = bench.table(result)
    assert all(mode in text for mode in modes)
    assert bench.plot(result, tmp_path / "agent.png").stat().st_size > 0
    line = json.loads(bench.summary_line(result))
    assert line["bench"] == "agent" and line["modes"] == modes and set(line["results"]) == set(modes)
    assert not list(tmp_path.glob("agentmem-bench-agent-*"))  # the scratch copies are removed


def test_bad_settings_are_refused_before_the_model_loads(no_model_load, capsys):
    with pytest.raises(ConfigError, match="unknown mode"):
        bench.check_args(modes=["am", "lru"], limit=2048, seeds=1, max_turns=5)
    with pytest.raises(ConfigError, match="unknown task"):
        bench.tasks(["nope"])
    assert main(["bench", "agent", "--tasks", "nope"]) != 0
    assert "unknown task" in capsys.readouterr().err
    assert main(["bench", "agent", "--modes", "lru"]) != 0
    assert main(["bench", "agent", "--limit", "10"]) != 0


def test_again_reaches_the_policy_and_the_table():
    from agentmem.coding_agent.agent import demo_policy

    assert demo_policy(2048, 3, "am-fast").ratio.again is None  # x3, x9, ... by default
    assert demo_policy(2048, 3, "am-fast", again=1).ratio.again == 1.0  # each turn compacted once
    result = {"settings": {"model": "m", "tasks": ["t"], "seeds": 1, "limit": 1024, "ratio": 3.0, "again": 1.0,
                           "max_turns": 5}, "summary": {}, "rows": []}
    assert "x3 (x1 for a turn compacted before)" in bench.table(result)


def test_a_bad_again_is_refused_before_the_model_loads(no_model_load, capsys):
    assert main(["bench", "agent", "--again", "0.5"]) != 0
    assert "--again: must be a finite number >= 1" in capsys.readouterr().err
