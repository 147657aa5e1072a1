"""Benchmark: after a query-agnostic compaction, does the span still answer questions about itself?

Each context is `--context` tokens of real text that nobody here wrote (the Python
Language Reference shipped with CPython as `pydoc_data.topics`) with `--facts` short
facts planted as lines inside its first 80%: a key bound to a 4-digit code, each fact in
its own phrasing ("The deploy key for service orion is 4817."). Everything but the last
`--protect` tokens is compacted with every method at every ratio, *then* questions are
asked after the context (the compaction never sees them):

- `recall`: a completion prompt per fact ("The deploy key for service orion is"); the
  answer's teacher-forced log-prob (nats, summed over its tokens) and `exact` match
  (greedy decoding of the answer's length gives the answer: every argmax along the
  teacher-forced answer is the answer's token);
- `choice`: multiple choice as in the paper's QuALITY protocol: the planted code among
  k options (the other options are codes planted for other facts of the same context,
  so knowing that a code was seen is not enough), picked by summed log-prob; chance 1/k;
- `ref_nll`: the paper's reference-answer log-perplexity: prompts that quote the start of
  a line of the span; the full cache's own greedy 16-token answers are teacher-forced on
  the compacted cache (mean NLL per token);
- `kl`: secondary, KL(full || compacted) over the document's real next 128 tokens
  (it rewards keeping recent tokens, which streaming does).

Each metric is summarised as `retained` = (method - streaming) / (full - streaming) with
`streaming` at the same ratio (0: no better than dropping the span's middle, 1: as good
as the full cache), with a seeded 95% bootstrap interval over questions (paired: the
same resampled questions for the method, full and streaming; over contexts for `kl`).
`full`, `dropped` (the span removed but for its first 4 tokens, the attention sinks: the
no-information level) and chance are printed beside. Every row
has the physical bytes after compaction (padding included) and the compaction's seconds
over the prefill's (the faster of two) for the same context.

Prints a table, writes a PNG (retained vs ratio per method) and optionally a JSON file;
ends with one JSON line.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import hf
from ..baselines import SINKS
from ..captured import DEFAULT_CAPACITY, QuerySample
from ..decoding import greedy
from ..errors import ConfigError
from . import kvpress_peers
from .common import check_methods, compact_with, kl, method_order, prefill, reference_text, split_method, teacher_force

TEMPLATES = [
    "The deploy key for service {} is", "The door code of warehouse {} is", "The badge number of engineer {} is",
    "The locker combination for team {} is", "The invoice number for client {} is",
    "The room number booked for {} is", "The serial number of server {} is",
    "The ticket number for the {} incident is", "The build number of release {} is",
    "The access code for lab {} is", "The order number for customer {} is", "The vault code for project {} is",
    "The extension of the {} help desk is", "The parking permit of driver {} is",
    "The booking reference for the {} trip is", "The PIN of the {} account is",
    "The shipment number for the {} crate is", "The membership number of {} is",
    "The batch number of the {} vaccine is", "The gate code at the {} depot is",
    "The license number of the {} software is", "The table number reserved for {} is",
    "The checkpoint code on route {} is", "The radio channel of patrol {} is",
]
NAMES = [
    "orion", "vega", "lyra", "atlas", "juno", "nova", "cobalt", "ember", "falcon", "granite", "harbor", "iris",
    "jasper", "kestrel", "maple", "nimbus", "onyx", "pioneer", "quartz", "raven", "sierra", "tundra", "umber",
    "willow",
]
METRICS = ("recall", "exact", "choice", "ref_nll", "kl")
LABELS = {"recall": "recall lp", "exact": "EM", "choice": "MC acc", "ref_nll": "ref NLL", "kl": "KL"}
CODE_DIGITS = 4  # a planted code: chance of guessing it is 10 ** -CODE_DIGITS
QUOTE_TOKENS = 12  # tokens of the span quoted by a reference-answer prompt
FACT_REGION = (0.05, 0.80)  # facts and quotes lie in this part of the context


@dataclass
class Fact:
    """One planted fact, asked as a completion prompt."""

    prompt: list[int]  # "\nThe deploy key for service orion is"
    options: list[list[int]]  # k candidate answers (" 4817"), the planted one at `right`
    right: int
    position: int  # where its line starts in the context


@dataclass
class Context:
    ids: torch.Tensor  # (1, L) the text with the facts planted
    continuation: torch.Tensor  # (1, n) the document's real next tokens
    facts: list[Fact]
    quotes: list[list[int]]  # "\n" + the first QUOTE_TOKENS tokens of a line of the span


@dataclass
class Scores:
    """Per-question values of one cache on one context."""

    recall: list[float] = field(default_factory=list)  # answer log-prob, nats
    exact: list[float] = field(default_factory=list)  # 1.0 when greedy decoding gives the answer
    choice: list[float] = field(default_factory=list)  # 1.0 when the planted option scores highest
    ref_nll: list[float] = field(default_factory=list)  # per quote: NLL/token of the full cache's answer
    kl: list[float] = field(default_factory=list)  # one value: continuation KL vs the full cache


def check_args(*, context: int, facts: int, protect: int, choices: int = 4) -> None:
    """Refuse settings that cannot work, before a model is loaded."""
    if facts < 1 or facts > len(TEMPLATES):
        raise ConfigError(f"--facts must be 1..{len(TEMPLATES)} (one phrasing template each), got {facts}")
    if choices < 2:
        raise ConfigError(f"multiple choice needs at least 2 options, got {choices}")
    limit = int(context * (1 - FACT_REGION[1]))
    if not 0 <= protect <= limit:
        raise ConfigError(f"--protect must be 0..{limit} (the facts lie in the first 80% of the {context}-token "
                          f"context and must be compacted), got {protect}")


def contexts(tokenizer, *, count: int, context: int, facts: int, protect: int, continuation: int = 128,
             choices: int = 4, answer_tokens: int = 16, seed: int = 0) -> list[Context]:
    """`count` contexts from spread-out places in the text, each with `facts` planted facts."""
    doc = tokenizer(reference_text(), add_special_tokens=False).input_ids
    newline = _ids(tokenizer, "\n")
    out = []
    for n in range(count):
        rng = random.Random(seed * 100_003 + n)
        keys = [t.format(name) for t, name in zip(rng.sample(TEMPLATES, facts), rng.sample(NAMES, facts))]
        codes = [str(c) for c in rng.sample(range(10 ** (CODE_DIGITS - 1), 10 ** CODE_DIGITS), facts)]
        lines = [_ids(tokenizer, f"{k} {c}.\n") for k, c in zip(keys, codes)]
        planted = sum(map(len, lines))
        if planted > context // 2:
            raise ConfigError(f"{facts} facts take {planted} tokens, more than half of a {context}-token context; "
                              f"use fewer --facts or a longer --context")
        need = context - planted + continuation
        if len(doc) < need * count:
            raise ConfigError(f"the reference text has {len(doc)} tokens, {count} contexts need {need * count}")
        start = n * ((len(doc) - need) // count)
        ids, positions, used = _plant(tokenizer, doc[start:], lines, context)
        cont = doc[start + used:start + used + continuation]
        end = context - protect
        if positions[-1] + len(lines[-1]) > end:
            raise ConfigError(f"the last fact ends at token {positions[-1] + len(lines[-1])}, inside the last "
                              f"{protect} protected tokens; use a longer --context or a smaller --protect")
        fact_list = []
        for i, (key, code) in enumerate(zip(keys, codes)):
            options = [code] + wrong_options(code, codes, choices - 1, rng)
            rng.shuffle(options)
            fact_list.append(Fact(prompt=_ids(tokenizer, "\n" + key), right=options.index(code),
                                  options=[_ids(tokenizer, f" {o}") for o in options], position=positions[i]))
        quotes = _quotes(tokenizer, ids, positions, [len(x) for x in lines], facts, answer_tokens, rng)
        out.append(Context(ids=torch.tensor([ids]), continuation=torch.tensor([cont]), facts=fact_list,
                           quotes=[newline + q for q in quotes]))
    return out


def wrong_options(code: str, codes: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` wrong options for `code`: the other planted codes (so knowing that a code was seen
    is not enough), then fresh codes when there are too few."""
    others = [c for c in codes if c != code]
    picked = rng.sample(others, min(len(others), count))
    while len(picked) < count:
        fresh = str(rng.randrange(10 ** (CODE_DIGITS - 1), 10 ** CODE_DIGITS))
        if fresh not in codes and fresh not in picked:
            picked.append(fresh)
    return picked


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _plant(tokenizer, doc: list[int], lines: list[list[int]], context: int) -> tuple[list[int], list[int], int]:
    """Insert the fact lines into the text `doc`, spread over the fact region, each at a line start.

    A fact goes to the nearest line start within 64 tokens of its target, or on a line of
    its own there. Returns exactly `context` ids, where each fact starts, and how many
    tokens of `doc` they hold (the document's real continuation starts there).
    """
    newline = _ids(tokenizer, "\n")
    lo, hi = FACT_REGION
    ids: list[int] = []
    positions = []
    taken = 0  # doc tokens used so far
    for i, line in enumerate(lines):
        target = taken + int(context * (lo + (hi - lo) * (i + 0.5) / len(lines))) - len(ids)  # in doc tokens
        near = range(max(taken, target - 64), min(len(doc), target + 64))
        pieces = tokenizer.batch_decode([[doc[k - 1]] for k in near if k > 0])
        starts = [k for k, piece in zip((k for k in near if k > 0), pieces) if piece.endswith("\n")]
        at = min(starts, key=lambda k: abs(k - target)) if starts else target
        ids += doc[taken:at] + ([] if starts else newline)
        positions.append(len(ids))
        ids += line
        taken = at
    rest = context - len(ids)
    if rest < 0:
        raise ConfigError(f"the facts do not fit in a {context}-token context; use fewer --facts")
    return ids + doc[taken:taken + rest], positions, taken + rest


