"""`agentmem scenario aime`: end-to-end scenarios of the memory engine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from .common import (
    add_json,
    add_limit,
    add_method,
    add_model,
    add_ratio,
    load,
    non_negative_float,
    non_negative_int,
    plot_problem,
    positive_int,
    say,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `scenario` and its subcommands."""
    scen = sub.add_parser("scenario", help="end-to-end scenarios of the memory engine",
                          description="End-to-end scenarios of the memory engine (a table, a plot, one JSON line).")
    scen_sub = scen.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    aime = scen_sub.add_parser(
        "aime", help="long step-by-step reasoning under a physical KV limit vs the same model without one",
        description="Each problem is decoded twice with the same seed: with a physical KV limit (compacting "
        "everything but the prompt and the most recent tokens each time the limit is reached) and without one. "
        "Prints a table, writes a plot of logical vs physical KV, ends with one JSON line.")
    add_model(aime)
    add_limit(aime)
    add_ratio(aime, 5, what="compaction ratio per round")
    aime.add_argument("--rounds", type=positive_int, default=8, help="most compactions per problem (default 8)")
    aime.add_argument("--problems", type=positive_int, default=4, help="how many problems (default 4)")
    aime.add_argument("--problems-file", type=Path, default=None,
                      help="JSONL with question/answer per line (e.g. a real AIME set); default: built-in problems")
    aime.add_argument("--max-new-tokens", type=positive_int, default=None,
                      help="default: enough to refill the limit --rounds times")
    add_method(aime)
    aime.add_argument("--protect-recent", type=non_negative_int, default=64,
                      help="recent tokens never compacted (default 64)")
    aime.add_argument("--pin-question", action="store_true",
                      help="keep the question verbatim (default: only the system prompt and recent tokens are kept)")
    aime.add_argument("--min-new-tokens", type=non_negative_int, default=0,
                      help="suppress the end of turn before this many tokens, to force long generations (default 0)")
    aime.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    aime.add_argument("--seed", type=int, default=0, help="sampling and problem-choice seed (default 0)")
    add_json(aime)
    aime.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --json or ./)")
    aime.set_defaults(func=run_aime)


def run_aime(args: argparse.Namespace) -> int:
    """`agentmem scenario aime`."""
    from ..scenarios import aime, problems

    if args.limit < 2 * args.protect_recent:
        raise ConfigError(f"--limit {args.limit} leaves no room: it must be at least twice --protect-recent "
                          f"({args.protect_recent})")
    chosen = (problems.load_jsonl(args.problems_file, limit=args.problems) if args.problems_file
              else problems.builtin(args.problems, seed=args.seed))
    no_plot = plot_problem(args.plot)
    model, tokenizer = load(args.model)

    def save_so_far(partial: dict) -> None:  # after every problem, the last one included
        partial["summary"].update(model=args.model, complete=len(partial["runs"]) == len(chosen))
        args.json.write_text(json.dumps(partial, indent=1))

    result = aime.run(model, tokenizer, chosen, limit=args.limit, ratio=args.ratio, rounds=args.rounds,
                      max_new_tokens=args.max_new_tokens, method=args.method, protect_recent=args.protect_recent,
                      pin_question=args.pin_question, min_new_tokens=args.min_new_tokens,
                      temperature=args.temperature, seed=args.seed, progress=say,
                      on_problem=save_so_far if args.json else None)
    result["summary"].update(model=args.model, complete=True)
    print(aime.table(result))
    plot = args.plot or (args.json.with_suffix(".png") if args.json else Path("scenario-aime.png"))
    if no_plot:
        print(f"plot: not drawn, {no_plot}")
    else:
        aime.plot(result, plot)
        print(f"plot: {plot}")
    print(json.dumps(result["summary"]))
    return 0
