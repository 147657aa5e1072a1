"""`agentmem bench compaction|fidelity|engine|soak|recall|agent`: the benchmark programs.

Each prints a table and ends with one JSON line; the measuring code is in `agentmem.bench`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from .common import (
    add_json,
    add_limit,
    add_method,
    add_model,
    add_ratio,
    load,
    method,
    non_negative_float,
    non_negative_int,
    plot_problem,
    positive_int,
    ratio,
    say,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `bench` and its subcommands."""
    bench = sub.add_parser(
        "bench", help="benchmarks (programs that print a table and one JSON line)",
        description="Benchmarks of the compaction methods and the memory engine. Each prints a table, progress "
                    "lines on stderr, and ends with one JSON line on stdout.")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")

    comp = bench_sub.add_parser(
        "compaction", help="quality / speed / size of every method at several ratios",
        description="Prefill real text, compact it with every method at every ratio, teacher-force its real "
                    "continuation and compare next-token distributions (KL, NLL gap) with the full cache. "
                    "Writes a quality-vs-ratio plot.")
    add_model(comp)
    comp.add_argument("--ratios", type=ratio, nargs="+", default=[5, 10, 20, 50], help="default: 5 10 20 50")
    comp.add_argument("--methods", nargs="+", default=None,
                      help="default: all of agentmem's methods, plus kvpress's presses (kvpress-snapkv, ...) "
                           "when kvpress is installed. METHOD:captured fits on the prefill's own queries instead "
                           "of a repeat pass, METHOD:both on both")
    comp.add_argument("--capture", type=positive_int, default=1024,
                      help="positions per layer the prefill keeps for METHOD:captured|both (default 1024)")
    comp.add_argument("--decode-rounds", type=non_negative_int, default=3,
                      help="interleaved decode timing rounds (full, then each ratio); 0 skips decode (default 3)")
    comp.add_argument("--context", type=positive_int, default=3072, help="context tokens (default 3072)")
    comp.add_argument("--continuation", type=positive_int, default=128, help="teacher-forced tokens (default 128)")
    comp.add_argument("--contexts", type=positive_int, default=1, help="how many contexts to average (default 1)")
    add_json(comp)
    comp.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --json or ./)")
    comp.set_defaults(func=run_compaction)

    fid = bench_sub.add_parser(
        "fidelity", help="does the compacted span still answer questions about itself (recall, MC, references)",
        description="Plant short facts in real text, compact everything but the last --protect tokens with every "
                    "method at every ratio, then ask: the planted answer's log-prob and exact match, multiple "
                    "choice among the context's codes, the full cache's own answers to quotes of the span "
                    "(NLL), continuation KL. Reports retained = (method - streaming) / (full - streaming) with "
                    "95% bootstrap intervals, bytes and time per row, and writes a retained-vs-ratio plot.")
    add_model(fid)
    fid.add_argument("--contexts", type=positive_int, default=4, help="how many contexts (default 4)")
    fid.add_argument("--context", type=positive_int, default=2048, help="context tokens (default 2048)")
    fid.add_argument("--facts", type=positive_int, default=10,
                     help="facts planted per context, also the reference questions per context (default 10)")
    fid.add_argument("--ratios", type=ratio, nargs="+", default=[10, 20, 50], help="default: 10 20 50")
    fid.add_argument("--methods", nargs="+", default=None,
                     help="default: all of agentmem's methods, plus kvpress's presses when kvpress is installed; "
                          "streaming always runs (it is the zero of retained). METHOD:captured fits on the "
                          "prefill's own queries instead of a repeat pass, METHOD:both on both")
    fid.add_argument("--capture", type=positive_int, default=1024,
                     help="positions per layer the prefill keeps for METHOD:captured|both (default 1024)")
    fid.add_argument("--protect", type=int, default=64,
                     help="last tokens of the context left uncompacted (default 64, at most a fifth of --context)")
    fid.add_argument("--seed", type=int, default=0, help="facts, quotes and bootstrap seed (default 0)")
    add_json(fid)
    fid.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --json or ./)")
    fid.set_defaults(func=run_fidelity)

    over = bench_sub.add_parser(
        "engine", help="decode tokens/s of the engine vs plain model.generate",
        description="Decode speed of a Session against plain model.generate on the same prompt (target: under "
                    "10% overhead).")
    add_model(over)
    over.add_argument("--prompt-tokens", type=positive_int, default=512, help="default 512")
    over.add_argument("--new-tokens", type=positive_int, default=128, help="default 128")
    over.add_argument("--repeats", type=positive_int, default=3, help="default 3")
    add_json(over)
    over.set_defaults(func=run_engine)

    soak = bench_sub.add_parser(
        "soak", help="hundreds of scripted tool turns under a KV limit, all in SQLite",
        description="Hundreds of scripted tool turns under a physical KV limit, every turn committed to SQLite; "
                    "reports KV size, turn time and memory over the run.")
    add_model(soak)
    soak.add_argument("--turns", type=positive_int, default=500, help="default 500")
    add_limit(soak)
    add_ratio(soak, 5)
    add_method(soak)
    soak.add_argument("--reply-tokens", type=positive_int, default=8, help="generated tokens per turn (default 8)")
    soak.add_argument("--db", type=Path, default=Path("agentmem-soak.db"), help="default agentmem-soak.db")
    add_json(soak)
    soak.set_defaults(func=run_soak)

    rec = bench_sub.add_parser(
        "recall", help="facts from early turns asked after 1, 3 and 6 compactions",
        description="Facts stated in the first user messages and tool results are asked for again after 1, 3 and "
                    "6 compactions of the conversation around them, of a full-cache session, one limited session "
                    "per method and a limited streaming session: the answer's log-prob, exact match and multiple "
                    "choice, with retained = (method - streaming) / (full - streaming) and 95% bootstrap "
                    "intervals.")
    add_model(rec)
    add_limit(rec)
    add_ratio(rec, 5)
    rec.add_argument("--again", type=ratio, default=None,
                     help="ratio for turns compacted before (FixedRatio.again; default: --ratio, so the oldest "
                          "turns compound to ratio^n after n compactions)")
    rec.add_argument("--methods", "--method", dest="methods", type=method, nargs="+", default=["am-fast"],
                     help="compaction method(s), one limited session each (default am-fast); a streaming session "
                          "always runs (it is the zero of retained)")
    rec.add_argument("--facts", type=int, default=40,
                     help="facts stated in the opening messages, half in user messages, half in tool results "
                          "(default 40)")
    rec.add_argument("--checkpoints", type=positive_int, nargs="+", default=[1, 3, 6],
                     help="ask after this many compactions (default 1 3 6)")
    rec.add_argument("--seed", type=int, default=0, help="facts, scripted turns and bootstrap seed (default 0)")
    add_json(rec)
    rec.set_defaults(func=run_recall)

    ag = bench_sub.add_parser(
        "agent", help="does the coding agent still fix its bugs when its memory is compacted, per memory mode",
        description="The example coding agent works on each bundled task (a small project whose tests fail; two "
                    "need a fact read many turns earlier) once per memory mode and seed, under a KV limit that "
                    "forces compactions. Modes: full (no limit), am, am-fast, streaming, drop-oldest and summary "
                    "(the model's text summary replaces old turns). Prints success, turns, tokens prefilled and "
                    "reused, peak KV, compaction and wall seconds per mode, writes a plot, ends with one JSON line.")
    from ..coding_agent import DEMO_MODEL

    add_model(ag, default=DEMO_MODEL, note="the demo's")
    ag.add_argument("--tasks", nargs="+", default=None, help="task names (default: all bundled tasks)")
    ag.add_argument("--modes", nargs="+", default=None,
                    help="default: full am am-fast streaming drop-oldest summary")
    add_limit(ag, default=1536)
    add_ratio(ag, 4)
    ag.add_argument("--again", type=ratio, default=None,
                    help="ratio for a turn compacted before (default: --ratio again at every compaction; "
                         "1: each turn is compacted once)")
    ag.add_argument("--max-turns", type=positive_int, default=20, help="model replies per run at most (default 20)")
    ag.add_argument("--seeds", type=positive_int, default=1, help="runs per task and mode (default 1)")
    ag.add_argument("--temperature", type=non_negative_float, default=0.2, help="sampling temperature (default 0.2)")
    add_json(ag)
    ag.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --json or ./)")
    ag.add_argument("--transcripts", type=Path, default=None, metavar="DIR",
                    help="write each run's tool calls and compactions to DIR/TASK-MODE-SEED.txt")
    ag.set_defaults(func=run_agent)


