"""`python -m agentmem.coding_agent` (the same as `agentmem demo`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agentmem.cli.common import add_json, add_limit, add_method, add_model, add_ratio, non_negative_float, positive_int

from . import DEMO_MODEL, MIN_LIMIT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (shared with `agentmem demo`)."""
    add_model(parser, default=DEMO_MODEL,
              note="for real work pass a larger instruct model, e.g. Qwen/Qwen2.5-7B-Instruct on a GPU")
    parser.add_argument("--workspace", type=Path, default=Path("agentmem-demo"),
                        help="where the sample project is copied (default ./agentmem-demo)")
    parser.add_argument("--store", type=Path, default=Path("agentmem-demo.db"),
                        help="SQLite file of the session (default ./agentmem-demo.db)")
    add_limit(parser, 1536, minimum=MIN_LIMIT, why="the agent's instructions, tools and task must fit")
    add_ratio(parser, 4)
    add_method(parser)
    parser.add_argument("--max-turns", type=positive_int, default=40, help="model replies at most (default 40)")
    parser.add_argument("--temperature", type=non_negative_float, default=0.2,
                        help="sampling temperature (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed: runs above temperature 0 differ "
                        "between seeds, and one seed repeats a run (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue the session of an earlier run")
    parser.add_argument("--fresh", action="store_true", help="replace an earlier run's workspace")
    add_json(parser, help="also write the summary here")


def run_from_args(args: argparse.Namespace, *, model: Any = None) -> int:
    """Run the demo; `model` (e.g. an already loaded `LocalModel`) overrides `--model`."""
    from .agent import run

    result = run(model=model if model is not None else args.model, workspace_dir=args.workspace, store=args.store,
                 limit=args.limit, ratio=args.ratio, method=args.method, max_turns=args.max_turns,
                 temperature=args.temperature, seed=args.seed, resume=args.resume, fresh=args.fresh, console=sys.stdout)
    summary = result.to_dict()
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentmem.coding_agent", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
