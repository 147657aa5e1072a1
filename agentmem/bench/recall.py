"""Recall after compaction on the engine path: facts stated early, asked after 1, 3 and 6 compactions.

`--facts` facts (a key bound to a 4-digit code, each in its own phrasing: "The door code
of warehouse vega is 4817.") open a conversation, five to a message, groups alternating
between a user message ("Please remember these for later: ...") and a tool result (a notes
file the assistant reads, a log it searches). Scripted tool turns (`soak.script`) follow
until every limited session has compacted 1, 3 and 6 times. The same messages go to:

- `full`: policy off, the whole conversation in the cache;
- one limited session per method: a physical limit, a fixed ratio, only the system prompt
  and the last turn pinned;
- a limited `streaming` session at the same limit and ratio: the zero of `retained`.

At each checkpoint every session is forked and asked every fact as a user question; the
answer is scored after an assistant reply that restates the key ("The door code of
warehouse vega is"), as in `bench fidelity`: the answer's teacher-forced log-prob
(`recall`, nats, summed over its tokens), `exact` match (every argmax along the answer is
the answer's token, i.e. greedy decoding gives it) and multiple `choice` among 4 of the
conversation's codes (chance 25%). `retained` = (method - streaming) / (full - streaming)
per metric, with fidelity's paired 95% bootstrap interval over facts. Prints a table, ends
with one JSON line.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import hf
from ..compaction import METHODS
from ..engine import Session
from ..errors import CompactionError, ConfigError
from ..policies import PinLastTurns, Policy
from . import fidelity
from .soak import script

TEMPLATES = list(dict.fromkeys(fidelity.TEMPLATES + [
    "The alarm code of the {} office is", "The pallet number of the {} delivery is",
    "The seat number assigned to {} is", "The case number of the {} complaint is",
    "The port number of the {} service is", "The cabinet number of the {} archive is",
    "The voucher code for the {} workshop is", "The flight number of the {} charter is",
    "The meter reading of the {} substation is", "The dock number of the {} ferry is",
    "The account suffix of the {} vendor is", "The frequency of the {} beacon is",
    "The unit number of the {} apartment is", "The safe combination at the {} branch is",
    "The tracking number of the {} parcel is", "The lot number of the {} auction is",
    "The desk number of analyst {} is", "The bin number of the {} supplies is",
    "The patch level of the {} firmware is", "The permit number of the {} construction site is",
    "The locker number of swimmer {} is", "The claim number of the {} insurance file is",
    "The route number of the {} bus is", "The keypad code of the {} garage is",
]))
NAMES = list(dict.fromkeys(fidelity.NAMES + [
    "aurora", "beacon", "cedar", "delta", "echo", "fjord", "glacier", "hazel", "indigo", "jade", "kodiak",
    "lotus", "meridian", "nectar", "oasis", "pebble", "quill", "ridge", "saffron", "tango", "ultra", "violet",
    "walnut", "zephyr",
]))
SYSTEM = "You are a helpful assistant. Answer questions briefly."
GROUP = 5  # facts per opening message
CHOICES = 4  # options per multiple-choice question
METRICS = ("recall", "exact", "choice")
LABELS = {"recall": "lp", "exact": "EM", "choice": "MC"}
INTROS = ["Please remember these for later:", "Some details you will need later on:",
          "Keep these in mind, I will ask about them:", "Note the following, please:"]
STALL_TURNS = 200  # turns without a new compaction before the run gives up


@dataclass
class Fact:
    """One fact: what is stated, how it is asked and its multiple-choice options."""

    key: str  # "The door code of warehouse vega is"
    code: str  # "4817"
    options: list[str]  # CHOICES codes, the planted one at `right`
    right: int
    source: str  # "user" or "tool": the kind of message that states it

    @property
    def line(self) -> str:
        return f"{self.key} {self.code}."

    @property
    def question(self) -> str:
        """The key as a question: "What is the door code of warehouse vega?"."""
        return f"What is {self.key[0].lower()}{self.key[1:-len(' is')]}?"


def check_args(*, facts: int, checkpoints=(1,), methods=()) -> None:
    """Refuse settings that cannot work, before a model is loaded."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    most = min(len(TEMPLATES), len(NAMES))
    if not 1 <= facts <= most:
        raise ConfigError(f"--facts must be 1..{most} (one phrasing template and one name each), got {facts}")
    if not checkpoints or min(checkpoints) < 1:
        raise ConfigError(f"--checkpoints must be compaction counts >= 1, got {list(checkpoints)}")


