"""`compact()`: replace tokens [start, end) of a KV cache by far fewer slots.

All methods share one frame: gather reference queries, choose per-head budgets, then per
full-attention layer either attention-match the span (`am*`) or keep a scored subset
(baselines). The input cache is never modified; the result is a new `CompactedCache`
whose untouched tensors are shared with the input.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from . import am, checks, head_budgets, hf, queries, summary
from .am import MatchingPursuit, Selection, TopAttention
from .baselines import HeavyHitters, Recent, SnapKV, Streaming
from .captured import QuerySample
from .errors import ConfigError
from .ratio import check_ratio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """How one compaction method gathers queries, picks keys and fits.

    A new method is a new `Method`; a new way of picking keys is a new `am.Selection` class
    (`am.TopAttention`, `am.MatchingPursuit`, the baselines in `agentmem.baselines`).
    """

    name: str
    description: str
    selection: Selection = field(default_factory=MatchingPursuit)
    repeat_queries: bool = True  # reference queries from a repeat pass (else the selection's window, or none)
    self_study_tokens: int = 0
    fit: bool = True  # attention matching (beta + values) or copied values
    on_policy: bool = False
    head_profile: bool = False
    global_budgets: bool = False  # layers share the budget by one ranking of max attention (as kvzip)
    # With global budgets: "head" gives each (layer, KV head) its own count from the ranking,
    # stored at the uniform bytes by borrowed slots (`agentmem.hf.ragged`); "layer" gives a
    # layer's heads one width, its neediest head's (`head_budgets.neediest_head_widths`).
    allocation: str = "head"
    max_queries: int = 2048  # fitting queries per KV head unless the caller sets max_queries
    # What a key's attention score is a probability of, for top-k selection and global budgets:
    # "span": the query's attention over the span alone; "context": over everything the query
    # attended to, the whole cache and the repeat so far (KVzip's; `am.reduce`).
    normaliser: str = "span"
    summary: bool = False  # no selection: the model's text summary of the span replaces it (`agentmem.summary`)


# What each method keeps was chosen by whole-span recall (`agentmem bench fidelity`,
# docs/LOG.md "AM levers"): sharing the budget between layers by one global ranking,
# fitting on every query head's questions, and scoring keys over the whole context
# (normaliser "context": +3 to +6 points of retained recall at 10x and 20x) keep a span's facts.
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("am", "highest-attention keys (attention over the whole context), layer budgets by one global "
               "ranking, NNLS beta, LS values; up to "
               "8192 repeat-prefill queries per KV head + 16 self-study tokens",
               TopAttention("rms"), global_budgets=True, max_queries=8192, self_study_tokens=16, normaliser="context"),
        Method("am-fast", "highest-attention keys (attention over the whole context), layer budgets by one global "
               "ranking, NNLS beta, LS values; "
               "4096 repeat-prefill queries per KV head, every position asked", TopAttention("rms"),
               global_budgets=True, max_queries=4096, normaliser="context"),
        Method("am-omp", "the paper's recipe: OMP keys (4 per step, refit every 2), NNLS beta, LS values; "
               "repeat-prefill + self-study queries, on-policy, layer budgets from the shipped head profile",
               MatchingPursuit(per_step=4, refit_every=2), self_study_tokens=16, on_policy=True, head_profile=True),
        Method("am-omp-fast", "OMP picking 4 keys per step, refit every 2 steps, layer budgets by one global ranking",
               MatchingPursuit(per_step=4, refit_every=2), global_budgets=True),
        Method("truncate", "keep the most recent tokens", Recent(), repeat_queries=False, fit=False),
        Method("streaming", "attention sinks + most recent tokens", Streaming(), repeat_queries=False, fit=False),
        Method("h2o", "heavy hitters (accumulated attention) + recent", HeavyHitters(), fit=False),
        Method("snapkv", "pooled attention of the span's last window", SnapKV(), repeat_queries=False, fit=False),
        Method("kvzip", "repeat queries, max attention over the whole context, global top-k, no beta",
               TopAttention("peak"), fit=False, global_budgets=True, max_queries=4096, normaliser="context"),
        Method("summary", "the text-summary baseline: the model summarises the span in at most span / ratio "
               "tokens, whose slots replace it (as auto-compact does with old turns); full-attention models only",
               repeat_queries=False, fit=False, summary=True),
    ]
}


@dataclass
class Options:
    """Tunables shared by all methods (pass them as keyword arguments to `compact`)."""

    tokenizer: object | None = None
    recent_queries: dict[int, torch.Tensor] | None = None  # layer -> (B, H_q, n, D)
    captured: QuerySample | None = None  # queries the session asked as it ran (`agentmem.captured`)
    reference: str | None = None  # "repeat" | "captured" | "both"; None: "captured" with a sample, else "repeat"
    max_queries: int | None = None  # per KV head (None: the method's); bounds memory to a multiple of the span's KV
    max_repeat_tokens: int | None = None  # repeat-prefill at most N tokens, in pieces spread over a long span
    # "whole": the span is re-read once, after the whole cache; "local": each stretch of it is re-read
    # right after itself, on the cache cut there (`queries.local_repeat`); "auto": whole while the
    # repeat stays inside the model's trained context (max_position_embeddings), else local
    repeat_mode: str = "auto"
    self_study_tokens: int | None = None
    on_policy: bool | None = None
    head_budgets: dict[str, float] | str | None = "auto"  # "auto": shipped profile if any; None: uniform
    # dtype of the passes that gather reference queries: None: the model's; "auto": bfloat16 where
    # the device multiplies it natively (`queries.fast_dtype`); "bfloat16" | "float16" | "float32".
    # An on-policy fit (am-omp) runs inside its repeat pass, so that pass keeps the model's dtype.
    query_dtype: str | None = None
    seed: int = 0
    stats: dict = field(default_factory=dict)


def compact(
    model: torch.nn.Module,
    cache,
    input_ids: torch.Tensor,
    *,
    ratio: float,
    method: str = "am",
    start: int = 0,
    end: int | None = None,
    **options,
) -> hf.CompactedCache:
    """Compact tokens [start, end) of `cache` by `ratio` (10 = ten times fewer slots).

    Args:
        model: the model that produced `cache`.
        cache: a `DynamicCache` or a `CompactedCache` (earlier beta is honoured).
        input_ids: (B, L) the ids of all L tokens the cache holds.
        ratio: a number >= 1; the span keeps about physical_slots / ratio slots per KV
            head. A ratio above the span's slots per head is capped there (one slot per
            head is kept) and logged; `stats["ratio"]` reports the ratio used.
        method: one of `METHODS` ("am", "am-fast", "am-omp-fast", "truncate",
            "streaming", "h2o", "snapkv", "kvzip", "summary").
        start, end: logical token span; `end` defaults to the cache length.
        **options: see `Options` (tokenizer, recent_queries, max_queries, seed...).

    Returns:
        A new `CompactedCache`; the input cache is left untouched.

    Raises:
        ConfigError: a bad argument or option (wrong type, out-of-range ids or span,
            malformed recent_queries, a cache holding NaN or inf); nothing is modified.
        ModelMismatchError: the cache was made by another model.
        CompactionError: the result is not finite.
    """
    opts = options_from(options)
    spec = _method(method)
    ratio = check_ratio("compact", "ratio", ratio)
    start = checks.index("start", start)
    end = None if end is None else checks.index("end", end)
    hf.check_transformers_version()
    view = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
    layers = checks.check_model(model, view)
    length = view.get_seq_length()
    end = length if end is None else end
    checks.check_span(input_ids, length, start, end)
    checks.check_ids(input_ids, model, view.layers[layers[0]].keys.shape[0])
    checks.check_options(opts, model, view, layers)
    spans = {}
    for idx in layers:
        try:
            spans[idx] = view.layers[idx].physical_span(start, end)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    checks.check_input_finite(view, layers)
    ratio = checks.cap_ratio(ratio, spans, opts.stats)
    began = time.perf_counter()
    hf.enable(model)
    if spec.summary:
        result = summary.summarise_span(model, view, input_ids, start=start, end=end, ratio=ratio,
                                        tokenizer=opts.tokenizer, stats=opts.stats)
    else:
        result = _CompactionRun(model, view, input_ids, (start, end), spans, ratio, spec, opts).run()
    seconds = time.perf_counter() - began
    checks.check_finite(result, layers)
    opts.stats.update(seconds=seconds, method=spec.name, ratio=ratio)
    log.info(
        "compacted tokens [%d, %d) with %s x%.3g: %d -> %d slots, %.0f ms",
        start, end, spec.name, ratio, view.physical_length(), result.physical_length(), seconds * 1e3,
    )
    return result


class _CompactionRun:
    """One compaction call: gathers queries, then rebuilds each full layer."""

    def __init__(self, model, view, input_ids, span, spans, ratio, spec: Method, opts: Options):
        self.model, self.view, self.input_ids, self.span = model, view, input_ids, span
        self.spans, self.ratio, self.spec, self.opts = spans, ratio, spec, opts
        self.layers = sorted(spans)
        self.config = hf.text_config(model)
        self.num_kv = view.layers[self.layers[0]].keys.shape[1]
        self.batch = view.layers[self.layers[0]].keys.shape[0]
        self.scalings = hf.attention_scalings(model)
        self.generator = torch.Generator().manual_seed(opts.seed)
        self.max_queries = spec.max_queries if opts.max_queries is None else opts.max_queries
        self.query_dtype = queries.resolve_query_dtype(opts.query_dtype, model)
        self.on_policy = spec.fit and (spec.on_policy if opts.on_policy is None else opts.on_policy)
        # Scores over the whole context need each reference query's log-sum-exp from its own
        # attention call; an on-policy fit runs inside the repeat pass and uses no scores.
        self.context_scores = spec.normaliser == "context" and not self.on_policy
        self._lse: dict[int, torch.Tensor] = {}  # layer -> (B, H_q, n) log-sum-exps of the asked queries
        self._normalisers: dict[int, torch.Tensor] = {}  # layer -> (G, n) of the fitting queries
        self.budgets = self._budgets()
        self.out = view.copy()
        self._reduced: dict[int, am.Reduced] = {}  # layer -> the budgets pass's summary, reused by the fit
        self.phases: dict[str, float] = {}  # seconds per step (am.timed), reported in stats["phases"]
        opts.stats["phases"] = self.phases

    # ---------------------------------------------------------------- budgets per head
    def _budgets(self) -> dict[int, torch.Tensor]:
        """Slots each (batch, KV head) keeps in each layer: layer -> (G,) long.

        Every head of a layer keeps the same number of slots: the cache stores a layer's
        heads at one width, so a head narrower than the widest would hold padding and
        the span would take more bytes than its ratio promises. Uniform: span / ratio
        per layer. With a head profile the layers share the same total in proportion to
        their heads' shares, each layer capped at 2x the uniform width (OMP's cost grows
        with it) and 75% of its span.
        """
        sizes = {idx: b - a for idx, (a, b) in self.spans.items()}
        base = {idx: max(1, round(sizes[idx] / self.ratio)) for idx in self.layers}
        profile = None
        if self.spec.head_profile and self.opts.head_budgets is not None and self.ratio != 1:
            profile = head_budgets.resolve(self.opts.head_budgets, self.model)
        if profile is not None:
            weights = torch.tensor([sum(profile.get(f"L{idx}H{h}", 0.0) for h in range(self.num_kv)) * base[idx]
                                    for idx in self.layers])
            caps = torch.tensor([max(1, min(int(0.75 * sizes[idx]), 2 * base[idx])) for idx in self.layers])
            base = dict(zip(self.layers, head_budgets.allocate(weights, caps, sum(base.values())).tolist()))
        out = {}
        for idx in self.layers:
            valid = torch.isfinite(self._span(idx)[2]).sum(-1).reshape(self.batch, self.num_kv).min(0).values
            out[idx] = valid.clamp(min=1, max=base[idx]).cpu().repeat(self.batch)
        return out

    def share_globally(self, fitting: dict[int, torch.Tensor]) -> None:
        """Re-share the layers' total by one ranking of each key's max attention over its `fitting`
        queries (G, n, D) per layer: a layer gets what its neediest head asks for
        (`head_budgets.neediest_head_widths`)."""
        scores, valid = {}, {}
        keep = self.spec.selection.scores == "summary"  # the selection and the fit reuse this pass
        for idx in self.layers:
            keys, values, prior = self._span(idx)
            wanted = values.float() if keep and self.spec.fit else None  # the fit's outputs, else scores only
            reduced = am.reduce(fitting[idx], keys.float(), wanted, prior.float(), self.scalings[idx],
                                normaliser=self._normalisers.get(idx))
            scores[idx], valid[idx] = reduced.peak, reduced.valid
            if keep:
                self._reduced[idx] = reduced
        total = sum(int(self.budgets[idx].max()) for idx in self.layers)  # slots per head, summed over layers
        if self.spec.allocation == "head":
            layer = self.view.layers[self.layers[0]]
            slot = (layer.keys.shape[-1] + layer.values.shape[-1]) * layer.keys.element_size() + 4  # + fp32 bias
            record = hf.Borrowed.record_bytes()
            for idx, counts in head_budgets.per_head_counts(scores, valid, total, self.num_kv,
                                                            record / slot).items():
                self.budgets[idx] = counts.to(self.budgets[idx].dtype)
            return
        for idx, width in head_budgets.neediest_head_widths(scores, valid, total).items():
            self.budgets[idx] = torch.full_like(self.budgets[idx], width)

    def _span(self, idx: int):
        """(keys (G,T,D), values (G,T,Dv), prior bias (G,T)) of the span in layer idx: each head's
        own slots, then those it borrowed in the span (`hf.unpack`)."""
        layer = self.view.layers[idx]
        a, b = self.spans[idx]
        G = self.batch * self.num_kv
        keys, values, prior = hf.unpack(layer.keys, layer.values, layer.bias, layer.borrowed, a, b)
        width = keys.shape[2]
        return keys.reshape(G, width, -1), values.reshape(G, width, -1), prior.reshape(G, width)

    # ---------------------------------------------------------------- main
    def run(self) -> hf.CompactedCache:
        spec = self.spec
        if self.ratio == 1:
            return self.out  # nothing to remove: every slot stays as it is
        extra = self._extra_queries() if spec.fit else {}  # a baseline reads its reference queries only
        if self.on_policy and self.reference_mode() != "captured":
            # on-policy fits inside the repeat pass; with captured queries only it is off-policy
            if self.reference_mode() == "both":
                for idx, q in self._captured().items():
                    extra[idx].append(q)
            self._repeat_pass(transform=self._on_policy_hook(extra))
            return self.out
        fitting = self._fitting_queries(extra)
        if spec.global_budgets:
            with am.timed(self.phases, "budgets"):
                self.share_globally(fitting)
        for idx in self.layers:
            self._rebuild(idx, fitting.get(idx))
        return self.out

    def _rebuild(self, idx: int, q: torch.Tensor | None) -> None:
        """Pick layer idx's keys with the method's selection, then fit them (AM) or copy them (baselines)."""
        selection = self.spec.selection
        keys, values, prior = self._span(idx)
        span = am.SpanScores(q, keys, values, prior, self.scalings[idx], normaliser=self._normalisers.get(idx),
                             at_start=self.span[0] == 0, summary=self._reduced.pop(idx, None), phases=self.phases)
        span.compute(selection.scores)
        with am.timed(self.phases, "selection"):
            index = selection.select(span, int(self.budgets[idx].max()))
        if self.spec.fit:
            self._install(idx, am.fit(span, index, self.budgets[idx], bounds=selection.beta_bounds))
        else:
            self._install(idx, self._copy(idx, index))

    def _fitting_queries(self, extra) -> dict[int, torch.Tensor]:
        """Each layer's reference queries as the selection and the fit read them, (G, n, D); none for
        a baseline that selects by position alone."""
        spec = self.spec
        if spec.selection.scores is None and not spec.fit:
            return {}
        if spec.selection.window:
            asked = self._window_pass(spec.selection.window)
        elif spec.repeat_queries or spec.fit:
            asked = self._reference()
        else:
            raise ConfigError(f"method {spec.name!r} reads reference queries but gathers none")
        return {idx: self.layer_queries(idx, asked, extra) for idx in self.layers}

    # ---------------------------------------------------------------- queries
    def reference_mode(self) -> str:
        """Where this compaction's reference queries come from (see `Options.reference`)."""
        if self.opts.reference is not None:
            return self.opts.reference
        return "captured" if self.opts.captured is not None else "repeat"

    def _reference(self) -> dict[int, torch.Tensor]:
        """Reference queries per layer, (B, H_q, n, D): the repeat pass's, the captured ones, or both."""
        mode = self.reference_mode()
        asked = {}
        if mode in ("repeat", "both"):
            with am.timed(self.phases, "queries"):
                asked = self._repeat_pass()
        if mode in ("captured", "both"):
            with am.timed(self.phases, "captured"):
                captured = self._captured()
            for idx, q in captured.items():
                if self.context_scores:  # a captured query's normaliser is not known
                    unknown = q.new_full(q.shape[:-1], float("nan"))
                    self._lse[idx] = torch.cat([self._lse[idx], unknown], dim=2) if idx in self._lse else unknown
                asked[idx] = torch.cat([asked[idx], q], dim=2) if idx in asked else q
        return asked

    def _captured(self) -> dict[int, torch.Tensor]:
        start, end = self._logical_span()
        captured = self.opts.captured.reference(self.model, start, end, self.view.get_seq_length(), self.layers)
        if not captured:
            raise ConfigError(f"the captured query sample holds no query at or after token {start}, so it cannot "
                              "fit this span; pass reference='repeat' (or 'both')")
        return captured

    def _repeat_pass(self, transform=None) -> dict[int, torch.Tensor]:
        start, end = self._logical_span()
        device = self.input_ids.device
        pieces = queries.repeat_pieces(start, end, self.opts.max_repeat_tokens)
        prompt = queries.prompt_ids(self.opts.tokenizer, queries.REPEAT_PROMPT, device).expand(self.batch, -1)
        normalisers = self.context_scores and transform is None
        capture = None
        if transform is None and self._local_repeat(pieces, prompt.shape[-1]):  # on-policy needs one whole pass
            try:
                capture = queries.local_repeat(self.model, self.view, self.input_ids, pieces, prompt,
                                               layers=set(self.layers), normalisers=normalisers,
                                               dtype=self.query_dtype, chunk=queries.LOCAL_CHUNK)
            except queries.UncuttableCache as exc:  # a sliding-window layer cannot be cut at a stretch's end
                log.info("local repeat not possible (%s); repeating the whole span after the cache", exc)
        if capture is None:
            ids = torch.cat([prompt] + [self.input_ids[:, a:b] for a, b in pieces], dim=1)
            capture = queries.forward_pass(self.model, self.view.copy(), ids, layers=set(self.layers),
                                           transform=transform, chunk=queries.REPEAT_CHUNK, normalisers=normalisers,
                                           dtype=None if transform is not None else self.query_dtype)
        if normalisers:
            self._lse.update({idx: capture.stacked_lse(idx) for idx in capture.queries})
        return {idx: capture.stacked(idx) for idx in capture.queries}

    def _local_repeat(self, pieces: list[tuple[int, int]], prompt: int) -> bool:
        """Whether the repeat pass re-reads the span stretch by stretch (`Options.repeat_mode`)."""
        mode = self.opts.repeat_mode
        if mode != "auto":
            return mode == "local"
        trained = getattr(self.config, "max_position_embeddings", None)
        last = self.view.get_seq_length() + prompt + sum(b - a for a, b in pieces)  # the whole repeat's end
        return isinstance(trained, int) and last > trained

    def _window_pass(self, window: int) -> dict[int, torch.Tensor]:
        start, end = self._logical_span()
        ids = self.input_ids[:, max(start, end - window):end]
        capture = queries.forward_pass(self.model, self.view.copy(), ids, layers=set(self.layers),
                                       dtype=self.query_dtype)
        return {idx: capture.stacked(idx) for idx in capture.queries}

    def _extra_queries(self) -> dict[int, list[torch.Tensor]]:
        """Self-study and caller-supplied recent queries, per layer."""
        extra: dict[int, list[torch.Tensor]] = {idx: [] for idx in self.layers}
        for idx, q in (self.opts.recent_queries or {}).items():
            if idx in extra:
                extra[idx].append(self._tagged(q.float(), None))  # the caller's queries: normaliser unknown
        tokens = self.spec.self_study_tokens if self.opts.self_study_tokens is None else self.opts.self_study_tokens
        if self.spec.fit and tokens > 0:
            device = self.input_ids.device
            prompt = queries.prompt_ids(self.opts.tokenizer, queries.SELF_STUDY_PROMPT, device)
            if prompt.shape[-1] == 0:
                prompt = self.input_ids[:1, -1:]
            with am.timed(self.phases, "self_study"):
                capture = queries.self_study(self.model, self.view.copy(), layers=set(self.layers), tokens=tokens,
                                             prompt=prompt, batch_size=self.batch, normalisers=self.context_scores,
                                             dtype=self.query_dtype)
            for idx in capture.queries:
                lse = capture.stacked_lse(idx) if self.context_scores else None
                extra[idx].append(self._tagged(capture.stacked(idx), lse))
        return extra

    def _tagged(self, q: torch.Tensor, lse: torch.Tensor | None) -> torch.Tensor:
        """Queries with their normaliser column when keys are scored over the context (see `layer_queries`)."""
        return queries.with_normaliser(q, lse) if self.context_scores else q

    def layer_queries(self, idx: int, asked: dict[int, torch.Tensor], extra: dict[int, list[torch.Tensor]]
                      ) -> torch.Tensor:
        """Layer idx's fitting queries (G, n, D) from the `asked` reference queries and the extras.

        With context scores, their log-sum-exps come along (`self._normalisers[idx]`).
        """
        repeat = asked.get(idx)
        if repeat is not None:
            repeat = self._tagged(repeat, self._lse.get(idx))
        extras = [queries.group_queries(q, self.num_kv) for q in extra.get(idx, [])]
        if repeat is None and not extras:
            raise ConfigError(f"method {self.spec.name!r} needs reference queries but none were gathered")
        positions = 0 if repeat is None else repeat.shape[-2]
        repeat = None if repeat is None else queries.group_queries(repeat, self.num_kv)
        rows = queries.combine(repeat, extras, self.max_queries, self.generator, positions=positions)
        if not self.context_scores:
            return rows
        rows, self._normalisers[idx] = queries.split_normaliser(rows)
        return rows

    def _logical_span(self) -> tuple[int, int]:
        return self.span

    # ---------------------------------------------------------------- fitting
    def _copy(self, idx: int, index: torch.Tensor) -> am.Fit:
        """A baseline's fit: kept keys with their own values and prior bias."""
        keys, values, prior = self._span(idx)
        active = am.budget_mask(self.budgets[idx], index.shape[1])
        bias = torch.gather(prior, 1, index).masked_fill(~active, float("-inf"))
        kept = torch.gather(values, 1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
        return am.Fit(index=index, bias=bias, values=kept.float())

    def _install(self, idx: int, fit: am.Fit) -> None:
        layer = self.view.layers[idx]
        a, b = self.spans[idx]
        B, H = self.batch, self.num_kv
        keys, _, _ = self._span(idx)
        width = fit.index.shape[1]
        kept = torch.gather(keys, 1, fit.index.unsqueeze(-1).expand(-1, -1, keys.shape[-1]))
        kept = kept.masked_fill(~torch.isfinite(fit.bias).unsqueeze(-1), 0.0)
        dtype = layer.keys.dtype

        # heads of different counts are stored at their mean width, without padding
        run_keys, run_values, run_bias, borrowed = hf.pack(
            kept.reshape(B, H, width, -1).to(dtype), fit.values.reshape(B, H, width, -1).to(dtype),
            fit.bias.reshape(B, H, width).float(), a)
        width = run_bias.shape[-1]

        def splice(full: torch.Tensor, middle: torch.Tensor) -> torch.Tensor:
            return torch.cat([full[:, :, :a], middle, full[:, :, b:]], dim=2)

        later = hf.remapped(layer, a, b, width)
        if borrowed is not None:
            borrowed = borrowed.joined(later)
        start, end = self._logical_span()
        runs = hf.splice_runs(layer.runs, start, end, width)
        self.out.layers[idx] = hf.CompactedLayer.from_tensors(
            splice(layer.keys, run_keys), splice(layer.values, run_values), splice(layer.bias, run_bias),
            logical_length=layer.logical_length, scaling=layer.scaling, runs=runs,
            borrowed=borrowed if borrowed is not None else later,
        )

    def _on_policy_hook(self, extra):
        """Compact layer l when the repeat pass reaches it, then let that pass attend to the result."""
        done: set[int] = set()

        def hook(idx, query, key, value, mask):
            if idx in done:
                return key, value, mask
            done.add(idx)
            q = queries.group_queries(query.float(), self.num_kv)
            extras = [queries.group_queries(e, self.num_kv) for e in extra.get(idx, [])]
            q = queries.combine(q, extras, self.max_queries, self.generator, positions=query.shape[-2])
            self._rebuild(idx, q)
            new = self.out.layers[idx]
            grown = key.shape[-2] - self.view.layers[idx].physical_length  # tokens of this pass
            old = self.view.layers[idx]
            k = torch.cat([new.keys, key[..., -grown:, : new.keys.shape[-1]]], dim=2)
            v = torch.cat([new.values, value[..., -grown:, :]], dim=2)
            bias = torch.cat([new.bias, new.bias.new_zeros(new.bias.shape[:-1] + (grown,))], dim=-1)
            column = (bias / new.scaling).clamp(min=torch.finfo(k.dtype).min / 4).to(k.dtype).unsqueeze(-1)
            k = torch.cat([k, column], dim=-1)
            if mask is not None:
                a, b = self.spans[idx]
                width = new.physical_length - (old.physical_length - (b - a))
                mask = mask[..., -key.shape[-2]:]
                keep = torch.ones(mask.shape[:-1] + (width,), dtype=mask.dtype, device=mask.device)
                if mask.dtype != torch.bool:
                    keep = torch.zeros_like(keep)
                mask = torch.cat([mask[..., :a], keep, mask[..., b:]], dim=-1)
            return k, v, mask

        return hook


# ---------------------------------------------------------------------- validation


def options_from(options: dict) -> Options:
    """`Options` from `compact`'s keyword options; `ConfigError` names unknown ones (types are checked later)."""
    known = set(Options.__dataclass_fields__)
    unknown = set(options) - known
    if unknown:
        raise ConfigError(f"unknown compaction option(s) {sorted(unknown)}; known: {sorted(known)}")
    return Options(**options)


def _method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
