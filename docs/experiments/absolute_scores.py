# Experiment script (see docs/LOG.md, "Absolute attention scores"); run from the repository root:
#   python docs/experiments/absolute_scores.py {span|absolute} [--contexts 2] [--ratio 10]
# am-fast with all repeat queries (max_queries 8192, so no subsampling) scores each key by
# its attention probability normalised over the span only ("span", today's rule) or over
# everything the repeat query attended to: the whole cache and the repeat so far
# ("absolute", KVzip's normaliser). The normaliser is the log-sum-exp each repeat query
# saw, recorded in its attention call. Prints bench fidelity's retained recall.
import argparse, json, sys
from dataclasses import replace

import torch

import agentmem
from agentmem import am, compaction, profiles
from agentmem.bench import fidelity

p = argparse.ArgumentParser()
p.add_argument("variant", choices=["span", "absolute"])
p.add_argument("--contexts", type=int, default=2)
p.add_argument("--ratio", type=float, default=10.0)
args = p.parse_args()

compaction.METHODS["am-fast"] = replace(compaction.METHODS["am-fast"], max_queries=8192)


def record_lse(store):
    def transform(idx, query, key, value, mask):
        groups = query.shape[1] // key.shape[1]
        k = key[..., : query.shape[-1]].float().repeat_interleave(groups, dim=1)
        logits = torch.matmul(query.float(), k.transpose(-1, -2)) * (query.shape[-1] ** -0.5)
        bias = getattr(key, "agentmem_bias", None)
        if bias is not None:
            logits = logits + bias.repeat_interleave(groups, dim=1).unsqueeze(2)
        if mask is not None:
            m = mask[..., -k.shape[-2]:]
            logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m
        store.setdefault(idx, []).append(torch.logsumexp(logits, -1))  # (B, H_q, q)
        return key, value, mask
    return transform


if args.variant == "absolute":
    real_repeat = compaction._Compactor._repeat_pass

    def repeat_pass(self, transform=None):
        self._lse = {}
        return real_repeat(self, transform=record_lse(self._lse))

    def share_globally(self, fitting):
        scores, valid = {}, {}
        total = sum(int(self.budgets[idx].max()) for idx in self.layers)
        for idx in self.layers:
            keys, values, prior = self._span(idx)
            lse = torch.cat(self._lse[idx], dim=2)  # (B, H_q, n) -> (G, r * n), group_queries' order
            B, Hq, n = lse.shape
            lse = lse.reshape(B * self.num_kv, -1)
            q = fitting[idx]
            if q.shape[1] != lse.shape[1]:
                raise SystemExit(f"queries {q.shape[1]} != lse {lse.shape[1]}: subsampled")
            reduced = am.reduce(q, keys.float(), values.float(), prior.float(), self.scalings[idx])
            logits = am.span_logits(q, keys.float(), prior.float(), self.scalings[idx])
            probs = (logits - lse.unsqueeze(-1)).exp_()
            reduced.peak, reduced.rms = probs.amax(1), probs.square_().mean(1).sqrt_()
            scores[idx], valid[idx] = reduced.peak, reduced.valid
            self._reduced[idx] = reduced
        for idx, width in profiles.global_widths(scores, valid, total).items():
            self.budgets[idx] = torch.full_like(self.budgets[idx], width)
        return scores

    compaction._Compactor._repeat_pass = repeat_pass
    compaction._Compactor.share_globally = share_globally

model, tok = agentmem.load_model("smollm2-135m")
result = fidelity.run(model, tok, ratios=[args.ratio], methods=["am-fast"], count=args.contexts,
                      progress=lambda line: print(line, file=sys.stderr))
row = next(r for r in result["rows"] if r["method"] == "am-fast")
print(json.dumps({"variant": args.variant, "ratio": args.ratio, "contexts": args.contexts, "max_queries": 8192,
                  "retained_recall": row["retained"]["recall"], "retained_ref": row["retained"]["ref_nll"],
                  "exact": row["exact"], "choice": row["choice"], "time_ratio": row["time_ratio"]}))
