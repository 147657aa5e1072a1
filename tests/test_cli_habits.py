"""CLI habits: light imports, arguments checked before a model loads, help text, optional plots, ETAs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_cli import SMALL_POLICY, _command_paths, chat_json, one_error_line, run

import agentmem
import agentmem.loading
from agentmem.cli import build_parser
from agentmem.cli.chat import _CompactionDisplay
from agentmem.cli.common import Activity

from conftest import tiny_chat_llama, tiny_tokenizer

HEAVY = ("torch", "transformers", "matplotlib", "langchain_core")


def _imported_after(code: str) -> list[str]:
    """Heavy modules a fresh interpreter has imported after running `code`."""
    script = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_import_and_help_load_neither_torch_nor_transformers() -> None:
    assert _imported_after("import agentmem") == []
    assert _imported_after("from agentmem.cli import main\nmain(['--help'])") == []


def test_sessions_list_loads_neither_torch_nor_transformers(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    agentmem.Store(db).close()
    listing = f"from agentmem.cli import main\nassert main(['sessions', 'list', '--store', {str(db)!r}]) == 0"
    assert _imported_after(listing) == []


def test_every_public_name_still_imports() -> None:
    from agentmem import CompactedCache, Session, compact, load_model  # noqa: F401

    for name in agentmem.__all__:
        assert getattr(agentmem, name) is not None, name
    assert set(agentmem.__all__) <= set(dir(agentmem))
    assert agentmem.hf.CompactedCache is CompactedCache  # submodules as attributes, as before
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        agentmem.nope  # noqa: B018


@pytest.mark.parametrize("argv, words", [
    (["demo", "--limit", "-5"], "argument --limit: must be 256 or more"),
    (["demo", "--ratio", "0.5"], "argument --ratio: must be a finite number >= 1, got 0.5; pass e.g. 5"),
    (["demo", "--method", "foo"], "unknown compaction method 'foo'; choose one of am, am-fast"),
    (["demo", "--max-turns", "0"], "argument --max-turns: must be >= 1"),
    (["demo", "--temperature", "-1"], "argument --temperature: must be a finite number >= 0"),
    (["compact", "--method", "foo"], "unknown compaction method 'foo'; choose one of am, am-fast"),
    (["compact", "--ratio", "0.5"], "argument --ratio: must be a finite number >= 1"),
    (["bench", "soak", "--method", "foo"], "unknown compaction method 'foo'"),
    (["bench", "compaction", "--decode-rounds", "-1"], "argument --decode-rounds: must be >= 0"),
    (["scenario", "aime", "--method", "foo"], "unknown compaction method 'foo'"),
    (["scenario", "aime", "--protect-recent", "-1"], "argument --protect-recent: must be >= 0"),
    (["scenario", "aime", "--min-new-tokens", "-1"], "argument --min-new-tokens: must be >= 0"),
])
def test_bad_arguments_fail_before_the_model_loads(no_model_load, capsys: pytest.CaptureFixture,
                                                    argv: list[str], words: str) -> None:
    code, _, err = run(capsys, *argv)
    line = one_error_line(err)
    assert code == 2 and words in line and "loaded" not in err
    assert "FixedRatio" not in line and "--help" in line


def test_no_help_text_shows_a_doubled_percent(capsys: pytest.CaptureFixture) -> None:
    for path in _command_paths(build_parser()):
        code, out, _ = run(capsys, *path, "--help")
        assert code == 0 and "%%" not in out and "%(" not in out, " ".join(path)
    code, out, _ = run(capsys, "bench", "engine", "--help")
    assert "under 10% overhead" in out


# ----------------------------------------------------------------------------- plots are optional


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import matplotlib` fails, as where the plots extra is not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.mark.parametrize("argv", [
    ["bench", "fidelity", "--plot", "f.png"],
    ["bench", "compaction", "--plot", "c.png"],
    ["scenario", "aime", "--plot", "a.png"],
])
def test_an_asked_for_plot_without_matplotlib_fails_before_loading(no_model_load, no_matplotlib,
                                                                    capsys: pytest.CaptureFixture,
                                                                    argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    line = one_error_line(err)
    assert code == 2 and "needs matplotlib" in line and "pip install 'agentmem[plots]'" in line


def test_a_default_plot_without_matplotlib_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch, no_matplotlib,
                                                                   capsys: pytest.CaptureFixture,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(agentmem.loading, "load_model", lambda name, **kw: (tiny_chat_llama(), tiny_tokenizer()))
    out_json = tmp_path / "fid.json"
    code, out, err = run(capsys, "bench", "fidelity", "--contexts", "1", "--context", "384", "--facts", "3",
                         "--protect", "16", "--ratios", "4", "--methods", "truncate", "--json", str(out_json))
    assert code == 0, err
    assert "plot: not drawn, matplotlib is not installed (pip install 'agentmem[plots]' to draw it)" in out
    assert json.loads(out.strip().splitlines()[-1])["bench"] == "fidelity"
    assert out_json.exists() and not out_json.with_suffix(".png").exists()


def test_sessions_show_plot_without_matplotlib_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    monkeypatch.setattr(agentmem.loading, "load_model", lambda name, **kw: (tiny_chat_llama(), tiny_tokenizer()))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.toml").write_text(SMALL_POLICY)
    sid = chat_json(capsys, "--policy", "small.toml", "--message", "hi")["session_id"]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(capsys, "sessions", "show", sid, "--plot", "kv.png")
    assert code == 2 and "pip install 'agentmem[plots]'" in one_error_line(err) and out == ""
    assert not (tmp_path / "kv.png").exists()


# ----------------------------------------------------------------------------- progress with an ETA


def test_activity_line_shows_the_time_left_then_the_overrun() -> None:
    act = Activity("compacting", expected=10)
    assert act.line(4) == "compacting [0:04, about 0:06 left]"
    assert act.line(75) == "compacting [1:15, longer than estimated (0:10)]"
    assert Activity("compacting").line(3) == "compacting [0:03]"
    assert Activity("x", expected=0).expected is None


def test_compact_shows_an_eta_when_progress_is_drawn(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(agentmem.loading, "load_model", lambda name, **kw: (tiny_chat_llama(), tiny_tokenizer()))
    code, _, err = run(capsys, "--progress", "compact", "--context", "96", "--ratio", "4", "--max-new-tokens", "2")
    assert code == 0 and "compacting with am-fast x4 [0:00, about 0:00 left]" in err


def test_chat_estimates_a_compaction_from_the_previous_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agentmem.cli.common.progress_enabled", lambda: False)
    display = _CompactionDisplay(SimpleNamespace(end_line=lambda: None, note=lambda line: None))
    monkeypatch.setattr("agentmem.cli.chat.describe", lambda event: "")
    display.before(SimpleNamespace(tokens=400, reason="tokens>512"))
    assert display.activity.expected is None  # nothing to go by yet
    display.after(SimpleNamespace(status="ok", start=0, end=200, seconds=4.0))
    display.before(SimpleNamespace(tokens=400, reason="tokens>512"))
    assert display.activity.expected == pytest.approx(8.0)
