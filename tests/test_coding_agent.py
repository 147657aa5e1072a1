"""The example coding agent: its guard and steering, and whole runs on a tiny model."""

from __future__ import annotations

import json
import time

import pytest

from agentmem.agents import LocalModel
from agentmem.coding_agent import TASKS
from agentmem.coding_agent.agent import MARKER, READ_ONLY, Steer, build_agent, patchable_lines, prepare, run
from agentmem.coding_agent.tools import RepeatGuard, failing_tests, workspace_tools
from agentmem.coding_agent.workspace import Workspace, WorkspaceError
from agentmem.errors import ConfigError
from agentmem.store import Store

from conftest import tiny_chat_llama, tiny_tokenizer

TEXTSTATS = TASKS / "textstats"  # the tests below name its files and its bug


@pytest.fixture
def ws(tmp_path):
    return Workspace.from_template(TEXTSTATS, tmp_path / "project", read_only=("test_*.py",))


@pytest.fixture
def agent_ws(tmp_path):
    """The sample project as the coding agent sees it: tests and docs read-only."""
    return Workspace.from_template(TEXTSTATS, tmp_path / "agent", read_only=READ_ONLY)


def test_guard_refuses_repeats_until_what_they_show_changes():
    guard = RepeatGuard(["a.py", "b.py"])
    guard.check("read_file", {"path": "a.py"}, subject="a.py", file="a.py")
    with pytest.raises(WorkspaceError, match="already called read_file .* a.py has not changed"):
        guard.check("read_file", {"path": "a.py"}, subject="a.py", file="a.py")
    assert guard.exhausted("read_file")  # resting after the refused repeat
    assert not guard.exhausted("read_file", resting=False) and guard.unread() == {"b.py"}
    guard.check("read_file", {"path": "b.py"}, subject="b.py", file="b.py")
    guard.check("run_tests", {})
    assert guard.exhausted("read_file") and guard.exhausted("run_tests") and not guard.exhausted("search")
    guard.changed("b.py")
    assert guard.unread() == {"b.py"} and not guard.exhausted("run_tests")
    with pytest.raises(WorkspaceError, match="a.py has not changed"):  # another file's change is no news
        guard.check("read_file", {"path": "a.py"}, subject="a.py", file="a.py")
    guard.check("read_file", {"path": "b.py"}, subject="b.py", file="b.py")  # allowed again after its change
    guard.check("run_tests", {})  # any change: the tests may say something new
    assert guard.read == {"a.py", "b.py"} and not guard.unread()


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
    fix = {"path": "textstats.py", "old": "key=lambda w: counts[w])", "new": "key=lambda w: -counts[w])"}
    unread = plain["patch_file"].invoke(fix)
    assert unread.startswith("error") and "read textstats.py with read_file before" in unread
    assert "-counts[w]" not in ws.text("textstats.py")
    assert not plain["read_file"].invoke({"path": "./textstats.py"}).startswith("error")
    same = plain["patch_file"].invoke({**fix, "new": fix["old"]})  # any spelling of the path counts as read
    assert same.startswith("error") and "the same text" in same
    assert plain["patch_file"].invoke(fix) == "patched textstats.py"
    assert plain["run_tests"].invoke({}).startswith("exit code 0")


def test_patch_with_tests_after_it_succeeds_only_when_they_pass(ws):
    tools = {t.name: t for t in workspace_tools(ws, known_paths=True, test_after_patch=True)}
    tools["read_file"].invoke({"path": "textstats.py"})
    wrong = tools["patch_file"].invoke({"path": "textstats.py", "old": "return ranked[:n]",
                                        "new": "return ranked[:n + 1]"})
    assert wrong.startswith("error") and "patched textstats.py, but the tests still fail" in wrong
    assert "FAILED" in wrong and "ranked[:n + 1]" in ws.text("textstats.py")  # the patch stays
    tools["patch_file"].invoke({"path": "textstats.py", "old": "ranked[:n + 1]", "new": "ranked[:n]"})
    right = tools["patch_file"].invoke({"path": "textstats.py", "old": "key=lambda w: counts[w])",
                                        "new": "key=lambda w: -counts[w])"})
    assert right == "patched textstats.py; the tests pass"


def test_a_patch_that_helps_no_test_is_undone_when_asked(ws):
    tools = {t.name: t for t in workspace_tools(ws, known_paths=True, test_after_patch=True,
                                                undo_unless_better=True)}
    tools["read_file"].invoke({"path": "textstats.py"})
    before = ws.text("textstats.py")
    wrong = tools["patch_file"].invoke({"path": "textstats.py", "old": "return ranked[:n]",
                                        "new": "return ranked[:n + 1]"})
    assert wrong.startswith("error") and "so it was undone" in wrong and ws.text("textstats.py") == before
    again = tools["patch_file"].invoke({"path": "textstats.py", "old": "return ranked[:n]",
                                        "new": "return ranked[:n + 1]"})
    assert "undone" in again  # not refused as a repeat: nothing changed, the tests ran again
    right = tools["patch_file"].invoke({"path": "textstats.py", "old": "key=lambda w: counts[w])",
                                        "new": "key=lambda w: -counts[w])"})
    assert right == "patched textstats.py; the tests pass"


