"""Benchmark: quality, speed and size of every compaction method at several ratios.

What it measures, on real long text (the Python Language Reference shipped with CPython
as `pydoc_data.topics`, not text written for the test):

- for each context of `--context` tokens, the model prefills the context (timed) and the
  real next `--continuation` tokens of the document are teacher-forced on top of the full
  cache (reference) and of each compacted cache;
- `nll_gap`: mean continuation NLL (nats/token) minus the full cache's;
- `kl`: mean KL(full || compacted) of next-token distributions over the continuation;
- `attn_err`: relative error of each full layer's attention output over the context,
  for the continuation's queries (held out: never used for fitting), averaged;
- `time_ratio`: compaction seconds / prefill seconds of the same context (the faster of
  two prefills);
- `bytes_before` / `bytes_after`: physical KV bytes (padding included);
- `recovered`: 1 - nll_gap / nll_gap(streaming) (share of the baseline's gap recovered);
- decode tokens/s with the full cache and with caches compacted at 5, 10, 20 and 50x
  (`decode_ratios`), as ratios to the full cache
  (`decode_vs_full`; `decode_speedup` is the 10x one). Decode speed depends on shapes
  only, so these caches are `truncate` compactions of the first context whose compacted
  slots get a beta (N(0, 1)), which makes the beta path run as it does after `am`. The
  full cache and each compacted one are timed in turn, `decode_rounds` times, and each
  figure is the median (a ratio is taken within a round, then the median of those).

With kvpress installed (`pip install "agentmem[kvpress]"`), its presses run on the same
model and text as outside peers (`kvpress-*` methods, see `kvpress_peers`); a press
prunes during the prefill, so its `time_ratio` is the prefill's extra time over a plain
prefill.

Prints a table, writes a PNG plot (KL vs ratio, one line per method) and optionally
a JSON file; ends with one JSON line.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import hf
from ..captured import DEFAULT_CAPACITY, QuerySample
from ..compaction import compact
from . import kvpress_peers
from .common import (  # noqa: F401  (re-exported: the shared helpers were first defined here)
    DEFAULT_METHODS,
    check_methods,
    compact_with,
    default_methods,
    kl,
    method_order,
    nll,
    prefill,
    reference_text,
    split_method,
    teacher_force,
)


@dataclass
class Row:
    method: str
    ratio: float
    nll_gap: float
    kl: float
    attn_err: float
    time_ratio: float
    seconds: float
    bytes_before: int
    bytes_after: int
    recovered: float = float("nan")
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step of compact / prefill seconds


def contexts(tokenizer, *, count: int, context: int, continuation: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` (context ids, continuation ids) pairs taken from spread-out places in the text."""
    ids = tokenizer(reference_text(), add_special_tokens=False, return_tensors="pt").input_ids
    need = context + continuation
    if ids.shape[1] < need * count:
        raise ValueError(f"reference text has {ids.shape[1]} tokens, need {need * count}")
    stride = (ids.shape[1] - need) // max(1, count)
    out = []
    for i in range(count):
        chunk = ids[:, i * stride : i * stride + need]
        out.append((chunk[:, :context], chunk[:, context:]))
    return out


def attention_error(full: hf.CompactedCache, comp: hf.CompactedCache, capture: hf.QueryCapture) -> float:
    """Mean relative error of the context's attention output for held-out queries."""
    errs = []
    for idx in comp.full_layers():
        q = capture.stacked(idx)  # (1, Hq, n, D)
        scale = capture.scalings[idx]
        outs = []
        for layer in (full.layers[idx], comp.layers[idx]):
            keys, values, bias = hf.unpack(layer.keys, layer.values, layer.bias, layer.borrowed, 0,
                                           layer.physical_length)  # each head's own and borrowed slots
            keys, values = keys.float(), values.float()
            r = q.shape[1] // keys.shape[1]
            keys, values, bias = (t.repeat_interleave(r, dim=1) for t in (keys, values, bias))
            logits = torch.einsum("bhnd,bhtd->bhnt", q, keys) * scale + bias.unsqueeze(2)
            outs.append(torch.softmax(logits, -1) @ values)
        ref, got = outs
        errs.append(float(((got - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)).mean()))
    return sum(errs) / len(errs)


