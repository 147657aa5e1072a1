"""Keep a tool call well-formed while it is decoded (a token filter for `Session.stream`).

`call_constraint` holds a call to its tool's whole JSON schema with llguidance
(`agentmem.grammar`) where that is installed; this module's hand-written machine is the
fallback, described below.

Once a reply contains ``<tool_call>``, `CallConstraint` lets through only tokens that keep
the text after it a prefix of::

    {"name": "<one of the tool names>", "arguments": <a JSON object>}</tool_call>

where the object's keys are the tool's argument names, each at most once, every required
argument is given, an argument typed `string` is a JSON string, one typed `integer` an
integer, and one with an `enum` of strings is one of them. Each candidate token's text is fed to a small character-level
machine (`CallMachine`); tokens it rejects get logit -inf, and so do tokens after which
the call could no longer be closed within the token budget, so the call always ends
readable. Other values are free: whether they fit the tool's schema is checked when the
tool is invoked (and reported to the model). With this filter and a forced reply prefix
even a 135M model writes calls that parse.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence

import torch

from .errors import ConfigError
from .toolcalls import HEAD, MIDDLE, OPEN, TAIL

log = logging.getLogger(__name__)

_LITERALS = {"t": "true", "f": "false", "n": "null"}
_NUMBER_CHARS = set("0123456789-+.eE")
_SCAN_FIRST = 2048  # candidates (by logit) checked before scanning the whole vocabulary
_ENOUGH = 32  # allowed tokens collected before the scan stops


class CallMachine:
    """Character-level recogniser of the call text after ``<tool_call>`` (see the module doc)."""

    def __init__(self, names: Sequence[str], keys: dict[str, Sequence[str]] | None = None,
                 enums: dict[str, dict[str, Sequence[str]]] | None = None,
                 required: dict[str, Sequence[str]] | None = None,
                 strings: dict[str, Sequence[str]] | None = None,
                 integers: dict[str, Sequence[str]] | None = None):
        self.names = tuple(names)
        self.strings = {n: set(k) for n, k in (strings or {}).items()}  # tool -> arguments that are strings
        self.integers = {n: set(k) for n, k in (integers or {}).items()}  # tool -> arguments that are integers
        self.integer = False  # the number being written must be an integer
        self.required = {n: tuple(k) for n, k in (required or {}).items()}  # tool -> required arguments
        self.keys = {n: tuple(k) for n, k in (keys or {}).items()}  # tool -> its argument names
        self.enums = {n: {k: tuple(v) for k, v in e.items()} for n, e in (enums or {}).items()}
        self.options: tuple[str, ...] | None = None  # allowed values of the string being written
        self.value = ""  # that string so far
        self.key = ""  # top-level key being written
        self.used: list[str] = []  # top-level keys written
        self.phase = "head"  # head | name | middle | json | tail | done
        self.pos = 0  # position in HEAD / MIDDLE / TAIL, or the literal being matched
        self.name = ""
        self.stack: list[str] = []  # "{" / "["
        self.mode = "value"  # json: value | key_or_end | key | colon | after | string | escape | hex | number | literal
        self.is_key = False
        self.hex_left = 0
        self.number = ""
        self.literal = ""
        self.last_space = False

    def copy(self) -> CallMachine:
        twin = copy.copy(self)
        twin.stack, twin.used = list(self.stack), list(self.used)
        return twin

    def feed(self, text: str) -> bool:
        """Consume `text`; False (state undefined) if it cannot continue a call."""
        return all(self._char(ch) for ch in text)

    @property
    def done(self) -> bool:
        return self.phase == "done"

    # ------------------------------------------------------------------ one character
    def _char(self, ch: str) -> bool:
        if self.phase in ("head", "middle", "tail"):
            literal = {"head": HEAD, "middle": MIDDLE, "tail": TAIL}[self.phase]
            if ch != literal[self.pos]:
                return False
            self.pos += 1
            if self.pos == len(literal):
                self.phase, self.pos = {"head": "name", "middle": "json", "tail": "done"}[self.phase], 0
            return True
        if self.phase == "name":
            if ch == '"':
                if self.name not in self.names:
                    return False
                self.phase, self.pos = "middle", 1
                return True
            self.name += ch
            return any(n.startswith(self.name) for n in self.names)
        if self.phase == "json":
            return self._json(ch)
        return False

    def _json(self, ch: str) -> bool:
        mode = self.mode
        if mode == "string" and self.options is not None:  # a top-level value with an enum
            if ch == '"':
                if self.value not in self.options:
                    return False
                self.options, self.mode = None, "after"
                return True
            self.value += ch
            return ch != "\\" and any(o.startswith(self.value) for o in self.options)
        if mode == "string":
            top = self.is_key and len(self.stack) == 1 and self.name in self.keys
            if ch == '"':
                if top:
                    if self.key not in self._free_keys():
                        return False
                    self.used.append(self.key)
                self.mode = "colon" if self.is_key else "after"
            elif ch == "\\":
                if top:  # argument names are plain
                    return False
                self.mode = "escape"
            elif ord(ch) < 0x20:
                return False
            elif top:
                self.key += ch
                return any(k.startswith(self.key) for k in self._free_keys())
            return True
        if mode == "escape":
            if ch == "u":
                self.mode, self.hex_left = "hex", 4
                return True
            if ch in '"\\/bfnrt':
                self.mode = "string"
                return True
            return False
        if mode == "hex":
            if ch not in "0123456789abcdefABCDEF":
                return False
            self.hex_left -= 1
            if self.hex_left == 0:
                self.mode = "string"
            return True
        if mode == "literal":
            if ch != self.literal[0]:
                return False
            self.literal = self.literal[1:]
            if not self.literal:
                self.mode = "after"
            return True
        if mode == "number":
            if ch in _NUMBER_CHARS:
                if self.integer and ch in ".eE+":
                    return False
                self.number += ch
                return _number_prefix(self.number)
            if not _number_complete(self.number):
                return False
            self.mode = "after"
            return self._json(ch)
        if ch == " ":  # one space between tokens at most (no runaway whitespace)
            if self.last_space or mode == "value" and not self.stack:
                return False
            self.last_space = True
            return True
        self.last_space = False
        if mode == "value" and not self.stack:  # the arguments themselves: an object
            if ch != "{":
                return False
            self.stack.append("{")
            self.mode = "key_or_end"
            return True
        if mode in ("value", "value_or_end"):
            if mode == "value_or_end" and ch == "]":
                return self._close("[")
            return self._value(ch)
        if mode in ("key_or_end", "key"):
            if ch == "}" and mode == "key_or_end":
                return not (len(self.stack) == 1 and self._missing()) and self._close("{")
            if ch == '"':
                if len(self.stack) == 1 and self.name in self.keys and not self._free_keys():
                    return False
                self.mode, self.is_key, self.key = "string", True, ""
                return True
            return False
        if mode == "colon":
            if ch != ":":
                return False
            self.mode = "value"
            return True
        if mode == "after":
            if ch == ",":
                if len(self.stack) == 1 and self.name in self.keys and not self._free_keys():
                    return False  # every argument is given already
                self.mode = "key" if self.stack[-1] == "{" else "value"
                return True
            if ch in "}]":
                if ch == "}" and len(self.stack) == 1 and self._missing():
                    return False  # a required argument is not given yet
                return self._close("{" if ch == "}" else "[")
            return False
        return False

    def _value(self, ch: str) -> bool:
        options = self.enums.get(self.name, {}).get(self.used[-1]) if len(self.stack) == 1 and self.used else None
        if options is not None:
            if ch != '"':
                return False
            self.mode, self.is_key, self.options, self.value = "string", False, options, ""
        elif len(self.stack) == 1 and self.used and self.used[-1] in self.integers.get(self.name, ()):
            if ch not in "-0123456789":
                return False  # this argument is an integer (not a string either)
            self.mode, self.number, self.integer = "number", ch, True
        elif ch == '"':
            self.mode, self.is_key = "string", False
        elif len(self.stack) == 1 and self.used and self.used[-1] in self.strings.get(self.name, ()):
            return False  # this argument is a string
        elif ch == "{":
            self.stack.append("{")
            self.mode = "key_or_end"
        elif ch == "[":
            self.stack.append("[")
            self.mode = "value_or_end"
        elif ch in "-0123456789":
            self.mode, self.number, self.integer = "number", ch, False
        elif ch in _LITERALS:
            self.mode, self.literal = "literal", _LITERALS[ch][1:]
        else:
            return False
        return True

    def _close(self, bracket: str) -> bool:
        if not self.stack or self.stack[-1] != bracket:
            return False
        self.stack.pop()
        self.mode = "after"
        if not self.stack:
            self.phase, self.pos = "tail", 0
        return True

    def _default(self, key: str | None, name: str | None = None) -> str:
        """The shortest value allowed for top-level argument `key` of tool `name` (None: any)."""
        name = self.name if name is None else name
        options = self.enums.get(name, {}).get(key) if key else None
        if options:
            return json.dumps(min(options, key=len))
        return '""' if key in self.strings.get(name, ()) else "0"

    def _arguments(self, name: str) -> str:
        """The shortest arguments object for tool `name`: its required arguments, shortest values."""
        required = self.required.get(name, ())
        return "{" + ", ".join(f'"{k}": {self._default(k, name)}' for k in required) + "}"

    def _missing(self) -> list[str]:
        """Required top-level arguments not written yet."""
        return [k for k in self.required.get(self.name, ()) if k not in self.used]

    def _free_keys(self) -> list[str]:
        return [k for k in self.keys.get(self.name, ()) if k not in self.used]

    # ------------------------------------------------------------------ shortest completion
    def closer(self) -> str:
        """The shortest text that completes the call from here."""
        if self.phase == "done":
            return ""
        if self.phase == "tail":
            return TAIL[self.pos:]
        if self.phase == "head":
            name = min(self.names, key=lambda n: len(n) + len(self._arguments(n)))
            return HEAD[self.pos:] + name + MIDDLE + self._arguments(name) + TAIL
        if self.phase == "name":
            name = min((n for n in self.names if n.startswith(self.name)),
                       key=lambda n: len(n) + len(self._arguments(n)))
            return name[len(self.name):] + MIDDLE + self._arguments(name) + TAIL
        if self.phase == "middle":
            return MIDDLE[self.pos:] + self._arguments(self.name) + TAIL
        mode, text, key = self.mode, "", None
        if mode == "value" and not self.stack:
            return self._arguments(self.name) + TAIL
        if mode == "escape":
            text = '""'
        elif mode == "hex":
            text = "0" * self.hex_left + '"'
        elif mode == "string" and self.options is not None:
            text = min((o for o in self.options if o.startswith(self.value)), key=len)[len(self.value):] + '"'
        elif mode == "string":
            text = '"'
        elif mode == "literal":
            text = self.literal
        elif mode == "number" and not _number_complete(self.number):
            text = "0"
        restricted = len(self.stack) == 1 and self.name in self.keys
        if mode in ("escape", "hex", "string") and self.is_key or mode == "colon":
            key = self.used[-1] if mode == "colon" and self.used else self.key
            if mode == "string" and restricted:
                key = min([k for k in self._missing() if k.startswith(self.key)]
                          or [k for k in self._free_keys() if k.startswith(self.key)], key=len)
                text = key[len(self.key):] + '"'
            text += ":" + self._default(key if restricted else None)
        elif mode == "key":
            key = min(self._missing() or self._free_keys(), key=len) if restricted else ""
            text += '"' + key + '":' + self._default(key if restricted else None)
        elif mode == "value":
            text += self._default(self.used[-1] if len(self.stack) == 1 and self.used else None)
        missing = [k for k in self._missing() if k != key]
        empty = mode == "key_or_end" and len(self.stack) == 1
        rest = ", ".join(f'"{k}": {self._default(k)}' for k in missing)
        if rest and not empty:
            rest = ", " + rest
        for depth, bracket in reversed(list(enumerate(self.stack))):
            text += (rest if depth == 0 else "") + ("}" if bracket == "{" else "]")
        return text + TAIL


def typed_arguments(parameters: dict, kind: str) -> list[str]:
    """Top-level arguments of JSON-schema type `kind` alone (e.g. "string", "integer")."""
    return [k for k, spec in parameters.get("properties", {}).items() if spec.get("type") == kind]


_ENGINES = ("auto", "llguidance", "builtin")
_announced: set[str] = set()


def call_constraint(tokenizer, tools: Sequence[dict], *, max_new_tokens: int, prefix: str = "",
                    engine: str = "auto"):
    """A token filter that keeps a tool call to `tools` (OpenAI function format) well-formed.

    `engine="auto"` (the default) holds the call to each tool's whole JSON schema with
    llguidance (`agentmem.grammar.SchemaConstraint`) when it is installed and the tokenizer
    is a fast one, and otherwise uses the hand-written `CallConstraint` (names, argument
    names, required arguments, strings, integers, string enums); the path taken is logged
    once. `"llguidance"` requires the engine (ConfigError without it); `"builtin"` always
    uses the hand-written machine.
    """
    if engine not in _ENGINES:
        raise ConfigError(f"engine must be one of {_ENGINES}, got {engine!r}")
    if engine != "builtin":
        from . import grammar

        reason = None if grammar.available() else "llguidance is not installed (pip install llguidance)"
        if reason is None and getattr(tokenizer, "backend_tokenizer", None) is None:
            reason = f"{type(tokenizer).__name__} is not a fast (tokenizers) tokenizer"
        if reason is None:
            _announce("llguidance", "tool calls are held to their JSON schemas by llguidance")
            return grammar.SchemaConstraint(tokenizer, tools, max_new_tokens=max_new_tokens, prefix=prefix)
        if engine == "llguidance":
            raise ConfigError(f"engine='llguidance' cannot be used: {reason}")
        _announce("builtin", f"tool calls use agentmem's hand-written call machine ({reason}); booleans, "
                             f"numbers, arrays and nested objects are not checked while decoding")
    return builtin_constraint(tokenizer, tools, max_new_tokens=max_new_tokens, prefix=prefix)


def _announce(path: str, message: str) -> None:
    if path not in _announced:
        _announced.add(path)
        log.info(message)


def builtin_constraint(tokenizer, tools: Sequence[dict], *, max_new_tokens: int, prefix: str = "") -> CallConstraint:
    """The hand-written `CallConstraint` for tool schemas in OpenAI function format."""
    functions = [t.get("function", t) for t in tools]
    names = [f["name"] for f in functions]
    parameters = {f["name"]: f.get("parameters") or {} for f in functions}
    return CallConstraint(tokenizer, names, max_new_tokens=max_new_tokens, prefix=prefix,
                          keys={n: list(p.get("properties", {})) for n, p in parameters.items()},
                          enums={n: string_enums(p) for n, p in parameters.items()},
                          required={n: list(p.get("required", [])) for n, p in parameters.items()},
                          strings={n: typed_arguments(p, "string") for n, p in parameters.items()},
                          integers={n: typed_arguments(p, "integer") for n, p in parameters.items()})


def string_enums(parameters: dict) -> dict[str, list[str]]:
    """Top-level arguments whose JSON schema allows only listed strings (e.g. a `Literal` hint)."""
    enums: dict[str, list[str]] = {}
    for key, spec in parameters.get("properties", {}).items():
        values = spec.get("enum")
        if values is None and "const" in spec:
            values = [spec["const"]]
        if values and all(isinstance(v, str) and v and "\\" not in v and '"' not in v for v in values):
            enums[key] = list(values)
    return enums


class CallConstraint:
    """A `logits_processor` for `Session.stream` that keeps tool calls readable.

    Args:
        tokenizer: the model's tokenizer (token texts are decoded once and remembered).
        names: the tool names the call may use.
        keys: per tool name, its argument names (top-level keys are restricted to them).
        max_new_tokens: the reply's token budget (the call is closed before it runs out).
        prefix: the text the reply was forced to start with (may already open the call).
    """

    def __init__(self, tokenizer, names: Sequence[str], *, max_new_tokens: int, prefix: str = "",
                 keys: dict[str, Sequence[str]] | None = None,
                 enums: dict[str, dict[str, Sequence[str]]] | None = None,
                 required: dict[str, Sequence[str]] | None = None,
                 strings: dict[str, Sequence[str]] | None = None,
                 integers: dict[str, Sequence[str]] | None = None):
        if not names:
            raise ValueError("CallConstraint needs at least one tool name")
        self.tokenizer, self.names, self.budget = tokenizer, tuple(names), max_new_tokens
        self.keys, self.enums, self.required, self.strings = keys, enums, required, strings
        self.integers = integers
        self.text = prefix  # reply text so far, as the sum of token texts
        self.seen = 0
        self.machine: CallMachine | None = None
        self.broken = False  # the text went off the grammar (e.g. a prefix we cannot follow)
        self._texts = _token_texts(tokenizer)
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._activate()

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        for token in generated[self.seen:]:
            self._advance(self._text(token) or "")
        self.seen = len(generated)
        if self.machine is None or self.broken or self.machine.done:
            return logits
        closer = self.machine.closer()
        left = self.budget - len(generated)
        if left <= len(closer) + 1:
            allowed = self._closing(closer, logits)
        else:
            allowed = self._allowed(logits, left)
        if not allowed:  # nothing fits (an odd vocabulary): leave the model be
            log.warning("no token continues the tool call %r; not constraining", self.text[-40:])
            self.broken = True
            return logits
        out = torch.full_like(logits, float("-inf"))
        index = torch.tensor(allowed, device=logits.device)
        out[index] = logits[index]
        return out

    # ------------------------------------------------------------------ helpers
    def _activate(self) -> None:
        at = self.text.find(OPEN)
        if self.machine is None and at >= 0:
            self.machine = CallMachine(self.names, self.keys, self.enums, self.required, self.strings,
                                       self.integers)
            if not self.machine.feed(self.text[at + len(OPEN):]):
                self.broken = True

    def _advance(self, piece: str) -> None:
        self.text += piece
        if self.machine is None:
            self._activate()
        elif not self.broken and not self.machine.done and not self.machine.feed(piece):
            self.broken = True

    def _text(self, token: int) -> str | None:
        text = self._texts.get(token)
        if text is None and token not in self._texts:
            text = None if token in self._special else self.tokenizer.decode([token])
            if text is not None and (not text or "\ufffd" in text):
                text = None
            self._texts[token] = text
        return text

    def _fits(self, token: int, left: int) -> bool:
        """`token` continues the call and leaves room to close it (one token per character, at worst)."""
        text = self._text(token)
        if not text or self.machine is None:
            return False
        twin = self.machine.copy()
        return twin.feed(text) and len(twin.closer()) < left

    def _allowed(self, logits: torch.Tensor, left: int) -> list[int]:
        order = torch.argsort(logits, descending=True).tolist()
        allowed: list[int] = []
        for rank, token in enumerate(order):
            if logits[token] == float("-inf"):
                break
            if self._fits(token, left):
                allowed.append(token)
                if len(allowed) >= _ENOUGH:
                    break
            if rank + 1 >= _SCAN_FIRST and allowed:
                break
        return allowed

    def _closing(self, closer: str, logits: torch.Tensor) -> list[int]:
        """Tokens whose text is a non-empty prefix of `closer` (the shortest completion)."""
        allowed = [t for t in range(logits.shape[-1]) if (text := self._text(t)) and closer.startswith(text)]
        return allowed


_TEXT_CACHE: dict[int, tuple[object, dict[int, str | None]]] = {}


def _token_texts(tokenizer) -> dict[int, str | None]:
    """One memo of decoded token texts per tokenizer object."""
    entry = _TEXT_CACHE.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        entry = (tokenizer, {})
        _TEXT_CACHE[id(tokenizer)] = entry
    return entry[1]


def _number_prefix(text: str) -> bool:
    """Whether `text` can still grow into a JSON number."""
    import re

    return re.fullmatch(r"-?((0|[1-9]\d*)(\.\d*)?([eE][+-]?\d*)?)?", text) is not None


def _number_complete(text: str) -> bool:
    import re

    return re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", text) is not None
