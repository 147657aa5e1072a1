"""agentmem behind LangChain: a conversation that reuses the KV cache, then a tool call.

LangChain re-sends the whole conversation on every call; `ChatAgentMem` recognizes the
history it already holds and prefills only the new messages, which `usage_metadata` shows
as `cache_read` (served from the cache) versus `cache_creation` (prefilled now).

Run: python examples/langchain_chat.py   (SmolLM2-135M on CPU, about a minute)
"""

from __future__ import annotations

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from agentmem.langchain import ChatAgentMem


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"It is sunny and 22 C in {city}."


def show(label: str, reply) -> None:
    usage = reply.usage_metadata
    details = usage["input_token_details"]
    print(f"{label}: {reply.content[:70]!r}" + (f" tool calls {reply.tool_calls}" if reply.tool_calls else ""))
    print(f"    input {usage['input_tokens']:4d} = cache_read {details['cache_read']:4d} "
          f"+ cache_creation {details['cache_creation']:3d}; output {usage['output_tokens']}")


def main() -> None:
    chat = ChatAgentMem(model="smollm2-135m", max_tokens=48, session_id="demo")
    history = []
    for question in ("What is the capital of France?", "And of Italy?", "Which of the two is larger?"):
        history.append(HumanMessage(question))
        reply = chat.invoke(history)
        history.append(reply)
        show(question, reply)

    weather = chat.bind_tools([get_weather], tool_choice="get_weather")
    request = [HumanMessage("What's the weather in Paris?")]
    call = weather.invoke(request)
    print("tool calls:", call.tool_calls)
    result = get_weather.invoke(call.tool_calls[0])  # a ToolMessage
    answer = chat.bind_tools([get_weather]).invoke(request + [call, result])
    show("after the tool", answer)
    print("session:", answer.response_metadata["agentmem"]["session_id"])


if __name__ == "__main__":
    main()
