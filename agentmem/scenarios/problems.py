"""Multi-step problems with known answers for the AIME-style scenario.

No AIME data can be downloaded here, so the built-in set is generated with a fixed seed:
arithmetic chains and state-tracking stories whose answer is an integer. A user's JSONL of
real problems (`{"question": ..., "answer": ...}` per line) replaces them.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

INSTRUCTION = ("Solve the problem step by step. Work through the steps one at a time and write each "
               "intermediate result on its own line. End with a line of the form 'Answer: <number>'.")


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str


def builtin(count: int, *, seed: int = 0) -> list[Problem]:
    """`count` problems alternating arithmetic chains and state tracking, from `seed`."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        maker = _arithmetic if i % 2 == 0 else _tracking
        question, answer = maker(rng, steps=10 + 4 * (i % 5))
        out.append(Problem(id=f"{maker.__name__.strip('_')}-{i}", question=question, answer=str(answer)))
    return out


def _arithmetic(rng: random.Random, *, steps: int) -> tuple[str, int]:
    value = rng.randint(2, 20)
    lines = [f"Start with the number {value}."]
    for step in range(1, steps + 1):
        op = rng.choice(["add", "subtract", "multiply", "add"])
        if op == "multiply" and abs(value) < 200:
            k = rng.randint(2, 4)
            value *= k
            lines.append(f"Step {step}: multiply it by {k}.")
        elif op == "subtract":
            k = rng.randint(1, 30)
            value -= k
            lines.append(f"Step {step}: subtract {k}.")
        else:
            k = rng.randint(1, 30)
            value += k
            lines.append(f"Step {step}: add {k}.")
    lines.append("What is the final number?")
    return " ".join(lines), value


def _tracking(rng: random.Random, *, steps: int) -> tuple[str, int]:
    names = rng.sample(["Ana", "Ben", "Cleo", "Dev", "Eli", "Fay"], 3)
    counts = {n: rng.randint(3, 12) for n in names}
    lines = [", ".join(f"{n} has {c} marbles" for n, c in counts.items()) + "."]
    for _ in range(steps):
        giver, taker = rng.sample(names, 2)
        k = rng.randint(1, max(1, counts[giver]))
        if counts[giver] == 0:
            counts[giver] += 5
            lines.append(f"{giver} finds 5 marbles.")
            continue
        counts[giver] -= k
        counts[taker] += k
        lines.append(f"{giver} gives {k} marbles to {taker}.")
    target = rng.choice(names)
    lines.append(f"How many marbles does {target} have at the end?")
    return " ".join(lines), counts[target]


def load_jsonl(path: str | Path, *, limit: int | None = None) -> list[Problem]:
    """Problems from a JSONL file with `question` (or `problem`) and `answer` per line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no problems file at {path}; pass a JSONL file with question/answer per line")
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question = row.get("question") or row["problem"]
            answer = row["answer"]
        except (json.JSONDecodeError, KeyError, AttributeError):
            raise ConfigError(f"{path}:{number}: expected a JSON object with 'question' and 'answer'") from None
        out.append(Problem(id=str(row.get("id", number)), question=str(question), answer=str(answer).strip()))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ConfigError(f"{path} holds no problems")
    return out


_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*\$?(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> str | None:
    """The last 'Answer: N' in `text`, else its last number, normalised (no commas)."""
    found = _ANSWER.findall(text)
    if not found:
        found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def same_answer(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return a.strip() == b.strip()
