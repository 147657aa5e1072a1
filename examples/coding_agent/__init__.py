"""An example coding agent built on `agentmem.agents` (installed as `agentmem.coding_agent`).

It works on a copy of a small bundled project whose test fails, with tools confined to
that copy, under a KV-cache limit that a long run crosses several times. `agentmem demo`
runs it; `python -m agentmem.coding_agent --help` shows the same options.
"""

from __future__ import annotations

from pathlib import Path

TASKS = Path(__file__).parent / "tasks"  # small projects with a failing test each; tasks.json says what they are
SAMPLE_PROJECT = TASKS / "shipping"  # the demo's
DEMO_MODEL = "qwen2.5-coder-1.5b"  # the smallest built-in that fixes the demo's bug (README, "The coding agent")
MIN_LIMIT = 256  # physical KV tokens: the instructions, the tool schemas and the task fit below it
