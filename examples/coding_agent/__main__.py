"""`python -m agentmem.coding_agent` (the same as `agentmem demo`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agentmem.cli.common import at_least, method, non_negative_float, positive_int, ratio

from . import MIN_LIMIT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (shared with `agentmem demo`)."""
    parser.add_argument("--model", default="smollm2-135m",
                        help="built-in name, HF id or local path (default smollm2-135m; for real work pass a "
                             "larger instruct model, e.g. Qwen/Qwen2.5-7B-Instruct on a GPU)")
    parser.add_argument("--workspace", type=Path, default=Path("agentmem-demo"),
                        help="where the sample project is copied (default ./agentmem-demo)")
    parser.add_argument("--store", type=Path, default=Path("agentmem-demo.db"),
                        help="SQLite file of the session (default ./agentmem-demo.db)")
    parser.add_argument("--limit", type=at_least(MIN_LIMIT, "the agent's instructions, tools and task must fit"),
                        default=2048, help=f"physical KV limit in tokens, at least {MIN_LIMIT} (default 2048)")
    parser.add_argument("--ratio", type=ratio, default=4.0, help="compaction ratio (default 4)")
    parser.add_argument("--method", type=method, default="am-fast", help="compaction method (default am-fast)")
    parser.add_argument("--max-turns", type=positive_int, default=40, help="model replies at most (default 40)")
    parser.add_argument("--temperature", type=non_negative_float, default=0.7,
                        help="sampling temperature (default 0.7)")
    parser.add_argument("--resume", action="store_true", help="continue the session of an earlier run")
    parser.add_argument("--fresh", action="store_true", help="replace an earlier run's workspace")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")


def run_from_args(args: argparse.Namespace, *, model: Any = None) -> int:
    """Run the demo; `model` (e.g. an already loaded `LocalModel`) overrides `--model`."""
    from .agent import run

    result = run(model=model if model is not None else args.model, workspace_dir=args.workspace, store=args.store,
                 limit=args.limit, ratio=args.ratio, method=args.method, max_turns=args.max_turns,
                 temperature=args.temperature, resume=args.resume, fresh=args.fresh, console=sys.stdout)
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
