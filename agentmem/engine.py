"""`Session`: a chat with a transformers model whose KV cache stays inside a budget.

The session appends messages through the chat template, prefills only tokens the cache
does not hold yet, decodes token by token, and asks its policy before every prefill chunk
and every decode step whether the cache must be compacted first. Every message owns a
`Segment` (its logical token span); an assistant tool call and its tool results share one.
With a `Store`, each finished turn is committed in one transaction (messages, segments,
compaction events, a KV checkpoint), and `Session.resume` continues it in a new process
with the same next-token logits.

Token bookkeeping: `ids` holds every token of the conversation; the first `cached` are in
the cache, the rest are *pending* (the last sampled token, the template's reply tail, new
messages) and are prefilled together at the next generation.

The session keeps the bookkeeping and delegates each other job to its own room: picking
tokens to `decoding.Decoder` (every logit filter and the sampler), planning and running a
compaction to `memory.Compactor` (the session applies the `Compaction` it returns), the
queries kept for compaction to `session_queries.SessionQueries`, and what the store holds
already to `saving.SaveMark`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from . import hf, summary
from .chat_format import ChatFormat
from .checkpoint import policy_data, stored_policy
from .compaction import METHODS, options_from
from .decoding import Decoder, LogitsProcessor, ReplyText, reply_config
from .errors import ConfigError
from .hooks import RemovableHandle, register
from .integrity import captured_sample, check_session, rebuild_cache
from .memory import AfterHook, BeforeHook, Compactor
from .policies import Policy, policy_from
from .probes import FreeMemory, bytes_per_token
from .ratio import check_ratio
from .sampling import Choices
from .saving import SaveMark
from .segments import CompactionEvent, KVStats, Segment
from .session_queries import SessionQueries

if TYPE_CHECKING:
    from transformers.cache_utils import Cache

log = logging.getLogger(__name__)

PREFILL_CHUNK = 512  # tokens per forward pass while prefilling; triggers are checked between chunks
DEFAULT_REPEAT_TOKENS = 2048


@dataclass
class Reply:
    """One generated assistant message and what it cost."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end of turn), "stop_string", "length", "stopped" (stop_when)
    prompt_tokens: int  # tokens prefilled for this reply (new messages + reply opener)
    cached_tokens: int  # tokens served from the cache instead of prefilled again
    seconds: float
    compactions: list[CompactionEvent] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class Session:
    """A conversation with `model` whose KV cache is kept inside `policy`'s budget.

    Args:
        model: a transformers causal LM (agentmem attention is switched on; it is exact SDPA
            for ordinary caches).
        tokenizer: its tokenizer.
        policy: a `Policy`, a preset name ("default", "quality", "aggressive", "off"), a dict
            or a TOML path (see `agentmem.policies`).
        store: a `Store` to persist every turn in; None keeps the session in memory.
        system: an optional system prompt (pinned by the default policies).
        tools: optional tool schemas (OpenAI function format), put in a pinned segment.
        generation: default `GenerationConfig` overrides (e.g. {"temperature": 0.7}).
        seed: seed of the sampler.
        watch_every: record the KV size every this many decode steps.
        recent_queries: decode queries kept per layer for compaction (0 switches it off).
        captured_queries: positions per layer of the session's own queries (prefill and
            decode) kept as reference queries for compaction, spread evenly over the whole
            history (`agentmem.captured.QuerySample`); 0 switches it off. A compaction fits
            on them instead of a repeat pass, or beside it with
            `compaction_options={"reference": "both"}`.
        compaction_options: extra keyword options for `agentmem.compact`.
        session_id, title, model_name: how the session is named in the store.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        policy: Policy | str | dict | None = None,
        store=None,
        system: str | None = None,
        tools: Sequence[dict] | None = None,
        chat_template: str | None = None,
        generation: dict | None = None,
        seed: int = 0,
        watch_every: int = 16,
        recent_queries: int = 64,
        captured_queries: int = 0,
        compaction_options: dict | None = None,
        session_id: str | None = None,
        title: str | None = None,
        model_name: str | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.policy: Policy = policy_from(policy)
        self.format = ChatFormat(tokenizer, chat_template)
        self.generation = dict(generation or {})
        self.seed = seed
        self.watch_every = max(1, int(watch_every))
        self.compaction_enabled = True
        self._progress: list[Callable[[int, int], None]] = []  # on_prefill_progress callbacks
        # A session re-compacts its whole history again and again: repeat-prefill at most this
        # many of the span's tokens, in pieces spread over it (`queries.repeat_pieces`), so a
        # compaction costs the same at turn 500 as at turn 10 and still asks about the oldest turns.
        # Reference queries are samples of what the future may ask: gathered in bfloat16 where the
        # device multiplies it natively, they cost ~30% less compaction time at the same recall.
        options = {"max_repeat_tokens": DEFAULT_REPEAT_TOKENS, "query_dtype": "auto", **(compaction_options or {})}
        options_from(options)  # an unknown option fails here, not as a fallback drop at the first compaction
        self.compactor = Compactor(model, tokenizer, options=options)
        if self.policy.method in METHODS and METHODS[self.policy.method].summary:
            summary.check_model(model)  # here, not at the first compaction
        self.messages: list[dict] = []
        self.segments: list[Segment] = []
        self.events: list[CompactionEvent] = []
        self.timeline: list[tuple[float, int, int, int]] = []  # (seconds, logical, physical, bytes)
        self.ids: list[int] = []
        self.cached = 0
        self.cache = hf.new_cache(model)
        self.store, self.id = store, session_id
        self._logits: torch.Tensor | None = None
        layers = hf.full_attention_layers(model)
        self.queries = SessionQueries(layers, recent=recent_queries, captured=captured_queries)
        self._saved = SaveMark()  # what the store holds of this session already
        self._blocked_until = -1  # physical size below which a futile compaction is not retried
        self._over_budget = False  # an over_budget event was recorded and the cache is still over
        self._last_compaction_turn = -1
        self._began = time.perf_counter()
        self._context_length = getattr(hf.text_config(model), "max_position_embeddings", None)
        self._device = next(model.parameters()).device
        self._bytes_per_token = bytes_per_token(model, len(layers))
        self._free = FreeMemory(self._device)
        self._model_name = model_name or str(model.config.name_or_path or "model")
        hf.enable(model)
        if store is not None and session_id is None:
            self.id = self._create_stored(title)
        if tools:
            self._add(self.format.tools_message(tools), kind="tools")
        if system:
            self.add("system", system)

    # ------------------------------------------------------------------ messages
    def add(self, role: str, content: str, *, pinned: bool = False) -> Segment:
        """Append a message (prefilled lazily, with the next generation or `prefill`).

        A `tool` message joins the segment of the assistant tool call before it, so the
        call and its results are compacted together.
        """
        kind = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool_call"}.get(role)
        if kind is None:
            raise ConfigError(f"unknown role {role!r}; use system, user, assistant or tool")
        return self._add({"role": role, "content": content}, kind=kind, pinned=pinned)

    def _add(self, message: dict, *, kind: str, pinned: bool = False, ids: list[int] | None = None) -> Segment:
        ids = self.format.message_ids(self.messages, message) if ids is None else ids
        if self._context_length and len(ids) > self._context_length:
            raise ConfigError(f"this {message['role']} message is {len(ids)} tokens long, more than the model's "
                              f"context of {self._context_length} positions; split it or shorten it (nothing "
                              f"was added)")
        start = len(self.ids)
        if self._context_length and start <= self._context_length < start + len(ids):
            log.warning("this session (%s) passes the model's context of %d positions: compaction bounds the "
                        "cache, not the positions, so later tokens sit at positions the model was not trained on",
                        self.id or "in memory", self._context_length)
        self.ids.extend(ids)
        index = len(self.messages)
        previous = self.segments[-1] if self.segments else None
        if kind == "tool_call" and previous is not None and previous.role in ("assistant", "tool") \
                and previous.end == start:
            previous.kind, previous.end = "tool_call", len(self.ids)
            previous.messages.append(index)
            segment = previous
        else:
            turn = self.turns + (1 if message["role"] == "user" else 0)
            segment = Segment(index=len(self.segments), role=message["role"], kind=kind, start=start,
                              end=len(self.ids), turn=turn, pinned=pinned, messages=[index])
            self.segments.append(segment)
        self.messages.append({"index": index, "role": message["role"], "content": message["content"],
                              "token_ids": ids, "segment": segment.index, "meta": {"kind": kind}})
        return segment

    def pin(self, segment: int | Segment, pinned: bool = True) -> None:
        """Pin (or unpin) a segment so no policy compacts it."""
        index = segment.index if isinstance(segment, Segment) else int(segment)
        if not 0 <= index < len(self.segments):
            raise ConfigError(f"no segment {index}; the session has {len(self.segments)}")
        self.segments[index].pinned = pinned

    @property
    def version(self) -> int:
        """The stored session's version this copy last saw or wrote (0 before the first save).

        `Store.get_session(id)["version"]` above it means another writer committed since.
        """
        return self._saved.version

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "user")

    # ------------------------------------------------------------------ generation
    def generate(self, max_new_tokens: int = 256, **kwargs) -> Reply:
        """Generate an assistant reply to the messages so far; see `stream` for options."""
        for _ in self.stream(max_new_tokens, **kwargs):
            pass
        return self.last_reply

    def stream(
        self,
        max_new_tokens: int = 256,
        *,
        stop: Sequence[str] | str | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        do_sample: bool | None = None,
        repetition_penalty: float | None = None,
        min_new_tokens: int | None = None,
        generation_config=None,
        stop_when: Callable[[Session], bool] | None = None,
        prefix: str | None = None,
        choices: Sequence[str] | None = None,
        logits_processor: LogitsProcessor | None = None,
        save: bool = True,
    ) -> Iterator[str]:
        """Yield the reply's text as it is decoded; the `Reply` lands in `last_reply`.

        The reply ends at the model's end-of-turn token, a `stop` string (left out of the
        text, kept in the cache), `max_new_tokens`, or when `stop_when(session)` returns
        True before a decode step (finish reason "stopped"). `prefix` is text the reply is
        made to start with (e.g. `<tool_call>` to require a tool call); it is part of the
        reply's text and is yielded first. `choices` constrains the text after the prefix to
        go on with exactly one of these strings, then decoding is free.
        `logits_processor(generated_ids, logits)` may return changed next-token logits
        (vocab,) before each choice (`agentmem.constrain.call_constraint` keeps a tool call
        well-formed this way). With a store the turn is committed when the reply ends.
        """
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        config = reply_config(self.generation, generation_config, temperature=temperature, top_p=top_p,
                              top_k=top_k, do_sample=do_sample, repetition_penalty=repetition_penalty,
                              min_new_tokens=min_new_tokens)
        decoder = Decoder(config, seed=self.seed + len(self.messages), stop_ids=self.format.stop_ids,
                          choices=Choices(self.tokenizer, choices) if choices else None,
                          logits_processor=logits_processor)
        reply = ReplyText(self.tokenizer, prefix=prefix or "", stop=stop)
        began, cached_before, events_before = time.perf_counter(), self.cached, len(self.events)
        opener = self.format.generation_prompt_ids(self.messages) + self.format.encode(prefix or "")
        first = len(self.segments)
        segment = Segment(index=first, role="assistant", kind="generation", start=len(self.ids),
                          end=len(self.ids), turn=self.turns, messages=[len(self.messages)])
        self.ids.extend(opener)
        segment.end = len(self.ids)
        self.segments.append(segment)
        prompt_tokens = len(self.ids) - cached_before
        logits = self._flush()
        generated: list[int] = []
        finish = "length"
        if reply.shown:
            yield reply.shown
        for step in range(max_new_tokens):
            token = decoder.next_token(logits, generated=generated, text=reply.generated, history=self.ids)
            generated.append(token)
            self.ids.append(token)
            self.segments[-1].end = len(self.ids)
            if token in self.format.stop_ids:
                finish = "stop"
                break
            if chunk := reply.push(token):
                yield chunk
            if reply.stopped:
                finish = "stop_string"
                break
            if step + 1 == max_new_tokens:
                break
            if stop_when is not None and stop_when(self):
                finish = "stopped"
                break
            logits = self._flush(decode=True)
            if (step + 1) % self.watch_every == 0:
                self._watch()
        if rest := reply.rest():  # text held back as a possible stop string
            yield rest
        text = reply.shown
        tail = self.format.reply_tail_ids(self.messages, ended=finish == "stop")
        self.ids.extend(tail)
        self._close_reply(first, text, opener, generated, tail)
        self.last_reply = Reply(text=text, token_ids=generated, finish_reason=finish, prompt_tokens=prompt_tokens,
                                cached_tokens=cached_before, seconds=time.perf_counter() - began,
                                compactions=self.events[events_before:])
        if save and self.store is not None:
            self.save()

    def _close_reply(self, first: int, text: str, opener, generated, tail) -> None:
        """Record the reply as a message; its segments (one or more, if split) become `assistant`."""
        index = len(self.messages)
        for s in self.segments[first:]:
            s.kind = "assistant"
        self.segments[-1].end = len(self.ids)
        self.messages.append({"index": index, "role": "assistant", "content": text,
                              "token_ids": list(opener) + list(generated) + list(tail),
                              "segment": first, "meta": {"kind": "assistant"}})

    def prefill(self) -> torch.Tensor:
        """Prefill every pending token now; returns the next-token logits (vocab,)."""
        return self._flush()

    def next_token_logits(self) -> torch.Tensor:
        """Logits of the token that would come next (prefills pending tokens first)."""
        return self._flush() if self.cached < len(self.ids) or self._logits is None else self._logits

    # ------------------------------------------------------------------ cache
    def on_prefill_progress(self, callback: Callable[[int, int], None]) -> RemovableHandle:
        """Call `callback(done_tokens, total_tokens)` as pending tokens are prefilled.

        Each prefill (of the messages added since the last generation, or by `prefill()`)
        calls it with (0, total) before its first chunk of `PREFILL_CHUNK` tokens and with
        (done, total) after each chunk; decode steps and a compaction's own forward passes
        are not reported. Returns a handle whose `remove()` unregisters the callback.
        """
        return register(self._progress, callback, "on_prefill_progress")

    def _flush(self, *, decode: bool = False) -> torch.Tensor:
        """Feed pending ids to the model in chunks, checking the policy before each chunk."""
        first, total = self.cached, len(self.ids) - self.cached
        report = list(self._progress) if total and not decode else []
        for callback in report:
            callback(0, total)
        while self.cached < len(self.ids):
            n = min(PREFILL_CHUNK, len(self.ids) - self.cached)
            self._maybe_compact(n)
            chunk = torch.tensor([self.ids[self.cached : self.cached + n]], device=self._device)
            layers = self.queries.capture_layers(decode=decode, method=self.policy.method)
            with torch.no_grad(), hf.capture_queries(layers) as capture:
                out = self.model(input_ids=chunk, past_key_values=self.cache, use_cache=True,
                                 **hf.last_logits_only(self.model))
            self.queries.remember(capture, self.cached, decode=decode, method=self.policy.method)
            self.cached += n
            self._logits = out.logits[0, -1].float()
            for callback in report:
                callback(self.cached - first, total)
        if not decode:
            self._watch()
        if self._logits is None:
            raise ConfigError("nothing to generate from: add a message first")
        return self._logits

    def stats(self) -> KVStats:
        """The cache's size now (logical, physical, bytes) and the session's progress."""
        logical, physical, nbytes = hf.cache_size(self.cache)
        return KVStats(logical_tokens=logical, physical_tokens=physical, bytes=nbytes, turns=self.turns,
                       context_length=self._context_length, bytes_per_token=self._bytes_per_token,
                       device_free_fraction=self._free.fraction(),
                       last_compaction_turn=self._last_compaction_turn)

    def _watch(self) -> None:
        logical, physical, nbytes = hf.cache_size(self.cache)
        self.timeline.append((time.perf_counter() - self._began, logical, physical, nbytes))

    def _maybe_compact(self, incoming: int) -> None:
        if not (self.compaction_enabled and self.policy.enabled) or self.cached == 0:
            return
        stats = self.stats()
        reason = self.policy.should_compact(stats, incoming)
        if reason is None or stats.physical_tokens < self._blocked_until:
            return
        events = self._compact(reason, stats)
        after = self.stats()
        if self.policy.should_compact(after, incoming) is None:
            self._over_budget = False
            return
        # Still over: retry only after the cache grew a little, so a full pin set cannot thrash.
        self._blocked_until = after.physical_tokens + max(incoming, self.policy.protect_recent // 2, 16)
        vetoed = any(e.status == "vetoed" for e in events)
        if not self._over_budget and not vetoed:  # say so once per episode, in the log and as a stored event
            self._over_budget = True
            self._record_over_budget(reason, after)

    def _record_over_budget(self, reason: str, stats: KVStats) -> None:
        event = self.compactor.over_budget(reason, stats, self.cache, self.segments, policy=self.policy,
                                           cached=self.cached)
        self.events.append(event)  # not passed to after-compaction hooks: nothing was compacted

    def compact(self, *, ratio: float | None = None, method: str | None = None) -> list[CompactionEvent]:
        """Compact now, by hand, with the policy's plan (optionally another ratio or method).

        Raises:
            ConfigError: `ratio` is not a finite number >= 1, or `method` is unknown
                (checked before anything changes).
        """
        if ratio is not None:
            ratio = check_ratio("Session.compact", "ratio", ratio)
        if method is not None and method not in METHODS:
            raise ConfigError(f"Session.compact: unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self._flush()
        return self._compact("manual", self.stats(), ratio=ratio, method=method)

    def _compact(self, reason: str, stats: KVStats, *, ratio: float | None = None,
                 method: str | None = None) -> list[CompactionEvent]:
        """Run the compactor on the cached segments and apply what it did."""
        self._split_generation()
        result = self.compactor.compact(self.cache, self.ids[: self.cached], self.segments, policy=self.policy,
                                        stats=stats, reason=reason, ratio=ratio, method=method,
                                        recent_queries=self.queries.recent_queries(),
                                        captured=self.queries.sample)
        if type(result.cache) is not type(self.cache):  # a DynamicCache became compacted: blocks gain a bias
            self._saved.changed(0)
        self.cache = result.cache
        for event in result.applied:
            self._saved.changed(event.start)
            for index in event.segments:
                self.segments[index].compactions += 1
        self.events.extend(result.events)
        self._last_compaction_turn = self.turns
        self._watch()
        return result.events

    def _split_generation(self) -> None:
        """Cut the reply being decoded at the protected tail so its older part can be compacted."""
        last = self.segments[-1] if self.segments else None
        if last is None or last.kind != "generation":
            return
        boundary = self.cached - self.policy.protect_recent
        if boundary - last.start < max(self.policy.min_segment_tokens, 1):
            return
        head = Segment(index=last.index, role="assistant", kind="generation", start=last.start, end=boundary,
                       turn=last.turn, messages=list(last.messages))
        last.index, last.start = last.index + 1, boundary
        self.segments[-1:] = [head, last]

    def fork(self, *, messages: int | None = None) -> Session:
        """An in-memory copy of this session (no store) that can diverge from it.

        The copy shares the cache's tensors, so forking costs no memory until it grows.

        Args:
            messages: keep only the first `messages` messages: the copy is rolled back to
                the boundary before message `messages` (its ids, segments, events and cache),
                so a regenerated or edited turn prefills only what follows. The kept cache
                is exactly the original's up to the boundary; where the boundary was cached,
                the copy has next-token logits again once something follows it (a message,
                or the opener `generate` adds). The copy forgets its recent decode queries
                (they may come from the dropped messages).

        Raises:
            ConfigError: `messages` is out of range, a reply is being generated, or the cache
                cannot be cut at the boundary: it lies inside a compacted span, or a
                sliding-window layer has slid past it. Nothing was changed; a new session that
                prefills the kept messages is the way out.
        """
        cut = None if messages is None else self._rewind_point(messages)
        twin = object.__new__(Session)
        twin.__dict__.update(self.__dict__)
        twin.store = None
        twin.messages = [dict(m) for m in self.messages]
        twin.segments = [Segment.from_dict(s.to_dict()) for s in self.segments]
        twin.events, twin.timeline, twin.ids = list(self.events), list(self.timeline), list(self.ids)
        twin.cache = hf.copy_cache(self.cache, self.model)
        twin.queries = self.queries.copy()
        twin._saved = replace(self._saved)
        twin.compactor = Compactor(self.model, self.tokenizer, options=self.compactor.options)
        twin._progress = []  # like the compaction hooks, callbacks stay with the original
        if cut is not None:
            twin._rewind(messages, *cut)
        return twin

    def _rewind_point(self, messages: int) -> tuple[int, Cache | None]:
        """Where `fork(messages=...)` cuts: (logical end of the kept messages, the cropped cache or None)."""
        if isinstance(messages, bool) or not isinstance(messages, int) or not 0 <= messages <= len(self.messages):
            raise ConfigError(f"fork: messages must be an int from 0 to {len(self.messages)} (the session's "
                              f"messages), got {messages!r}")
        if self.segments and self.segments[-1].kind == "generation":
            raise ConfigError("fork: a reply is being generated; fork before or after it, not during it")
        end = sum(len(m["token_ids"]) for m in self.messages[:messages])
        if self.cached <= end:
            return end, None  # the cache holds nothing past the boundary
        try:
            return end, hf.crop_cache(self.cache, end, self.model)
        except ValueError as exc:
            raise ConfigError(f"fork: the cache cannot be cut before message {messages} ({exc}); start a new "
                              "session with the kept messages instead") from None

    def _rewind(self, messages: int, end: int, cache: Cache | None) -> None:
        """Roll this copy back to its first `messages` messages, `end` tokens (see `fork`)."""
        if cache is not None:
            self.cache, self.cached, self._logits = cache, cache.get_seq_length(), None
        self.messages, self.ids = self.messages[:messages], self.ids[:end]
        segments = []
        for segment in self.segments:  # a tool-call group may lose its last messages
            segment.messages = [i for i in segment.messages if i < messages]
            if segment.messages:
                segment.end = min(segment.end, end)
                if segment.kind == "tool_call" and all(self.messages[i]["role"] == "assistant"
                                                       for i in segment.messages):
                    segment.kind = "assistant"  # the call lost its results: as it was before they came
                segments.append(segment)
        self.segments = segments
        self.events = [e for e in self.events if e.start < end]
        self.queries.recent.clear()
        if self.queries.sample is not None:
            self.queries.sample.truncate(self.cached)
        self._saved = SaveMark()
        self._blocked_until, self._over_budget = -1, False
        self._last_compaction_turn = min(self._last_compaction_turn, self.turns)

    def attach_store(self, store, session_id: str) -> None:
        """Keep this in-memory session (a fork) in `store` as `session_id`, a stored session that
        holds nothing yet (`Store.create_session`); the next `save` commits all of it."""
        self.store, self.id, self._saved = store, session_id, SaveMark()

    def on_before_compaction(self, hook: BeforeHook) -> RemovableHandle:
        """Call `hook(plan)` before each compaction; returning False (or raising CompactionVetoed) skips it.

        Returns a handle: `handle.remove()` unregisters the hook (safe to call twice).
        """
        return self.compactor.on_before(hook)

    def on_after_compaction(self, hook: AfterHook) -> RemovableHandle:
        """Call `hook(event)` after each compaction or fallback drop; returns a handle like
        `on_before_compaction`'s."""
        return self.compactor.on_after(hook)

    # ------------------------------------------------------------------ persistence
    def save(self) -> None:
        """Commit messages, segments, events and a KV checkpoint since the last save (one transaction).

        Raises:
            StaleSessionError: another writer (a second process, or a second `resume` of the
                same session) committed to this session, or deleted it, after this copy
                loaded it. Nothing was written and the stored session is intact; this copy
                keeps its unsaved turns (also in the error's `unsaved`): `save_as_new()`
                stores them as a new session.
            StoreBusyError: the database stayed locked past the store's timeout; nothing
                was written, and `save()` can be called again.
        """
        if self.store is None:
            raise ConfigError("this session has no store; pass store=Store(path) to keep it")
        state = {"cached": self.cached, "tokens": len(self.ids), "last_compaction_turn": self._last_compaction_turn,
                 "blocked_until": self._blocked_until, "policy": policy_data(self.policy)}
        self._saved.commit(self.store, self.id, messages=self.messages, segments=self.segments, events=self.events,
                           cache=self.cache, cached=self.cached, queries=self.queries.state(), state=state)

    def save_as_new(self, *, title: str | None = None) -> str:
        """Store this copy, all of it, as a new session in the same store; return the new id.

        The way out of a `StaleSessionError`: the other writer's session stays as it is,
        and nothing of this copy is lost. This session continues under the new id.
        """
        if self.store is None:
            raise ConfigError("this session has no store; pass store=Store(path) to keep it")
        self.id = self._create_stored(title)
        self._saved = SaveMark()
        self.save()
        return self.id

    def _create_stored(self, title: str | None) -> str:
        from .loading import model_fingerprint

        return self.store.create_session(model=self._model_name, fingerprint=model_fingerprint(self.model),
                                         title=title, config={"policy": policy_data(self.policy)})

    @classmethod
    def resume(cls, store, session_id: str, model, tokenizer, **kwargs) -> Session:
        """Reopen a stored session with the same model; it continues exactly where it was saved.

        The session keeps the policy it was saved with unless `policy=` is passed (the new
        one is then stored with the next save). Other keyword arguments are `Session`'s.

        Raises:
            SessionNotFoundError, ModelMismatchError: see `Store.load_session`.
            CorruptSessionError: a stored row, block or tensor is damaged or inconsistent.
        """
        from .loading import model_fingerprint

        loaded = store.load_session(session_id, fingerprint=model_fingerprint(model),
                                    map_location=next(model.parameters()).device)
        if kwargs.get("policy") is None:
            kwargs["policy"] = stored_policy(loaded, session_id)
        session = cls(model, tokenizer, store=store, session_id=session_id, **kwargs)
        ids, cached = check_session(loaded, getattr(hf.text_config(model), "vocab_size", None))
        session.messages = [dict(m) for m in loaded.messages]
        session.segments = list(loaded.segments)
        session.ids = ids
        session.events = [CompactionEvent(**{k: e[k] for k in CompactionEvent.__dataclass_fields__ if k in e})
                          for e in loaded.events]
        state = loaded.state
        session._last_compaction_turn = state.get("last_compaction_turn", -1)
        session._blocked_until = state.get("blocked_until", -1)  # else a resumed copy retries a futile compaction
        if loaded.checkpoint is None:  # none saved, or dropped (Store.drop_checkpoints): prefill the messages
            session.cached = 0
            if cached:
                log.info("session %r has no KV checkpoint; its %d tokens are prefilled again", session_id, cached)
        else:
            session.cache, queries = rebuild_cache(loaded, model, cached)
            session.cached = cached
            sample = session.queries.sample
            session.queries.restore(queries, None if sample is None else captured_sample(loaded, sample.capacity,
                                                                                         cached))
        session._saved = SaveMark.stored(store, session_id, version=loaded.version, messages=len(session.messages),
                                         events=len(session.events), cached=session.cached)
        return session
