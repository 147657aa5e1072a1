"""LangChain's standard chat-model suites (`langchain-tests`) run against `ChatAgentMem`.

Fast tier: a tiny random-init Llama behind the byte-level tokenizer. It decodes gibberish,
but constrained decoding keeps its tool calls well-formed, so structured output passes;
tests that need the model to *understand* a request (the right argument value, calling a
tool unprompted) are xfailed with the reason. Everything about plumbing (streaming, usage,
batching, tool binding, forced calls, tool-message histories) must pass.

Slow tier (`-m slow`): the tool-calling and structured-output tests again on the real
SmolLM2-135M-Instruct; xfails there name what the 135M model cannot do.
"""

from __future__ import annotations

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
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
             "(the tests expect e.g. input=3; tool calling is also run on SmolLM2, -m slow)")


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

    @pytest.mark.xfail(reason=GIBBERISH)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=GIBBERISH)
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason=GIBBERISH)
    def test_tool_choice(self, model: BaseChatModel) -> None:
        super().test_tool_choice(model)

    @pytest.mark.xfail(reason=GIBBERISH)
    def test_unicode_tool_call_integration(self, model: BaseChatModel, *, tool_choice: str | None = None,
                                           force_tool_call: bool = True) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)

    @pytest.mark.xfail(reason="without tool_choice the tiny model writes no tool call; " + GIBBERISH)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)


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

    @pytest.mark.xfail(reason="without tool_choice SmolLM2-135M answers in prose instead of calling get_weather")
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)


for _name in dir(ChatModelIntegrationTests):  # the other groups run in the fast tier
    if _name.startswith("test_") and _name not in TOOLS_AND_STRUCTURED_OUTPUT:
        setattr(TestChatAgentMemSmolLM2, _name, None)