@torch.no_grad()
def decode_rate(model, cache, first: torch.Tensor, steps: int) -> float:
    cache = cache.copy()
    token = first
    for _ in range(2):  # warm-up steps, not timed
        token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    began = time.perf_counter()
    for _ in range(steps):
        token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return steps / (time.perf_counter() - began)


DECODE_RATIOS = (5.0, 10.0, 20.0, 50.0)
PHASES = ("self_study", "queries", "captured", "budgets", "targets", "selection", "beta", "values")


def with_beta(cache: hf.CompactedCache, *, seed: int = 0) -> hf.CompactedCache:
    """Give every compacted slot of `cache` a beta drawn from N(0, 1), in place (for timing only)."""
    generator = torch.Generator().manual_seed(seed)
    for idx in cache.full_layers():
        layer = cache.layers[idx]
        slots = sum(s for tokens, s in layer.runs if tokens != s)  # truncate leaves one compacted run first
        bias = layer.bias.clone()
        bias[..., :slots] = torch.randn(bias[..., :slots].shape, generator=generator)
        layer.bias, layer.has_beta = bias, bool(slots)
    return cache


def with_borrowed(cache: hf.CompactedCache, *, seed: int = 0) -> hf.CompactedCache:
    """A copy of a `with_beta` cache whose first run is ragged at the same width: KV head 0
    holds what half of every other head's slots held, in slots borrowed from them (for timing)."""
    generator = torch.Generator().manual_seed(seed)
    out = cache.copy()
    for idx in cache.full_layers():
        layer = cache.layers[idx]
        width = layer.runs[0][1]
        batch, heads, _, dim = layer.keys.shape
        lend = width // 2 if heads > 1 else 0
        counts = [width + (heads - 1) * lend] + [width - lend] * (heads - 1)
        widest = counts[0]
        keys = torch.randn(batch, heads, widest, dim, generator=generator).to(layer.keys.dtype)
        values = torch.randn(batch, heads, widest, layer.values.shape[-1], generator=generator).to(layer.values.dtype)
        bias = torch.full((batch, heads, widest), float("-inf"))
        for h, count in enumerate(counts):
            bias[:, h, :count] = torch.randn(count, generator=generator)
        k, v, b, borrowed = hf.pack(keys, values, bias, 0)
        out.layers[idx] = hf.CompactedLayer.from_tensors(
            torch.cat([k, layer.keys[:, :, width:]], 2), torch.cat([v, layer.values[:, :, width:]], 2),
            torch.cat([b, layer.bias[..., width:]], -1), logical_length=layer.logical_length,
            scaling=layer.scaling, runs=layer.runs, borrowed=borrowed)
    return out


def decode_speeds(model, full: hf.CompactedCache, ids: torch.Tensor, first: torch.Tensor, *,
                  ratios=DECODE_RATIOS, steps: int = 32, rounds: int = 3) -> dict:
    """Decode tokens/s on `full` and on `truncate` + beta compactions of it, interleaved; medians.

    Each ratio is timed twice: with one width for every head ("10") and ragged, with
    borrowed slots ("10 ragged", `with_borrowed`). Returns `full_tokens_per_s`,
    `decode_tokens_per_s` and `decode_vs_full` (both keyed that way), and
    `decode_speedup` (the 10x ratio, when 10 is among `ratios`).
    """
    caches = {}
    for r in ratios:
        caches[f"{r:g}"] = with_beta(compact(model, full, ids, ratio=r, method="truncate"))
        caches[f"{r:g} ragged"] = with_borrowed(caches[f"{r:g}"])
    full_rates: list[float] = []
    rates: dict[str, list[float]] = {key: [] for key in caches}
    vs_full: dict[str, list[float]] = {key: [] for key in caches}
    for _ in range(rounds):
        full_rates.append(decode_rate(model, full, first, steps))
        for key, cache in caches.items():
            rates[key].append(decode_rate(model, cache, first, steps))
            vs_full[key].append(rates[key][-1] / full_rates[-1])
    out = {
        "full_tokens_per_s": statistics.median(full_rates),
        "decode_tokens_per_s": {key: statistics.median(v) for key, v in rates.items()},
        "decode_vs_full": {key: statistics.median(v) for key, v in vs_full.items()},
        "decode_steps": steps,
        "decode_rounds": rounds,
    }
    if "10" in out["decode_vs_full"]:
        out["decode_speedup"] = out["decode_vs_full"]["10"]
    return out


