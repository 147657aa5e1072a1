"""A chat session that stays inside a KV budget and survives a restart.

Run it twice: the second run resumes the stored session and goes on where it stopped.

    python examples/session_basics.py            # uses ./example-session.db
"""

from __future__ import annotations

import agentmem
from agentmem.policies import Policy

POLICY = Policy.from_dict({
    "trigger": {"kind": "tokens", "limit": 512},      # compact when the cache would pass 512 slots
    "ratio": {"kind": "fixed", "ratio": 5, "by_kind": {"tool_call": 10}},
    "pin": {"kinds": ["system", "first_user", "user"], "last_turns": 1},
    "method": "am-fast",
})


def main() -> None:
    model, tokenizer = agentmem.load_model("smollm2-135m")
    store = agentmem.Store("example-session.db")
    existing = [s for s in store.list_sessions() if s["title"] == "example"]
    if existing:
        session = agentmem.Session.resume(store, existing[0]["id"], model, tokenizer, policy=POLICY)
        print(f"resumed session {session.id} after {session.turns} turns")
    else:
        session = agentmem.Session(model, tokenizer, policy=POLICY, store=store, title="example",
                                   system="You are a concise assistant.")
        session.on_after_compaction(lambda e: print(f"  [compacted {e.tokens_before} -> {e.tokens_after} slots "
                                                    f"in {e.seconds:.1f}s]"))
    for question in ["Name three uses of Python.", "Which of them is the most popular?",
                     "Give me a one-line example of the first one."]:
        session.add("user", question)
        print(f"> {question}\n", end="", flush=True)
        for piece in session.stream(120, stop=["\n\n\n"]):
            print(piece, end="", flush=True)
        reply = session.last_reply
        print(f"\n  ({reply.prompt_tokens} tokens prefilled, {reply.cached_tokens} served from the cache)")
    stats = session.stats()
    print(f"cache: {stats.logical_tokens} logical tokens in {stats.physical_tokens} slots, "
          f"{stats.bytes / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
