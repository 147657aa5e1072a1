"""How the coding agent runs workspace code: scrubbed environment, whole tree ended, capped output, isolation.

The limits hold in every mode, so those tests run with `sandbox="none"` everywhere and with
bubblewrap where it works; the isolation tests need bubblewrap and skip (saying why) without it.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import sys
import time
import tracemalloc

import pytest

from agentmem.coding_agent import sandbox
from agentmem.coding_agent.sandbox import Bubblewrap, CappedOutput, Unconfined, choose
from agentmem.coding_agent.tools import workspace_tools
from agentmem.coding_agent.workspace import Workspace
from agentmem.errors import ConfigError

BWRAP_PROBLEM = sandbox.bwrap_problem(shutil.which("bwrap"))
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"isolation needs bubblewrap: {BWRAP_PROBLEM}")
MODES = ["none", pytest.param("bwrap", marks=needs_bwrap)]


@pytest.fixture
def root(tmp_path):
    (tmp_path / "project").mkdir()
    return tmp_path / "project"


def python(ws: Workspace, code: str) -> str:
    return ws.run([sys.executable, "-c", code])


@pytest.mark.parametrize("mode", MODES)
def test_environment_is_scrubbed(root, mode, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-1234")
    ws = Workspace(root, sandbox=mode)
    out = python(ws, "import json, os; open(os.environ['HOME'] + '/x', 'w').write('1'); "
                     "print(json.dumps(dict(os.environ)))")
    assert out.startswith("exit code 0"), out
    env = json.loads(out.splitlines()[1])
    assert "sk-fake" not in out and "OPENAI_API_KEY" not in env
    assert set(env) <= {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "LC_CTYPE", "PWD"}
    assert env["HOME"] == env["TMPDIR"] != str(root) and "agentmem-run-" in env["HOME"]
    assert not (root.parent / env["HOME"]).exists()  # the scratch HOME is removed after the run


DETACHED = """
import os, subprocess, sys, time
late = "import os, time; open('started', 'w').close(); time.sleep({delay}); open('late', 'w').close()"
subprocess.Popen([sys.executable, "-c", late], start_new_session=True,  # a new session: out of our group
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while not os.path.exists("started"):
    time.sleep(0.01)
print("main exits"); sys.stdout.flush()
time.sleep({main_sleep})
"""


@pytest.mark.parametrize("mode", MODES)
def test_detached_children_end_with_the_run(root, mode):
    ws = Workspace(root, sandbox=mode, timeout=20)
    out = python(ws, DETACHED.format(delay=0.5, main_sleep=0))
    assert out.startswith("exit code 0") and "main exits" in out
    time.sleep(1.0)  # twice the delay: a child that survived would have written "late" by now
    assert (root / "started").exists() and not (root / "late").exists()  # it was killed before it wrote


@pytest.mark.parametrize("mode", MODES)
def test_a_timeout_ends_the_whole_tree(root, mode):
    ws = Workspace(root, sandbox=mode, timeout=1)
    began = time.monotonic()
    out = python(ws, DETACHED.format(delay=1.5, main_sleep=60))
    assert out.startswith("timed out after 1s") and "main exits" in out  # the output so far comes along
    assert time.monotonic() - began < 10
    time.sleep(1.0)  # past the delay: a child that survived would have written "late" by now
    assert (root / "started").exists() and not (root / "late").exists()


@pytest.mark.parametrize("mode", MODES)
def test_a_child_holding_stdout_does_not_turn_a_finished_run_into_a_timeout(root, mode):
    ws = Workspace(root, sandbox=mode, timeout=15)
    began = time.monotonic()
    out = python(ws, "import subprocess, sys; "
                     "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], start_new_session=True); "
                     "print('done')")
    assert out.startswith("exit code 0") and "done" in out, out
    assert time.monotonic() - began < 8


@pytest.mark.parametrize("mode", MODES)
def test_output_is_capped_while_it_streams(root, mode):
    ws = Workspace(root, sandbox=mode, timeout=60, output_cap=2000)
    flood = ("import sys\nfor _ in range(100): sys.stdout.buffer.write(b'x' * (1 << 20))\n"
             "sys.stdout.write('END')")
    tracemalloc.start()
    try:
        out = python(ws, flood)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB held for 100 MiB of output"
    assert out.startswith("exit code 0\nxxxx") and out.endswith("xxxEND") and "bytes cut" in out
    assert len(out) < 2100


def test_capped_output_keeps_head_and_tail():
    output = CappedOutput(10)
    for chunk in (b"0123456789", b"abc", b"x" * 1000, b"ZYXWVUTSRQ"):
        output.add(chunk)
    assert output.head == b"0123456789" and output.tail == b"ZYXWVUTSRQ" and output.total == 1023
    assert output.text().startswith("01234\n... (1013 bytes cut) ...\nUTSRQ")
    small = CappedOutput(10)
    small.add(b"hello")
    assert small.text() == "hello"


@needs_bwrap
def test_bwrap_keeps_files_outside_the_workspace(root, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    ws = Workspace(root, sandbox="bwrap")
    out = python(ws, f"""
import os
for name, act in [("remove", lambda: os.remove({str(outside)!r})),
                  ("system", lambda: open("/etc/agentmem-sandbox-probe", "w")),
                  ("workspace", lambda: open("made-here.txt", "w").write("ok"))]:
    try:
        act(); print(name, "ok")
    except OSError as exc:
        print(name, "refused", exc.errno)
""")
    assert out.splitlines()[1:] == ["remove refused 2", "system refused 30", "workspace ok"], out  # ENOENT, EROFS
    assert outside.read_text() == "keep me" and (root / "made-here.txt").read_text() == "ok"


@needs_bwrap
def test_bwrap_has_no_network(root):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        out = python(Workspace(root, sandbox="bwrap"), f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3); print("connected")
except OSError as exc:
    print("no network", exc.errno)
""")
        assert "no network" in out and "connected" not in out
        out = python(Workspace(root, sandbox="none"), f"import socket; socket.create_connection(('127.0.0.1', {port}))")
        assert out.startswith("exit code 0")  # the same call without the sandbox reaches the test's server