def run_compaction(args: argparse.Namespace) -> int:
    """`agentmem bench compaction`."""
    from ..bench import compaction as bench

    methods = args.methods or bench.default_methods()
    bench.check_methods(methods)
    no_plot = plot_problem(args.plot)
    model, tokenizer = load(args.model)
    result = bench.run(model, tokenizer, ratios=args.ratios, methods=methods,
                       context=args.context, continuation=args.continuation, count=args.contexts,
                       capture=args.capture, decode_rounds=args.decode_rounds,
                       decode_steps=32 if args.decode_rounds > 0 else 0, progress=say)
    result["summary"]["model"] = args.model
    print(bench.table(result))
    title = f"{args.model}: {args.context}-token contexts"
    draw_plot(args, "compaction", no_plot, lambda path: bench.plot(result, path, title))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(bench.summary_line(result, args.model))
    return 0


def run_fidelity(args: argparse.Namespace) -> int:
    """`agentmem bench fidelity`."""
    from ..bench import common, fidelity

    methods = args.methods or common.default_methods()
    common.check_methods(methods)
    fidelity.check_args(context=args.context, facts=args.facts, protect=args.protect)
    no_plot = plot_problem(args.plot)
    model, tokenizer = load(args.model)
    result = fidelity.run(model, tokenizer, ratios=args.ratios, methods=methods, context=args.context,
                          count=args.contexts, facts=args.facts, protect=args.protect, seed=args.seed,
                          capture=args.capture, progress=say)
    result["summary"]["model"] = args.model
    print(fidelity.table(result))
    title = f"{args.model}: {args.context}-token contexts, {result['summary']['questions']} questions per cell"
    draw_plot(args, "fidelity", no_plot, lambda path: fidelity.plot(result, path, title))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(fidelity.summary_line(result, args.model))
    return 0


