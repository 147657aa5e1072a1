"""The engine-path recall benchmark, on tiny random-init models: planting, checkpoints, scoring, arguments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import agentmem.loading
from agentmem.bench import fidelity, recall
from agentmem.cli import main
from agentmem.engine import Session
from agentmem.errors import ConfigError

from conftest import tiny_chat_llama, tiny_tokenizer

SMALL = dict(limit=1024, ratio=4.0, facts=10, checkpoints=(1, 2))


@pytest.fixture(scope="module")
def result():
    """One small run shared by the tests that only read it."""
    return recall.run(tiny_chat_llama(), tiny_tokenizer(), methods=["am-fast"], **SMALL)


def _fed(model, tokenizer, facts, policy) -> Session:
    session = Session(model, tokenizer, policy=policy, system=recall.SYSTEM)
    for role, content in recall.opening(facts):
        session.add(role, content)
    return session


def _sessions(facts, *, limit=100_000):
    """A full session and a limited one (never reaching `limit` unless told) fed the facts."""
    model, tokenizer = tiny_chat_llama(), tiny_tokenizer()
    return (_fed(model, tokenizer, facts, "off"),
            _fed(model, tokenizer, facts, recall.limited_policy(limit, 4.0, "am-fast")))


def test_every_fact_is_planted_half_in_user_messages_half_in_tool_results():
    facts = recall.make_facts(40)
    assert len({f.key for f in facts}) == len({f.code for f in facts}) == 40
    assert sum(f.source == "user" for f in facts) == sum(f.source == "tool" for f in facts) == 20
    full, _ = _sessions(facts)
    text = full.tokenizer.decode(full.ids)
    ids = full.ids
    for fact in facts:
        assert fact.line in text
        holder = next(m for m in full.messages if fact.line in m["content"])
        assert holder["role"] == fact.source  # stated where the fact says
        code = full.format.encode(f" {fact.code}")
        assert any(ids[i:i + len(code)] == code for i in range(len(ids)))
        assert fact.options[fact.right] == fact.code and len(set(fact.options)) == recall.CHOICES
        assert set(fact.options) <= {f.code for f in facts}  # wrong options are other facts' codes
    assert len(recall.opening(facts)) == 4 * 2 + 4 * 3  # 8 groups of 5: user + reply, or user + call + result


def test_questions_and_answer_prefixes_read_right():
    for template in recall.TEMPLATES:
        assert template.startswith("The ") and template.endswith(" is") and template.count("{}") == 1
    fact = recall.Fact(key="The door code of warehouse vega is", code="4817", options=["4817"], right=0,
                       source="user")
    assert fact.question == "What is the door code of warehouse vega?"
    assert fact.line == "The door code of warehouse vega is 4817."


def test_checkpoints_are_reached_by_every_limited_session(result):
    rows = result["rows"]
    assert [r["checkpoint"] for r in rows] == [1, 2]
    assert result["summary"]["methods"] == ["am-fast", "streaming"]
    for row in rows:
        sessions = row["sessions"]
        assert set(sessions) == {"full", "am-fast", "streaming"}
        assert sessions["full"]["compactions"] == 0 and sessions["full"]["physical_tokens"] == row["logical_tokens"]
        for name in ("am-fast", "streaming"):
            assert sessions[name]["compactions"] >= row["checkpoint"]
            assert sessions[name]["physical_tokens"] < row["logical_tokens"]
        for name, values in row["questions"].items():
            assert all(len(v) == SMALL["facts"] for v in values.values())
            assert set(values["exact"]) <= {0.0, 1.0} and set(values["choice"]) <= {0.0, 1.0}
    assert rows[1]["turns"] > rows[0]["turns"] and rows[1]["logical_tokens"] > rows[0]["logical_tokens"]


def test_retained_is_one_for_full_and_zero_for_streaming_where_defined(result):
    for row in result["rows"]:
        for metric in recall.METRICS:
            full = row["sessions"]["full"]["retained"][metric][0]
            streaming = row["sessions"]["streaming"]["retained"][metric][0]
            assert full == 1.0 or math.isnan(full)
            assert streaming == 0.0 or math.isnan(streaming)
            expected = fidelity.retained(row["questions"]["am-fast"][metric], row["questions"]["full"][metric],
                                         row["questions"]["streaming"][metric], seed=0)
            np.testing.assert_equal(row["sessions"]["am-fast"]["retained"][metric], list(expected))


def test_a_session_that_never_compacted_scores_exactly_as_the_full_cache():
    facts = recall.make_facts(6, seed=2)
    full, limited = _sessions(facts)
    for session in (full, limited):
        session.prefill()
    assert recall.compactions(limited) == 0
    first, again, same = recall.score(full, facts), recall.score(full, facts), recall.score(limited, facts)
    assert first == again == same
    assert len(full.messages) == 1 + len(recall.opening(facts))  # asking works on forks: the session is unchanged
    for metric in recall.METRICS:
        assert fidelity.retained(same[metric], first[metric], [v - 1 for v in first[metric]])[0] == 1.0


def test_asking_never_compacts_even_at_the_limit():
    facts = recall.make_facts(10, seed=3)  # two turns: the first is not pinned
    full, _ = _sessions(facts)
    full.prefill()
    limited = _fed(full.model, full.tokenizer, facts, recall.limited_policy(len(full.ids) + 4, 4.0, "am-fast"))
    limited.prefill()
    assert recall.compactions(limited) == 0  # the question's tokens would pass the limit
    assert recall.score(limited, facts) == recall.score(full, facts)
    assert recall.compactions(limited) == 0 and limited.cached == len(full.ids)


def test_the_answer_log_prob_is_the_model_s_own_after_the_question():
    facts = recall.make_facts(3, seed=1)
    full, _ = _sessions(facts)
    full.prefill()
    fact = facts[0]
    lp, exact, choice = recall.ask(full, fact)
    branch = full.fork()
    branch.add("user", fact.question)
    prompt = branch.ids + branch.format.generation_prompt_ids(branch.messages) + branch.format.encode(fact.key)
    scores = []
    for option in fact.options:  # one plain forward over the conversation, question, reply prefix and option
        answer = branch.format.encode(f" {option}")
        with torch.no_grad():
            logp = full.model(input_ids=torch.tensor([prompt + answer])).logits.float().log_softmax(-1)[0]
        pred = logp[len(prompt) - 1:len(prompt) - 1 + len(answer)]
        scores.append(float(pred.gather(-1, torch.tensor(answer)[:, None]).sum()))
        if option == fact.code:
            assert exact == float(pred.argmax(-1).eq(torch.tensor(answer)).all())
    assert lp == pytest.approx(scores[fact.right], abs=1e-3)
    assert choice == float(int(np.argmax(scores)) == fact.right)


def test_table_and_summary(result):
    text = recall.table(result)
    assert "am-fast" in text and "streaming" in text and "retained" in text
    line = json.loads(json.dumps(result["summary"]))
    assert line["bench"] == "recall" and line["facts"] == SMALL["facts"]
    assert [c["checkpoint"] for c in line["checkpoints"]] == [1, 2] and "am-fast" in line["checkpoints"][0]


@pytest.mark.parametrize("kwargs, words", [
    (dict(facts=0), "--facts must be 1..48"),
    (dict(facts=len(recall.TEMPLATES) + 1), "one phrasing template and one name each"),
    (dict(facts=4, checkpoints=()), "--checkpoints must be"),
    (dict(facts=4, methods=["magic"]), "unknown method(s) magic"),
])
def test_bad_settings_are_refused(kwargs, words):
    words = words.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ConfigError, match=words):
        recall.check_args(**kwargs)
    with pytest.raises(ConfigError, match=words):
        recall.run(None, None, **kwargs)  # before touching the model


@pytest.mark.parametrize("argv, words", [
    (["--facts", "0"], "--facts must be 1..48"),
    (["--facts", "49"], "--facts must be 1..48"),
    (["--method", "magic"], "unknown compaction method 'magic'"),
    (["--checkpoints", "0"], "must be >= 1"),
])
def test_cli_refuses_bad_arguments_before_loading(no_model_load, capsys, argv, words):
    code = main(["bench", "recall", *argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


def test_cli_runs_end_to_end_with_the_old_method_flag(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(agentmem.loading, "load_model", lambda name, **kw: (tiny_chat_llama(), tiny_tokenizer()))
    out_json = tmp_path / "recall.json"
    code = main(["bench", "recall", "--limit", "1024", "--ratio", "4", "--method", "truncate", "--facts", "5",
                 "--checkpoints", "1", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0
    line = json.loads(out.strip().splitlines()[-1])
    assert line["bench"] == "recall" and line["methods"] == ["truncate", "streaming"] and line["facts"] == 5
    saved = json.loads(out_json.read_text())
    assert saved["summary"]["model"] == "smollm2-135m" and len(saved["facts"]) == 5
    assert saved["rows"][0]["sessions"]["truncate"]["compactions"] >= 1
