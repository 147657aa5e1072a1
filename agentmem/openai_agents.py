"""openai-agents on agentmem: a `Model` and a `ModelProvider` backed by `ChatAgentMem`.

openai-agents (``pip install 'agentmem[openai-agents]'``, imported as ``agents``) brings
what our own `agentmem.agents` does not have: handoffs, guardrails, tracing, context
injection, `output_type`, its sessions. Its `Runner` hands a model the whole conversation
on every turn (instructions, Responses input items, tools, handoffs, output schema), which
is `ChatAgentMem`'s contract too, so `AgentMemModel` converts the request into LangChain
messages and lets `ChatAgentMem` do the rest: the engine session whose history the turn
extends is reused (only new items are prefilled), compaction policies keep it inside its
budget, `store=` commits every turn and resumes the KV cache in a new process, tool
choice and the call constraint make even a 135M model write valid calls.

    from agents import Agent, Runner, function_tool
    from agentmem.openai_agents import AgentMemModel

    agent = Agent(name="coder", instructions="...", tools=[...],
                  model=AgentMemModel("smollm2-135m", policy="default"))
    result = Runner.run_sync(agent, "What does calc.py do?")

How the request maps:

- Input items go through openai-agents' own `Converter.items_to_messages` (chat format),
  then to LangChain messages; the system instructions come first.
- Function tools and handoffs become tool schemas (`Converter.tool_to_openai`,
  `convert_handoff_tool`); other tool kinds (hosted tools, MCP) raise openai-agents' `UserError`.
- `output_type`: a reply must call a tool, and one more tool, ``final_output``, takes the
  output schema as its parameters (forced when there are no other tools or tool_choice
  is "none"); its arguments come back as the message text. The call constraint holds
  them to the schema, so the output validates. The next turn's history holds that
  message as the call it was, so the cache still fits.
- `ModelSettings`: `temperature`, `top_p`, `max_tokens`, `tool_choice`,
  `parallel_tool_calls`; `extra_args` passes `ChatAgentMem` call options (`session_id`,
  `seed`, `top_k`, `repetition_penalty`, `timeout`). `session_id` names the conversation
  in the store, so a new process resumes its cache. Other settings are ignored (logged).
- Usage: `input_tokens` counts cached and prefilled tokens, `input_tokens_details.cached_tokens`
  the cached ones (as hosted prompt caching reports them).
- Tracing: each reply is a `generation_span` (openai-agents' trace processors see it).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

try:
    import agents as _sdk
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("agentmem.openai_agents needs openai-agents: pip install 'agentmem[openai-agents]'") from exc
if not hasattr(_sdk, "ModelProvider"):  # pragma: no cover - depends on the working directory
    raise ImportError(f"`import agents` found {getattr(_sdk, '__file__', _sdk)!r}, not openai-agents: agentmem's "
                      f"source checkout has an agents/ folder that shadows it when Python runs from the checkout's "
                      f"root; run from another directory, or with `python -P`")

from agents import Model, ModelProvider, ModelResponse, ModelSettings, ModelTracing, Usage
from agents.models.chatcmpl_converter import Converter
from agents.models.chatcmpl_stream_handler import ChatCmplStreamHandler
from agents.models.fake_id import FAKE_RESPONSES_ID
from agents.tracing import generation_span
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage, convert_to_messages
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessage, ChatCompletionMessageFunctionToolCall
from openai.types.chat.chat_completion_chunk import (
    Choice,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_message_function_tool_call import Function
from openai.types.completion_usage import CompletionUsage, PromptTokensDetails
from openai.types.responses import Response
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from .errors import ConfigError
from .langchain import ChatAgentMem
from .loading import DEFAULT_MODEL

log = logging.getLogger(__name__)

__all__ = ["FINAL_OUTPUT", "AgentMemModel", "AgentMemProvider"]

FINAL_OUTPUT = "final_output"  # the tool whose arguments are a structured output
_EXTRA_ARGS = ("session_id", "seed", "top_k", "repetition_penalty", "timeout")
_USED_SETTINGS = {"temperature", "top_p", "max_tokens", "tool_choice", "parallel_tool_calls", "extra_args"}


class AgentMemModel(Model):
    """An openai-agents `Model` that runs a local transformers model through agentmem.

    Args:
        model: a built-in name, HuggingFace id or local path (ignored with `chat`).
        chat: a `ChatAgentMem` to use (e.g. `ChatAgentMem.from_model(model, tokenizer)`).
        **fields: `ChatAgentMem` fields: `policy`, `store`, `max_tokens`, `device`, ...
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, chat: ChatAgentMem | None = None, **fields: Any):
        if chat is not None and fields:
            raise ConfigError(f"pass either chat= or ChatAgentMem fields, not both (got {sorted(fields)})")
        self.chat = chat if chat is not None else ChatAgentMem(model=model, **fields)
        self.name = self.chat.model
        self._outputs: dict[str, str] = {}  # structured output text -> the final_output call that wrote it

    # ------------------------------------------------------------------ openai-agents' Model
    async def get_response(self, system_instructions: str | None, input: str | list[Any],
                           model_settings: ModelSettings, tools: list[Any], output_schema: Any,
                           handoffs: list[Any], tracing: ModelTracing, *, previous_response_id: str | None = None,
                           conversation_id: str | None = None, prompt: Any = None) -> ModelResponse:
        """One reply, as Responses output items (a message and/or function calls)."""
        messages, options, structured = self._request(system_instructions, input, model_settings, tools,
                                                      output_schema, handoffs)
        with generation_span(model=self.name, model_config=_trace_config(model_settings),
                             disabled=tracing.is_disabled()) as span:
            if tracing.include_data():
                span.span_data.input = [_trace_message(m) for m in messages]
            reply = await self.chat.ainvoke(messages, **options)
            message = self._message(reply.content, reply.tool_calls, structured)
            usage = _usage(reply)
            span.span_data.usage = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
            if tracing.include_data():
                span.span_data.output = [message.model_dump()]
        return ModelResponse(output=Converter.message_to_output_items(message), usage=usage, response_id=None)

    async def stream_response(self, system_instructions: str | None, input: str | list[Any],
                              model_settings: ModelSettings, tools: list[Any], output_schema: Any,
                              handoffs: list[Any], tracing: ModelTracing, *, previous_response_id: str | None = None,
                              conversation_id: str | None = None, prompt: Any = None) -> AsyncIterator[Any]:
        """Responses stream events: text deltas as decoded, then the calls and the completed response."""
        messages, options, structured = self._request(system_instructions, input, model_settings, tools,
                                                      output_schema, handoffs)
        response = Response(id=FAKE_RESPONSES_ID, created_at=time.time(), model=self.name, object="response",
                            output=[], tool_choice="auto", top_p=model_settings.top_p,
                            temperature=model_settings.temperature, tools=[], parallel_tool_calls=False)
        with generation_span(model=self.name, model_config=_trace_config(model_settings),
                             disabled=tracing.is_disabled()) as span:
            if tracing.include_data():
                span.span_data.input = [_trace_message(m) for m in messages]
            chunks = self._chunks(self.chat.astream(messages, **options), structured)
            async for event in ChatCmplStreamHandler.handle_stream(response, chunks, model=self.name):
                if event.type == "response.completed" and event.response.usage is not None:
                    span.span_data.usage = {"input_tokens": event.response.usage.input_tokens,
                                            "output_tokens": event.response.usage.output_tokens}
                yield event

    # ------------------------------------------------------------------ request
    def _request(self, system: str | None, input: str | list[Any], settings: ModelSettings, tools: list[Any],
                 output_schema: Any, handoffs: list[Any]) -> tuple[list[BaseMessage], dict[str, Any], bool]:
        """LangChain messages and `ChatAgentMem` call options for one turn; True if the output is structured."""
        chat = Converter.items_to_messages(input)
        messages: list[BaseMessage] = [SystemMessage(system)] if system else []
        messages += [self._restored(m) for m in convert_to_messages([_plain(m) for m in chat])]
        schemas = [_dump(Converter.tool_to_openai(t)) for t in tools]
        schemas += [_dump(Converter.convert_handoff_tool(h)) for h in handoffs]
        choice = settings.tool_choice
        if not isinstance(choice, (str, type(None))):
            raise ConfigError(f"tool_choice {choice!r} is not supported by agentmem; use 'auto', 'required', "
                              f"'none' or a tool name")
        structured = output_schema is not None and not output_schema.is_plain_text()
        if structured:
            # Every reply is a call: a tool's, or the final output's (plain text would not validate).
            if choice == "none" or not schemas:
                choice = FINAL_OUTPUT
            elif choice in (None, "auto"):
                choice = "required"
            schemas.append({"type": "function", "function": {
                "name": FINAL_OUTPUT, "description": "Give the final answer in this shape.",
                "parameters": output_schema.json_schema()}})
        options: dict[str, Any] = {}
        if schemas:
            options.update(tools=schemas, tool_choice=choice or "auto",
                           parallel_tool_calls=bool(settings.parallel_tool_calls))
        for name in ("temperature", "top_p", "max_tokens"):
            if getattr(settings, name) is not None:
                options[name] = getattr(settings, name)
        extra = dict(settings.extra_args or {})
        unknown = set(extra) - set(_EXTRA_ARGS)
        if unknown:
            raise ConfigError(f"unknown extra_args {sorted(unknown)} for agentmem; it reads {list(_EXTRA_ARGS)}")
        options.update(extra)
        ignored = [k for k, v in settings.to_json_dict().items() if v is not None and k not in _USED_SETTINGS]
        if ignored:
            log.info("ModelSettings %s mean nothing to a local agentmem model; ignored", ", ".join(sorted(ignored)))
        return messages, options, structured

    def _restored(self, message: BaseMessage) -> BaseMessage:
        """An assistant message holding a structured output we wrote, as the call the cache holds."""
        if isinstance(message, AIMessage) and not message.tool_calls and isinstance(message.content, str):
            arguments = self._outputs.get(message.content)
            if arguments is not None:
                return AIMessage("", tool_calls=[{"name": FINAL_OUTPUT, "args": json.loads(arguments),
                                                  "id": "call_" + uuid.uuid4().hex[:12]}])
        return message

    # ------------------------------------------------------------------ reply
    def _message(self, content: Any, calls: Sequence[dict], structured: bool) -> ChatCompletionMessage:
        """A chat completion message: text, or the tool calls (a final_output call becomes the text)."""
        text = content if isinstance(content, str) else ""
        tool_calls = []
        for call in calls:
            arguments = json.dumps(call["args"], ensure_ascii=False)
            if structured and call["name"] == FINAL_OUTPUT:
                text = self._output(arguments)
                continue
            tool_calls.append(ChatCompletionMessageFunctionToolCall(
                id=call.get("id") or "call_" + uuid.uuid4().hex[:12], type="function",
                function=Function(name=call["name"], arguments=arguments)))
        return ChatCompletionMessage(role="assistant", content=text or None, tool_calls=tool_calls or None)

    def _output(self, arguments: str) -> str:
        if len(self._outputs) > 1000:
            self._outputs.pop(next(iter(self._outputs)))
        self._outputs[arguments] = arguments
        return arguments

    async def _chunks(self, stream: AsyncIterator[AIMessageChunk], structured: bool
                      ) -> AsyncIterator[ChatCompletionChunk]:
        """`ChatAgentMem`'s chunks as chat completion chunks (the last one carries calls and usage)."""
        ident, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

        def chunk(delta: ChoiceDelta, finish: str | None = None, usage: CompletionUsage | None = None
                  ) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=ident, created=created, model=self.name, object="chat.completion.chunk",
                                       choices=[Choice(index=0, delta=delta, finish_reason=finish)], usage=usage)

        last: AIMessageChunk | None = None
        async for piece in stream:
            if piece.chunk_position == "last":
                last = piece
            if isinstance(piece.content, str) and piece.content:
                yield chunk(ChoiceDelta(content=piece.content))
        if last is None:  # cannot happen: ChatAgentMem always ends with a last chunk
            raise RuntimeError("ChatAgentMem's stream ended without its last chunk")
        calls = [{"name": c["name"], "args": json.loads(c["args"] or "{}"), "id": c["id"]}
                 for c in last.tool_call_chunks if c.get("name")]
        message = self._message("", _readable(calls), structured)
        if message.content:
            yield chunk(ChoiceDelta(content=message.content))
        deltas = [ChoiceDeltaToolCall(index=i, id=c.id, type="function",
                                      function=ChoiceDeltaToolCallFunction(name=c.function.name,
                                                                           arguments=c.function.arguments))
                  for i, c in enumerate(message.tool_calls or [])]
        usage = _usage(last)
        yield chunk(ChoiceDelta(tool_calls=deltas or None), "tool_calls" if deltas else "stop",
                    CompletionUsage(prompt_tokens=usage.input_tokens, completion_tokens=usage.output_tokens,
                                    total_tokens=usage.total_tokens,
                                    prompt_tokens_details=PromptTokensDetails(
                                        cached_tokens=usage.input_tokens_details.cached_tokens)))