def run_engine(args: argparse.Namespace) -> int:
    """`agentmem bench engine`."""
    from ..bench import overhead

    model, tokenizer = load(args.model)
    result = overhead.run(model, tokenizer, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                          repeats=args.repeats, progress=say)
    summary = {k: v for k, v in result.items() if k != "runs"} | {"model": args.model}
    return finish(result, args, overhead.table(result), summary)


def run_soak(args: argparse.Namespace) -> int:
    """`agentmem bench soak`."""
    from ..bench import soak

    model, tokenizer = load(args.model)
    result = soak.run(model, tokenizer, db=args.db, turns=args.turns, limit=args.limit, ratio=args.ratio,
                      method=args.method, reply_tokens=args.reply_tokens, progress=say)
    return finish(result, args, soak.table(result), result["summary"] | {"model": args.model})


def run_recall(args: argparse.Namespace) -> int:
    """`agentmem bench recall`."""
    from ..bench import recall

    recall.check_args(facts=args.facts, checkpoints=args.checkpoints, methods=args.methods)
    model, tokenizer = load(args.model)
    result = recall.run(model, tokenizer, limit=args.limit, ratio=args.ratio, again=args.again, methods=args.methods,
                        facts=args.facts, checkpoints=tuple(args.checkpoints), seed=args.seed, progress=say)
    result["summary"]["model"] = args.model
    return finish(result, args, recall.table(result), result["summary"])


def run_agent(args: argparse.Namespace) -> int:
    """`agentmem bench agent`."""
    from ..bench import agent

    modes = args.modes or list(agent.MODES)
    agent.check_args(modes=modes, limit=args.limit, seeds=args.seeds, max_turns=args.max_turns)
    agent.tasks(args.tasks)  # unknown names fail before the model loads
    no_plot = plot_problem(args.plot)
    model, tokenizer = load(args.model)
    result = agent.run(model, tokenizer, name=args.model, task_names=args.tasks, modes=modes, limit=args.limit,
                       ratio=args.ratio, again=args.again, max_turns=args.max_turns, seeds=args.seeds,
                       temperature=args.temperature, progress=say, transcripts=args.transcripts)
    print(agent.table(result))
    draw_plot(args, "agent", no_plot, lambda path: agent.plot(result, path))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(agent.summary_line(result))
    return 0


def draw_plot(args: argparse.Namespace, kind: str, problem: str | None, draw: Callable[[Path], object]) -> None:
    """Draw a benchmark's PNG at --plot (default: next to --json, else ./bench-KIND-MODEL.png) and say
    where, or say why not (`problem`, from `plot_problem` before the model loaded)."""
    if problem:
        print(f"plot: not drawn, {problem}")
        return
    path = args.plot or (args.json.with_suffix(".png") if args.json else Path(f"bench-{kind}-{args.model}.png"))
    draw(path)
    print(f"plot: {path}")


def finish(result: dict, args: argparse.Namespace, text: str, summary: dict) -> int:
    """Print the table, write the full result to --json if asked, end with the summary JSON line."""
    print(text)
    if getattr(args, "json", None):
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary))
    return 0