def _quotes(tokenizer, ids: list[int], positions: list[int], widths: list[int], count: int, answer: int,
            rng) -> list[list[int]]:
    """`count` quotes of the text (not of the facts) inside the fact region, at line starts where possible;
    the `answer` tokens after each quote are text too."""
    planted = set()
    for p, w in zip(positions, widths):
        planted.update(range(p, p + w))
    lo, hi = (int(len(ids) * f) for f in FACT_REGION)
    span = QUOTE_TOKENS + answer
    clean = [p for p in range(max(1, lo), hi - span) if not planted.intersection(range(p, p + span))]
    pieces = tokenizer.batch_decode([[ids[p - 1]] for p in clean])
    starts = [p for p, piece in zip(clean, pieces) if piece.endswith("\n")]
    chosen = rng.sample(starts, min(count, len(starts)))
    rest = [p for p in clean if p not in set(chosen)]
    chosen += rng.sample(rest, min(count - len(chosen), len(rest)))
    return [ids[p:p + QUOTE_TOKENS] for p in sorted(chosen)]


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def option_logprobs(model, cache, fact: Fact) -> tuple[list[float], bool]:
    """Each option's summed log-prob after the fact's prompt, and whether greedy decoding gives the planted one.

    The options run as one batch on copies of `cache`; shorter options are padded on the
    right, which cannot change a causal model's scores of the tokens before the padding.
    """
    width = max(map(len, fact.options))
    rows = [fact.prompt + o + [o[-1]] * (width - len(o)) for o in fact.options]
    batch = cache.copy()
    batch.batch_repeat_interleave(len(rows))
    logits = model(input_ids=torch.tensor(rows), past_key_values=batch, use_cache=True).logits
    logp = logits.float().log_softmax(-1)  # (k, P + W, V)
    p = len(fact.prompt)
    scores, exact = [], False
    for j, option in enumerate(fact.options):
        pred = logp[j, p - 1:p - 1 + len(option)]  # (len, V): the prediction of each answer token
        target = torch.tensor(option)
        scores.append(float(pred.gather(-1, target[:, None]).sum()))
        if j == fact.right:
            exact = bool(pred.argmax(-1).eq(target).all())
    return scores, exact


