# Experiment script (see docs/LOG.md); run from the repository root: python docs/experiments/NAME.py ...
"""am after the head-budget fix, and OMP with raw (unnormalised) correlation, on the bench context."""
import inspect, json, sys, textwrap
import agentmem
from agentmem import am
from agentmem.bench import compaction as bench

variant = sys.argv[1]  # "fixed" or "rawcorr"
ratios = [float(r) for r in sys.argv[2].split(",")]
methods = sys.argv[3].split(",") if len(sys.argv) > 3 else ["am"]
import os, torch
from agentmem import queries
if os.environ.get("OLDMIX"):
    def combine(repeat, extras, limit, generator):
        parts = ([] if repeat is None else [repeat]) + list(extras)
        return queries.subsample(torch.cat(parts, dim=1), limit, generator)
    queries.combine = combine
    variant += "-oldmix"
if variant.startswith("uniform"):
    import agentmem.compaction as C
    real = C.compact
    C_compact = lambda *a, **k: real(*a, **{**k, "head_budgets": None})
    bench.compact = C_compact
if variant.startswith("layerwise"):
    import agentmem.compaction as C
    from agentmem import head_budgets
    def _budgets(self):
        sizes = {idx: b - a for idx, (a, b) in self.spans.items()}
        base = {idx: max(1, round(sizes[idx] / self.ratio)) for idx in self.layers}
        profile = head_budgets.resolve(self.opts.head_budgets, self.model) if self.spec.head_profile else None
        want = {idx: torch.full((self.num_kv,), base[idx], dtype=torch.long) for idx in self.layers}
        if profile is not None and self.ratio != 1:
            weights = torch.tensor([sum(profile.get(f"L{idx}H{h}", 0.0) for h in range(self.num_kv)) * base[idx]
                                    for idx in self.layers])
            caps = torch.tensor([max(1, min(int(0.75 * sizes[idx]), 2 * base[idx])) for idx in self.layers])
            widths = head_budgets.allocate(weights, caps, sum(base.values()))
            want = {idx: torch.full((self.num_kv,), int(w)) for idx, w in zip(self.layers, widths)}
        out = {}
        for idx in self.layers:
            valid = torch.isfinite(self._span(idx)[2]).sum(-1).reshape(self.batch, self.num_kv).min(0).values
            out[idx] = torch.minimum(want[idx], valid.clamp_min(1).cpu()).repeat(self.batch)
        return out
    C._CompactionRun._budgets = _budgets
# "rawcorr" patched select_omp as it was before the raw correlation became the default
# (commit "OMP picks keys by raw correlation"); on later code it fails its assert.
if variant.startswith("rawcorr"):
    src = textwrap.dedent(inspect.getsource(am.select_omp)).replace(" / norms  # (G, T)", "  # raw")
    assert "# raw" in src
    exec(compile(src, am.__file__, "exec"), am.__dict__)
import os
if os.environ.get("SMOKE"):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "tests"))
    from conftest import tiny_chat_llama, tiny_tokenizer
    model, tok = tiny_chat_llama(), tiny_tokenizer()
else:
    model, tok = agentmem.load_model("smollm2-135m")
res = bench.run(model, tok, ratios=ratios, methods=methods, decode_steps=0, **({'context': 256, 'continuation': 16} if os.environ.get('SMOKE') else {}))
for r in res["rows"]:
    print(variant, r["method"], r["ratio"], f"kl {r['kl']:.4f} gap {r['nll_gap']:+.4f} err {r['attn_err']:.3f} "
          f"t/prefill {r['time_ratio']:.2f} MB {r['bytes_after']/2**20:.2f}")
json.dump(res, open(f"./am_fix_{variant}.json", "w"))
