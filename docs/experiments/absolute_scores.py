# Experiment script (see docs/LOG.md, "Absolute attention scores"); run from the repository root:
#   python docs/experiments/absolute_scores.py {span|context} [--model smollm2-135m] [--contexts 4]
#       [--ratios 10 20 50] [--methods am am-fast kvzip] [--json out.json]
# Runs `bench fidelity` with every listed method scoring keys (top-k selection and global
# budgets) by attention normalised over the span only ("span") or over everything the
# reference query attended to ("context", KVzip's normaliser; `am.reduce`). The
# log-sum-exps come from the repeat pass's own attention calls. Prints one JSON line per
# method and ratio with the retained metrics.
import argparse
import json
import sys
from dataclasses import replace

import agentmem
from agentmem import compaction
from agentmem.bench import fidelity

p = argparse.ArgumentParser()
p.add_argument("normaliser", choices=["span", "context"])
p.add_argument("--model", default="smollm2-135m")
p.add_argument("--contexts", type=int, default=4)
p.add_argument("--ratios", type=float, nargs="+", default=[10.0, 20.0, 50.0])
p.add_argument("--methods", nargs="+", default=["am", "am-fast", "kvzip"])
p.add_argument("--json")
args = p.parse_args()

for name in args.methods:
    compaction.METHODS[name] = replace(compaction.METHODS[name], normaliser=args.normaliser)
model, tok = agentmem.load_model(args.model)
result = fidelity.run(model, tok, ratios=args.ratios, methods=args.methods, count=args.contexts,
                      progress=lambda line: print(line, file=sys.stderr))
if args.json:
    with open(args.json, "w") as f:
        json.dump(result, f)
for row in result["rows"]:
    if row["method"] in args.methods:
        print(json.dumps({"normaliser": args.normaliser, "model": args.model, "method": row["method"],
                          "ratio": row["ratio"], "contexts": args.contexts, "retained": row["retained"],
                          "exact": row["exact"], "choice": row["choice"], "bytes": row["bytes_after"],
                          "time_ratio": row["time_ratio"]}))