def test_modes_are_explicit(root, monkeypatch, caplog):
    with pytest.raises(ConfigError, match="auto, bwrap, none"):
        Workspace(root, sandbox="docker")
    assert Workspace(root, sandbox="none").sandbox == Unconfined()
    monkeypatch.setenv("PATH", str(root))  # no bwrap on this PATH
    with pytest.raises(ConfigError, match="not installed"):
        Workspace(root, sandbox="bwrap")  # asked for and missing: an error, not a silent fallback
    sandbox._fallback_note.cache_clear()
    with caplog.at_level(logging.WARNING, logger="agentmem.coding_agent.sandbox"):
        chosen = Workspace(root, sandbox="auto").sandbox
    assert chosen.name == "none" and chosen.note.startswith("not isolated: bubblewrap (bwrap) is not installed")
    assert [r.getMessage() for r in caplog.records] == [f"coding agent sandbox: {chosen.note}"]
    assert python(Workspace(root, sandbox="auto"), "print('ran')").startswith("exit code 0\nran")


def test_the_first_test_run_reports_a_missing_isolation(root):
    (root / "test_ok.py").write_text("import unittest\n\nclass T(unittest.TestCase):\n    def test_ok(self):\n"
                                     "        pass\n")
    ws = Workspace(root, sandbox=Unconfined(note="not isolated: no bwrap here"))
    tools = {t.name: t for t in workspace_tools(ws)}
    first = tools["run_tests"].invoke({})
    assert first.startswith("exit code 0") and first.endswith("(not isolated: no bwrap here)")
    tools["write_file"].invoke({"path": "notes.txt", "content": "x"})  # a change, so run_tests may run again
    assert "not isolated" not in tools["run_tests"].invoke({})


@needs_bwrap
def test_auto_takes_bwrap_where_it_works(root):
    assert isinstance(choose("auto"), Bubblewrap) and Workspace(root).sandbox.name == "bwrap"
