"""Recall after compaction: facts stated early, asked after 1, 3 and 6 compactions.

A limited session (physical KV limit, only the system prompt and the last turn pinned)
and a full-cache session receive the same messages: a few facts, then scripted tool
turns until the limited one has compacted 1, 3 and 6 times. At each checkpoint both are
forked and asked every fact; a reply recalls a fact when it contains the fact's value.
Prints a table, ends with one JSON line.
"""

from __future__ import annotations

import random
import time

from ..engine import Session
from ..policies import AnyPin, FixedRatio, PinLastTurns, PinSystem, Policy, TokenLimit
from .soak import script

FACTS = [
    ("The access code for the vault is 4817.", "What is the access code for the vault?", "4817"),
    ("Our project's code name is Bluefinch.", "What is our project's code name?", "Bluefinch"),
    ("The staging server runs on port 7342.", "Which port does the staging server run on?", "7342"),
    ("The release manager is Priya Natarajan.", "Who is the release manager?", "Priya"),
]
SYSTEM = "You are a helpful assistant. Answer questions briefly."


def run(model, tokenizer, *, limit: int = 2048, ratio: float = 5.0, method: str = "am-fast",
        checkpoints: tuple[int, ...] = (1, 3, 6), answer_tokens: int = 16, seed: int = 0, progress=None) -> dict:
    policy = Policy(trigger=TokenLimit(limit), ratio=FixedRatio(ratio), pin=AnyPin((PinSystem(), PinLastTurns(1))),
                    method=method)
    limited = Session(model, tokenizer, policy=policy, system=SYSTEM)
    full = Session(model, tokenizer, policy="off", system=SYSTEM)
    for fact, _, _ in FACTS:
        for session in (limited, full):
            session.add("user", f"Please remember this: {fact}")
            session.add("assistant", "Noted, I will remember that.")
    rng = random.Random(seed)
    results = []
    turn = 0
    began = time.perf_counter()
    for target in checkpoints:
        while _compactions(limited) < target:
            turn += 1
            user, call, output = script(turn, rng)
            for session in (limited, full):
                session.add("user", user)
                session.add("assistant", call)
                session.add("tool", output)
            limited.prefill()
        full.prefill()
        row = {"compactions": _compactions(limited), "turns": turn, "logical_tokens": limited.cached,
               "physical_tokens": limited.stats().physical_tokens, "facts": []}
        for _, question, value in FACTS:
            answers = [_ask(s, question, answer_tokens) for s in (limited, full)]
            row["facts"].append({"question": question, "value": value, "limited": answers[0], "full": answers[1],
                                 "limited_recalls": value.lower() in answers[0].lower(),
                                 "full_recalls": value.lower() in answers[1].lower(),
                                 "same_reply": answers[0].strip() == answers[1].strip()})
        n = len(row["facts"])
        row["limited_recall"] = sum(f["limited_recalls"] for f in row["facts"]) / n
        row["full_recall"] = sum(f["full_recalls"] for f in row["facts"]) / n
        row["same_reply"] = sum(f["same_reply"] for f in row["facts"]) / n
        results.append(row)
        if progress:
            progress(f"after {row['compactions']} compactions ({turn} turns, {row['logical_tokens']} tokens): "
                     f"recall {row['limited_recall']:.0%} vs full {row['full_recall']:.0%}")
    return {"summary": {"limit": limit, "ratio": ratio, "method": method, "facts": len(FACTS),
                        "checkpoints": [{k: r[k] for k in ("compactions", "turns", "logical_tokens",
                                                            "physical_tokens", "limited_recall", "full_recall",
                                                            "same_reply")} for r in results],
                        "seconds": time.perf_counter() - began},
            "rows": results}


def _compactions(session: Session) -> int:
    return sum(e.status == "ok" for e in session.events)


def _ask(session: Session, question: str, tokens: int) -> str:
    branch = session.fork()
    branch.add("user", question)
    return branch.generate(tokens).text


def table(result: dict) -> str:
    lines = ["compactions  turns  logical  physical  recall (limited)  recall (full cache)  same reply"]
    for r in result["rows"]:
        lines.append(f"{r['compactions']:>11}  {r['turns']:>5}  {r['logical_tokens']:>7}  {r['physical_tokens']:>8}  "
                     f"{r['limited_recall']:>16.0%}  {r['full_recall']:>19.0%}  {r['same_reply']:>10.0%}")
    for r in result["rows"]:
        for f in r["facts"]:
            lines.append(f"  [{r['compactions']}] {f['question']} limited: {f['limited'].strip()[:50]!r} | "
                         f"full: {f['full'].strip()[:50]!r}")
    return "\n".join(lines)
