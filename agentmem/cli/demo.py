"""`agentmem demo`: the example coding agent on the bundled sample project.

The agent (`agentmem.coding_agent`) works on a copy of a small project whose test fails,
inside a physical KV limit that a long run crosses several times; the console shows each
tool call and each compaction, and the session lands in `agentmem-demo.db` (compaction
events in its `compactions` table) so `agentmem demo --resume` continues it.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `demo`."""
    from ..coding_agent.__main__ import add_arguments

    demo = sub.add_parser(
        "demo", help="the example coding agent fixing a failing test inside a KV budget",
        description="Copies a small project with a failing test to ./agentmem-demo and lets the coding agent work "
                    "on it with the built-in model, compacting its KV cache each time it reaches --limit. Prints "
                    "each tool call and compaction, then a summary and one JSON line. The session is kept in "
                    "./agentmem-demo.db (events in the `compactions` table); --resume continues it.")
    add_arguments(demo)
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the coding agent with the parsed options (the model loads with a progress bar)."""
    from ..agents import LocalModel
    from ..coding_agent.__main__ import run_from_args
    from . import common

    model, tokenizer = common.load(args.model)
    return run_from_args(args, model=LocalModel.from_pretrained(model, tokenizer, name=args.model,
                                                                        seed=args.seed))
