"""A child process for the agent SDK tests: one run of an agent on a SQLiteSession.

Usage: python agents_child.py DB SESSION_ID

Prints one JSON line: the run's usage and the number of stored items.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agentmem.agents import Agent, LocalModel, ModelSettings, Runner, SQLiteSession  # noqa: E402

from conftest import tiny_chat_llama, tiny_tokenizer  # noqa: E402


def main() -> None:
    db, session_id = sys.argv[1], sys.argv[2]
    model = LocalModel.from_pretrained(tiny_chat_llama(), tiny_tokenizer())
    agent = Agent("child", instructions="Be brief.", model=model, policy="off",
                  settings=ModelSettings(max_new_tokens=12))
    session = SQLiteSession(session_id, db)
    result = Runner.run_sync(agent, "hello from the first process", session=session)
    print(json.dumps({"prompt_tokens": result.usage.prompt_tokens, "items": len(session.get_items())}), flush=True)


if __name__ == "__main__":
    main()
