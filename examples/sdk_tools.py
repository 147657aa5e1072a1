"""Agent SDK: a `@tool` function and `Runner.run_sync` on the built-in SmolLM2-135M.

`tool_choice="required"` forces the first reply to begin with a tool call and the SDK
keeps the call well-formed (known tool name, known argument names, valid JSON), which a
135M model does not manage on its own; after the tool ran the agent answers freely.

    python examples/sdk_tools.py
"""

from __future__ import annotations

import logging

from agentmem.agents import Agent, ModelSettings, Runner, tool

TEMPERATURES = {"paris": 18, "oslo": 4, "cairo": 31}


@tool
def get_temperature(city: str) -> str:
    """Look up the current temperature of a city.

    Args:
        city: The city's name, e.g. "Paris".
    """
    degrees = TEMPERATURES.get(city.strip().lower())
    if degrees is None:
        raise KeyError(f"no data for {city!r}; known cities: {', '.join(TEMPERATURES)}")
    return f"{degrees} degrees Celsius in {city}"


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    agent = Agent("weather", instructions="You answer questions about the weather. Use the tools.",
                  tools=[get_temperature], model="smollm2-135m",
                  settings=ModelSettings(max_new_tokens=40, tool_choice="required"))
    result = Runner.run_sync(agent, "How warm is it in Paris right now?", max_turns=4)
    for item in result.new_items:
        print(f"{item['role']:>9}: {item['content']}")
    print("final output:", result.final_output)
    print("usage:", result.usage)


if __name__ == "__main__":
    main()
