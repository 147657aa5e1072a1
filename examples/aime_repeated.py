"""One long reasoning generation compacted again and again as it hits a physical KV limit.

The library-level version of `agentmem scenario aime`: each problem is decoded with a
physical limit (compacting everything but the system prompt and the most recent tokens
whenever the limit is reached) and without one, and the answers are compared.

    python examples/aime_repeated.py --limit 512 --problems 2 --max-new-tokens 1024
    python examples/aime_repeated.py --problems-file my_aime.jsonl   # {"question", "answer"} per line
"""

from __future__ import annotations

import argparse
import json

import agentmem
from agentmem.scenarios import aime, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=2048)
    parser.add_argument("--ratio", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--problems", type=int, default=2)
    parser.add_argument("--problems-file", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    args = parser.parse_args()

    model, tokenizer = agentmem.load_model(args.model)
    chosen = (problems.load_jsonl(args.problems_file, limit=args.problems) if args.problems_file
              else problems.builtin(args.problems))
    result = aime.run(model, tokenizer, chosen, limit=args.limit, ratio=args.ratio, rounds=args.rounds,
                      max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, progress=print)
    print(aime.table(result))
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
