"""`agentmem demo`: the example coding agent (a placeholder until it is built).

Its interface to the rest of the CLI is `add_parser(sub)` alone: it registers `demo`
and points `func` at whatever runs it.
"""

from __future__ import annotations

import argparse

from ..errors import AgentmemError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `demo`."""
    demo = sub.add_parser("demo", help="the example coding agent (not built yet)",
                          description="An example coding agent on the built-in model, inside a fixed KV budget "
                                      "(not built yet; `agentmem compact` shows compaction on real text).")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Placeholder: the coding-agent demo does not exist yet."""
    raise AgentmemError("the coding-agent demo is not built yet")
