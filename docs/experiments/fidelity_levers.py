# Experiment script (see docs/LOG.md, "AM levers"); run from the repository root:
#   python docs/experiments/fidelity_levers.py VARIANT [--methods am am-fast] [--ratios 10 50] [--contexts 2]
# Each variant changes one lever of the AM fit for the duration of the run, then runs
# `agentmem bench fidelity`'s measurement and prints one line per (method, ratio).
import argparse, json, math, sys, time

import torch

import agentmem
from agentmem import am, compaction, queries
from agentmem.bench import fidelity

p = argparse.ArgumentParser()
p.add_argument("variant")
p.add_argument("--methods", nargs="+", default=["am-fast"])
p.add_argument("--ratios", type=float, nargs="+", default=[10.0])
p.add_argument("--contexts", type=int, default=2)
p.add_argument("--model", default="smollm2-135m")
p.add_argument("--json", default=None)
args = p.parse_args()
v = args.variant

EXTRA = {}


def option(**extra):
    """Run compact() with extra options (they accumulate over levers)."""
    EXTRA.update(extra)
    real = compaction.compact
    def patched(*a, **k):
        return real(*a, **{**k, **EXTRA})
    import agentmem.bench.common as common
    common.compact = patched

def replace_method(name, **changes):
    from dataclasses import replace
    compaction.METHODS[name] = replace(compaction.METHODS[name], **changes)

for part in v.split("+"):
    key, _, val = part.partition("=")
    if key in ("base", "layer"):  # the code as it stands (labels a code state)
        pass
    elif key == "queries":  # max_queries per KV head
        option(max_queries=int(val))
    elif key == "selfstudy":  # self-study tokens
        option(self_study_tokens=int(val))
    elif key == "uniform":  # no head profile
        option(head_budgets=None)
    elif key == "ridge":  # value-fit ridge
        real_fit = am.fit_values
        am.fit_values = lambda *a, ridge=None, _r=float(val), **k: real_fit(*a, ridge=_r, **k)
    elif key == "wbounds":  # bounds on w = exp(beta): +-val
        real_match = am.match
        b = float(val)
        am.match = lambda *a, _b=b, **k: real_match(*a, **{**k, "w_bounds": (math.exp(-_b), math.exp(_b))})
    elif key == "select":  # key selection for am-fast: highest | omp | max
        replace_method("am-fast", selection="highest" if val == "highest" else val)
    elif key == "global":  # layers share the budget by a global max-attention ranking
        for name in val.split(","):
            replace_method(name, global_budgets=True)
    elif key == "fit":  # which parts are fitted: copy (own values, fitted beta), nobeta (beta 0), none
        real_fit_values, real_fit_beta = am.fit_values, am.fit_beta
        state = {}
        def fit_beta(t, index, active, *, lo, hi, _mode=val):
            state["index"] = index
            beta = real_fit_beta(t, index, active, lo=lo, hi=hi)
            return beta if _mode == "copy" else torch.where(active, torch.zeros_like(beta), beta)
        def fit_values(queries, kept, beta, outputs, scale, _mode=val, **k):
            if _mode == "nobeta":
                return real_fit_values(queries, kept, beta, outputs, scale, **k)
            values = state["values"]
            return torch.gather(values, 1, state["index"].unsqueeze(-1).expand(-1, -1, values.shape[-1]))
        real_match = am.match
        def match(q, keys, values, *a, **k):
            state["values"] = values.float()
            return real_match(q, keys, values, *a, **k)
        am.fit_beta, am.fit_values, am.match = fit_beta, fit_values, match
    elif key == "spread":  # repeat queries cover every position before any twice
        pass  # now the default (queries.spread); the lever labels the runs made before
    elif key == "onpolicy":
        option(on_policy=val == "1")
    else:
        sys.exit(f"unknown lever {key!r}")

model, tok = agentmem.load_model(args.model)
began = time.perf_counter()
res = fidelity.run(model, tok, ratios=args.ratios, methods=args.methods, count=args.contexts,
                   progress=lambda s: print(s, file=sys.stderr, flush=True))
wall = time.perf_counter() - began
stream = {r["ratio"]: r["bytes_after"] for r in res["rows"] if r["method"] == "streaming"}
for r in res["rows"]:
    ret = {m: r["retained"][m][0] for m in ("recall", "ref_nll", "kl")}
    print(f"{v:28s} {r['method']:12s} x{r['ratio']:<4g} retained recall {ret['recall']:6.1%} "
          f"[{r['retained']['recall'][1]:.0%},{r['retained']['recall'][2]:.0%}] ref {ret['ref_nll']:6.1%} "
          f"kl {ret['kl']:6.1%} EM {r['exact']:4.0%} MC {r['choice']:4.0%} bytes/streaming "
          f"{r['bytes_after'] / stream[r['ratio']]:.3f} t/prefill {r['time_ratio']:.2f}", flush=True)
print(f"# {v}: {wall:.0f} s", flush=True)
if args.json:
    json.dump({"variant": v, "rows": res["rows"]}, open(args.json, "w"))