def run(
    model,
    tokenizer,
    *,
    ratios: list[float],
    methods: list[str],
    context: int = 3072,
    continuation: int = 128,
    count: int = 1,
    decode_steps: int = 32,
    decode_ratios=DECODE_RATIOS,
    decode_rounds: int = 3,
    capture: int = DEFAULT_CAPACITY,
    progress=print,
) -> dict:
    """Run the benchmark and return {"rows": [...], "summary": {...}} (rows averaged over contexts).

    A method named METHOD:captured or METHOD:both fits on queries the prefill kept
    (`capture` positions per layer, `agentmem.captured.QuerySample`).
    """
    check_methods(methods)
    hf.enable(model)
    layers = set(hf.CompactedCache.from_cache(hf.new_cache(model)).full_layers()) or None
    sums: dict[tuple[str, float], list[Row]] = {}
    decode = {}
    failed: dict[str, str] = {}
    for n, (ctx, cont) in enumerate(contexts(tokenizer, count=count, context=context, continuation=continuation)):
        sample = QuerySample(capture) if any(split_method(m)[1] in ("captured", "both") for m in methods) else None
        cache, last, prefill_s = prefill(model, ctx, capture=sample)  # the faster of two: the time ratios' denominator
        full = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
        layers = set(full.full_layers())
        ref, capture = teacher_force(model, full, cont, last, layers)
        ref_nll = nll(ref, cont)
        progress(f"context {n + 1}/{count}: {ctx.shape[1]} tokens prefilled in {prefill_s:.1f}s, NLL {ref_nll:.3f}")
        for method in methods:
            for ratio in ratios:
                stats: dict = {}
                try:
                    comp, seconds = compact_with(model, tokenizer, method, ratio, cache, full, ctx,
                                                 prefill_seconds=prefill_s, captured=sample, stats=stats)
                except Exception as exc:
                    if method not in kvpress_peers.PRESSES:
                        raise
                    # an outside peer that cannot run on this model is reported, not fatal
                    why = failed[f"{method}@{ratio:g}"] = f"{type(exc).__name__}: {exc}"[:300]
                    progress(f"  {method:12s} x{ratio:<4g} failed: {why}")
                    continue
                got, _ = teacher_force(model, comp, cont, last, layers)
                row = Row(
                    method=method, ratio=ratio, nll_gap=nll(got, cont) - ref_nll, kl=kl(ref, got),
                    attn_err=attention_error(full, comp, capture), time_ratio=seconds / prefill_s,
                    seconds=seconds, bytes_before=full.nbytes(), bytes_after=comp.nbytes(),
                    phases={k: v / prefill_s for k, v in stats.get("phases", {}).items()},
                )
                sums.setdefault((method, ratio), []).append(row)
                progress(f"  {method:12s} x{ratio:<4g} kl {row.kl:.4f} gap {row.nll_gap:+.4f} "
                         f"err {row.attn_err:.3f} {row.seconds:.1f}s")
        if n == 0 and decode_steps and decode_ratios:
            decode = decode_speeds(model, full, ctx, cont[:, :1], ratios=decode_ratios, steps=decode_steps,
                                   rounds=decode_rounds)
            progress("  decode " + ", ".join(f"x{k} {v:.2f}" for k, v in decode["decode_vs_full"].items())
                     + f" of the full cache's {decode['full_tokens_per_s']:.1f} tok/s")
    rows = [_mean(v) for v in sums.values()]
    streaming = {r.ratio: r.nll_gap for r in rows if r.method == "streaming"}
    for r in rows:
        if r.ratio in streaming and streaming[r.ratio] > 0:
            r.recovered = 1 - r.nll_gap / streaming[r.ratio]
    summary = {"context": context, "continuation": continuation, "contexts": count, **decode}
    if failed:
        summary["failed"] = failed
    return {"rows": [asdict(r) for r in rows], "summary": summary}


