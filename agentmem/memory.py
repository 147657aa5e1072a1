"""Plan, snap and carry out one compaction of a session's cache.

`Compactor.compact` asks the policy for spans over the cached segments (`plan`), widens
them to whole compacted runs (`snap_spans`), lets hooks veto, compacts each span with
`agentmem.compact` (`run`), and falls back to dropping the oldest unpinned segment when
there is nothing to plan or a compaction fails at run time (bad arguments raise instead).
It returns a `Compaction`: the new cache and one `CompactionEvent` per action, which the
session applies. Nothing here keeps state between calls except the hooks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import torch

from . import hf
from .captured import QuerySample
from .compaction import METHODS, compact
from .errors import CompactionError, CompactionVetoed
from .hooks import RemovableHandle, register
from .policies import Policy
from .segments import CompactionEvent, KVStats, Segment

log = logging.getLogger(__name__)

# before_compaction hooks get the plan; returning False or raising CompactionVetoed skips it.
BeforeHook = Callable[["Plan"], bool | None]
AfterHook = Callable[[CompactionEvent], None]


class Plan:
    """What is about to be compacted: spans from the policy and why."""

    def __init__(self, reason: str, spans: Sequence, stats: KVStats):
        self.reason, self.spans, self.stats = reason, list(spans), stats

    @property
    def tokens(self) -> int:
        return sum(s.end - s.start for s in self.spans)

    def __repr__(self) -> str:
        spans = ", ".join(f"[{s.start}, {s.end}) x{s.ratio:.3g}" for s in self.spans)
        return f"Plan({self.reason!r}: {spans or 'nothing'})"


@dataclass
class Compaction:
    """What one compaction did: the cache to install and one event per action, in order."""

    cache: object
    events: list[CompactionEvent]

    @property
    def applied(self) -> list[CompactionEvent]:
        """The events that changed the cache (a compaction, or a fallback drop)."""
        return [e for e in self.events if e.status in ("ok", "fallback")]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Compactor:
    """Runs compaction plans for one session (see the module docstring)."""

    def __init__(self, model, tokenizer, *, options: dict | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.options = dict(options or {})
        self.before: list[BeforeHook] = []
        self.after: list[AfterHook] = []
        self.scalings = hf.attention_scalings(model)

    def on_before(self, hook: BeforeHook) -> RemovableHandle:
        """Call `hook(plan)` before each compaction; False (or CompactionVetoed) skips it."""
        return register(self.before, hook, "on_before_compaction")

    def on_after(self, hook: AfterHook) -> RemovableHandle:
        """Call `hook(event)` after each compaction or fallback drop."""
        return register(self.after, hook, "on_after_compaction")

    def compact(self, cache, ids: Sequence[int], segments: Sequence[Segment], *, policy: Policy, stats: KVStats,
                reason: str, ratio: float | None = None, method: str | None = None,
                recent_queries: dict | None = None, captured: QuerySample | None = None) -> Compaction:
        """Compact `cache` by `policy`'s plan; the session installs the returned `Compaction`.

        Args:
            cache: the session's cache, holding `ids` (every cached token id).
            segments: the session's segments; those wholly in the cache are planned over.
            policy: plans the spans (`Policy.plan`) and says what is pinned and protected.
            stats: the cache's size now; `reason`: the trigger's name (or "manual").
            ratio, method: override the plan's ratios and the policy's method.
            recent_queries: per layer, recent decode queries (B, H, n, D) to fit on.
            captured: the session's query sample (see `run`).
        """
        cached = len(ids)
        segments = [s for s in segments if s.end <= cached]
        plan = self.plan(cache, segments, policy=policy, stats=stats, reason=reason, ratio=ratio)
        held = self.held(segments, policy=policy, cached=cached)
        if not plan.spans:
            return Compaction(*self.drop_oldest(cache, segments, held, reason))
        device = next(self.model.parameters()).device
        cache, events = self.run(plan, cache, torch.tensor([list(ids)], device=device), segments,
                                 method=method or policy.method, pinned=held, recent_queries=recent_queries,
                                 captured=captured)
        return Compaction(cache, events)

    @staticmethod
    def plan(cache, segments: Sequence[Segment], *, policy: Policy, stats: KVStats, reason: str,
             ratio: float | None = None) -> Plan:
        """`policy`'s spans over `segments`, snapped to whole compacted runs, each naming its segments."""
        physical = {s.index: hf.span_slots(cache, s.start, s.end) for s in segments}
        spans = snap_spans(cache, policy.plan(segments, stats, physical=physical), ratio)
        spans = [replace(span, segments=tuple(s.index for s in segments if s.start < span.end and s.end > span.start))
                 for span in spans]
        return Plan(reason, spans, stats)

    @staticmethod
    def held(segments: Sequence[Segment], *, policy: Policy, cached: int) -> set[int]:
        """Indices of the segments that keep their slots: pinned (by the policy or by hand), or
        ending inside the recent tail of `policy.protect_recent` tokens before `cached`."""
        boundary = cached - policy.protect_recent
        return {s.index for s in segments if policy.pin.pinned(s, segments) or s.pinned or s.end > boundary}

    def over_budget(self, reason: str, stats: KVStats, cache, segments: Sequence[Segment], *, policy: Policy,
                    cached: int) -> CompactionEvent:
        """The `over_budget` event naming what keeps the cache over its limit (pins, the recent tail)."""
        live = [s for s in segments if s.start < cached]
        holders = sorted(self.held(live, policy=policy, cached=cached))
        return over_budget_event(reason, stats, cache, [segments[i] for i in holders], cached)

    def run(self, plan: Plan, cache, ids: torch.Tensor, segments: Sequence[Segment], *, method: str,
            pinned: set[int], recent_queries: dict | None = None,
            captured: QuerySample | None = None) -> tuple[object, list[CompactionEvent]]:
        """Compact every span of `plan`; returns (new cache, events). Hooks may veto.

        `captured`, the session's query sample, is used for a span it covers (else the
        span's reference queries come from a repeat pass).
        """
        if self._vetoed(plan):
            return cache, [self._event(plan.reason, "none", 1.0, 0, 0, cache, cache, 0.0, status="vetoed")]
        events = []
        for span in plan.spans:
            began = time.perf_counter()
            try:
                options = dict(self.options, tokenizer=self.tokenizer)
                if recent_queries and method.startswith("am"):
                    options["recent_queries"] = recent_queries
                if captured is not None and METHODS[method].repeat_queries and captured.covers(span.start):
                    options["captured"] = captured
                elif options.get("reference") in ("captured", "both"):
                    log.info("no captured queries cover tokens [%d, %d) (the sample began later): a repeat pass "
                             "gives them", span.start, span.end)
                    options["reference"] = "repeat"
                new = compact(self.model, cache, ids, ratio=span.ratio, method=method, start=span.start,
                              end=span.end, **options)
            except (CompactionError, RuntimeError, MemoryError) as exc:
                # Runtime failures only (a non-finite fit, out of memory, a singular solve): a
                # ConfigError or a model mismatch is the caller's mistake and propagates.
                log.warning("compaction of tokens [%d, %d) failed (%s); dropping the oldest unpinned segment",
                            span.start, span.end, exc)
                failed = self._event(plan.reason, method, span.ratio, span.start, span.end, cache, cache,
                                     time.perf_counter() - began, status="failed", error=str(exc),
                                     segments=span.segments)
                events.append(failed)
                cache, dropped = self.drop_oldest(cache, segments, pinned, plan.reason)
                events.extend(dropped)
                continue
            event = self._event(plan.reason, method, span.ratio, span.start, span.end, cache, new,
                                time.perf_counter() - began, segments=span.segments)
            cache = new
            events.append(event)
        for event in events:
            for hook in self.after:
                hook(event)
        return cache, events

    def drop_oldest(self, cache, segments: Sequence[Segment], pinned: set[int], reason: str):
        """Deterministic fallback: drop the slots of the oldest unpinned segment still holding any
        (with the segments it was compacted together with, whose slots it shares)."""
        for segment in segments:
            if segment.index in pinned:
                continue
            if segment.end > cache.get_seq_length() or hf.span_slots(cache, segment.start, segment.end) == 0:
                continue
            began = time.perf_counter()
            # A compacted run's slots stand for all of its tokens: a segment compacted together
            # with its neighbours goes with them.
            start, end = hf.snap_span(cache, segment.start, segment.end)
            new = hf.drop_span(cache, start, end, scalings=self.scalings)
            gone = tuple(s.index for s in segments if s.start < end and s.end > start)
            event = self._event(reason, "drop", 0.0,  # ratio 0: every slot removed
                                start, end, cache, new, time.perf_counter() - began, status="fallback",
                                segments=gone)
            log.info("dropped segment(s) %s (tokens [%d, %d))", ", ".join(map(str, gone)), start, end)
            return new, [event]
        return cache, []

    def _vetoed(self, plan: Plan) -> bool:
        for hook in self.before:
            try:
                if hook(plan) is False:
                    return True
            except CompactionVetoed:
                return True
        return False

    @staticmethod
    def _event(reason, method, ratio, start, end, before, after, seconds, *, status="ok", error=None,
               segments=()) -> CompactionEvent:
        logical, physical_before, bytes_before = hf.cache_size(before)
        _, physical_after, bytes_after = hf.cache_size(after)
        event = CompactionEvent(
            time=now(), trigger=reason, method=method, ratio=float(ratio), start=start, end=end,
            tokens_before=physical_before, tokens_after=physical_after, bytes_before=bytes_before,
            bytes_after=bytes_after, logical_tokens=logical, seconds=seconds, status=status, error=error,
            segments=tuple(segments),
        )
        if status == "ok":
            log.info("compaction %s x%.3g: %d -> %d slots, %.0f ms (%s)", method, ratio, physical_before,
                     physical_after, seconds * 1e3, reason)
        return event


