"""The reference scenario: one long reasoning generation compacted again and again.

For each problem the same model decodes twice with the same seed: once with a physical
KV limit (when the cache reaches it, everything but the prompt and the protected most
recent tokens is compacted with recent decode queries plus repeat-prefill, and decoding
goes on; earlier beta is honoured at the next round) and once without a limit. On a small
model the figure that matters is agreement with the unlimited run.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..engine import Session
from ..errors import ConfigError
from ..policies import Policy
from .problems import INSTRUCTION, Problem, extract_answer, same_answer


def default_max_new_tokens(limit: int, ratio: float, rounds: int) -> int:
    """Enough tokens to reach the limit once and then refill it about `rounds` times."""
    return int(limit + rounds * limit * (1 - 1 / ratio))


def run(
    model,
    tokenizer,
    problems: Sequence[Problem],
    *,
    limit: int = 2048,
    ratio: float = 5.0,
    rounds: int = 8,
    max_new_tokens: int | None = None,
    method: str = "am-fast",
    protect_recent: int = 64,
    pin_question: bool = False,
    min_new_tokens: int = 0,
    temperature: float = 0.0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    progress_every: int = 1024,
    on_problem: Callable[[dict], None] | None = None,
) -> dict:
    """Run every problem with and without the limit; returns `{"summary": ..., "runs": [...]}`.

    `progress` gets a line at each phase and every `progress_every` generated tokens;
    `on_problem` gets the result so far (same shape as the return value) after each
    problem, so a long run that is stopped keeps what it finished.
    """
    policy = Policy.budget(limit, ratio, method=method, pins=["system", "first_user"] if pin_question else ["system"],
                           protect_recent=protect_recent, min_segment_tokens=4)  # checks the arguments first
    max_new_tokens = max_new_tokens or default_max_new_tokens(limit, ratio, rounds)
    settings = dict(limit=limit, ratio=ratio, rounds=rounds, method=method, max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens, pin_question=pin_question)
    say = progress or (lambda _: None)
    runs = []
    for number, problem in enumerate(problems, 1):
        say(f"[{number}/{len(problems)}] {problem.id}: unlimited run")
        full = _decode(model, tokenizer, problem, "off", max_new_tokens, min_new_tokens, temperature, seed,
                       rounds=None, report=_reporter(say, progress_every, max_new_tokens))
        say(f"[{number}/{len(problems)}] {problem.id}: limited run ({limit} slots, x{ratio:g})")
        limited = _decode(model, tokenizer, problem, policy, max_new_tokens, min_new_tokens, temperature, seed,
                          rounds=rounds, report=_reporter(say, progress_every, max_new_tokens))
        runs.append(_compare(problem, limited, full))
        say(f"  compactions {runs[-1]['compactions']}, agree {runs[-1]['agree']}, "
            f"diverge at {runs[-1]['first_divergence']}")
        if on_problem is not None:
            on_problem({"summary": _summary(runs, **settings), "runs": list(runs)})
    return {"summary": _summary(runs, **settings), "runs": runs}


def _reporter(say: Callable[[str], None], every: int, total: int) -> Callable[[Session, int], None]:
    """A line every `every` generated tokens: tokens, rate, physical and logical KV, compactions."""
    began = time.perf_counter()

    def report(session: Session, generated: int) -> None:
        if every > 0 and generated % every == 0:
            stats = session.stats()
            done = sum(1 for e in session.events if e.status == "ok")
            rate = generated / (time.perf_counter() - began)
            say(f"    {generated}/{total} tokens, {rate:.1f} tok/s, physical {stats.physical_tokens}, "
                f"logical {stats.logical_tokens}, compactions {done}")

    return report


def _decode(model, tokenizer, problem, policy, max_new_tokens, min_new_tokens, temperature, seed, *,
            rounds, report: Callable[[Session, int], None] | None = None) -> dict:
    session = Session(model, tokenizer, policy=policy, system=INSTRUCTION, seed=seed, watch_every=1)
    session.add("user", problem.question)
    pinned = session.segments[-1].end
    if isinstance(policy, Policy):
        kept = pinned if policy.pin.pinned(session.segments[-1], session.segments) else session.segments[0].end
        if max(kept + policy.protect_recent, pinned) >= policy.trigger.limit:
            raise ConfigError(f"problem {problem.id}: the prompt is {pinned} tokens ({kept} of them kept verbatim), "
                              f"too close to the limit of {policy.trigger.limit}; raise --limit"
                              + (" or drop --pin-question" if kept == pinned else ""))

    generated = itertools.count(1)

    def stop_when(s: Session) -> bool:  # called once after each generated token but the last
        if report is not None:
            report(s, next(generated))
        if not rounds:
            return False
        done = sum(1 for e in s.events if e.status == "ok")
        return done >= rounds and s.policy.should_compact(s.stats(), 1) is not None

    began = time.perf_counter()
    reply = session.generate(max_new_tokens, temperature=temperature, min_new_tokens=min_new_tokens or None,
                             stop_when=stop_when)
    seconds = time.perf_counter() - began
    peak = max([p for _, _, p, _ in session.timeline] + [e.tokens_before for e in session.events])
    return {
        "text": reply.text,
        "tokens": reply.token_ids,
        "finish": reply.finish_reason,
        "seconds": seconds,
        "peak_physical": peak,
        "compactions": [e.to_dict() for e in session.events],
        "timeline": [[round(t, 3), logical, physical] for t, logical, physical, _ in session.timeline],
    }


def _compare(problem: Problem, limited: dict, full: dict) -> dict:
    answer, reference = extract_answer(limited["text"]), extract_answer(full["text"])
    diverge = next((i for i, (a, b) in enumerate(zip(limited["tokens"], full["tokens"])) if a != b), None)
    if diverge is None and len(limited["tokens"]) != len(full["tokens"]):
        diverge = min(len(limited["tokens"]), len(full["tokens"]))
    ok = [e for e in limited["compactions"] if e["status"] == "ok"]
    return {
        "id": problem.id,
        "question": problem.question,
        "answer": problem.answer,
        "limited_answer": answer,
        "unlimited_answer": reference,
        "agree": answer == reference if answer is None or reference is None else same_answer(answer, reference),
        "correct": same_answer(answer, problem.answer),
        "unlimited_correct": same_answer(reference, problem.answer),
        "tokens": len(limited["tokens"]),
        "unlimited_tokens": len(full["tokens"]),
        "finish": limited["finish"],
        "unlimited_finish": full["finish"],
        "compactions": len(ok),
        "compaction_seconds": sum(e["seconds"] for e in ok),
        "peak_physical_tokens": limited["peak_physical"],
        "unlimited_peak_tokens": full["peak_physical"],
        "seconds": limited["seconds"],
        "unlimited_seconds": full["seconds"],
        "first_divergence": diverge,
        "text": limited["text"],
        "unlimited_text": full["text"],
        "events": limited["compactions"],
        "timeline": limited["timeline"],
    }


def _summary(runs: list[dict], **settings) -> dict:
    n = max(len(runs), 1)
    diverged = [r["first_divergence"] for r in runs if r["first_divergence"] is not None]
    return {
        **settings,
        "problems": len(runs),
        "compactions": sum(r["compactions"] for r in runs),
        "peak_physical_tokens": max((r["peak_physical_tokens"] for r in runs), default=0),
        "answer_agreement": sum(r["agree"] for r in runs) / n,
        "accuracy": sum(r["correct"] for r in runs) / n,
        "unlimited_accuracy": sum(r["unlimited_correct"] for r in runs) / n,
        "tokens_generated": sum(r["tokens"] for r in runs),
        "median_first_divergence": sorted(diverged)[len(diverged) // 2] if diverged else None,
        "seconds": sum(r["seconds"] for r in runs),
        "unlimited_seconds": sum(r["unlimited_seconds"] for r in runs),
        "compaction_seconds": sum(r["compaction_seconds"] for r in runs),
    }


def table(result: dict) -> str:
    rows = [("problem", "answer", "limited", "unlimited", "agree", "tokens", "compact", "peak KV", "diverge@",
             "seconds")]
    for r in result["runs"]:
        rows.append((r["id"], r["answer"], str(r["limited_answer"]), str(r["unlimited_answer"]),
                     "yes" if r["agree"] else "no", f"{r['tokens']}/{r['unlimited_tokens']}", str(r["compactions"]),
                     f"{r['peak_physical_tokens']}/{r['unlimited_peak_tokens']}", str(r["first_divergence"]),
                     f"{r['seconds']:.0f}/{r['unlimited_seconds']:.0f}"))
    s = result["summary"]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in rows]
    lines.append(f"limit {s['limit']} slots, x{s['ratio']:g} per round, {s['method']}: agreement "
                 f"{s['answer_agreement']:.0%}, accuracy {s['accuracy']:.0%} "
                 f"(unlimited {s['unlimited_accuracy']:.0%}), "
                 f"{s['compactions']} compactions, peak {s['peak_physical_tokens']} slots")
    lines.append("(tokens, peak KV and seconds: limited/unlimited)")
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> Path:
    """Logical vs physical KV tokens over time for each limited run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, r in enumerate(result["runs"]):
        points = r["timeline"]
        if not points:
            continue
        t = [p[0] for p in points]
        color = f"C{i % 10}"
        ax.plot(t, [p[1] for p in points], color=color, linestyle="--", linewidth=1)
        ax.plot(t, [p[2] for p in points], color=color, linewidth=1.5, label=r["id"])
    ax.axhline(result["summary"]["limit"], color="gray", linewidth=0.8, linestyle=":")
    ax.set_xlabel("seconds")
    ax.set_ylabel("KV tokens (solid: physical, dashed: logical)")
    ax.set_title(f"online compaction, limit {result['summary']['limit']}, x{result['summary']['ratio']:g} per round")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
