"""The AIME-style scenario at a small size: a tiny model, a low limit, few tokens."""

from __future__ import annotations

import json

import pytest

from agentmem.errors import ConfigError
from agentmem.scenarios import aime, problems

from conftest import tiny_chat_llama, tiny_tokenizer


def test_scenario_compacts_repeatedly_and_reports(tmp_path):
    chosen = problems.builtin(2)
    lines, partials = [], []
    result = aime.run(tiny_chat_llama(), tiny_tokenizer(), chosen, limit=900, ratio=4, rounds=3,
                      max_new_tokens=800, protect_recent=24, progress=lines.append, progress_every=200,
                      on_problem=partials.append)
    summary = result["summary"]
    for key in ("limit", "compactions", "peak_physical_tokens", "answer_agreement", "accuracy"):
        assert key in summary
    assert summary["limit"] == 900 and len(result["runs"]) == 2
    assert summary["compactions"] >= 2
    assert summary["peak_physical_tokens"] <= 900
    for run in result["runs"]:
        assert run["compactions"] <= 3
        assert run["unlimited_peak_tokens"] > 900  # the reference really went past the limit
        assert max(p[2] for p in run["timeline"]) <= 900
        assert run["timeline"][-1][1] > run["timeline"][-1][2]  # logical > physical at the end
    text = aime.table(result)
    assert "agreement" in text
    assert aime.plot(result, tmp_path / "kv.png").stat().st_size > 0
    json.dumps(result)  # the result is JSON-able as written by --json
    # progress: a line every 200 generated tokens of each run (the last token ends the run unreported)
    runs, counts = [], None
    for line in lines:
        if line.endswith("unlimited run") or "limited run (" in line:
            runs.append(counts := [])
        elif "tok/s" in line:
            counts.append(int(line.split()[0].split("/")[0]))
    assert all(r["tokens"] == r["unlimited_tokens"] == 800 for r in result["runs"])
    assert runs == [[200, 400, 600]] * 4
    # after each problem the result so far, with the final summary at the end
    assert [len(p["runs"]) for p in partials] == [1, 2]
    assert partials[-1]["summary"] == summary and partials[0]["runs"][0] == result["runs"][0]


def test_prompt_longer_than_the_limit_is_refused():
    with pytest.raises(ConfigError, match="raise --limit"):
        aime.run(tiny_chat_llama(), tiny_tokenizer(), problems.builtin(1), limit=300, max_new_tokens=10,
                 protect_recent=24)


def test_builtin_problems_are_deterministic_and_answers_extract():
    a, b = problems.builtin(6, seed=3), problems.builtin(6, seed=3)
    assert a == b and len({p.question for p in a}) == 6
    assert problems.extract_answer("so 3 + 4 = 7.\nAnswer: 1,024") == "1024"
    assert problems.extract_answer("the total is 12 and then 15") == "15"
    assert problems.extract_answer("no numbers") is None
    assert problems.same_answer("7", "7.0") and not problems.same_answer(None, "7")


def test_problems_from_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "1+1?", "answer": 2}\n\n{"problem": "2+2?", "answer": "4", "id": "x"}\n')
    loaded = problems.load_jsonl(path)
    assert [(p.id, p.answer) for p in loaded] == [("1", "2"), ("x", "4")]
    path.write_text('{"q": 1}\n')
    with pytest.raises(ConfigError, match="question"):
        problems.load_jsonl(path)
    with pytest.raises(ConfigError, match="no problems file at .*missing.jsonl"):
        problems.load_jsonl(tmp_path / "missing.jsonl")
