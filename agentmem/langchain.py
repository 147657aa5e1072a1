"""`ChatAgentMem`: an agentmem session as a LangChain chat model.

LangChain's contract is stateless: every call hands over the whole conversation. agentmem
keeps a KV cache per conversation, so this module maps calls onto engine sessions kept in
a per-process registry:

- A call whose messages *extend* a session's history (same messages so far, compared in a
  normalized form: role, text, and for assistant messages the tool calls' names and
  arguments) reuses that session and prefills only the new messages. This is what makes the
  usual pattern, re-sending the growing message list, cheap: `usage_metadata`'s
  `input_token_details.cache_read` shows the tokens served from the cache.
- `session_id` (a field, a call keyword, or `config={"configurable": {"session_id" | "thread_id": ...}}`,
  the key LangGraph uses) names a conversation. A call whose history does not extend any
  session of that conversation starts a *branch* (a new engine session, id `"<id>/2"`,
  `"<id>/3"`, ...) instead of mixing histories; `response_metadata["agentmem"]["branch"]`
  is then True and a log line says so. Without a session id, a call reuses any session it
  extends, else starts a new one.
- A new or branch session is *forked* from the session sharing the most leading messages
  with the call, rolled back to them (`Session.fork(messages=n)`): a regenerated last turn
  (the same history again) or an edited last message prefills only what follows the common
  prefix, and so does each of a `batch` of histories that share one. The session forked
  from is not changed; `response_metadata["agentmem"]["forked_from"]` names it. Where the
  cache cannot be cut at the prefix (inside a compacted span, or past a sliding window),
  the new session prefills everything, as a log line says.
- With `store` (an SQLite path) every turn is committed, and a conversation found in the
  store is resumed from its KV checkpoint, so the cache survives a restart.

Tools: `bind_tools` renders the schemas in the engine's pinned tool prompt; the model
answers `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, parsed into
`AIMessage.tool_calls` (unreadable blocks go to `invalid_tool_calls`). Generation stops
after the first complete call unless `bind_tools(..., parallel_tool_calls=True)`: small
models tend to keep writing after a call, and an agent runs the tool before going on.
With `repeat_guard=True` a reply cannot write a tool call identical to one made since the
last human message (a `ToolMessage` already holds its result): the model answers or makes
another call.
`tool_choice` "any"/"required" (or a tool name) is enforced by starting the reply with
`<tool_call>{"name": "` (or with the name filled in); a forced call to a tool without
parameters is complete without the model, so it is written directly.

One model generates one reply at a time (a lock per loaded model); sessions of different
models run in parallel.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from . import loading
from .chat_format import ChatFormat
from .claim import Claim, claim, is_current
from .engine import Session
from .errors import ConfigError
from .forbid import call_texts
from .langchain_history import _REGISTRY, _Entry, _key, _Turn, _turns, clear_sessions
from .langchain_tools import _split_reply, _Visible
from .loading import model_fingerprint
from .policies import Policy, policy_from
from .sampling import generation_config
from .tool_choice import Forcing, forcing, resolve_choice, tool_name
from .toolcalls import ToolCall, call_done
from .usage import Usage

log = logging.getLogger(__name__)

__all__ = ["ChatAgentMem", "clear_sessions"]

# Options of hosted chat models that mean nothing for a local one; accepted (and ignored) so
# code written for them runs unchanged. Anything else unknown is an error.
_IGNORED_FIELDS = ("api_key", "max_retries", "base_url", "organization")
_CALL_OPTIONS = {"session_id", "model", "max_tokens", "max_new_tokens", "temperature", "top_p", "top_k",
                 "repetition_penalty", "seed",
                 "tools", "tool_choice", "parallel_tool_calls", "timeout"}
_LANGCHAIN_OPTIONS = {"stream", "ls_structured_output_format", "structured_output_format"}


# --------------------------------------------------------------------------- the chat model


@dataclass
class _Call:
    """One call's resolved options; building it touches no model."""

    messages: Sequence[BaseMessage]
    tools: list[dict]
    thread: str | None
    model_name: str
    max_new_tokens: int
    sampling: dict
    seed: int
    stop: list[str]
    forcing: Forcing
    parse: bool
    single_call: bool  # end the reply once it holds one complete call
    timeout: float | None


