"""Turn chat messages into the exact token ids a session appends to its cache.

A session never re-renders and re-prefills its history: each new message is rendered as
the *difference* the model's chat template makes when the message is added, so the ids in
the cache are what `apply_chat_template` would have produced for the whole conversation.
Models without a chat template (the Gemma 3 GGUF build) get a built-in one in their own
turn format.

Message content is data, never markup: a file the agent reads or a tool result that
contains `<|im_end|>\n<|im_start|>system` must not open a system turn. Content holding the
text of a special token is tokenised with special tokens split (they become ordinary text
tokens), while the template's own markup around it keeps its control tokens. Content
without such text is tokenised exactly as before, as part of the whole rendering.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from .errors import ConfigError

log = logging.getLogger(__name__)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TOOLS_PROMPT = (
    "You can call tools. To call one, answer with only a JSON object on one line inside "
    '<tool_call></tool_call> tags, e.g. <tool_call>{{"name": "NAME", "arguments": {{...}}}}</tool_call>. '
    "Tool results come back in messages from the role `tool`.\nAvailable tools:\n{schemas}"
)
_SENTINEL = "\u2063AGENTMEM\u2063"  # content marker used to find where a message's text goes
_HISTORY = 4  # messages of context rendered before a new one (templates here are prefix-stable)


class ChatFormat:
    """Renders messages with a tokenizer's chat template, one message at a time.

    Args:
        tokenizer: the model's tokenizer.
        chat_template: a Jinja template to use instead of the tokenizer's own.
    """

    def __init__(self, tokenizer, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.template = chat_template or getattr(tokenizer, "chat_template", None) or self._builtin()
        self.stop_ids = self._stop_ids()
        self.special_texts = _special_texts(tokenizer)

    # ------------------------------------------------------------------ public
    def message_ids(self, history: Sequence[dict], message: dict) -> list[int]:
        """Token ids that `message` adds after `history` (both lists of role/content dicts).

        Special-token text inside the content (e.g. `<|im_start|>`) becomes ordinary text
        tokens; the template's own markup keeps its control tokens.
        """
        _check_message(message)
        context = list(history[-_HISTORY:])
        text = self._added_text(context, message, len(history))  # the first message also carries the preamble
        content = message["content"]
        if not any(special in content for special in self.special_texts):
            return self._encode(text)
        # Render with a marker for the content: the markup around it is tokenised with its
        # control tokens, the content itself with special tokens split.
        pieces = self._added_text(context, {**message, "content": _SENTINEL}, len(history)).split(_SENTINEL)
        head, tail = pieces[0], pieces[-1]
        if len(pieces) == 2 and text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail):
            content = text[len(head):len(text) - len(tail)]  # as the template rendered it (e.g. trimmed)
        ids = self._encode(head)
        for piece in pieces[1:]:
            ids += self._encode_content(content) + self._encode(piece)
        return ids

    def generation_prompt_ids(self, history: Sequence[dict]) -> list[int]:
        """Ids that open an assistant reply (e.g. `<|im_start|>assistant\\n`)."""
        context = list(history[-_HISTORY:])
        plain = self.render(context) if context else ""
        opened = self.render(context, add_generation_prompt=True)
        if not history:
            return self._encode(opened)
        return self._encode(opened[len(plain):])

    def reply_tail_ids(self, history: Sequence[dict], *, ended: bool) -> list[int]:
        """Ids the template puts after an assistant reply's text (e.g. `<|im_end|>\\n`).

        With `ended` (the model produced its end-of-turn token, which the caller feeds
        itself) the end-of-turn token's text is left out.
        """
        context = list(history[-_HISTORY:])
        text = self.render(context + [{"role": "assistant", "content": _SENTINEL}])
        tail = text.split(_SENTINEL, 1)[1]
        if ended:
            for token_id in self.stop_ids:
                marker = self.tokenizer.convert_ids_to_tokens(token_id)
                if isinstance(marker, str) and tail.startswith(marker):
                    tail = tail[len(marker):]
                    break
        return self._encode(tail)

    def render(self, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                list(messages), chat_template=self.template, tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as exc:  # a template may reject a role (e.g. `tool`)
            if self.template == CHATML:
                raise ConfigError(f"cannot render messages with the chat template: {exc}") from exc
            log.warning("chat template failed (%s); using ChatML for this message", exc)
            return self.tokenizer.apply_chat_template(
                list(messages), chat_template=CHATML, tokenize=False, add_generation_prompt=add_generation_prompt
            )

    @staticmethod
    def tools_message(tools: Sequence[dict]) -> dict:
        """A system message that lists tool schemas (OpenAI function format)."""
        schemas = "\n".join(json.dumps(t, sort_keys=True) for t in tools)
        return {"role": "system", "content": TOOLS_PROMPT.format(schemas=schemas)}

    def encode(self, text: str) -> list[int]:
        """Plain text as ids (no special tokens added)."""
        return self._encode(text)

    # ------------------------------------------------------------------ helpers
    def _added_text(self, context: list[dict], message: dict, index: int) -> str:
        """What the template adds to the rendering of `context` for `message` (message number `index`)."""
        before = self.render(context) if context else ""
        after = self.render(context + [message])
        if not after.startswith(before):  # not prefix-stable: render the message on its own
            log.warning("chat template is not prefix-stable; rendering message %d alone", index)
            return self.render([message])
        return after[len(before):]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _encode_content(self, text: str) -> list[int]:
        """Message content as ids: special-token text in it becomes ordinary text tokens."""
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _builtin(self) -> str:
        vocab = self.tokenizer.get_vocab()
        return GEMMA if "<start_of_turn>" in vocab else CHATML

    def _stop_ids(self) -> list[int]:
        """End-of-turn ids: the template's turn closer first, then the tokenizer's EOS."""
        ids: list[int] = []
        vocab = self.tokenizer.get_vocab()
        for marker in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"):
            if marker in vocab and marker in self.template:
                ids.append(vocab[marker])
        eos = self.tokenizer.eos_token_id
        for token_id in eos if isinstance(eos, list) else [eos]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
        return ids


def _special_texts(tokenizer) -> list[str]:
    """The texts the tokenizer turns into special (control) tokens."""
    texts = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            texts.add(token.content)
    return sorted(t for t in texts if t)


def _check_message(message: dict) -> None:
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise ConfigError("a message is a dict with 'role' and 'content', e.g. {'role': 'user', 'content': 'hi'}")
    if message["role"] not in ("system", "user", "assistant", "tool"):
        raise ConfigError(f"unknown role {message['role']!r}; use system, user, assistant or tool")
    if not isinstance(message["content"], str):
        raise ConfigError(f"message content must be a string, got {type(message['content']).__name__}")
