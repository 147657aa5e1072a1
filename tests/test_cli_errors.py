"""The `agentmem` command on bad input and a hostile environment: one line on stderr, exit 2.

A full disk, undecodable bytes, a folder that is no model, a model that does not load, a
read-only or foreign database, escape sequences stored in a title: each gives one
`agentmem: error: ...` line (or is shown escaped) and leaves the files as they were.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import chat_json, one_error_line, run

import agentmem.loading
from agentmem.errors import ModelNotAvailableError

from conftest import tiny_chat_llama, tiny_tokenizer

REAL_LOAD = agentmem.loading.load_model


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The built-in model loads as the tiny chat Llama, other names as the real loader would
    (offline: `nosuch/model` fails); returns the names asked for. Works in a fresh tmp_path."""
    asked: list[str] = []

    def fake_load(name: str, **kwargs):
        asked.append(name)
        if name == "smollm2-135m":
            return tiny_chat_llama(), tiny_tokenizer()
        if name == "nosuch/model":
            raise ModelNotAvailableError("cannot load 'nosuch/model': We couldn't connect to the hub.\n"
                                         "Check your internet connection.")
        return REAL_LOAD(name, **kwargs)

    monkeypatch.setattr(agentmem.loading, "load_model", fake_load)
    monkeypatch.chdir(tmp_path)
    return asked


def stdin_bytes(monkeypatch: pytest.MonkeyPatch, data: bytes, errors: str = "strict") -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors=errors))


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------- B: output, input, model


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_export_to_a_full_disk_is_one_line(loads: list[str], capsys: pytest.CaptureFixture) -> None:
    session = chat_json(capsys, "--message", "hi")["session_id"]
    code, _, err = run(capsys, "sessions", "export", session, "--out", "/dev/full")
    assert code == 2 and "No space left on device: /dev/full" in one_error_line(err)


class _FullDisk(io.RawIOBase):
    """A file on a full disk (until `full` is cleared, so the test can close it)."""

    full = True

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.full:
            raise OSError(28, "No space left on device")
        return len(data)


def test_stdout_on_a_full_disk_is_one_line(loads: list[str], capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    session = chat_json(capsys, "--message", "hi")["session_id"]
    for argv in (["sessions", "list"], ["sessions", "export", session], ["sessions", "show", session]):
        disk = _FullDisk()
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(disk), encoding="utf-8"))
        code, _, err = run(capsys, *argv)
        disk.full = False
        assert code == 2 and "cannot write to stdout: No space left on device" in one_error_line(err)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_stdout_redirected_to_dev_full_exits_2_with_one_line(loads: list[str], capsys: pytest.CaptureFixture,
                                                             tmp_path: Path) -> None:
    """A real process: the interpreter's own flush at exit must not add a second error."""
    session = chat_json(capsys, "--message", "hi")["session_id"]
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "agentmem.cli", "sessions", "export", session], cwd=tmp_path,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "No space left on device" in one_error_line(done.stderr)


def test_a_policy_file_that_is_not_utf8_is_one_line(loads: list[str], capsys: pytest.CaptureFixture,
                                                   tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b"ratio = 5\n# caf\xe9\n")
    code, _, err = run(capsys, "chat", "--policy", "bad.toml", "--message", "hi")
    assert code == 2 and "policy file bad.toml is not UTF-8 text" in one_error_line(err)
    assert loads == [] and not (tmp_path / "agentmem.db").exists()


@pytest.mark.parametrize("option", ["--message", "--system", "--title"])
def test_undecodable_argv_text_is_one_line(loads: list[str], capsys: pytest.CaptureFixture, tmp_path: Path,
                                           option: str) -> None:
    text = b"hi \xff there".decode("utf-8", "surrogateescape")  # how Python hands over bad argv bytes
    argv = [option, text] + ([] if option == "--message" else ["--message", "hi"])
    code, _, err = run(capsys, "chat", "--max-new-tokens", "3", *argv)
    assert code == 2 and f"{option} is not valid UTF-8 text (byte 0xff at character 3)" in one_error_line(err)
    assert loads == [] and not (tmp_path / "agentmem.db").exists()


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])
def test_undecodable_stdin_message_is_one_line(loads: list[str], capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch, errors: str) -> None:
    stdin_bytes(monkeypatch, b"hi \xff there", errors)
    code, _, err = run(capsys, "chat", "--message", "-", "--max-new-tokens", "3")
    assert code == 2 and "stdin is not valid UTF-8 text" in one_error_line(err)
    assert loads == []


