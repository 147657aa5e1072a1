"""LangChain's standard chat-model suites (`langchain-tests`) run against `ChatAgentMem`.

Fast tier: a tiny random-init Llama behind the byte-level tokenizer. It decodes gibberish,
but constrained decoding keeps its tool calls well-formed, so structured output passes.
A standard test that needs the model to *understand* a request (the right argument value,
calling a tool unprompted) is a strict xfail (the suite allows overriding only so), and a
test of our own next to it asserts what such a model can meet: one call to the right tool,
with an id and arguments its schema accepts. Everything about plumbing (streaming, usage,
batching, tool binding, forced calls, tool-message histories) must pass.

Slow tier (`-m slow`): the tool-calling and structured-output tests again on the real
SmolLM2-135M-Instruct; the one it cannot meet (calling a tool unprompted) is xfailed, and
with the call forced the model must copy the city into it.
"""

from __future__ import annotations

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.integration_tests.chat_models import magic_function, unicode_customer
from langchain_tests.unit_tests import ChatModelUnitTests

from agentmem.langchain import ChatAgentMem

from conftest import tiny_chat_llama, tiny_tokenizer

_TINY = None


def _tiny() -> tuple:
    global _TINY
    if _TINY is None:
        _TINY = (tiny_chat_llama(), tiny_tokenizer())
    return _TINY


GIBBERISH = ("a random-init tiny model writes well-formed calls (constrained decoding) but arbitrary argument values "
             "(the tests expect e.g. input=3): the *_form tests check the form; SmolLM2 runs these, -m slow")


def _one_call(message, to: BaseTool) -> dict:
    """What any model meets under constrained decoding: one call to `to`, with an id, whose arguments the
    tool's own schema accepts (a random-init model picks arbitrary values; the standard tests want e.g. input=3).

    Returns the call's arguments.
    """
    assert isinstance(message, AIMessage), message
    assert len(message.tool_calls) == 1, message
    call = message.tool_calls[0]
    assert call["name"] == to.name and call["id"] and call.get("type") == "tool_call", call
    to.args_schema.model_validate(call["args"])
    blocks = [b for b in message.content_blocks if b["type"] == "tool_call"]
    assert [(b["name"], b["args"], b["id"]) for b in blocks] == [(call["name"], call["args"], call["id"])]
    return call["args"]


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "It's sunny."


def _forced_agent_loop(model: BaseChatModel) -> dict:
    """The standard agent loop with the first call forced: call, tool result, answer. Returns the call's arguments."""
    question = HumanMessage("What is the weather in San Francisco, CA?")
    call = model.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    arguments = _one_call(call, get_weather)
    result = get_weather.invoke(call.tool_calls[0])
    assert isinstance(result, ToolMessage) and result.tool_call_id == call.tool_calls[0]["id"]
    answer = model.bind_tools([get_weather]).invoke([question, call, result])
    assert isinstance(answer, AIMessage) and answer.usage_metadata["output_tokens"] >= 1
    return arguments


class _Tiny:
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatAgentMem

    @property
    def chat_model_params(self) -> dict:
        return {"loaded": _tiny(), "model": "tiny-llama"}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True  # through forced tool calls (BaseChatModel.with_structured_output)

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["cache_read_input", "cache_creation_input"],
                "stream": ["cache_read_input", "cache_creation_input"]}

    @property
    def supports_model_override(self) -> bool:
        return False  # a per-call `model=` works, but only one chat model ships built in

    def invoke_with_cache_read_input(self, *, stream: bool = False):
        chat = ChatAgentMem(**self.chat_model_params)
        first = chat.invoke("Hello")
        history = ["Hello", first, "Tell me more."]
        if stream:
            full = None
            for chunk in chat.stream(history):
                full = chunk if full is None else full + chunk
            return full
        return chat.invoke(history)

    def invoke_with_cache_creation_input(self, *, stream: bool = False):
        return self.invoke_with_cache_read_input(stream=stream)


class TestChatAgentMemUnit(_Tiny, ChatModelUnitTests):
    pass