def _mean(rows: list[Row]) -> Row:
    first = rows[0]
    fields = {k: sum(getattr(r, k) for r in rows) / len(rows) for k in
              ("nll_gap", "kl", "attn_err", "time_ratio", "seconds")}
    phases = {k: sum(r.phases.get(k, 0.0) for r in rows) / len(rows) for k in rows[0].phases}
    return Row(method=first.method, ratio=first.ratio, bytes_before=first.bytes_before,
               bytes_after=first.bytes_after, phases=phases, **fields)


def table(result: dict) -> str:
    head = f"{'method':17s} {'ratio':>5s} {'KL':>8s} {'NLL gap':>8s} {'recov':>6s} {'attn err':>8s} " \
           f"{'t/prefill':>9s} {'KV before':>10s} {'KV after':>10s}"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        rec = "" if math.isnan(r["recovered"]) else f"{r['recovered']:.0%}"
        lines.append(
            f"{r['method']:17s} {r['ratio']:5g} {r['kl']:8.4f} {r['nll_gap']:+8.4f} {rec:>6s} {r['attn_err']:8.3f} "
            f"{r['time_ratio']:9.2f} {r['bytes_before'] / 2**20:9.1f}M {r['bytes_after'] / 2**20:9.2f}M"
        )
    timed = [r for r in result["rows"] if r.get("phases")]
    if timed:
        names = [p for p in PHASES if any(p in r["phases"] for r in timed)]
        head = f"{'time / prefill':17s} {'ratio':>5s} " + " ".join(f"{p:>10s}" for p in names) + f" {'total':>7s}"
        lines += ["", head, "-" * len(head)]
        for r in timed:
            cells = " ".join(f"{r['phases'].get(p, 0.0):10.2f}" for p in names)
            lines.append(f"{r['method']:17s} {r['ratio']:5g} {cells} {r['time_ratio']:7.2f}")
        lines.append("queries: the repeat-prefill pass; captured: reading the prefill's own queries; budgets: one "
                     "pass over the span's scores that shares the layers' budget (reused by the fit); targets: "
                     "that pass when a fit makes its own; beta, values: the two solves")
    s = result["summary"]
    for name, why in s.get("failed", {}).items():
        lines.append(f"{name}: failed ({why})")
    if "decode_vs_full" in s:
        speeds = ", ".join(f"x{k} {s['decode_tokens_per_s'][k]:.1f} tok/s ({v:.2f}x)"
                           for k, v in s["decode_vs_full"].items())
        lines.append(f"decode: full {s['full_tokens_per_s']:.1f} tok/s; {speeds} "
                     f"(median of {s['decode_rounds']} interleaved rounds)")
    return "\n".join(lines)


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    methods = method_order(r["method"] for r in result["rows"])
    colors = plt.get_cmap("tab20").colors
    for n, m in enumerate(methods):
        rows = sorted((r for r in result["rows"] if r["method"] == m), key=lambda r: r["ratio"])
        style = "--" if m in kvpress_peers.PRESSES else "-"
        ax.plot([r["ratio"] for r in rows], [max(r["kl"], 1e-5) for r in rows], style, marker="o", label=m,
                color=colors[n % len(colors)], linewidth=2.5 if m.startswith("am") else 1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compaction ratio")
    ax.set_ylabel("KL(full || compacted), nats/token")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_line(result: dict, model_name: str) -> str:
    out = {"bench": "compaction", "model": model_name, **result["summary"]}
    for r in result["rows"]:
        out[f"{r['method']}@{r['ratio']:g}"] = {
            **{k: round(r[k], 5) for k in ("kl", "nll_gap", "attn_err", "time_ratio")},
            **({"phases": {k: round(v, 4) for k, v in r["phases"].items()}} if r.get("phases") else {})}
    return json.dumps(out)
