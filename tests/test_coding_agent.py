"""The example coding agent: its guard and steering, and whole runs on a tiny model."""

from __future__ import annotations

import json

import pytest

from agentmem.agents import LocalModel
from agentmem.coding_agent import SAMPLE_PROJECT
from agentmem.coding_agent.agent import MARKER, Steer, build_agent, prepare, run
from agentmem.coding_agent.tools import RepeatGuard, workspace_tools
from agentmem.coding_agent.workspace import Workspace, WorkspaceError
from agentmem.errors import ConfigError
from agentmem.store import Store

from conftest import tiny_chat_llama, tiny_tokenizer


@pytest.fixture
def ws(tmp_path):
    return Workspace.from_template(SAMPLE_PROJECT, tmp_path / "project", read_only=("test_*.py",))


def test_guard_refuses_repeats_until_a_file_changes():
    guard = RepeatGuard(["a.py", "b.py"])
    guard.check("read_file", {"path": "a.py"}, subject="a.py")
    with pytest.raises(WorkspaceError, match="already called"):
        guard.check("read_file", {"path": "a.py"}, subject="a.py")
    assert guard.exhausted("read_file")  # resting after the refused repeat
    assert not guard.exhausted("read_file", resting=False)  # b.py is still unread
    guard.check("read_file", {"path": "b.py"}, subject="b.py")
    assert guard.exhausted("read_file") and not guard.exhausted("search")
    guard.changed()
    assert not guard.exhausted("read_file")
    guard.check("read_file", {"path": "a.py"}, subject="a.py")  # allowed again after a change


def test_tools_type_paths_and_protect_tests(ws):
    tools = {t.name: t for t in workspace_tools(ws, known_paths=True)}
    assert tools["read_file"].parameters["properties"]["path"]["enum"] == ["README.md", "test_textstats.py",
                                                                          "textstats.py"]
    assert tools["patch_file"].parameters["properties"]["path"]["enum"] == ["README.md", "textstats.py"]
    refused = tools["patch_file"].invoke({"path": "test_textstats.py", "old": "x", "new": "y"})
    assert refused.startswith("error: invalid arguments")  # not in the enum
    plain = {t.name: t for t in workspace_tools(ws)}  # without typed paths the workspace refuses it
    refused = plain["patch_file"].invoke({"path": "test_textstats.py", "old": "x", "new": "y"})
    assert refused.startswith("error") and "read-only" in refused
    failing = tools["run_tests"].invoke({})
    assert failing.startswith("error") and "tests fail" in failing
    fixed = tools["patch_file"].invoke({"path": "textstats.py", "old": "key=lambda w: counts[w])",
                                        "new": "key=lambda w: -counts[w])"})
    assert fixed == "patched textstats.py"
    assert tools["run_tests"].invoke({}).startswith("exit code 0")


def test_steer_leaves_out_tools_with_nothing_new(ws):
    agent = build_agent(ws, model=LocalModel.from_pretrained(tiny_chat_llama(), tiny_tokenizer()))
    steer = Steer(agent.guard)
    everything = [t.name for t in agent.tools]
    assert steer.allowed_tools(agent, 1) == everything and "write_file" not in everything
    agent.guard.check("list_files", {})
    assert "list_files" not in steer.allowed_tools(agent, 2)
    for name in everything:
        agent.guard.rest(name)
    assert steer.allowed_tools(agent, 3) == [n for n in everything if n not in ("list_files", everything[-1])]


def test_a_run_is_stored_and_resumes_from_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = LocalModel.from_pretrained(tiny_chat_llama(), tiny_tokenizer(), name="tiny")
    first = run(model=model, max_turns=2, limit=8192, console=None)
    assert first.turns == 2 and first.tool_calls == 2 and not first.tests_pass
    assert json.loads((tmp_path / "agentmem-demo" / MARKER).read_text())["session_id"] == first.session_id
    with Store(tmp_path / "agentmem-demo.db") as store:
        roles = [m["role"] for m in store.messages(first.session_id)]
    assert roles.count("tool") == 2 and roles.count("assistant") == 2
    with pytest.raises(ConfigError, match="--resume"):
        run(model=model, max_turns=1, limit=8192)
    again = run(model=model, max_turns=1, limit=8192, resume=True)
    assert again.session_id == first.session_id and again.cached_tokens > 0
    fresh = run(model=model, max_turns=1, limit=8192, fresh=True)
    assert fresh.session_id != first.session_id


def test_prepare_refuses_foreign_folders(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user data")
    with pytest.raises(ConfigError, match="not made by the demo"):
        prepare(tmp_path / "mine", tmp_path / "x.db", resume=False, fresh=True)
    assert (tmp_path / "mine" / "keep.txt").exists()
    with pytest.raises(ConfigError, match="nothing to resume"):
        prepare(tmp_path / "absent", tmp_path / "x.db", resume=True, fresh=False)