class TestChatAgentMemIntegration(_Tiny, ChatModelIntegrationTests):
    @property
    def standard_chat_model_params(self) -> dict:
        return {"max_tokens": 24}  # short gibberish keeps the tier fast

    @pytest.mark.xfail(reason=GIBBERISH, raises=AssertionError)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=GIBBERISH, raises=AssertionError)
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason="at max_tokens=24 a call whose name is not forced (tool_choice='any', two tools) cannot "
                              "close in byte-level tokens; test_tool_choice_with_room", raises=AssertionError)
    def test_tool_choice(self, model: BaseChatModel) -> None:
        super().test_tool_choice(model)

    @pytest.mark.xfail(reason=GIBBERISH, raises=AssertionError)
    def test_unicode_tool_call_integration(self, model: BaseChatModel, *, tool_choice: str | None = None,
                                           force_tool_call: bool = True) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)

    @pytest.mark.xfail(reason="without tool_choice a random-init model writes no tool call; test_forced_agent_loop",
                       raises=AssertionError)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    # What the random-init model meets, next to the standard tests above.

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_call_form(self, model: BaseChatModel) -> None:
        bound = model.bind_tools([magic_function], tool_choice="any")
        query = "What is the value of magic_function(3)? Use the tool."
        arguments = _one_call(bound.invoke(query), magic_function)
        full = None
        for chunk in bound.stream(query):
            full = chunk if full is None else full + chunk
        assert _one_call(full, magic_function) == arguments  # greedy: streaming decodes the same call

    async def test_tool_call_form_async(self, model: BaseChatModel) -> None:
        bound = model.bind_tools([magic_function], tool_choice="any")
        query = "What is the value of magic_function(3)? Use the tool."
        arguments = _one_call(await bound.ainvoke(query), magic_function)
        full = None
        async for chunk in bound.astream(query):
            full = chunk if full is None else full + chunk
        assert _one_call(full, magic_function) == arguments

    def test_tool_choice_with_room(self) -> None:
        """The standard test as it is, with room for the call (96 tokens)."""
        roomy = self.chat_model_class(**{**self.chat_model_params, **self.standard_chat_model_params,
                                         "max_tokens": 96})
        ChatModelIntegrationTests.test_tool_choice(self, roomy)

    def test_unicode_tool_call_form(self, model: BaseChatModel) -> None:
        # Copying the customer's name needs a model that reads; SmolLM2 runs the standard test (-m slow).
        bound = model.bind_tools([unicode_customer], tool_choice="any")
        for name in ("你好啊集团 (Hello Group)", "こんにちは株式会社 (Hello Corporation)"):
            _one_call(bound.invoke(f"Create a customer named '{name}'"), unicode_customer)

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_forced_agent_loop(self, model: BaseChatModel) -> None:
        _forced_agent_loop(model)


# ---------------------------------------------------------------------------- slow tier: SmolLM2

TOOLS_AND_STRUCTURED_OUTPUT = {
    "test_tool_calling", "test_tool_calling_async", "test_bind_runnables_as_tools", "test_tool_choice",
    "test_tool_calling_with_no_arguments", "test_tool_message_histories_string_content",
    "test_tool_message_histories_list_content", "test_tool_message_error_status", "test_structured_few_shot_examples",
    "test_structured_output", "test_structured_output_async", "test_structured_output_pydantic_2_v1",
    "test_structured_output_optional_param", "test_unicode_tool_call_integration", "test_agent_loop",
}


@pytest.mark.slow
class TestChatAgentMemSmolLM2(ChatModelIntegrationTests):
    """The tool-calling and structured-output groups on the real SmolLM2-135M-Instruct."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatAgentMem

    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2-135m", "max_tokens": 96}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False

    @pytest.mark.xfail(reason="without tool_choice SmolLM2-135M answers in prose instead of calling get_weather",
                       raises=AssertionError)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_forced_agent_loop(self, model: BaseChatModel) -> None:
        assert "San Francisco" in _forced_agent_loop(model)["location"]  # forced, it copies the city


for _name in dir(ChatModelIntegrationTests):  # the other groups run in the fast tier
    if _name.startswith("test_") and _name not in TOOLS_AND_STRUCTURED_OUTPUT:
        setattr(TestChatAgentMemSmolLM2, _name, None)
