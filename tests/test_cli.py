"""The `agentmem` command, in-process on tiny random-init models (one real subprocess)."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agentmem.loading
from agentmem.cli import build_parser, main
from agentmem.cli.sessions import kv_series

from conftest import tiny_chat_llama, tiny_tokenizer

TESTS = Path(__file__).parent
SMALL_POLICY = """\
method = "am-fast"
protect_recent = 16
min_segment_tokens = 1
ratio = 4
[trigger]
kind = "tokens"
limit = 96
[pin]
kinds = ["system"]
"""


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every model the CLI loads is the tiny chat Llama; the working directory is a fresh tmp_path."""
    loads: list[str] = []

    def fake_load(name: str, **kwargs):
        loads.append(name)
        return tiny_chat_llama(), tiny_tokenizer()

    monkeypatch.setattr(agentmem.loading, "load_model", fake_load)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def chat_json(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    code, out, err = run(capsys, "chat", "--max-new-tokens", "6", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("loaded ")]  # the load report
    assert len(lines) == 1 and lines[0].startswith("agentmem: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- chat


def test_chat_message_json_shape(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    data = chat_json(capsys, "--message", "My name is Ada.")
    assert set(data) == {"reply", "session_id", "usage", "finish_reason", "compactions", "kv"}
    usage = data["usage"]
    details = usage["input_token_details"]
    assert set(details) == {"cache_read", "cache_creation"}
    assert details["cache_read"] == 0 and details["cache_creation"] > 0
    assert usage["input_tokens"] == details["cache_read"] + details["cache_creation"]
    assert usage["output_tokens"] == 6 and data["finish_reason"] == "length"
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert set(data["kv"]) == {"logical_tokens", "physical_tokens", "bytes"}
    assert data["kv"]["physical_tokens"] == data["kv"]["logical_tokens"] > 0
    assert data["compactions"] == []
    assert (tiny / "agentmem.db").is_file()


def test_chat_resume_reads_the_cache(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    first = chat_json(capsys, "--message", "My name is Ada.", "--system", "Be brief.")
    second = chat_json(capsys, "--session", first["session_id"], "--message", "What is my name?")
    assert second["session_id"] == first["session_id"]
    assert second["usage"]["input_token_details"]["cache_read"] == first["kv"]["logical_tokens"] > 0
    assert second["kv"]["logical_tokens"] > first["kv"]["logical_tokens"]


def test_chat_resume_in_a_new_process(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    first = chat_json(capsys, "--message", "My name is Ada.")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from conftest import tiny_chat_llama, tiny_tokenizer
        import agentmem.loading
        agentmem.loading.load_model = lambda name, **kw: (tiny_chat_llama(), tiny_tokenizer())
        from agentmem.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, "chat", "--session", first["session_id"], "--message",
                           "What is my name?", "--json", "--max-new-tokens", "4"],
                          cwd=tiny, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)
    assert second["usage"]["input_token_details"]["cache_read"] == first["kv"]["logical_tokens"] > 0


def test_chat_reports_compactions(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    (tiny / "small.toml").write_text(SMALL_POLICY)
    code, out, err = run(capsys, "chat", "--policy", "small.toml", "--max-new-tokens", "60", "--json",
                         "--message", "Tell me a long story about a cat.")
    assert code == 0, err
    data = json.loads(out)
    assert data["compactions"] and data["compactions"][0]["status"] == "ok"
    event = data["compactions"][0]
    assert event["tokens_after"] < event["tokens_before"]
    assert data["kv"]["physical_tokens"] < data["kv"]["logical_tokens"]
    assert f"{event['tokens_before']} -> {event['tokens_after']} tokens" in err


def test_chat_text_mode_prints_the_reply_and_the_id(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "chat", "--max-new-tokens", "4", "--message", "hi", "--title", "greeting")
    assert code == 0 and out.endswith("\n")
    session_id = err.strip().splitlines()[-1].split()[1]
    code, out, _ = run(capsys, "sessions", "list")
    assert session_id in out and "greeting" in out


def test_chat_interactive(tiny: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = "/stats\nhello there\n\n/stats\n/compact\n/save\n/bogus\n/help\nsecond message\n/quit\nnever read\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(commands))
    code, out, err = run(capsys, "chat", "--max-new-tokens", "8", "--system", "You are terse.")
    assert code == 0, err
    assert "nothing yet: say something first" in err
    assert "KV: " in out and "turns: 1" in out
    assert "[compacted " in err or "nothing to compact" in err
    assert "saved session" in err and "unknown command /bogus" in err and "/compact" in out
    session_id = err.split("session ", 1)[1].split()[0]
    code, out, _ = run(capsys, "sessions", "show", session_id)
    roles = [line.split()[2] for line in out.split("messages (", 1)[1].split("\n\n")[0].splitlines()[2:]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert "hello there" in out and "second message" in out


def test_chat_compact_is_committed_on_quit(tiny: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tiny / "small.toml").write_text(SMALL_POLICY)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there, how are you today?\n/compact\n/quit\n"))
    code, _, err = run(capsys, "chat", "--policy", "small.toml", "--max-new-tokens", "20", "--system", "Be terse.")
    assert code == 0 and "(am-fast x4, manual)]" in err
    session_id = err.split("session ", 1)[1].split()[0]
    code, out, _ = run(capsys, "sessions", "export", session_id)
    assert [e["trigger"] for e in json.loads(out)["events"]] == ["manual"]


def test_chat_interactive_ends_at_end_of_input(tiny: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    code, _, err = run(capsys, "chat", "--max-new-tokens", "4")
    assert code == 0 and "continue with: agentmem chat --session" in err


def test_progress_bars_only_when_forced(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    long = "word " * 700  # more than one prefill chunk
    code, _, err = run(capsys, "chat", "--max-new-tokens", "2", "--message", long)
    assert code == 0 and "prefill" not in err  # stderr is not a terminal here
    code, _, err = run(capsys, "--progress", "chat", "--max-new-tokens", "2", "--message", long)
    assert code == 0 and "prefill" in err


# ----------------------------------------------------------------------------- sessions


@pytest.fixture
def stored(tiny: Path, capsys: pytest.CaptureFixture) -> str:
    """A stored session with two turns and at least one compaction."""
    (tiny / "small.toml").write_text(SMALL_POLICY)
    first = chat_json(capsys, "--policy", "small.toml", "--message", "My name is Ada.", "--max-new-tokens", "40")
    chat_json(capsys, "--policy", "small.toml", "--session", first["session_id"], "--message", "And yours?",
              "--max-new-tokens", "40")
    return first["session_id"]


def test_sessions_list(stored: str, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "sessions", "list")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["ID", "TITLE", "MODEL", "TURNS", "TOKENS", "KV", "COMPACTIONS", "UPDATED"]
    assert row.split()[0] == stored and "smollm2-135m" in row
    code, out, _ = run(capsys, "sessions", "list", "--json")
    rows = json.loads(out)
    assert rows[0]["id"] == stored and rows[0]["turns"] == 2 and rows[0]["compactions"] >= 1


def test_sessions_show_and_plot(stored: str, capsys: pytest.CaptureFixture, tiny: Path) -> None:
    code, out, _ = run(capsys, "sessions", "show", stored, "--plot", "plots/kv.png")
    assert code == 0
    assert "messages (4):" in out and "My name is Ada." in out
    assert "segments (" in out and "KIND" in out
    assert "compactions (0)" not in out and "TRIGGER" in out
    assert (tiny / "plots" / "kv.png").stat().st_size > 1000


def test_sessions_export(stored: str, capsys: pytest.CaptureFixture, tiny: Path) -> None:
    code, out, _ = run(capsys, "sessions", "export", stored)
    data = json.loads(out)
    assert code == 0 and data["session"]["id"] == stored and len(data["messages"]) == 4 and data["events"]
    code, out, _ = run(capsys, "sessions", "export", stored, "--out", "s.json")
    assert code == 0 and json.loads((tiny / "s.json").read_text())["session"]["id"] == stored


def test_sessions_delete(stored: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out, _ = run(capsys, "sessions", "delete", stored)
    assert code == 1 and "not deleted" in out
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    code, out, _ = run(capsys, "sessions", "delete", stored)
    assert code == 0 and "deleted" in out
    code, out, _ = run(capsys, "sessions", "list")
    assert "no sessions" in out


def test_sessions_delete_yes_without_asking(stored: str, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("builtins.input", lambda prompt: pytest.fail("asked despite --yes"))
    code, _, _ = run(capsys, "sessions", "delete", stored, "--yes")
    assert code == 0


def test_kv_series_follows_compactions() -> None:
    messages = [{"token_ids": [0] * 50}, {"token_ids": [0] * 50}, {"token_ids": [0] * 50}]
    events = [{"status": "ok", "logical_tokens": 100, "tokens_before": 100, "tokens_after": 40}]
    xs, ys = kv_series(messages, events)
    assert list(zip(xs, ys)) == [(0, 0), (50, 50), (100, 100), (100, 40), (150, 90)]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("argv", [
    ["sessions", "show", "nope"],
    ["sessions", "export", "nope"],
    ["sessions", "delete", "nope", "--yes"],
    ["chat", "--session", "nope", "--message", "hi"],
])
def test_unknown_session_is_one_line(stored: str, capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and "no session 'nope'" in one_error_line(err)


@pytest.mark.parametrize("argv", [["sessions", "list"], ["sessions", "show", "x"], ["chat", "--session", "x"]])
def test_missing_database_is_one_line_and_not_created(tiny: Path, capsys: pytest.CaptureFixture,
                                                      argv: list[str]) -> None:
    code, _, err = run(capsys, *argv, "--store", "missing.db")
    assert code == 2 and "no session database at missing.db" in one_error_line(err)
    assert not (tiny / "missing.db").exists()


@pytest.mark.parametrize("argv", [["sessions", "list"], ["chat", "--message", "hi"]])
def test_corrupt_database_is_one_line(tiny: Path, capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    (tiny / "bad.db").write_bytes(b"this is not a database" * 100)
    code, _, err = run(capsys, *argv, "--store", "bad.db")
    assert code == 2 and "not a usable agentmem session database" in one_error_line(err)


@pytest.mark.parametrize("argv, words", [
    (["compact", "--ratio", "0.5"], "--ratio: must be a finite number >= 1"),
    (["bench", "soak", "--ratio", "ten"], "--ratio: must be a finite number >= 1, got 'ten'"),
    (["chat", "--temperature", "-1"], "--temperature: must be a finite number >= 0"),
    (["chat", "--max-new-tokens", "0"], "--max-new-tokens: must be >= 1"),
    (["chat", "--json"], "--json needs --message"),
    (["chat", "--message", "  "], "--message is empty"),
    (["chat", "--policy", "nope.toml", "--message", "hi"], "cannot read policy file nope.toml"),
    (["chat", "--policy", "nope", "--message", "hi"], "unknown policy 'nope'"),
    (["scenario", "aime", "--problems-file", "missing.jsonl"], "no problems file at missing.jsonl"),
    (["sessions", "export", "x", "--store", "."], "is a directory"),
    (["demo", "--limit", "100"], "argument --limit: must be 256 or more"),
    (["demo", "--resume"], "nothing to resume"),
    (["no-such-command"], "invalid choice"),
])
def test_user_errors_are_one_line(tiny: Path, capsys: pytest.CaptureFixture, argv: list[str], words: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and words in one_error_line(err)


def test_missing_output_folder_is_one_line(stored: str, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "sessions", "export", stored, "--out", "no/such/folder/s.json")
    assert code == 2 and "No such file or directory: no/such/folder/s.json" in one_error_line(err)


def test_model_mismatch_is_one_line(tiny: Path, capsys: pytest.CaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first = chat_json(capsys, "--message", "hi")
    monkeypatch.setattr(agentmem.loading, "load_model", lambda name, **kw: (tiny_chat_llama(seed=1), tiny_tokenizer()))
    code, _, err = run(capsys, "chat", "--session", first["session_id"], "--message", "again")
    assert code == 2 and "was made with model" in one_error_line(err)


# ----------------------------------------------------------------------------- compact, help


def test_compact_command(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "compact", "--context", "96", "--ratio", "4", "--max-new-tokens", "3")
    assert code == 0, err
    assert "compacted with am-fast x4" in out and "[full cache]" in out and "[am-fast x4]" in out


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths += _command_paths(child, prefix + (name,))
    return paths


@pytest.mark.parametrize("path", _command_paths(build_parser()), ids=lambda p: " ".join(p) or "agentmem")
def test_every_command_has_help(path: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, *path, "--help")
    assert code == 0 and out.startswith("usage: agentmem")
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 4, f"{' '.join(path)} --help has no description"


def test_chat_resume_keeps_the_stored_policy(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    (tiny / "small.toml").write_text(SMALL_POLICY)
    first = chat_json(capsys, "--policy", "small.toml", "--message", "hello there " * 6)
    sid = first["session_id"]
    physical = []
    for turn in range(3):  # under the default 2048-slot policy these would never compact
        out = chat_json(capsys, "--session", sid, "--message", f"more words for turn {turn} " * 4)
        physical.append(out["kv"]["physical_tokens"])
    stored = agentmem.Store(tiny / "agentmem.db").events(sid)
    assert sum(e["status"] == "ok" for e in stored) >= 2
    assert max(physical) < 96 + 60


def test_chat_saves_a_stale_conversation_as_a_new_session(tiny: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sid = chat_json(capsys, "--message", "hello")["session_id"]

    from agentmem.engine import Session

    save, fired = Session.save, []

    def another_writer_first(session):  # another chat on the same session commits just before this one
        if not fired:
            fired.append(True)
            other = chat_json(capsys, "--session", sid, "--message", "from the other chat")
            assert other["session_id"] == sid
        return save(session)

    monkeypatch.setattr(Session, "save", another_writer_first)
    code, out, err = run(capsys, "chat", "--session", sid, "--max-new-tokens", "4", "--message", "mine")
    assert code == 0, err
    assert "changed by another writer" in err and "saved as new session" in err
    store = agentmem.Store(tiny / "agentmem.db")
    assert [m["content"] for m in store.messages(sid) if m["role"] == "user"] == ["hello", "from the other chat"]
    copies = [s["id"] for s in store.list_sessions() if s["id"] != sid]
    assert len(copies) == 1
    assert [m["content"] for m in store.messages(copies[0]) if m["role"] == "user"] == ["hello", "mine"]
