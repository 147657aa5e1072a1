"""Agent SDK: veto a compaction with `Agent(on_compaction=...)` (or `RunHooks.on_compaction`).

The hook sees the engine's `Plan` (reason, spans, KV stats) before each compaction and
returns False to skip it: here compaction is allowed only once the cache holds 256 slots,
although the policy would start at 192.

    python examples/sdk_veto.py
"""

from __future__ import annotations

from agentmem.agents import Agent, ModelSettings, Runner
from agentmem.memory import Plan
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit

POLICY = Policy(trigger=TokenLimit(192), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                protect_recent=48)


def not_yet(plan: Plan) -> bool:
    """Allow a compaction only past 256 physical slots."""
    allow = plan.stats.physical_tokens >= 256
    print(f"  hook: {plan.stats.physical_tokens} slots, {'allow' if allow else 'veto'}")
    return allow


def main() -> None:
    agent = Agent("writer", instructions="You write long answers.", model="smollm2-135m", policy=POLICY,
                  settings=ModelSettings(max_new_tokens=240, tool_choice="none"), on_compaction=not_yet)
    result = Runner.run_sync(agent, "Explain how a lighthouse works, in detail.")
    for event in result.compactions:
        print(f"{event.status:>7}: {event.tokens_before} -> {event.tokens_after} slots")
    print("usage:", result.usage)


if __name__ == "__main__":
    main()