@dataclass
class _Outcome:
    text: str
    content: str
    tool_calls: list[dict]
    invalid_tool_calls: list[dict]
    usage: UsageMetadata
    metadata: dict


class ChatAgentMem(BaseChatModel):
    """A LangChain chat model that keeps each conversation's KV cache within a budget.

    Construction loads nothing; the model is loaded on first use and shared by every
    instance in the process that names it (`agentmem.loading.shared_model`).

    Example:
        ```python
        from agentmem.langchain import ChatAgentMem

        chat = ChatAgentMem(model="smollm2-135m", policy="default", max_tokens=128)
        history = [("user", "Name three prime numbers.")]
        reply = chat.invoke(history)
        history += [reply, ("user", "And their sum?")]
        reply = chat.invoke(history)  # only the new message is prefilled
        reply.usage_metadata["input_token_details"]["cache_read"]  # > 0
        ```

    Per-call options (keywords of `invoke`/`stream`, or `bind(...)`): `session_id`,
    `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `timeout`, `model`, `stop`.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    model: str = Field(default=loading.DEFAULT_MODEL, alias="model_name")
    """Built-in model name, HuggingFace id or local directory (or a label with `loaded`)."""
    policy: Any = None
    """Compaction policy: a preset name, a dict, a TOML path or an `agentmem.policies.Policy`.
    None: a resumed session keeps the policy it was stored with, a new one gets "default"."""
    max_tokens: int = Field(default=256, alias="max_new_tokens")
    """Most tokens generated per reply."""
    temperature: float = 0.0
    """Sampling temperature; 0 decodes greedily."""
    top_p: float | None = None
    """Nucleus sampling mass (with temperature > 0)."""
    top_k: int | None = None
    """Top-k sampling (with temperature > 0)."""
    repetition_penalty: float | None = None
    """Penalty (> 1) on tokens already in the conversation; small models loop less with ~1.1."""
    stop: list[str] | None = None
    """Stop sequences: the reply ends before the first one (it stays in the cache)."""
    seed: int = 0
    """Seed of the sampler (each reply draws from seed + its message index)."""
    session_id: str | None = None
    """Conversation id; also per call, or `configurable.session_id` / `configurable.thread_id`."""
    store: str | None = None
    """SQLite path: commit every turn there and resume stored conversations."""
    device: str | None = None
    """Device to load the model on ("cpu", "cuda", ...)."""
    dtype: str | None = None
    """Dtype to load the model in ("float32" by default, "bfloat16", "auto")."""
    timeout: float | None = None
    """Seconds a reply may take; generation then stops (finish_reason "timeout")."""
    streaming: bool = False
    """Generate through `_stream` even in `invoke` (callbacks then see every token)."""
    max_sessions: int = 8
    """Engine sessions (KV caches) this process keeps in memory; older ones are evicted."""
    repeat_guard: bool = False
    """A reply cannot write a tool call identical to one made since the last human message
    (its result is already in the history). Off by default: on SmolLM2-135M the model then
    wrote a slightly different call (a longer city string) rather than an answer (docs/LOG.md)."""
    loaded: Any = Field(default=None, exclude=True, repr=False)
    """An already loaded `(model, tokenizer)` pair; see `from_model`."""

    _policy: Policy = PrivateAttr()

    # ------------------------------------------------------------------ construction
    @model_validator(mode="before")
    @classmethod
    def _drop_hosted_options(cls, values: Any) -> Any:
        if isinstance(values, dict):
            ignored = [k for k in _IGNORED_FIELDS if k in values]
            if ignored:
                log.debug("ignoring %s: a local model needs none of them", ", ".join(ignored))
                values = {k: v for k, v in values.items() if k not in ignored}
        return values

    def model_post_init(self, context: Any, /) -> None:
        """Check every field now, so a bad value fails at construction rather than at first use."""
        super().model_post_init(context)
        self._policy = policy_from(self.policy)
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_sessions < 1:
            raise ConfigError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds (or None), got {self.timeout}")
        generation_config(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1 is none), got {self.repetition_penalty}")
        if self.stop is not None and not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if self.loaded is not None:
            if not (isinstance(self.loaded, tuple) and len(self.loaded) == 2):
                raise ConfigError("loaded must be a (model, tokenizer) pair; or use ChatAgentMem.from_model")
            if self.device is not None or self.dtype is not None:
                raise ConfigError("device and dtype apply when ChatAgentMem loads the model; move or cast a "
                                  "loaded model yourself before passing it")
        else:
            _check_model_name(self.model)
            if self.device is not None:
                _check_device(self.device)
            if self.dtype is not None:
                _check_dtype(self.dtype)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, /, **fields: Any) -> ChatAgentMem:
        """A chat model over an already loaded transformers model and tokenizer.

        Args:
            model: a causal LM (e.g. from `agentmem.load_model`).
            tokenizer: its tokenizer.
            **fields: any other field; `model` defaults to the model's `name_or_path`.
        """
        name = fields.pop("model", None) or fields.pop("model_name", None) \
            or str(getattr(model, "name_or_path", "") or type(model).__name__)
        return cls(model=name, loaded=(model, tokenizer), **fields)

    # ------------------------------------------------------------------ LangChain identity
    @property
    def _llm_type(self) -> str:
        return "agentmem"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        policy = self.policy if isinstance(self.policy, (str, dict)) else repr(self.policy)
        return {"model": self.model, "policy": policy,
                "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "repetition_penalty": self.repetition_penalty, "seed": self.seed,
                "store": self.store}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="agentmem", ls_model_type="chat",
                                 ls_model_name=str(kwargs.get("model") or self.model),
                                 ls_temperature=kwargs.get("temperature", self.temperature),
                                 ls_max_tokens=kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens)))
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    # ------------------------------------------------------------------ run config -> session id
    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        """`BaseChatModel.invoke`, taking the session id from `config["configurable"]` too."""
        return super().invoke(input, config, stop=stop, **_thread(config, kwargs))

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                      stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        """`BaseChatModel.ainvoke`, taking the session id from `config["configurable"]` too."""
        return await super().ainvoke(input, config, stop=stop, **_thread(config, kwargs))

    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        """`BaseChatModel.stream`, taking the session id from `config["configurable"]` too."""
        return super().stream(input, config, stop=stop, **_thread(config, kwargs))

    def astream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                stop: list[str] | None = None, **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        """`BaseChatModel.astream`, taking the session id from `config["configurable"]` too."""
        return super().astream(input, config, stop=stop, **_thread(config, kwargs))

    # ------------------------------------------------------------------ tools
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict | bool | None = None,
        parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: their schemas go into the pinned tool prompt of the conversation.

        Args:
            tools: LangChain tools, functions, pydantic models, or OpenAI tool dicts.
            tool_choice: "auto"/None (the model decides), "any"/"required"/True (some tool
                must be called), or a tool name (that tool must be called).
            parallel_tool_calls: let the model write several calls in one reply (by default
                the reply ends after its first complete call).
            **kwargs: further call options bound with the tools.

        Raises:
            ConfigError: `tool_choice` names no bound tool.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        resolve_choice(tool_choice, [tool_name(t) for t in formatted])  # fail now, not at the first call
        return self.bind(tools=formatted, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
                         **kwargs)

    # ------------------------------------------------------------------ tokens
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` with the model's own tokenizer (no special tokens added)."""
        _, tokenizer = self._resources(self.model)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence | None = None) -> int:
        """Tokens the messages take in the model's chat template (with the tool prompt, if tools)."""
        _, tokenizer = self._resources(self.model)
        formatted = [convert_to_openai_tool(t) for t in tools] if tools else []
        chat = ChatFormat(tokenizer)
        history: list[dict] = []
        total = 0
        for turn in _turns(messages, ChatFormat.tools_message(formatted)["content"] if formatted else None):
            message = {"role": turn.role, "content": turn.text}
            total += len(chat.message_ids(history, message))
            history.append(message)
        return total

    # ------------------------------------------------------------------ generation
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        call = self._prepare(messages, stop, run_manager, kwargs)
        outcome = self._run(call, lambda piece: None, threading.Event())
        message = AIMessage(content=outcome.content, tool_calls=outcome.tool_calls,
                            invalid_tool_calls=outcome.invalid_tool_calls, usage_metadata=outcome.usage,
                            response_metadata=outcome.metadata)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        """Chunks of text as decoded, then one last chunk with tool calls, usage and metadata.

        The model runs in a worker thread; if the consumer stops early, the reply is cut off
        cleanly and its session stays usable.
        """
        call = self._prepare(messages, stop, run_manager, kwargs)
        pieces: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                pieces.put(("done", self._run(call, lambda piece: pieces.put(("text", piece)), cancel)))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
                pieces.put(("error", exc))

        threading.Thread(target=work, name="agentmem-generate", daemon=True).start()
        visible = _Visible(call.parse)
        try:
            while True:
                kind, value = pieces.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    outcome: _Outcome = value
                    break
                delta = visible.push(value)
                if delta:
                    yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
        finally:
            cancel.set()
        if not outcome.content.startswith(visible.sent):  # cannot happen by _Visible's construction
            log.warning("streamed text %r is not a prefix of the parsed content %r", visible.sent, outcome.content)
        rest = outcome.content[len(visible.sent):]
        chunks = [tool_call_chunk(name=c["name"], args=json.dumps(c["args"], ensure_ascii=False), id=c["id"], index=i)
                  for i, c in enumerate(outcome.tool_calls)]
        chunks += [tool_call_chunk(name=c["name"], args=c["args"], id=c["id"], index=len(chunks) + i)
                   for i, c in enumerate(outcome.invalid_tool_calls)]
        yield ChatGenerationChunk(message=AIMessageChunk(content=rest, tool_call_chunks=chunks,
                                                         usage_metadata=outcome.usage,
                                                         response_metadata=outcome.metadata, chunk_position="last"))

    def _prepare(self, messages: Sequence[BaseMessage], stop: list[str] | None,
                 run_manager: CallbackManagerForLLMRun | None, kwargs: dict) -> _Call:
        unknown = set(kwargs) - _CALL_OPTIONS - _LANGCHAIN_OPTIONS
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)} for ChatAgentMem; per-call options are "
                              f"{sorted(_CALL_OPTIONS)}")
        tools = list(kwargs.get("tools") or [])
        tools = [t if isinstance(t, dict) and "function" in t else convert_to_openai_tool(t) for t in tools]
        choice = resolve_choice(kwargs.get("tool_choice"), [tool_name(t) for t in tools]) if tools else "auto"
        # Tool calls are held to their schemas, and a reply ends after its first complete call
        # (unless parallel calls are allowed); with tool_choice "none" it ends where a call would begin.
        forced = forcing(choice, tools, fill=True, none="stop")
        max_new = kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens))
        if not isinstance(max_new, int) or max_new < 1:
            raise ConfigError(f"max_tokens must be an integer >= 1, got {max_new!r}")
        sampling = {name: kwargs.get(name, getattr(self, name))
                    for name in ("temperature", "top_p", "top_k", "repetition_penalty")}
        generation_config(**sampling)  # raises ConfigError on a bad value before any session is touched
        stops = list(stop if stop is not None else self.stop or []) + list(forced.stops)
        thread = kwargs.get("session_id")
        if thread is None and run_manager is not None:
            metadata = getattr(run_manager, "metadata", None) or {}
            thread = metadata.get("session_id") or metadata.get("thread_id")
        thread = thread if thread is not None else self.session_id
        timeout = kwargs.get("timeout", self.timeout)
        return _Call(messages=messages, tools=tools, thread=None if thread is None else str(thread),
                     model_name=str(kwargs.get("model") or self.model), max_new_tokens=max_new, sampling=sampling,
                     seed=int(kwargs.get("seed", self.seed)), stop=stops, forcing=forced,
                     parse=bool(tools) and forced.calls,
                     single_call=forced.ends_at_call and not kwargs.get("parallel_tool_calls"),
                     timeout=timeout)

    def _resources(self, name: str) -> tuple[Any, Any]:
        if self.loaded is not None and name == self.model:
            return self.loaded
        if self.loaded is None and name == self.model:
            return loading.shared_model(name, device=self.device, dtype=self.dtype)
        _check_model_name(name)
        return loading.shared_model(name)

    def _run(self, call: _Call, emit: Callable[[str], None], cancel: threading.Event) -> _Outcome:
        """Pick or start the session, add the new messages, generate; `emit` gets text as decoded."""
        model, tokenizer = self._resources(call.model_name)
        tools_prompt = ChatFormat.tools_message(call.tools)["content"] if call.tools else None
        turns = _turns(call.messages, tools_prompt)
        with _REGISTRY.model_lock(model):
            entry, claimed = self._claim(call, turns, model, tokenizer)
            origin = claimed.origin
            session = entry.session
            try:
                for turn in turns[len(entry.keys):]:
                    session.add(turn.role, turn.text)
                    entry.keys.append(turn.key)
                session.seed = call.seed
                events_before = len(session.events)
                timed_out = call_ended = False
                if call.forcing.complete is not None:
                    cached = session.cached
                    if cached < len(session.ids):  # a regenerate's fork may hold every message already
                        session.prefill()
                    prompt = session.cached - cached
                    session.add("assistant", call.forcing.complete)
                    if session.store is not None:
                        session.save()
                    text, finish, call_ended = call.forcing.complete, "stop", True
                    spent = Usage(1, prompt_tokens=prompt, cached_tokens=cached)
                    emit(text)
                else:
                    deadline = time.monotonic() + call.timeout if call.timeout else None
                    shown: list[str] = []  # the reply's text so far (the prefix is its first piece)

                    def stop_when(_: Session) -> bool:
                        nonlocal timed_out, call_ended
                        timed_out = deadline is not None and time.monotonic() > deadline
                        call_ended = call.single_call and call_done("".join(shown))
                        return cancel.is_set() or timed_out or call_ended

                    # The repeat guard: a call already answered is not written again.
                    made = _calls_this_turn(call.messages) if self.repeat_guard else []
                    processor = call.forcing.processor(session.tokenizer, max_new_tokens=call.max_new_tokens,
                                                       forbidden=call_texts(made) if made else ())
                    options: dict[str, Any] = {} if processor is None else {"logits_processor": processor}
                    for piece in session.stream(call.max_new_tokens, stop=call.stop or None, stop_when=stop_when,
                                                prefix=call.forcing.prefix, **call.sampling, **options):
                        shown.append(piece)
                        emit(piece)
                    reply = session.last_reply
                    text, finish, spent = reply.text, reply.finish_reason, Usage.of(reply)
                entry.keys.append(_key("assistant", text))
            except BaseException:
                _REGISTRY.discard(entry)  # its state is unknown now; the next call starts afresh
                raise
            events = session.events[events_before:]
            stats = session.stats()
        content, calls, invalid = _split_reply(text, call.parse)
        if finish == "stopped":
            finish = "stop" if call_ended else "timeout" if timed_out else "cancelled"
        reason = "tool_calls" if calls else {"stop_string": "stop"}.get(finish, finish)
        for event in events:
            log.info("session %s: compacted %s -> %s tokens (%s)", entry.id, event.tokens_before, event.tokens_after,
                     event.status)
        usage = cast(UsageMetadata, spent.metadata())
        metadata = {"model_name": call.model_name, "finish_reason": reason,
                    "agentmem": {"session_id": entry.id, "thread_id": call.thread, "branch": origin == "branch",
                                 "resumed": origin == "resumed", "forked_from": claimed.forked_from,
                                 "finish_reason": finish,
                                 "compactions": [e.to_dict() for e in events], "kv": asdict(stats)}}
        return _Outcome(text=text, content=content, tool_calls=calls, invalid_tool_calls=invalid, usage=usage,
                        metadata=metadata)

    # ------------------------------------------------------------------ sessions
    def _claim(self, call: _Call, turns: list[_Turn], model: Any, tokenizer: Any) -> tuple[_Entry, Claim]:
        """The session this call continues (`agentmem.claim`): one whose messages the call's extend, else a
        fork of the one sharing the most leading messages (a regenerated or edited last turn), else a new one."""
        keys = [t.key for t in turns]

        def fits(messages: Sequence[dict]) -> int | None:
            held = _message_keys(messages)
            return len(held) if len(held) <= len(keys) and keys[:len(held)] == held else None

        def shared(messages: Sequence[dict]) -> int:
            return next((i for i, (a, b) in enumerate(zip(_message_keys(messages), keys)) if a != b),
                        min(len(messages), len(keys)))

        def stored_row(sid: str | None) -> str:
            sid = sid or uuid.uuid4().hex
            if store is not None:
                store.create_session(model=call.model_name, fingerprint=model_fingerprint(model), session_id=sid,
                                     title=call.thread, config={"surface": "langchain", "thread": call.thread})
            return sid

        def create(sid: str | None, origin: str) -> Session:
            return Session(model, tokenizer, policy=self._policy, store=store, session_id=stored_row(sid),
                           tools=call.tools or None, seed=call.seed, model_name=call.model_name)

        def adopt(fork: Session, sid: str | None) -> Session:
            sid = stored_row(sid)
            if store is None:
                fork.id = sid
            else:
                fork.attach_store(store, sid)
            return fork

        known = {e.session: e for e in _REGISTRY.candidates(call.thread, model) if self._current(e)}
        store = _REGISTRY.store(self.store) if self.store else None
        claimed = claim(model, tokenizer, create=create, store=store, session_id=call.thread, live=list(known),
                        fits=fits, branches=True, taken=_REGISTRY.ids(), shared=shared, adopt=adopt,
                        policy=None if self.policy is None else self._policy,  # None: the stored policy
                        seed=call.seed, model_name=call.model_name)
        session = claimed.session
        if claimed.origin == "live":
            entry = known[session]
        else:
            if claimed.forked_from is not None:
                held = keys[:claimed.shared]
            elif claimed.origin in ("new", "branch"):
                held = [t.key for t in turns[:1] if t.kind == "tools"]
            else:
                held = keys[:fits(session.messages)]
            entry = _Entry(id=session.id, thread=call.thread, session=session, keys=held)
            if claimed.origin == "resumed":
                log.info("resumed session %r from %s (%d messages)", session.id, store.path, len(held))
        _REGISTRY.put(entry, self.max_sessions)
        return entry, claimed

    @staticmethod
    def _current(entry: _Entry) -> bool:
        """False (and forgotten) when another process or instance committed to its stored session."""
        if is_current(entry.session):
            return True
        log.info("session %r was changed in %s by another writer; resuming it from there", entry.id,
                 entry.session.store.path)
        _REGISTRY.discard(entry)
        return False