class AgentMemProvider(ModelProvider):
    """Model names to `AgentMemModel`s, for `RunConfig(model_provider=AgentMemProvider(...))`.

    Every model it makes shares `fields` (`ChatAgentMem` fields: `policy`, `store`, ...);
    a name it has seen before gets the same `AgentMemModel` back.

    Args:
        default: the model when an agent names none.
        **fields: `ChatAgentMem` fields for every model.
    """

    def __init__(self, default: str = DEFAULT_MODEL, **fields: Any):
        self.default, self.fields = default, fields
        self._models: dict[str, AgentMemModel] = {}

    def get_model(self, model_name: str | None) -> Model:
        name = model_name or self.default
        if name not in self._models:
            self._models[name] = AgentMemModel(name, **self.fields)
        return self._models[name]


# ---------------------------------------------------------------------- helpers
def _plain(message: Any) -> dict:
    """A chat message dict LangChain reads: text content, tool calls kept, tool ids as LangChain names them."""
    out = {k: v for k, v in dict(message).items() if k in ("role", "content", "tool_calls", "tool_call_id", "name")}
    if out.get("role") == "developer":
        out["role"] = "system"
    content = out.get("content")
    if isinstance(content, list):
        texts = [part.get("text", "") for part in content if isinstance(part, dict) and "text" in part]
        if len(texts) != len(content):
            kinds = sorted({str(part.get("type")) for part in content if isinstance(part, dict) and "text" not in part})
            raise ConfigError(f"agentmem models read text only; a {out.get('role')} message holds {kinds} parts")
        out["content"] = "".join(texts)
    if out.get("content") is None:
        out["content"] = ""
    if out.get("tool_calls"):
        out["tool_calls"] = [dict(c) for c in out["tool_calls"]]
    return out


def _readable(calls: list[dict]) -> list[dict]:
    return [c for c in calls if isinstance(c["args"], dict)]


def _dump(value: Any) -> dict:
    return json.loads(json.dumps(value, default=lambda v: v.model_dump() if hasattr(v, "model_dump") else str(v)))


def _usage(message: AIMessage) -> Usage:
    metadata = message.usage_metadata or {}
    details = metadata.get("input_token_details") or {}
    return Usage(requests=1, input_tokens=metadata.get("input_tokens", 0),
                 output_tokens=metadata.get("output_tokens", 0), total_tokens=metadata.get("total_tokens", 0),
                 input_tokens_details=InputTokensDetails(cached_tokens=details.get("cache_read", 0),
                                                         cache_write_tokens=details.get("cache_creation", 0)),
                 output_tokens_details=OutputTokensDetails(reasoning_tokens=0))


def _trace_config(settings: ModelSettings) -> dict[str, Any]:
    return {"model_impl": "agentmem", **{k: v for k, v in settings.to_json_dict().items() if v is not None}}


def _trace_message(message: BaseMessage) -> dict[str, Any]:
    return {"role": message.type, "content": message.content}