def test_an_undecodable_line_in_an_interactive_chat_is_skipped(loads: list[str], capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    stdin_bytes(monkeypatch, b"hi \xff there\nhello\n/quit\n")
    code, _, err = run(capsys, "chat", "--max-new-tokens", "3")
    assert code == 0 and "Traceback" not in err
    assert "error: the line is not valid UTF-8 text (byte 0xff at character 3); it was not sent" in err
    session = err.split("saved; continue with: agentmem chat --session ", 1)[1].split()[0]
    code, out, _ = run(capsys, "sessions", "export", session)
    assert [m["content"] for m in json.loads(out)["messages"] if m["role"] == "user"] == ["hello"]


def test_a_model_folder_without_config_is_one_line(loads: list[str], capsys: pytest.CaptureFixture,
                                                  tmp_path: Path) -> None:
    (tmp_path / "some" / "dir").mkdir(parents=True)
    code, _, err = run(capsys, "chat", "--model", "some/dir", "--message", "hi")
    assert code == 2 and "some/dir is a folder without config.json" in one_error_line(err)
    (tmp_path / "some" / "dir" / "config.json").write_text("{}")  # a config transformers cannot read
    code, _, err = run(capsys, "chat", "--model", "some/dir", "--message", "hi")
    assert code == 2 and "cannot load the model in some/dir" in one_error_line(err)
    assert not (tmp_path / "agentmem.db").exists()


@pytest.mark.parametrize("store", [None, "new/s.db"])
def test_a_model_that_does_not_load_leaves_no_database(loads: list[str], capsys: pytest.CaptureFixture,
                                                      tmp_path: Path, store: str | None) -> None:
    argv = ["chat", "--model", "nosuch/model", "--message", "hi"] + (["--store", store] if store else [])
    code, _, err = run(capsys, *argv)
    line = one_error_line(err)  # the two-line message arrives as one line
    assert code == 2 and "cannot load 'nosuch/model'" in line and "Check your internet connection" in line
    assert loads == ["nosuch/model"]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- C: read-only commands


def foreign_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foo (x INTEGER)")
    conn.execute("INSERT INTO foo VALUES (1)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("argv", [["sessions", "list"], ["sessions", "show", "x"], ["sessions", "export", "x"],
                                  ["sessions", "delete", "x", "--yes"], ["chat", "--message", "hi"]])
def test_another_programs_database_is_left_byte_identical(loads: list[str], capsys: pytest.CaptureFixture,
                                                          tmp_path: Path, argv: list[str]) -> None:
    foreign_database(tmp_path / "other.db")
    before = files(tmp_path)
    code, _, err = run(capsys, *argv, "--store", "other.db")
    assert code == 2 and "SQLite database of another program (tables: foo)" in one_error_line(err)
    assert files(tmp_path) == before and loads == []


def test_reading_an_older_store_does_not_migrate_it(loads: list[str], capsys: pytest.CaptureFixture,
                                                   tmp_path: Path) -> None:
    """list/show/export open with mode=ro: an older schema is read as it is, not migrated, not switched to WAL."""
    from sqlite_utils import Database

    from agentmem import schema

    db = Database(tmp_path / "old.db")
    schema.migrate(db, schema.MIGRATIONS[:3])  # an agentmem store from before m004, in rollback-journal mode
    db.execute("INSERT INTO sessions (id, title, model, fingerprint, turns, created_at, updated_at) VALUES "
               "('s1', 'old one', 'smollm2-135m', 'f', 0, '2025-01-01T00:00:00', '2025-01-01T00:00:00')")
    db.conn.commit()
    db.conn.close()
    before = files(tmp_path)
    for argv in (["sessions", "list"], ["sessions", "show", "s1"], ["sessions", "export", "s1"]):
        code, out, err = run(capsys, *argv, "--store", "old.db")
        assert code == 0 and "s1" in out, err
    assert files(tmp_path) == before


