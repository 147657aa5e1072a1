"""The coding agent's workspace: confinement, ranges, patches, commands with limits."""

from __future__ import annotations

import os
import sys
import threading
import time

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
    return Workspace(root, timeout=5, output_cap=200, search_timeout=1)


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
    quick = Workspace(ws.root, timeout=1, output_cap=200)
    slow = quick.run([sys.executable, "-c", "import time; time.sleep(30)"])
    assert slow.startswith("timed out after 1s")
    loud = ws.run([sys.executable, "-c", "print('x' * 5000); raise SystemExit(3)"])
    assert loud.startswith("exit code 3") and len(loud) < 400 and "cut) ..." in loud


def test_cap_keeps_head_and_tail():
    text = "H" * 100 + "T" * 100
    assert cap(text, 500) == text
    capped = cap(text, 40)
    assert capped.startswith("H" * 20) and capped.endswith("T" * 20)


def test_bad_root_and_non_empty_target(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder; create it or pass another path"):
        Workspace(tmp_path / "nope")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        Workspace.from_template(tmp_path, tmp_path / "full")


def test_sample_project_has_a_failing_test(tmp_path):
    from agentmem.coding_agent import SAMPLE_PROJECT

    ws = Workspace.from_template(SAMPLE_PROJECT, tmp_path / "copy")
    out = ws.run_tests()
    assert out.startswith("exit code 1") and "NameError" in out


def test_read_only_patterns_protect_files(ws):
    guarded = Workspace(ws.root, read_only=("pkg/*",))
    with pytest.raises(WorkspaceError, match="read-only"):
        guarded.patch_file("pkg/mod.py", "line 1\n", "x\n")
    with pytest.raises(WorkspaceError, match="read-only"):
        guarded.write_file("pkg/new.py", "x")
    assert guarded.is_writable("notes.txt") and not guarded.is_writable("pkg/mod.py")
    assert not guarded.is_writable("../outside.txt")


def test_search_and_list_skip_links_that_lead_outside(ws, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "deep.txt").write_text("root:x:0:0\n")
    (tmp_path / "secret.txt").write_text("root:x:0:0:secret\n")
    os.symlink(tmp_path / "secret.txt", ws.root / "passwd.txt")  # like `ln -s /etc/passwd passwd.txt`
    os.symlink(tmp_path / "outside", ws.root / "linked")
    os.symlink(ws.root / "notes.txt", ws.root / "inner.txt")  # a link that stays inside is fine
    found = ws.search("root:")
    assert "secret" not in found and found.startswith("no match")
    assert "passwd.txt" in found and "outside the workspace" in found  # it says what it skipped
    listing = ws.list_files()
    files, skipped = listing.split("(skipped")
    assert "passwd.txt (a link leading outside the workspace)" in skipped and "passwd.txt" not in files
    assert "passwd.txt" not in ws.files() and "inner.txt" in ws.files()
    assert ws.search("alpha beta").splitlines()[:2] == ["inner.txt:3: alpha beta", "notes.txt:3: alpha beta"]
    with pytest.raises(WorkspaceError, match="outside"):
        ws.search("root:", "passwd.txt")


def test_hard_links_are_neither_read_nor_changed(ws, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("do not read\n")
    os.link(outside, ws.root / "hard.txt")  # st_nlink 2: the same file as one outside
    for call in (lambda: ws.patch_file("hard.txt", "do not", "DID"), lambda: ws.write_file("hard.txt", "x"),
                 lambda: ws.read_file("hard.txt")):
        with pytest.raises(WorkspaceError, match="hard link"):
            call()
    assert outside.read_text() == "do not read\n"
    assert ws.search("do not").startswith("no match") and "hard.txt" in ws.search("do not")
    assert "hard.txt" not in ws.files()


def test_writes_replace_the_file_and_keep_its_mode(ws):
    target = ws.root / "notes.txt"
    target.chmod(0o640)
    before = target.stat().st_ino
    ws.patch_file("notes.txt", "alpha beta", "done")
    assert target.read_text() == "alpha\nbeta\ndone\n" and target.stat().st_mode & 0o777 == 0o640
    assert target.stat().st_ino != before  # a new file renamed over the old one: never written through a link
    assert not [p for p in ws.root.iterdir() if p.name.endswith(".tmp")]


def test_search_skips_fifos_instead_of_hanging(ws):
    os.mkfifo(ws.root / "pipe.txt")  # opening it to read would wait for a writer forever
    found = []
    searching = threading.Thread(target=lambda: found.append(ws.search("alpha")), daemon=True)
    searching.start()
    searching.join(10)
    assert found and found[0].splitlines()[:2] == ["notes.txt:1: alpha", "notes.txt:3: alpha beta"]
    with pytest.raises(WorkspaceError, match="not a regular file|not a file"):
        ws.read_file("pipe.txt")


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)+$", r"(?:a|a)+$"])
def test_search_with_a_catastrophic_pattern_ends_quickly(ws, pattern):
    # 60 a's: Python's re backtracks ~2**60 ways here and the regex module ~1.6**60 for the "|"
    # patterns, far past the deadline on any machine (30 a's finished inside 1 s on a fast one)
    (ws.root / "notes.txt").write_text("a" * 60 + "b\n")
    began = time.monotonic()
    try:
        found = ws.search(pattern)
    except WorkspaceError as exc:  # what the model sees as the tool's error
        found = str(exc)
    assert time.monotonic() - began < 5
    # the correct answer (no line ends in a run of a's), or a clear error that names the pattern
    assert found.startswith("no match") or found.startswith(f"search stopped after 1s: the pattern {pattern!r}")
    if "|" in pattern:  # these backtrack in the regex module too: the deadline ends them
        assert "takes too long" in found


def test_search_that_runs_out_of_time_keeps_what_it_found(ws):
    (ws.root / "notes.txt").write_text("aaaa\n" + "a" * 60 + "b\n")
    found = ws.search(r"(a|aa)+$")
    assert found.splitlines()[0] == "notes.txt:1: aaaa" and "search stopped after 1s" in found
