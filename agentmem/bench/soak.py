"""Soak: hundreds of turns of a scripted tool-using conversation under a physical KV limit.

Each turn: a user request, a scripted assistant tool call, its tool output (the tool call
and output form one segment), then a short generated reply; every turn is committed to
SQLite. Checks: physical KV never exceeds the limit plus one turn, the process's resident
memory stays flat after warm-up, and every turn is in the store. Prints a table, ends with
one JSON line.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from ..engine import Session
from ..policies import Policy
from ..store import Store

FILES = ["src/app.py", "src/db.py", "src/cli.py", "tests/test_app.py", "README.md", "setup.cfg"]


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def script(turn: int, rng: random.Random) -> tuple[str, str, str]:
    """(user request, assistant tool call, tool output) of one scripted turn."""
    path = rng.choice(FILES)
    line = rng.randint(1, 400)
    user = f"Turn {turn}: check {path} around line {line} and tell me if anything looks wrong."
    call = json.dumps({"name": "read_file", "arguments": {"path": path, "start": line, "end": line + 6}})
    body = "\n".join(f"{line + i}: value_{rng.randint(0, 999)} = compute({rng.randint(0, 99)}, "
                     f"{rng.choice(['a', 'b', 'c'])})" for i in range(6))
    return user, f"<tool_call>{call}</tool_call>", body


def run(model, tokenizer, *, db: str | Path, turns: int = 500, limit: int = 2048, ratio: float = 5.0,
        method: str = "am-fast", reply_tokens: int = 8, seed: int = 0, progress=None) -> dict:
    policy = Policy.budget(limit, ratio, method=method)
    store = Store(db)
    session = Session(model, tokenizer, policy=policy, store=store, system="You are a careful code reviewer.",
                      title="soak")
    rng = random.Random(seed)
    rows = []
    began = time.perf_counter()
    for turn in range(1, turns + 1):
        user, call, output = script(turn, rng)
        session.add("user", user)
        session.add("assistant", call)
        session.add("tool", output)
        before_events = len(session.events)
        peak_turn = 0

        def watch(s: Session) -> bool:
            nonlocal peak_turn
            peak_turn = max(peak_turn, s.stats().physical_tokens)
            return False

        turn_began = time.perf_counter()
        session.generate(reply_tokens, stop_when=watch)  # commits the turn
        stats = session.stats()
        peak = max([peak_turn, stats.physical_tokens] + [e.tokens_before for e in session.events[before_events:]])
        rows.append({"turn": turn, "physical": stats.physical_tokens, "logical": stats.logical_tokens,
                     "peak_physical": peak, "turn_tokens": len(session.ids) - rows[-1]["tokens"] if rows else
                     len(session.ids), "tokens": len(session.ids),
                     "compactions": sum(e.status == "ok" for e in session.events),
                     "rss_mb": rss_mb(), "seconds": time.perf_counter() - turn_began})
        if progress and (turn % 25 == 0 or turn == turns):
            r = rows[-1]
            progress(f"turn {turn}: logical {r['logical']}, physical {r['physical']}, compactions "
                     f"{r['compactions']}, rss {r['rss_mb']:.0f} MB, {time.perf_counter() - began:.0f}s")
    stored = store.get_session(session.id)
    messages = len(store.messages(session.id))
    warm = rows[min(len(rows) - 1, max(0, turns // 5))]
    max_turn = max(r["turn_tokens"] for r in rows)
    return {
        "summary": {
            "turns": turns, "limit": limit, "ratio": ratio, "method": method,
            "peak_physical_tokens": max(r["peak_physical"] for r in rows),
            "largest_turn_tokens": max_turn,
            "within_limit_plus_one_turn": max(r["peak_physical"] for r in rows) <= limit + max_turn,
            "compactions": rows[-1]["compactions"],
            "fallbacks": sum(e.status == "fallback" for e in session.events),
            "logical_tokens": rows[-1]["logical"],
            "rss_mb_after_warmup": warm["rss_mb"], "rss_mb_end": rows[-1]["rss_mb"],
            "rss_growth_mb": rows[-1]["rss_mb"] - warm["rss_mb"],
            "turns_in_store": stored["turns"], "messages_in_store": messages,
            "messages_expected": len(session.messages),
            "seconds": time.perf_counter() - began,
            "db_bytes": Path(db).stat().st_size,
        },
        "rows": rows,
    }


def table(result: dict) -> str:
    s = result["summary"]
    lines = ["turn  logical  physical  peak  compactions  rss MB"]
    step = max(1, len(result["rows"]) // 10)
    for r in result["rows"][step - 1 :: step]:
        lines.append(f"{r['turn']:>4}  {r['logical']:>7}  {r['physical']:>8}  {r['peak_physical']:>4}  "
                     f"{r['compactions']:>11}  {r['rss_mb']:>6.0f}")
    lines.append(f"{s['turns']} turns, limit {s['limit']}: peak physical {s['peak_physical_tokens']} "
                 f"(limit + largest turn = {s['limit'] + s['largest_turn_tokens']}), {s['compactions']} compactions, "
                 f"{s['fallbacks']} fallbacks; RSS {s['rss_mb_after_warmup']:.0f} -> {s['rss_mb_end']:.0f} MB; "
                 f"{s['turns_in_store']} turns and {s['messages_in_store']}/{s['messages_expected']} messages "
                 f"in SQLite ({s['db_bytes'] / 2**20:.1f} MB)")
    return "\n".join(lines)