def _read_only_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new SQLite connection refuses writes, as SQLite does for a file it cannot write
    (a chmod 0444 file can be written by root, so the tests cannot rely on chmod)."""
    real = sqlite3.connect

    def connect(*args, **kwargs):
        conn = real(*args, **kwargs)
        conn.execute("PRAGMA query_only = ON")
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)


@pytest.mark.parametrize("resume", [False, True])
def test_chat_on_a_read_only_database_fails_before_loading_the_model(loads: list[str], capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   resume: bool) -> None:
    session = chat_json(capsys, "--message", "hi")["session_id"]
    loads.clear()
    before = files(tmp_path)
    _read_only_sqlite(monkeypatch)
    argv = ["chat", "--message", "again"] + (["--session", session] if resume else [])
    code, out, err = run(capsys, *argv)
    assert code == 2 and "cannot write the session database agentmem.db" in one_error_line(err)
    assert loads == [] and out == ""  # no model loaded, no reply generated
    assert files(tmp_path)["agentmem.db"] == before["agentmem.db"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes a 0444 file anyway")
def test_chat_on_a_chmod_0444_database_fails_before_loading_the_model(loads: list[str],
                                                                     capsys: pytest.CaptureFixture,
                                                                     tmp_path: Path) -> None:
    chat_json(capsys, "--message", "hi")
    loads.clear()
    (tmp_path / "agentmem.db").chmod(0o444)
    code, _, err = run(capsys, "chat", "--message", "again")
    assert code == 2 and "cannot write the session database" in one_error_line(err) and loads == []


def test_a_new_database_in_a_folder_that_cannot_be_written_fails_first(loads: list[str],
                                                                       capsys: pytest.CaptureFixture,
                                                                       tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    code, _, err = run(capsys, "chat", "--message", "hi", "--store", "file/s.db")
    assert code == 2 and "cannot create the session database file/s.db" in one_error_line(err) and loads == []


TITLE = "\x1b[31mred\x1b]0;pwned\x07 \u202etxt.exe\x9b2J"


def test_text_from_the_database_is_printed_escaped(loads: list[str], capsys: pytest.CaptureFixture) -> None:
    message = "clear \x1b[2J screen\r\nnext line"
    session = chat_json(capsys, "--message", message, "--title", TITLE)["session_id"]
    code, out, _ = run(capsys, "sessions", "list")
    assert code == 0 and "\\x1b[31mred\\x1b]0;pwned\\x07 \\..." in out  # clipped to 32 characters
    code, short, _ = run(capsys, "sessions", "show", session)
    code, full, _ = run(capsys, "sessions", "show", session, "--full")
    assert "\\x1b[31mred\\x1b]0;pwned\\x07 \\u202etxt.exe\\x9b2J" in short
    assert "clear \\x1b[2J screen next line" in short
    assert "clear \\x1b[2J screen\\r\nnext line" in full  # --full keeps the line break, shows the \r
    for text in (out, short, full):
        assert not any(c in text for c in "\x1b\x07\x9b\r\u202e"), text


# ----------------------------------------------------------------------------- D: the resume hint


@pytest.mark.parametrize("store, shown", [
    (None, ""),
    ("agentmem.db", ""),
    ("other.db", " --store other.db"),
    ("my dir/s b.db", " --store 'my dir/s b.db'"),
])
def test_the_resume_hint_names_a_non_default_store(loads: list[str], capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch, store: str | None,
                                                   shown: str) -> None:
    option = ["--store", store] if store else []
    code, _, err = run(capsys, "chat", "--max-new-tokens", "3", "--message", "hi", *option)
    session = err.split("continue with: agentmem chat --session ", 1)[1].split()[0].rstrip(")")
    assert code == 0 and f"continue with: agentmem chat --session {session}{shown})" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    code, _, err = run(capsys, "chat", "--max-new-tokens", "3", "--session", session, *option)
    assert code == 0 and err.strip().endswith(f"continue with: agentmem chat --session {session}{shown}")
