"""The fidelity benchmark's scoring, on tiny random-init models and the real reference text."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import agentmem.loading
from agentmem import hf
from agentmem.bench import fidelity
from agentmem.cli import main
from agentmem.errors import ConfigError

from conftest import tiny_chat_llama, tiny_tokenizer

SMALL = dict(context=384, count=2, facts=3, protect=16)


@pytest.fixture(scope="module")
def result():
    """One small run shared by the tests that only read it."""
    return fidelity.run(tiny_chat_llama(), tiny_tokenizer(), ratios=[1, 4], methods=["truncate", "am-fast"],
                        progress=lambda *_: None, **SMALL)


def test_rows_cover_every_method_and_ratio_with_bytes_and_time(result):
    rows = {(r["method"], r["ratio"]): r for r in result["rows"]}
    assert set(rows) == {(m, r) for m in ("am-fast", "truncate", "streaming") for r in (1, 4)}  # streaming added
    full = result["baselines"]["full"]
    for (method, ratio), row in rows.items():
        assert (row["bytes_after"] < full["bytes_after"]) == (ratio == 4)
        assert row["time_ratio"] >= 0 and set(row["retained"]) == set(fidelity.METRICS)
    assert result["baselines"]["dropped"]["bytes_after"] < rows[("streaming", 4)]["bytes_after"]
    assert len(result["questions"]["full@1"]["recall"]) == SMALL["count"] * SMALL["facts"]
    assert len(result["questions"]["full@1"]["kl"]) == SMALL["count"]
    text = fidelity.table(result)
    assert "am-fast" in text and "chance" in text and "dropped" in text
    line = json.loads(fidelity.summary_line(result, "tiny"))
    assert line["bench"] == "fidelity" and line["questions"] == 6 and "am-fast@4" in line


def test_full_retains_everything_and_streaming_nothing(result):
    assert result["baselines"]["full"]["retained"]["recall"] == [1.0, 1.0, 1.0]
    streaming = next(r for r in result["rows"] if r["method"] == "streaming" and r["ratio"] == 4)
    for metric in fidelity.METRICS:
        assert streaming["retained"][metric][0] == 0.0 or math.isnan(streaming["retained"][metric][0])
    full, base = [-1.0, -2.0, -0.5, -3.0], [-9.0, -8.0, -9.5, -7.0]
    assert fidelity.retained(full, full, base)[0] == 1.0 and fidelity.retained(base, full, base)[0] == 0.0


def test_a_ratio_that_keeps_everything_scores_as_the_full_cache(result):
    full = result["questions"]["full@1"]
    for method in ("truncate", "am-fast", "streaming"):
        kept = result["questions"][f"{method}@1"]
        for metric in ("recall", "exact", "choice", "ref_nll"):
            np.testing.assert_allclose(kept[metric], full[metric], atol=1e-5)
        assert max(kept["kl"]) < 1e-6


def test_the_answer_log_prob_is_the_model_s_own():
    model, tokenizer = tiny_chat_llama(), tiny_tokenizer()
    ctx = fidelity.contexts(tokenizer, count=1, context=384, facts=3, protect=16)[0]
    hf.enable(model)
    cache, _, _ = fidelity.prefill(model, ctx.ids, repeats=1)
    full = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
    for fact in ctx.facts:
        scores, exact = fidelity.option_logprobs(model, full, fact)
        for j, option in enumerate(fact.options):  # one plain forward over context + prompt + option
            ids = torch.cat([ctx.ids, torch.tensor([fact.prompt + option])], dim=1)
            with torch.no_grad():
                logp = model(input_ids=ids).logits.float().log_softmax(-1)[0]
            start = ctx.ids.shape[1] + len(fact.prompt) - 1
            pred = logp[start:start + len(option)]
            assert scores[j] == pytest.approx(float(pred.gather(-1, torch.tensor(option)[:, None]).sum()), abs=1e-3)
            if j == fact.right:
                assert exact == bool(pred.argmax(-1).eq(torch.tensor(option)).all())
        picked = int(np.argmax(scores))  # multiple choice: the option with the highest log-prob
        assert scores[picked] == max(scores)


def test_multiple_choice_is_scored_by_argmax_with_chance_one_in_k(result):
    assert result["baselines"]["chance"]["choice"] == pytest.approx(1 / 4)
    assert result["baselines"]["chance"]["recall"] == pytest.approx(math.log(1e-4))
    for cell in result["questions"].values():
        assert set(cell["choice"]) <= {0.0, 1.0} and set(cell["exact"]) <= {0.0, 1.0}


def test_planted_facts_sit_in_the_compacted_span_with_the_right_option():
    tokenizer = tiny_tokenizer()
    for ctx in fidelity.contexts(tokenizer, count=2, context=384, facts=3, protect=16, seed=3):
        assert ctx.ids.shape == (1, 384) and ctx.continuation.shape == (1, 128)
        ids = ctx.ids[0].tolist()
        for fact in ctx.facts:
            assert len(fact.options) == 4 and len(set(map(tuple, fact.options))) == 4
            line = tokenizer.decode(ids[fact.position:]).split("\n")[0]  # the planted line, as the context has it
            question = tokenizer.decode(fact.prompt).strip()
            assert line == f"{question}{tokenizer.decode(fact.options[fact.right])}."
            assert 0.05 * 384 - 64 <= fact.position and fact.position + len(line) <= 384 * 0.8 + len(line)
        assert len(ctx.quotes) == 3


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    full = rng.normal(-1, 1, 40)
    base = rng.normal(-9, 1, 40)
    method = 0.4 * full + 0.6 * base + rng.normal(0, 0.5, 40)
    point, lo, hi = fidelity.retained(method, full, base, seed=1)
    assert lo < point < hi and 0.2 < point < 0.6
    assert fidelity.retained(method, full, base, seed=1) == (point, lo, hi)
    assert math.isnan(fidelity.retained([1.0, 1.0], [1.0, 1.0], [1.0, 1.0])[0])  # full == base: undefined


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="--facts must be"):
        fidelity.check_args(context=2048, facts=len(fidelity.TEMPLATES) + 1, protect=64)
    with pytest.raises(ConfigError, match="--protect must be"):
        fidelity.check_args(context=2048, facts=10, protect=500)
    with pytest.raises(ConfigError, match="more than half"):
        fidelity.contexts(tiny_tokenizer(), count=1, context=128, facts=5, protect=16)


@pytest.mark.parametrize("argv, words", [
    (["--methods", "magic"], "unknown method(s) magic"),
    (["--protect", "-1"], "--protect must be 0.."),
    (["--facts", "99"], "--facts must be 1..24"),
    (["--ratios", "0.5"], "must be a finite number >= 1"),
    (["--context", "0"], "must be >= 1"),
])
def test_cli_refuses_bad_arguments_before_loading(no_model_load, capsys, argv, words):
    code = main(["bench", "fidelity", *argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


def test_cli_runs_end_to_end(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(agentmem.loading, "load_model", lambda name, **kw: (tiny_chat_llama(), tiny_tokenizer()))
    out_json = tmp_path / "fid.json"
    code = main(["bench", "fidelity", "--contexts", "1", "--context", "384", "--facts", "3", "--protect", "16",
                 "--ratios", "4", "--methods", "truncate", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out.strip().splitlines()[-1])["bench"] == "fidelity"
    assert json.loads(out_json.read_text())["summary"]["model"] == "smollm2-135m"
    assert out_json.with_suffix(".png").stat().st_size > 0
