"""Agent SDK: test your own agent with `ScriptedModel` (no weights, instant, strict).

Run with pytest (`pytest examples/sdk_scripted_test.py`) or as a script. The scripted
model replies from a list (text, `ScriptedModel.call(...)`, callables, scripted
compactions), records every request, and fails loudly when the agent asks for more
replies than scripted or leaves some unused (`assert_done`).
"""

from __future__ import annotations

from agentmem.agents import Agent, RunHooks, Runner, ScriptedModel, tool

INVENTORY = {"apples": 3, "pears": 0}


@tool
def stock(item: str) -> int:
    """How many of an item are in stock.

    Args:
        item: The item, e.g. "apples".
    """
    return INVENTORY[item]


def make_agent(model: ScriptedModel) -> Agent:
    return Agent("shop", instructions="Answer stock questions with the stock tool.", tools=[stock], model=model)


def test_agent_looks_up_stock_and_answers():
    model = ScriptedModel([ScriptedModel.call("stock", item="apples"),
                           lambda messages: f"We have {messages[-1]['content']} apples."])
    result = Runner.run_sync(make_agent(model), "Any apples?")
    model.assert_done()
    assert result.final_output == "We have 3 apples."
    assert model.requests[1].messages[-1] == {"role": "tool", "content": "3"}


def test_unknown_item_is_reported_to_the_model():
    model = ScriptedModel([ScriptedModel.call("stock", item="kiwis"), "Sorry, I do not know kiwis."])
    result = Runner.run_sync(make_agent(model), "Kiwis?")
    assert result.new_items[2]["content"] == "error: KeyError: 'kiwis'"
    model.assert_done()


def test_compaction_handler_sees_scripted_compactions():
    seen = []

    class Hooks(RunHooks):
        def on_compaction_end(self, agent, event):
            seen.append((event.tokens_before, event.tokens_after))

    model = ScriptedModel([ScriptedModel.compaction(tokens_before=900, tokens_after=200), "Nothing to do."])
    Runner.run_sync(make_agent(model), "hi", hooks=Hooks())
    assert seen == [(900, 200)]


if __name__ == "__main__":
    for name, test in list(globals().items()):
        if name.startswith("test_"):
            test()
            print("passed:", name)
