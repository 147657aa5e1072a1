"""Agent SDK: `SQLiteSession` keeps the conversation *and its KV cache* between runs.

Every turn is committed to SQLite with a checkpoint of the (compacted) cache, so the next
run (here a new `SQLiteSession` object; equally a new process) resumes it with no
prefill: its first reply reports `cached_tokens > 0`. Run the script twice with the same
`--db` to continue the conversation across processes.

    python examples/sdk_sessions.py [--db agentmem-example.db]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from agentmem.agents import Agent, ModelSettings, Runner, SQLiteSession


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=str(Path(tempfile.mkdtemp()) / "agents.db"))
    args = parser.parse_args()
    agent = Agent("notes", instructions="You are a helpful assistant. Answer in one sentence.",
                  model="smollm2-135m", settings=ModelSettings(max_new_tokens=40))
    for question in ("My name is Ada and I like sailing.", "What do I like?"):
        session = SQLiteSession("example-chat", args.db)  # a fresh object each time: resumed from the store
        before = len(session.get_items())
        result = Runner.run_sync(agent, question, session=session)
        reply = result.replies[0]
        print(f"user: {question}\nassistant: {result.final_output}")
        print(f"  items before: {before}, prefilled: {reply.prompt_tokens}, from cache: {reply.cached_tokens}")
    print("database:", args.db)


if __name__ == "__main__":
    main()
