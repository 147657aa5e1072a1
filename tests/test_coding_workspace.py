"""The coding agent's workspace: confinement, ranges, patches, commands with limits."""

from __future__ import annotations

import os
import sys

import pytest

from agentmem.coding_agent.workspace import Workspace, WorkspaceError, cap
from agentmem.errors import ConfigError


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("".join(f"line {n}\n" for n in range(1, 21)))
    (root / "notes.txt").write_text("alpha\nbeta\nalpha beta\n")
    (tmp_path / "secret.txt").write_text("do not read")
    return Workspace(root, timeout=5, output_cap=200)


@pytest.mark.parametrize("path", ["../secret.txt", "pkg/../../secret.txt", "/etc/passwd", "", "  "])
def test_paths_outside_are_refused(ws, path):
    with pytest.raises(WorkspaceError):
        ws.read_file(path)


def test_absolute_path_inside_is_allowed(ws):
    assert "line 1" in ws.read_file(str(ws.root / "pkg" / "mod.py"), 1, 1)


def test_symlink_escape_is_refused(ws, tmp_path):
    os.symlink(tmp_path / "secret.txt", ws.root / "link.txt")
    os.symlink(tmp_path, ws.root / "outside")
    for path in ("link.txt", "outside/secret.txt"):
        with pytest.raises(WorkspaceError, match="outside"):
            ws.read_file(path)
    with pytest.raises(WorkspaceError):
        ws.write_file("outside/new.txt", "x")
    assert not (tmp_path / "new.txt").exists()


def test_read_ranges_carry_line_numbers(ws):
    text = ws.read_file("pkg/mod.py", 3, 5)
    assert text.splitlines() == ["   3 line 3", "   4 line 4", "   5 line 5"]
    assert ws.read_file("pkg/mod.py", 19).splitlines()[-1] == "  20 line 20"
    with pytest.raises(WorkspaceError, match="past the end"):
        ws.read_file("pkg/mod.py", 50)
    with pytest.raises(WorkspaceError, match="not a file"):
        ws.read_file("missing.py")


def test_list_and_search(ws):
    listing = ws.list_files()
    assert "notes.txt" in listing and "pkg/mod.py" in listing
    assert ws.search("alpha").splitlines() == ["notes.txt:1: alpha", "notes.txt:3: alpha beta"]
    assert ws.search("line 2$", "pkg").splitlines() == ["pkg/mod.py:2: line 2"]
    assert "no match" in ws.search("gamma")
    (ws.root / "notes.txt").write_text("f(x\n")
    assert ws.search("f(").splitlines() == ["notes.txt:1: f(x"]  # an invalid regex is searched as plain text


def test_patch_needs_one_exact_match_and_write_creates(ws):
    with pytest.raises(WorkspaceError, match="occurs 2 times"):
        ws.patch_file("notes.txt", "alpha", "x")
    with pytest.raises(WorkspaceError, match="does not occur"):
        ws.patch_file("notes.txt", "gamma", "x")
    ws.patch_file("notes.txt", "alpha beta", "done")
    assert (ws.root / "notes.txt").read_text() == "alpha\nbeta\ndone\n"
    ws.write_file("new/dir/file.py", "print(1)\n")
    assert (ws.root / "new" / "dir" / "file.py").read_text() == "print(1)\n"


def test_commands_time_out_and_output_is_capped(ws):
    slow = ws.run([sys.executable, "-c", "import time; time.sleep(30)"])
    assert slow.startswith("timed out after 5s")
    loud = ws.run([sys.executable, "-c", "print('x' * 5000); raise SystemExit(3)"])
    assert loud.startswith("exit code 3") and len(loud) < 400 and "characters cut" in loud


def test_cap_keeps_head_and_tail():
    text = "H" * 100 + "T" * 100
    assert cap(text, 500) == text
    capped = cap(text, 40)
    assert capped.startswith("H" * 20) and capped.endswith("T" * 20)


def test_bad_root_and_non_empty_target(tmp_path):
    with pytest.raises(ConfigError):
        Workspace(tmp_path / "nope")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        Workspace.from_template(tmp_path, tmp_path / "full")


def test_sample_project_has_a_failing_test(tmp_path):
    from agentmem.coding_agent import SAMPLE_PROJECT

    ws = Workspace.from_template(SAMPLE_PROJECT, tmp_path / "copy")
    out = ws.run_tests()
    assert out.startswith("exit code 1") and "test_top_words_most_frequent_first" in out


def test_read_only_patterns_protect_files(ws):
    guarded = Workspace(ws.root, read_only=("pkg/*",))
    with pytest.raises(WorkspaceError, match="read-only"):
        guarded.patch_file("pkg/mod.py", "line 1\n", "x\n")
    with pytest.raises(WorkspaceError, match="read-only"):
        guarded.write_file("pkg/new.py", "x")
    assert guarded.is_writable("notes.txt") and not guarded.is_writable("pkg/mod.py")
    assert not guarded.is_writable("../outside.txt")