def _message_keys(messages: Sequence[dict]) -> list[tuple]:
    """The normalized keys of engine messages (`langchain_history._key`)."""
    return [_key(m["role"], m["content"], (m.get("meta") or {}).get("kind", "")) for m in messages]


def _calls_this_turn(messages: Sequence[BaseMessage]) -> list[ToolCall]:
    """The tool calls of the AI messages after the last human message (the agent loop's calls so far)."""
    calls: list[ToolCall] = []
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        if isinstance(message, AIMessage):
            calls += [ToolCall(c["name"], dict(c.get("args") or {})) for c in message.tool_calls]
    return calls


def _thread(config: RunnableConfig | None, kwargs: dict) -> dict:
    """`kwargs` with `session_id` from the run config (`session_id` or LangGraph's `thread_id`)."""
    if "session_id" in kwargs:
        return kwargs
    configurable = ensure_config(config).get("configurable") or {}
    for key in ("session_id", "thread_id"):
        if configurable.get(key) is not None:
            return {**kwargs, "session_id": str(configurable[key])}
    return kwargs


def _check_model_name(name: str) -> None:
    if loading.is_model_name(name):
        return
    raise ConfigError(f"unknown model {name!r}: use a built-in name ({', '.join(loading.builtin_models())}), "
                      "a local model directory, a HuggingFace id like 'owner/name', or "
                      "ChatAgentMem.from_model(model, tokenizer)")


def _check_device(device: str) -> None:
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"bad device {device!r} ({exc}); use e.g. 'cpu', 'cuda' or 'cuda:1'") from None


def _check_dtype(dtype: str) -> None:
    import torch

    if dtype != "auto" and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ConfigError(f"bad dtype {dtype!r}; use 'float32', 'bfloat16', 'float16' or 'auto'")
