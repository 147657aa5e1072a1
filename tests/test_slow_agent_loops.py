"""Slow tier: agent loops on the real SmolLM2-135M finish (run with -m slow)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

README_SDK = '''
from agentmem.agents import Agent, ModelSettings, Runner, SQLiteSession, tool

@tool
def read_file(path: str) -> str:
    """Read a text file.

    Args:
        path: File to read, relative to the project.
    """
    return open(path).read()

agent = Agent("coder", instructions="You answer questions about code.", tools=[read_file],
              model="smollm2-135m", policy="default",
              settings=ModelSettings(max_new_tokens=128, tool_choice="required"))
result = Runner.run_sync(agent, "What does calc.py do?", session=SQLiteSession("chat-1", "agents.db"))
print(result.final_output, result.usage, len(result.compactions))
'''


def test_readme_sdk_example_reaches_final_output(smollm2, tmp_path, monkeypatch):
    """The README's Agent SDK example, as written, in a folder with a calc.py (default max_turns=10)."""
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(README_SDK, "README.md", "exec"), scope)  # raises MaxTurnsExceeded if it does not finish
    result = scope["result"]
    assert result.final_output is not None and result.turns <= 10


def _weather_agent_parts():
    """The chat model, a weather tool and a structured answer type, as a LangChain agent takes them."""
    from langchain_core.tools import tool
    from pydantic import BaseModel

    from agentmem.langchain import ChatAgentMem

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"It is sunny and 22 C in {city}."

    class Weather(BaseModel):
        """The weather report."""

        city: str
        temperature_c: int
        sky: str

    return ChatAgentMem(model="smollm2-135m", max_tokens=64), get_weather, Weather


@pytest.mark.parametrize("structured", [False, True])
def test_langchain_create_agent_finishes(smollm2, structured):
    agents = pytest.importorskip("langchain.agents")
    chat, get_weather, Weather = _weather_agent_parts()
    agent = agents.create_agent(chat, tools=[get_weather], response_format=Weather if structured else None)
    state = agent.invoke({"messages": [("user", "What's the weather in Paris?")]}, {"recursion_limit": 12})
    if structured:
        assert isinstance(state["structured_response"], Weather)
    else:
        assert state["messages"][-1].content and not state["messages"][-1].tool_calls


@pytest.mark.parametrize("structured", [False, True])
def test_langgraph_create_react_agent_finishes(smollm2, structured):
    prebuilt = pytest.importorskip("langgraph.prebuilt")
    chat, get_weather, Weather = _weather_agent_parts()
    agent = prebuilt.create_react_agent(chat, tools=[get_weather], response_format=Weather if structured else None)
    state = agent.invoke({"messages": [("user", "What's the weather in Paris?")]}, {"recursion_limit": 12})
    assert not state["messages"][-1].tool_calls
    if structured:
        assert isinstance(state["structured_response"], Weather)
