"""Agent SDK: `Runner.run_streamed` events, including online compactions.

A deliberately small KV budget (TokenLimit 192) makes the engine compact while the model
writes; the compaction events arrive between the tokens they happened between.

    python examples/sdk_streaming.py
"""

from __future__ import annotations

import sys

from agentmem.agents import Agent, ModelSettings, Runner
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit

POLICY = Policy(trigger=TokenLimit(192), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                protect_recent=48)


def main() -> None:
    agent = Agent("storyteller", instructions="You write vivid stories.", model="smollm2-135m", policy=POLICY,
                  settings=ModelSettings(max_new_tokens=200, tool_choice="none"))
    result = Runner.run_streamed(agent, "Tell a long story about a lighthouse keeper.")
    for event in result:
        if event.type == "token":
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif event.type == "compaction_started":
            print(f"\n[compaction_started: {event.plan!r}, {event.plan.stats.physical_tokens} slots]")
        elif event.type == "compaction_finished":
            e = event.event
            print(f"[compaction_finished: {e.tokens_before} -> {e.tokens_after} slots in {e.seconds * 1e3:.0f} ms]")
        elif event.type == "turn_done":
            print(f"\n[turn_done {event.turn}: {event.finish_reason}, {event.usage.completion_tokens} tokens]")
        elif event.type == "final_output":
            print(f"[final_output: {len(event.output)} characters]")
    print("compactions:", len(result.compactions), "usage:", result.usage)


if __name__ == "__main__":
    main()
