"""`agentmem profile-heads`: measure per-head sensitivity and write a head-budget profile."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_model, add_ratio, bar, load, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `profile-heads`."""
    prof = sub.add_parser(
        "profile-heads", help="measure per-head sensitivity and write a head-budget profile",
        description="Compact every full-attention layer uniformly, then restore one KV head at a time and "
                    "measure how much closer the next-token distributions come to the full cache's. The result "
                    "is a JSON head-budget profile for compact(..., head_budgets=PATH).")
    add_model(prof)
    add_ratio(prof, 10, what="ratio the profile is tuned at")
    prof.add_argument("--context", type=positive_int, default=1024, help="context tokens (default 1024)")
    prof.add_argument("--continuation", type=positive_int, default=64, help="teacher-forced tokens (default 64)")
    prof.add_argument("--out", type=Path, default=None, help="JSON path (default: ./<model>.json)")
    prof.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`agentmem profile-heads`: one bar step for the uniform baseline, then one per layer."""
    from .. import hf
    from ..bench import profile_heads

    model, tokenizer = load(args.model)
    layers = hf.text_config(model).num_hidden_layers - len(hf.sliding_layers(model))
    with bar(total=layers + 1, desc="profiling heads", unit="layer") as steps:
        def progress(line: str) -> None:
            steps.write(line, file=sys.stderr)  # above the bar (a plain print when bars are off)
            steps.update(1)

        profile = profile_heads.run(model, tokenizer, ratio=args.ratio, context=args.context,
                                    continuation=args.continuation, model_name=args.model, progress=progress)
    out = args.out or Path(f"{args.model}.json")
    out.write_text(json.dumps(profile, indent=1))
    print(f"wrote {out}")
    print(json.dumps({"profile": str(out), "heads": len(profile["proportions"]), **profile["summary"]}))
    return 0