def make_facts(count: int, seed: int = 0) -> list[Fact]:
    """`count` facts with distinct keys and codes; groups of GROUP alternate user and tool messages."""
    check_args(facts=count)
    rng = random.Random(seed)
    keys = [t.format(n) for t, n in zip(rng.sample(TEMPLATES, count), rng.sample(NAMES, count))]
    codes = [str(c) for c in rng.sample(range(1000, 10000), count)]
    out = []
    for i, (key, code) in enumerate(zip(keys, codes)):
        options = [code] + fidelity.wrong_options(code, codes, CHOICES - 1, rng)
        rng.shuffle(options)
        out.append(Fact(key=key, code=code, options=options, right=options.index(code),
                        source="user" if (i // GROUP) % 2 == 0 else "tool"))
    return out


def opening(facts: list[Fact]) -> list[tuple[str, str]]:
    """(role, content) messages that state `facts`, GROUP to a message."""
    messages = []
    for n, start in enumerate(range(0, len(facts), GROUP)):
        group = facts[start:start + GROUP]
        messages += _told(group, n) if group[0].source == "user" else _read(group, n)
    return messages


def _told(group: list[Fact], n: int) -> list[tuple[str, str]]:
    """A user message listing the facts, and the assistant's acknowledgement."""
    lines = "\n".join(f"- {f.line}" for f in group)
    return [("user", f"{INTROS[n // 2 % len(INTROS)]}\n{lines}"), ("assistant", "Noted, I will remember that.")]


def _read(group: list[Fact], n: int) -> list[tuple[str, str]]:
    """A user request, the assistant's tool call and a tool result holding the facts among other lines."""
    if n // 2 % 2 == 0:
        path = f"notes/handover-{n}.md"
        user = f"Open {path} and read it, we will need it later."
        call = {"name": "read_file", "arguments": {"path": path}}
        body = [f"# Handover notes, part {n}", "Owner: operations"] + [f.line for f in group] + ["End of notes."]
        output = "\n".join(f"{i + 1}: {line}" for i, line in enumerate(body))
    else:
        user = "Search the operations log for the access details recorded last week."
        call = {"name": "search", "arguments": {"pattern": "is [0-9]{4}", "path": "logs/ops.log"}}
        output = "\n".join(f"logs/ops.log:{120 + 7 * i + n}: [ops] {f.line}" for i, f in enumerate(group))
    return [("user", user), ("assistant", f"<tool_call>{json.dumps(call)}</tool_call>"), ("tool", output)]


def limited_policy(limit: int, ratio: float, method: str, again: float | None = None) -> Policy:
    """A physical `limit`, x`ratio` (x`again` for turns compacted before) with `method`; only the
    system prompt and the last turn pinned."""
    return Policy.budget(limit, ratio, method=method, pins=["system", PinLastTurns(1)], again=again)


def compactions(session: Session) -> int:
    """Compaction rounds so far (fallback drops included; one round may hold several spans)."""
    return len({e.logical_tokens for e in session.events if e.status in ("ok", "fallback")})


# ----------------------------------------------------------------------------- scoring


def ask(session: Session, fact: Fact) -> tuple[float, float, float]:
    """(answer log-prob, exact, choice) of `fact` asked of a fork of `session`.

    The fork gets the question as a user message (never compacted: its compaction is
    switched off), then the assistant reply opener and the key are teacher-forced and each
    option scored after them, exactly as `Session.stream(prefix=fact.key)` would see them.
    """
    branch = session.fork()
    branch.compaction_enabled = False
    branch.add("user", fact.question)
    branch.prefill()
    prompt = branch.format.generation_prompt_ids(branch.messages) + branch.format.encode(fact.key)
    options = [branch.format.encode(f" {o}") for o in fact.options]
    cache = hf.CompactedCache.from_cache(branch.cache, scalings=hf.attention_scalings(session.model))
    question = fidelity.Fact(prompt=prompt, options=options, right=fact.right, position=len(branch.ids))
    scores, exact = fidelity.option_logprobs(session.model, cache, question)
    return scores[fact.right], float(exact), float(int(np.argmax(scores)) == fact.right)


def score(session: Session, facts: list[Fact]) -> dict[str, list[float]]:
    """Every fact asked of `session`: per-fact values of each metric."""
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for fact in facts:
        for metric, value in zip(METRICS, ask(session, fact)):
            out[metric].append(value)
    return out


# ----------------------------------------------------------------------------- the run


def run(model, tokenizer, *, limit: int = 2048, ratio: float = 5.0, methods=("am-fast",), facts: int = 40,
        checkpoints=(1, 3, 6), seed: int = 0, progress=None, again: float | None = None) -> dict:
    """Run the benchmark and return {"summary", "facts", "rows"}.

    Args:
        limit, ratio: the limited sessions' physical KV limit and compaction ratio.
        again: their ratio for turns compacted before (`FixedRatio.again`); None: `ratio`.
        methods: one limited session each; `streaming` is added when missing (the zero of retained).
        facts: facts stated in the opening messages, all asked at every checkpoint.
        checkpoints: ask after every limited session has compacted this many times.
        seed: facts, options, scripted turns and the bootstrap.
        progress: called with one line per checkpoint and every 10 turns.

    Each row holds, per session, its compaction rounds, physical tokens, the mean of each
    metric and `retained` ([point, low, high] per metric); `questions` the per-fact values.
    """
    check_args(facts=facts, checkpoints=checkpoints, methods=methods)
    methods = list(dict.fromkeys([*methods, "streaming"]))
    say = progress or (lambda *_: None)
    planted = make_facts(facts, seed)
    sessions = {"full": Session(model, tokenizer, policy="off", system=SYSTEM)}
    sessions |= {m: Session(model, tokenizer, policy=limited_policy(limit, ratio, m, again), system=SYSTEM)
                 for m in methods}
    _feed(sessions, opening(planted))
    opening_tokens = len(sessions["full"].ids)
    say(f"opening: {facts} facts in {len(sessions['full'].messages) - 1} messages, {opening_tokens} tokens")
    rng = random.Random(seed)
    began, turn, rows = time.perf_counter(), 0, []
    for target in sorted(set(checkpoints)):
        turn = _advance(sessions, methods, target, turn, rng, say, began)
        rows.append(_checkpoint(sessions, planted, target, turn, seed))
        say(f"checkpoint {target} (turn {turn}, {rows[-1]['logical_tokens']} tokens, "
            f"{time.perf_counter() - began:.0f}s): " + ", ".join(
                f"{name} lp {s['recall']:.2f}" for name, s in rows[-1]["sessions"].items()))
    summary = {"bench": "recall", "limit": limit, "ratio": ratio, "again": again, "methods": methods,
               "facts": facts,
               "opening_tokens": opening_tokens, "choices": CHOICES, "seed": seed,
               "chance": {"recall": math.log(1e-4), "exact": 1e-4, "choice": 1 / CHOICES},
               "checkpoints": [_brief(r) for r in rows], "seconds": time.perf_counter() - began}
    return {"summary": summary, "facts": [asdict(f) for f in planted], "rows": rows}


def _feed(sessions: dict[str, Session], messages: list[tuple[str, str]]) -> None:
    for role, content in messages:
        for session in sessions.values():
            session.add(role, content)


def _advance(sessions, methods, target: int, turn: int, rng, say, began) -> int:
    """Scripted tool turns until every limited session has compacted `target` times; the new turn count."""
    limited = [sessions[m] for m in methods]
    stalled, done = 0, min(map(compactions, limited))
    while done < target:
        turn += 1
        user, call, output = script(turn, rng)
        _feed(sessions, [("user", user), ("assistant", call), ("tool", output)])
        for session in limited:
            session.prefill()
        now = min(map(compactions, limited))
        stalled = 0 if now > done else stalled + 1
        done = now
        if stalled > STALL_TURNS:
            counts = {m: compactions(sessions[m]) for m in methods}
            raise CompactionError(f"no new compaction in {STALL_TURNS} turns (rounds so far: {counts}); the "
                                  "pinned system prompt and last turn may hold more than --limit")
        if turn % 10 == 0:
            say(f"  turn {turn}: {len(sessions['full'].ids)} tokens, compactions "
                + ", ".join(f"{m} {compactions(sessions[m])}" for m in methods)
                + f", {time.perf_counter() - began:.0f}s")
    sessions["full"].prefill()
    return turn


def _checkpoint(sessions, facts: list[Fact], target: int, turn: int, seed: int) -> dict:
    """Every session asked every fact; means, retained and the per-fact values."""
    questions = {name: score(session, facts) for name, session in sessions.items()}
    full, base = questions["full"], questions["streaming"]
    by_source = {src: [i for i, f in enumerate(facts) if f.source == src] for src in ("user", "tool")}
    out = {}
    for name, session in sessions.items():
        values = questions[name]
        out[name] = {
            "compactions": compactions(session),
            "fallbacks": sum(e.status == "fallback" for e in session.events),
            "physical_tokens": session.stats().physical_tokens,
            **{m: float(np.mean(values[m])) for m in METRICS},
            "recall_by_source": {src: float(np.mean([values["recall"][i] for i in idx]))
                                 for src, idx in by_source.items() if idx},
            "retained": {m: list(fidelity.retained(values[m], full[m], base[m], seed=seed)) for m in METRICS},
        }
    return {"checkpoint": target, "turns": turn, "logical_tokens": len(sessions["full"].ids), "sessions": out,
            "questions": questions}


def _brief(row: dict) -> dict:
    return {"checkpoint": row["checkpoint"], "turns": row["turns"], "logical_tokens": row["logical_tokens"],
            **{name: {"compactions": s["compactions"], "physical_tokens": s["physical_tokens"],
                      **{m: round(s[m], 4) for m in METRICS},
                      "retained_recall": _round(s["retained"]["recall"][0])}
               for name, s in row["sessions"].items()}}


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


# ----------------------------------------------------------------------------- output


def table(result: dict) -> str:
    """One line per checkpoint and session, then what the columns mean."""
    head = (f"{'after':>5s} {'turns':>5s} {'logical':>7s}  {'session':12s} {'rounds':>6s} {'physical':>8s} "
            f"{'recall lp':>9s} {'EM':>4s} {'MC':>4s} {'retained lp':>17s} {'ret. EM':>7s} {'ret. MC':>7s}")
    lines = [head, "-" * len(head)]
    for row in result["rows"]:
        lead = f"{row['checkpoint']:>5d} {row['turns']:>5d} {row['logical_tokens']:>7d}"
        for name, s in row["sessions"].items():
            ret = s["retained"]
            lines.append(f"{lead}  {name:12s} {s['compactions']:>6d} {s['physical_tokens']:>8d} "
                         f"{s['recall']:9.2f} {_pct(s['exact']):>4s} {_pct(s['choice']):>4s} "
                         f"{_interval(ret['recall']):>17s} {_point(ret['exact']):>7s} "
                         f"{_point(ret['choice']):>7s}")
            lead = " " * len(lead)
    s = result["summary"]
    chance = s["chance"]
    again = f" (x{s['again']:g} for turns compacted before)" if s.get("again") else ""
    lines += [f"{s['facts']} facts in the first {s['opening_tokens']} tokens; limit {s['limit']}, x{s['ratio']:g}"
              f"{again}; rounds: compactions so far",
              f"recall lp: the answer's log-prob (nats; chance {chance['recall']:.2f}); EM: greedy answer exact; "
              f"MC: the code among {s['choices']} of the conversation's (chance {chance['choice']:.0%})",
              "retained = (method - streaming) / (full - streaming), 95% bootstrap interval over facts"]
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"


def _point(triple) -> str:
    return _pct(triple[0])


def _interval(triple) -> str:
    point, lo, hi = triple
    if math.isnan(point):
        return "-"
    return f"{point:.0%}" if math.isnan(lo) else f"{point:.0%} [{lo:.0%},{hi:.0%}]"