@torch.no_grad()
def answer_nll(model, cache, prompt: list[int], answer: list[int]) -> float:
    """Mean NLL per token of `answer` after `prompt`, teacher-forced on a copy of `cache`."""
    ids = torch.tensor([prompt + answer])
    logp = model(input_ids=ids, past_key_values=cache.copy(), use_cache=True).logits.float().log_softmax(-1)
    pred = logp[0, len(prompt) - 1:-1]
    return float(-pred.gather(-1, torch.tensor(answer)[:, None]).mean())


def score(model, cache, ctx: Context, references: list[list[int]], last: torch.Tensor,
          full_logprobs: torch.Tensor) -> Scores:
    """Every question of `ctx` asked after `cache`."""
    out = Scores()
    for fact in ctx.facts:
        options, exact = option_logprobs(model, cache, fact)
        out.recall.append(options[fact.right])
        out.exact.append(float(exact))
        out.choice.append(float(int(np.argmax(options)) == fact.right))
    out.ref_nll = [answer_nll(model, cache, q, a) for q, a in zip(ctx.quotes, references)]
    got, _ = teacher_force(model, cache, ctx.continuation, last, set())
    out.kl = [kl(full_logprobs, got)]
    return out


def retained(method, full, base, *, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(method - base) / (full - base) of the means, with a paired 95% bootstrap interval.

    The three sequences hold the same questions in the same order; each draw resamples
    question indices once for all three. NaN where full and base agree.
    """
    m, f, b = (np.asarray(x, dtype=float) for x in (method, full, base))
    if not len(m) == len(f) == len(b) > 0:
        raise ValueError(f"need three equally long non-empty sequences, got {len(m)}, {len(f)}, {len(b)}")
    point = _share(m.mean() - b.mean(), f.mean() - b.mean())
    idx = np.random.default_rng(seed).integers(0, len(m), size=(draws, len(m)))
    draws_ = _share(m[idx].mean(1) - b[idx].mean(1), f[idx].mean(1) - b[idx].mean(1))
    finite = draws_[np.isfinite(draws_)]
    if not finite.size:
        return float(point), math.nan, math.nan
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def _share(num, den):
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    tiny = 1e-9 * np.maximum(1.0, np.abs(num))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(den) > tiny, num / np.where(den == 0, 1, den), np.nan)


# ----------------------------------------------------------------------------- the run


@dataclass
class Row:
    method: str
    ratio: float
    recall: float  # mean answer log-prob, nats
    exact: float  # exact-match rate
    choice: float  # multiple-choice accuracy
    ref_nll: float  # reference answers, NLL per token
    kl: float  # continuation KL vs full, nats/token
    bytes_after: int  # physical KV bytes, padding included (mean over contexts)
    time_ratio: float = 0.0  # compaction seconds / prefill seconds
    seconds: float = 0.0
    retained: dict = field(default_factory=dict)  # metric -> [point, low, high]


def run(model, tokenizer, *, ratios: list[float], methods: list[str], context: int = 2048, count: int = 4,
        facts: int = 10, protect: int = 64, choices: int = 4, continuation: int = 128, answer_tokens: int = 16,
        seed: int = 0, capture: int = DEFAULT_CAPACITY, progress=print) -> dict:
    """Run the benchmark and return {"rows", "baselines", "questions", "summary"}.

    Args:
        ratios, methods: every method runs at every ratio on the same contexts; `streaming`
            is added when missing (it is the zero of retained).
        context, count, facts: `count` contexts of `context` tokens with `facts` planted facts
            and as many quotes each, so count * facts questions per metric and cell.
        protect: the context's last tokens, never compacted.
        choices: options per multiple-choice question.
        continuation, answer_tokens: tokens of the KL continuation and of each reference answer.
        seed: facts, options, quotes and the bootstrap.
        capture: positions per layer the prefill keeps for methods named METHOD:captured or
            METHOD:both (`agentmem.captured.QuerySample`).
        progress: called with one line per context and per compaction.

    Rows hold means over questions (bytes and times: over contexts) and `retained`;
    `questions` holds every per-question value, keyed "method@ratio" ("full@1", "dropped@0").
    """
    check_methods(methods)
    check_args(context=context, facts=facts, protect=protect, choices=choices)
    methods = list(dict.fromkeys(methods + ["streaming"]))
    hf.enable(model)
    scalings = hf.attention_scalings(model)
    values: dict[tuple[str, float], dict[str, list[float]]] = {}
    cost: dict[tuple[str, float], list[tuple[float, float, int]]] = {}
    failed: dict[str, str] = {}
    prefills = []
    for n, ctx in enumerate(contexts(tokenizer, count=count, context=context, facts=facts, protect=protect,
                                     continuation=continuation, choices=choices, answer_tokens=answer_tokens,
                                     seed=seed)):
        end = context - protect
        sample = QuerySample(capture) if any(split_method(m)[1] in ("captured", "both") for m in methods) else None
        cache, last, prefill_s = prefill(model, ctx.ids, capture=sample)
        prefills.append(prefill_s)
        full = hf.CompactedCache.from_cache(cache, scalings=scalings)
        ref, _ = teacher_force(model, full, ctx.continuation, last, set())
        references = [greedy(model, q, answer_tokens, cache=full.copy()) for q in ctx.quotes]
        dropped = hf.drop_span(full, min(SINKS, end), end, scalings=scalings)  # no span, the sinks kept
        cells = {("full", 1.0): (full, 0.0), ("dropped", 0.0): (dropped, 0.0)}
        briefs = []
        for key, (comp, seconds) in cells.items():
            got = score(model, comp, ctx, references, last, ref)
            _add(values, cost, key, got, seconds, prefill_s, comp)
            briefs.append(f"{key[0]} {_brief(got)}")
        progress(f"context {n + 1}/{count}: {context} tokens, {len(ctx.facts)} facts, prefill {prefill_s:.1f}s; "
                 + "; ".join(briefs))
        for method in methods:
            for ratio in ratios:
                if f"{method}@{ratio:g}" in failed:
                    continue
                try:
                    comp, seconds = compact_with(model, tokenizer, method, ratio, cache, full, ctx.ids,
                                                 prefill_seconds=prefill_s, end=end, captured=sample)
                except Exception as exc:
                    if method not in kvpress_peers.PRESSES:
                        raise
                    # an outside peer that cannot run on this model is reported, not fatal
                    why = failed[f"{method}@{ratio:g}"] = f"{type(exc).__name__}: {exc}"[:300]
                    values.pop((method, ratio), None)
                    progress(f"  {method:17s} x{ratio:<4g} failed: {why}")
                    continue
                got = score(model, comp, ctx, references, last, ref)
                _add(values, cost, (method, ratio), got, seconds, prefill_s, comp)
                progress(f"  {method:17s} x{ratio:<4g} {seconds:5.1f}s  {_brief(got)}")
    rows = {key: _row(key, values[key], cost[key]) for key in values}
    for (method, ratio), row in rows.items():
        base = values.get(("streaming", ratio))
        if method in ("full", "dropped") or base is None:
            continue
        row.retained = {m: list(retained(values[(method, ratio)][m], values[("full", 1.0)][m], base[m], seed=seed))
                        for m in METRICS}
    full_row, dropped_row = rows.pop(("full", 1.0)), rows.pop(("dropped", 0.0))
    full_row.retained = {m: [1.0, 1.0, 1.0] for m in METRICS}  # (full - base) / (full - base)
    chance = {"recall": CODE_DIGITS * math.log(0.1), "exact": 0.1 ** CODE_DIGITS, "choice": 1 / choices}
    return {
        "rows": [asdict(rows[(m, r)]) for m in method_order(k[0] for k in rows) for r in ratios if (m, r) in rows],
        "baselines": {"full": asdict(full_row), "dropped": asdict(dropped_row), "chance": chance},
        "questions": {f"{m}@{r:g}": v for (m, r), v in values.items()},
        "summary": {"context": context, "contexts": count, "facts": facts, "questions": count * facts,
                    "protect": protect, "choices": choices, "answer_tokens": answer_tokens,
                    "continuation": continuation, "seed": seed, "prefill_s": sum(prefills) / len(prefills),
                    **({"failed": failed} if failed else {})},
    }


def _add(values, cost, key, scores: Scores, seconds: float, prefill_s: float, cache) -> None:
    cell = values.setdefault(key, {m: [] for m in METRICS})
    for m in METRICS:
        cell[m] += getattr(scores, m)
    cost.setdefault(key, []).append((seconds, seconds / prefill_s, cache.nbytes()))


def _row(key, cell: dict[str, list[float]], cost: list[tuple[float, float, int]]) -> Row:
    seconds, ratios, sizes = zip(*cost)
    return Row(method=key[0], ratio=key[1], **{m: float(np.mean(cell[m])) for m in METRICS},
               bytes_after=int(np.mean(sizes)), time_ratio=float(np.mean(ratios)), seconds=float(np.mean(seconds)))


def _brief(got: Scores) -> str:
    return (f"recall {np.mean(got.recall):.2f} EM {np.mean(got.exact):.0%} MC {np.mean(got.choice):.0%} "
            f"ref {np.mean(got.ref_nll):.2f} KL {np.mean(got.kl):.3f}")


# ----------------------------------------------------------------------------- output


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0%}"


def _interval(triple) -> str:
    if not triple:
        return "-"
    point, lo, hi = triple
    if math.isnan(point):
        return "-"
    if math.isnan(lo):
        return f"{point:.0%}"
    return f"{point:.0%} [{lo:.0%},{hi:.0%}]"


def table(result: dict) -> str:
    """The metrics of every row, then retained with 95% intervals."""
    head = (f"{'method':17s} {'ratio':>5s} {'recall lp':>9s} {'EM':>5s} {'MC acc':>6s} {'ref NLL':>7s} "
            f"{'KL':>7s} {'retained recall':>17s} {'KV MB':>7s} {'t/prefill':>9s}")
    lines = [head, "-" * len(head)]
    base = result["baselines"]

    def line(r: dict, ratio: str, tail: str) -> str:
        return (f"{r['method']:17s} {ratio:>5s} {r['recall']:9.2f} {_pct(r['exact']):>5s} {_pct(r['choice']):>6s} "
                f"{r['ref_nll']:7.3f} {r['kl']:7.4f} {tail}")

    lines.append(line(base["full"], "1", f"{'100%':>17s} {base['full']['bytes_after'] / 2**20:7.2f} {'-':>9s}"))
    lines.append(line(base["dropped"], "-", f"{'-':>17s} {base['dropped']['bytes_after'] / 2**20:7.2f} {'-':>9s}"))
    chance = base["chance"]
    lines.append(f"{'chance':17s} {'-':>5s} {chance['recall']:9.2f} {chance['exact']:5.0e} "
                 f"{_pct(chance['choice']):>6s}")
    for r in result["rows"]:
        lines.append(line(r, f"{r['ratio']:g}", f"{_interval(r['retained'].get('recall')):>17s} "
                                                 f"{r['bytes_after'] / 2**20:7.2f} {r['time_ratio']:9.2f}"))
    lines += ["recall lp: the planted answer's log-prob (nats); EM: greedy answer exact; MC acc: the planted code "
              f"among {round(1 / chance['choice'])} of the context's codes; ref NLL: the full cache's own answers to "
              "quotes of the span, per token; KL: continuation vs full; dropped: the span removed, its first "
              f"{SINKS} tokens (sinks) kept; t/prefill: compaction seconds / prefill seconds",
              "", "retained = (method - streaming) / (full - streaming), 95% bootstrap interval "
                  "(questions; contexts for KL):"]
    head = f"{'method':17s} {'ratio':>5s} " + " ".join(f"{LABELS[m]:>17s}" for m in METRICS)
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(f"{r['method']:17s} {r['ratio']:5g} "
                     + " ".join(f"{_interval(r['retained'].get(m)):>17s}" for m in METRICS))
    for name, why in result["summary"].get("failed", {}).items():
        lines.append(f"{name}: failed ({why})")
    return "\n".join(lines)


def plot(result: dict, path: Path, title: str) -> None:
    """Retained recall log-prob and retained reference-answer NLL vs ratio, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    methods = method_order(r["method"] for r in result["rows"])
    colors = plt.get_cmap("tab20").colors
    for ax, metric, label in zip(axes, ("recall", "ref_nll"), ("planted-fact recall (answer log-prob)",
                                                               "reference-answer NLL")):
        for n, m in enumerate(methods):
            rows = sorted((r for r in result["rows"] if r["method"] == m), key=lambda r: r["ratio"])
            points = [r["retained"].get(metric, [math.nan] * 3) for r in rows]
            y = np.array([p[0] for p in points])
            err = np.abs(np.array([[p[0] - p[1], p[2] - p[0]] for p in points]).T)
            ax.errorbar([r["ratio"] for r in rows], y, yerr=np.nan_to_num(err), capsize=3, marker="o", label=m,
                        linestyle="--" if m in kvpress_peers.PRESSES else "-", color=colors[n % len(colors)],
                        linewidth=2.5 if m.startswith("am") else 1.2)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ratios = sorted({r["ratio"] for r in result["rows"]})
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.minorticks_off()
        ax.set_xlabel("compaction ratio")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("retained: 0 = streaming, 1 = full cache")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_line(result: dict, model_name: str) -> str:
    out = {"bench": "fidelity", "model": model_name, **result["summary"]}
    for name in ("full", "dropped"):
        r = result["baselines"][name]
        out[name] = {m: round(r[m], 4) for m in METRICS} | {"bytes": r["bytes_after"]}
    for r in result["rows"]:
        out[f"{r['method']}@{r['ratio']:g}"] = {m: round(r[m], 4) for m in METRICS} | {
            "retained_recall": round(r["retained"]["recall"][0], 4) if r["retained"] else None,
            "bytes": r["bytes_after"], "time_ratio": round(r["time_ratio"], 3)}
    return json.dumps(out)