def test_failing_tests_reads_unittest_and_pytest_summaries():
    assert failing_tests("exit code 0\nOK") == 0
    assert failing_tests("exit code 1\n...\nFAILED (failures=1, errors=2)") == 3
    assert failing_tests("exit code 1\nFAILED (errors=1, skipped=4)") == 1
    assert failing_tests("exit code 1\n== 2 failed, 1 error, 3 passed in 0.1s ==") == 3
    assert failing_tests("exit code 1\nSyntaxError: invalid syntax") is None  # cannot tell: a patch is kept


def test_patchable_lines_occur_once_without_indentation():
    text = "def f(x):\n    y = x + 1\n    return y\n\ndef g(x):\n    return y\n    y = x + 1  # again\n"
    assert patchable_lines(text) == ["def f(x):", "def g(x):", "y = x + 1  # again"]
    assert patchable_lines("a = 1\n" + "b" * 300 + "\n", longest=200) == ["a = 1"]


def test_steer_leaves_out_tools_with_nothing_new(agent_ws):
    ws = agent_ws
    agent = build_agent(ws, model=LocalModel.from_pretrained(tiny_chat_llama(), tiny_tokenizer()))
    steer = Steer(agent.guard, ws)
    everything = [t.name for t in agent.tools]
    assert "write_file" not in everything and "search" not in everything
    assert steer.allowed_tools(agent, 1) == [n for n in everything if n != "patch_file"]  # nothing read yet
    agent.tool("read_file").invoke({"path": "README.md"})  # read-only for the agent: still nothing to patch
    assert "patch_file" not in steer.allowed_tools(agent, 1)
    agent.tool("read_file").invoke({"path": "textstats.py"})
    assert steer.allowed_tools(agent, 1) == everything
    agent.guard.check("list_files", {})
    assert "list_files" not in steer.allowed_tools(agent, 2)
    for name in everything:
        agent.guard.rest(name)
    assert steer.allowed_tools(agent, 3) == [n for n in everything if n not in ("list_files", everything[-1])]


def test_steer_narrows_patch_to_whole_lines_of_files_read_and_reads_to_whole_files(ws):
    agent = build_agent(ws, model=LocalModel.from_pretrained(tiny_chat_llama(), tiny_tokenizer()))
    steer = Steer(agent.guard, ws)
    patch, read = agent.tool("patch_file"), agent.tool("read_file")
    assert steer.tool_parameters(agent, 1, patch) is None  # nothing read: the tool is not allowed anyway
    whole = steer.tool_parameters(agent, 1, read)
    assert whole == {"type": "object", "properties": {"path": {"enum": ws.files()}}, "required": ["path"]}
    read.invoke({"path": "textstats.py"})
    narrowed = steer.tool_parameters(agent, 2, patch)
    assert narrowed["properties"]["path"] == {"const": "textstats.py"}
    lines = narrowed["properties"]["old"]["enum"]
    assert "ranked = sorted(counts, key=lambda w: counts[w])" in lines and "" not in lines
    assert all(ws.text("textstats.py").count(line) == 1 for line in lines)
    assert Steer(agent.guard, ws, whole_lines=False).tool_parameters(agent, 2, patch) is None
    small = Workspace.from_template(TEXTSTATS, ws.root.parent / "small", read_only=("test_*.py",), read_cap=300)
    assert steer.tool_parameters(agent, 2, read)["properties"]["path"]["enum"] == ["README.md", "test_textstats.py"]
    read.invoke({"path": "README.md"})
    read.invoke({"path": "test_textstats.py"})
    again = steer.tool_parameters(agent, 3, read)["properties"]["path"]["enum"]
    assert again == ws.files()  # everything read: any file (the guard refuses a repeat until a file changes)
    ranged = Steer(RepeatGuard(), small).tool_parameters(agent, 1, read)  # textstats.py is over 300 characters
    assert [set(b["properties"]) for b in ranged["anyOf"]] == [{"path"}, {"path", "start", "end"}]
    assert "textstats.py" in ranged["anyOf"][1]["properties"]["path"]["enum"]


def test_fresh_runs_in_the_same_second_get_their_own_sessions(tmp_path, monkeypatch):
    # seen in CI: ids were demo-<seconds>, so a --fresh run within the second joined the old history
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "time", lambda: 1_796_100_108.0)
    model = LocalModel.from_pretrained(tiny_chat_llama(), tiny_tokenizer(), name="tiny")
    first = run(model=model, max_turns=1, limit=8192, console=None)
    fresh = run(model=model, max_turns=1, limit=8192, fresh=True)
    assert fresh.session_id != first.session_id
    with Store(tmp_path / "agentmem-demo.db") as store:
        assert [m["role"] for m in store.messages(first.session_id)].count("assistant") == 1  # not joined


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