def snap_spans(cache, spans, ratio: float | None) -> list:
    """Spans widened to whole compacted runs, optional ratio override. Spans that then overlap
    merge (the first one's ratio), and so do touching ones of the same ratio; touching spans
    of different ratios (a fresh turn beside an old run, `FixedRatio.again`) stay apart."""
    out: list = []
    for span in sorted(spans, key=lambda s: s.start):
        start, end = hf.snap_span(cache, span.start, span.end)
        span = replace(span, start=start, end=end, ratio=float(ratio) if ratio is not None else span.ratio)
        if out and (span.start < out[-1].end or (span.start == out[-1].end and span.ratio == out[-1].ratio)):
            last = out[-1]
            span = replace(last, end=max(last.end, span.end), segments=tuple(last.segments) + tuple(span.segments))
            out[-1] = span
        else:
            out.append(span)
    return out


def over_budget_event(reason: str, stats: KVStats, cache, holders: Sequence[Segment], cached: int) -> CompactionEvent:
    """The `over_budget` event (logged as a warning) for a cache that compaction could not bring
    under its limit: `holders` are the pinned or recent segments that keep their slots."""
    slots = {s.index: hf.span_slots(cache, s.start, min(s.end, cached)) for s in holders[:6]}
    kinds = {s.index: s.kind for s in holders}
    sizes = ", ".join(f"{kinds[i]} #{i}: {n:.0f}" for i, n in slots.items())
    message = (f"KV cache stays over budget ({reason}) after compacting all it may: {stats.physical_tokens} "
               f"slots; pinned or recent segments hold {sizes}{', ...' if len(holders) > 6 else ''}, the rest "
               f"is already compacted or below min_segment_tokens. Unpin some, lower protect_recent, or raise "
               f"the limit")
    log.warning("%s", message)
    return CompactionEvent(time=now(), trigger=reason, method="none", ratio=1.0, start=0, end=cached,
                           tokens_before=stats.physical_tokens, tokens_after=stats.physical_tokens,
                           bytes_before=stats.bytes, bytes_after=stats.bytes, logical_tokens=stats.logical_tokens,
                           seconds=0.0, status="over_budget", error=message,
                           segments=tuple(s.index for s in holders))
