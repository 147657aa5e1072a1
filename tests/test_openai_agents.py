"""openai-agents' Runner on agentmem (`agentmem.openai_agents`), on tiny random-init models.

The model is random, so tests force what they need (tool_choice) and check what the SDK
and the cache did: calls run, handoffs hand off, structured output validates, the second
request of a run (and of a stored session in a new process) is served from the KV cache.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("agents.models.interface", reason="openai-agents is not installed: pip install -e '.[dev]'")

from agents import (  # noqa: E402
    Agent,
    GuardrailFunctionOutput,
    InputGuardrailTripwireTriggered,
    ModelSettings,
    RunConfig,
    RunContextWrapper,
    Runner,
    SQLiteSession,
    function_tool,
    input_guardrail,
    set_trace_processors,
    set_tracing_disabled,
)
from agents.tracing import TracingProcessor  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from agentmem.errors import ConfigError  # noqa: E402
from agentmem.langchain import ChatAgentMem, clear_sessions  # noqa: E402
from agentmem.openai_agents import AgentMemModel, AgentMemProvider  # noqa: E402

from conftest import tiny_chat_llama, tiny_tokenizer  # noqa: E402


@pytest.fixture(autouse=True)
def fresh():
    set_tracing_disabled(True)
    clear_sessions()
    yield
    clear_sessions()


@pytest.fixture(scope="module")
def loaded():
    return tiny_chat_llama(), tiny_tokenizer()


@pytest.fixture
def model(loaded):
    return AgentMemModel(chat=ChatAgentMem.from_model(*loaded, model="tiny", max_tokens=24))


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Sum(BaseModel):
    total: int
    note: str


def cached(result) -> list[int]:
    return [e.input_tokens_details.cached_tokens for e in result.context_wrapper.usage.request_usage_entries]


def test_tool_call_runs_and_the_next_request_reuses_the_cache(model):
    agent = Agent(name="adder", instructions="You add.", tools=[add], model=model,
                  model_settings=ModelSettings(tool_choice="add", max_tokens=24))
    result = Runner.run_sync(agent, "Add 1 and 2", max_turns=3)
    kinds = [type(i).__name__ for i in result.new_items]
    assert kinds[:2] == ["ToolCallItem", "ToolCallOutputItem"] and kinds[-1] == "MessageOutputItem"
    call = result.new_items[0].raw_item
    assert call.name == "add" and set(__import__("json").loads(call.arguments)) == {"a", "b"}
    first, second = result.context_wrapper.usage.request_usage_entries[:2]
    # openai-agents re-sent the whole conversation; only the call's output and the reply opener were prefilled.
    assert second.input_tokens_details.cached_tokens >= first.input_tokens
    assert second.input_tokens_details.cache_write_tokens < 40


def test_structured_output_validates_and_its_history_still_fits_the_cache(model):
    agent = Agent(name="s", instructions="Answer.", model=model, output_type=Sum)
    session = SQLiteSession("chat")  # openai-agents' own session (in memory)
    first = Runner.run_sync(agent, "What is 2+2?", session=session)
    assert isinstance(first.final_output, Sum)
    second = Runner.run_sync(agent, "And 3+3?", session=session)
    assert isinstance(second.final_output, Sum)
    # The stored history holds the first answer as JSON text; it maps back to the call the cache holds.
    # (A branch would prefill everything: cached 0.) The answer's tokens are cached too, not only the prompt.
    assert cached(second)[0] > first.context_wrapper.usage.input_tokens


def test_handoff_context_and_guardrail_come_from_openai_agents(model):
    seen = []

    @function_tool
    def whoami(ctx: RunContextWrapper[dict]) -> str:
        """Say who the user is."""
        seen.append(ctx.context["user"])
        return ctx.context["user"]

    helper = Agent(name="helper", instructions="Help.", tools=[whoami], model=model,
                   model_settings=ModelSettings(tool_choice="whoami"), tool_use_behavior="stop_on_first_tool")
    front = Agent(name="front", instructions="Route.", handoffs=[helper], model=model,
                  model_settings=ModelSettings(tool_choice="transfer_to_helper"))
    result = Runner.run_sync(front, "Who am I?", context={"user": "ada"}, max_turns=4)
    assert result.last_agent is helper and result.final_output == "ada" and seen == ["ada"]

    @input_guardrail
    def no_secrets(ctx, agent, input):
        return GuardrailFunctionOutput(output_info=None, tripwire_triggered="secret" in str(input))

    guarded = front.clone(input_guardrails=[no_secrets])
    with pytest.raises(InputGuardrailTripwireTriggered):
        Runner.run_sync(guarded, "the secret is 42")


def test_streamed_text_is_the_final_output(model):
    agent = Agent(name="talker", instructions="Talk.", model=model)

    async def run():
        streamed = Runner.run_streamed(agent, "Hello")
        deltas = [e.data.delta async for e in streamed.stream_events()
                  if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"]
        return streamed, deltas

    streamed, deltas = asyncio.run(run())
    assert len(deltas) > 1 and "".join(deltas) == streamed.final_output
    assert streamed.context_wrapper.usage.output_tokens > 0

    structured = Agent(name="s", instructions="Answer.", model=model, output_type=Sum)

    async def run_structured():
        streamed = Runner.run_streamed(structured, "What is 2+2?")
        async for _ in streamed.stream_events():
            pass
        return streamed.final_output

    assert isinstance(asyncio.run(run_structured()), Sum)


def test_provider_and_stored_sessions_resume_in_a_new_process(loaded, tmp_path):
    provider = AgentMemProvider("tiny", loaded=loaded, store=str(tmp_path / "kv.db"), max_tokens=8)
    agent = Agent(name="a", instructions="Talk.", model="tiny",
                  model_settings=ModelSettings(extra_args={"session_id": "chat-1"}))
    config = RunConfig(model_provider=provider)
    session = SQLiteSession("chat-1", str(tmp_path / "items.db"))
    first = Runner.run_sync(agent, "Hello", session=session, run_config=config)
    assert provider.get_model("tiny") is provider.get_model(None)
    clear_sessions()  # as if the process ended: nothing in memory, the KV cache is in the store
    fresh = AgentMemProvider("tiny", loaded=loaded, store=str(tmp_path / "kv.db"), max_tokens=8)
    second = Runner.run_sync(agent, "Again", session=SQLiteSession("chat-1", str(tmp_path / "items.db")),
                             run_config=RunConfig(model_provider=fresh))
    assert cached(second)[0] >= first.context_wrapper.usage.input_tokens


def test_generation_spans_reach_trace_processors(model):
    class Collect(TracingProcessor):
        def __init__(self):
            self.spans = []

        def on_trace_start(self, trace): pass
        def on_trace_end(self, trace): pass
        def on_span_start(self, span): pass
        def on_span_end(self, span): self.spans.append(span)
        def shutdown(self): pass
        def force_flush(self): pass

    collect = Collect()
    set_trace_processors([collect])
    set_tracing_disabled(False)
    try:
        Runner.run_sync(Agent(name="t", instructions="Talk.", model=model), "Hi")
    finally:
        set_tracing_disabled(True)
        set_trace_processors([])
    generations = [s for s in collect.spans if s.span_data.type == "generation"]
    assert len(generations) == 1 and generations[0].span_data.model == "tiny"
    assert generations[0].span_data.usage["output_tokens"] > 0


def test_unsupported_requests_say_what_to_do(model):
    agent = Agent(name="a", model=model, model_settings=ModelSettings(extra_args={"api_version": "x"}))
    with pytest.raises(ConfigError, match="session_id"):
        Runner.run_sync(agent, "Hi")
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]
    with pytest.raises(ConfigError, match="text only"):
        Runner.run_sync(Agent(name="a", model=model), image)
    with pytest.raises(ConfigError, match="either"):
        AgentMemModel(chat=model.chat, policy="default")
