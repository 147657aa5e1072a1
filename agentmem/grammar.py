"""Tool calls held to their tools' whole JSON schema while they are decoded (llguidance).

Once a reply contains ``<tool_call>``, `SchemaConstraint` lets through only tokens that keep
the text after it a prefix of::

    {"name": "<tool>", "arguments": <a value of that tool's parameters schema>}</tool_call>

The grammar is compiled by llguidance (a maintained Rust engine; one wheel, no other
dependencies) from the JSON schemas: booleans, numbers, integers, strings, arrays, nested
objects, optional fields, enums, consts, anyOf and $ref are all enforced. Objects without
an ``additionalProperties`` get ``false`` (only the schema's keys), keys come in the
schema's order, and the separators are fixed (``", "``, ``": "``) so a small model cannot
wander off into whitespace. `with_structured_output` goes through a forced call, so
structured output is held to the pydantic model's schema the same way.

Token budget: `ShortestClose` follows the JSON written so far against the schema and
gives the shortest text that completes the call (required keys with their shortest
values, then every bracket and ``</tool_call>``). When the tokens left come near its
length, only grammar-allowed tokens after which that completion still fits are kept, and
at the end only prefixes of it, so the call is always closed within ``max_new_tokens``.

`agentmem.constrain.call_constraint` uses this module when llguidance imports and falls
back to its hand-written `CallMachine` (names, keys, strings, integers, string enums)
otherwise; it logs once which one it uses.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from .toolcalls import CLOSE, OPEN

log = logging.getLogger(__name__)

SEPARATORS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}
_NEAR = 48  # the budget check starts when this many more characters than the completion are left
_ENOUGH = 32  # allowed tokens collected, in logit order, when the budget is near


def available() -> bool:
    """Whether llguidance imports here."""
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- schemas


def closed(schema):
    """`schema` with ``additionalProperties: false`` on every object that lists properties but says nothing."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) if k not in ("enum", "const", "default", "examples", "required") else v
           for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: closed(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


def parameters_schema(tool: dict) -> dict:
    """A tool's arguments schema (OpenAI function format or a bare function spec), objects closed."""
    spec = tool.get("function", tool)
    parameters = dict(spec.get("parameters") or {})
    parameters.setdefault("type", "object")
    parameters.setdefault("properties", {})
    return closed(parameters)


def call_schema(tools: Sequence[dict]) -> dict:
    """The JSON schema of one call: ``{"name": <a tool>, "arguments": <its parameters>}``."""
    branches = []
    defs: dict = {}
    for tool in tools:
        name = tool.get("function", tool)["name"]
        parameters = parameters_schema(tool)
        for key in ("$defs", "definitions"):  # refs are written against the parameters' root
            defs.update(parameters.pop(key, {}) or {})
        branches.append({"type": "object", "properties": {"name": {"const": name}, "arguments": parameters},
                         "required": ["name", "arguments"], "additionalProperties": False})
    schema = branches[0] if len(branches) == 1 else {"anyOf": branches}
    if defs:
        schema = {**schema, "$defs": defs}
    return _rewrite_refs(schema)


def _rewrite_refs(schema):
    """`#/definitions/X` refs point at `#/$defs/X` (where `call_schema` put them)."""
    if isinstance(schema, list):
        return [_rewrite_refs(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _rewrite_refs(v) for k, v in schema.items()}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/definitions/"):
        out["$ref"] = "#/$defs/" + ref[len("#/definitions/"):]
    return out


def call_grammar(tools: Sequence[dict]) -> str:
    """The Lark grammar (llguidance's dialect) of the text after ``<tool_call>``."""
    schema = {**call_schema(tools), "x-guidance": SEPARATORS}
    return "start: %json " + json.dumps(schema) + " " + json.dumps(CLOSE)


# --------------------------------------------------------------------------- shortest completion


class ShortestClose:
    """Follows JSON text (valid so far: the grammar sees to that) against `schema`.

    `closer()` is the shortest text that makes it a complete value of the schema followed
    by `tail`. Bounds other than required keys, enums, consts, minLength/minItems and
    minimum are not modelled; the caller checks the completion with the grammar.
    """

    def __init__(self, schema: dict, tail: str = ""):
        self.root, self.tail = schema, tail
        self.stack: list[dict] = []  # {"kind": "{"|"[", "schema", "used": [keys], "values": {key: str}, "count"}
        # value | value_or_end | key_or_end | key | colon | after | string | escape | hex | number | literal | tail
        self.mode = "value"
        self.is_key = False
        self.buffer = ""  # the string, number or literal being written
        self.hex_left = 0
        self.literal = ""
        self.last = ""  # the last character outside strings
        self.tail_pos = 0

    def copy(self) -> ShortestClose:
        twin = copy.copy(self)
        twin.stack = [{**f, "used": list(f["used"]), "values": dict(f["values"])} for f in self.stack]
        return twin

    def feed(self, text: str) -> None:
        for ch in text:
            self._char(ch)

    # ------------------------------------------------------------------ schemas
    def _resolve(self, schema) -> dict:
        for _ in range(32):
            if not isinstance(schema, dict):
                return {}
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return schema
            node = self.root
            for part in ref[2:].split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            schema = {**{k: v for k, v in schema.items() if k != "$ref"}, **node}
        return {}

    def _branches(self, schema) -> list[dict]:
        """The alternatives a value of `schema` may follow (anyOf/oneOf flattened, refs resolved)."""
        schema = self._resolve(schema)
        alternatives = schema.get("anyOf") or schema.get("oneOf")
        if not alternatives:
            return [schema]
        base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
        out: list[dict] = []
        for alt in alternatives:
            out.extend(self._branches({**base, **self._resolve(alt)}))
        return out

    def shortest(self, schema, depth: int = 0) -> str:
        """The shortest JSON text that is a value of `schema`."""
        if depth > 16:
            return "null"
        options = []
        for branch in self._branches(schema):
            if "const" in branch:
                options.append(json.dumps(branch["const"], ensure_ascii=False))
                continue
            if "enum" in branch:
                options.extend(json.dumps(v, ensure_ascii=False) for v in branch["enum"])
                continue
            kinds = branch.get("type")
            kinds = kinds if isinstance(kinds, list) else [kinds]
            for kind in kinds:
                options.append(self._shortest_of(kind, branch, depth))
        return min(options, key=len) if options else "0"

    def _shortest_of(self, kind, schema: dict, depth: int) -> str:
        if kind == "null":
            return "null"
        if kind == "boolean":
            return "true"
        if kind in ("integer", "number"):
            low = schema.get("minimum", schema.get("exclusiveMinimum"))
            high = schema.get("maximum", schema.get("exclusiveMaximum"))
            if isinstance(low, (int, float)) and low >= 0:
                value = math.floor(low) + 1 if "exclusiveMinimum" in schema and "minimum" not in schema \
                    else math.ceil(low)
                return str(value)
            if isinstance(high, (int, float)) and high <= 0:
                return str(math.floor(high) - 1 if "exclusiveMaximum" in schema and "maximum" not in schema
                           else math.floor(high))
            return "0"
        if kind == "string":
            return '"' + "a" * int(schema.get("minLength", 0)) + '"'
        if kind == "array":
            prefix = schema.get("prefixItems") or []
            count = max(int(schema.get("minItems", 0)), 0)
            items = [self.shortest(prefix[i] if i < len(prefix) else schema.get("items", {}), depth + 1)
                     for i in range(count)]
            return "[" + ", ".join(items) + "]"
        if kind == "object":
            return "{" + ", ".join(self._required_pairs(schema, [], depth)) + "}"
        return "0"  # no type: any value

    def _required_pairs(self, schema: dict, used: list[str], depth: int = 0) -> list[str]:
        properties = schema.get("properties") or {}
        required = [k for k in properties if k in (schema.get("required") or []) and k not in used]
        required += [k for k in schema.get("required") or [] if k not in properties and k not in used]
        return [json.dumps(k, ensure_ascii=False) + ": " + self.shortest(properties.get(k, {}), depth + 1)
                for k in required]

    def _fitting(self, frame: dict, key: str | None = None) -> list[dict]:
        """The object branches of the frame's schema that fit the keys (and string values) written."""
        fits = []
        for branch in self._branches(frame["schema"]):
            properties = branch.get("properties") or {}
            if branch.get("type") not in (None, "object") or not all(k in properties for k in frame["used"]):
                continue
            if any(not _admits(self._resolve(properties[k]), v) for k, v in frame["values"].items()):
                continue
            if key is None or key in properties:
                fits.append(branch)
        return fits

    def _object_branch(self, frame: dict) -> dict:
        """The fitting branch with the shortest rest of required keys."""
        fits = self._fitting(frame)
        if not fits:
            return {}
        return min(fits, key=lambda b: len(", ".join(self._required_pairs(b, frame["used"]))))

    def _value_schema(self):
        """The schema of the value that starts now."""
        if not self.stack:
            return self.root
        frame = self.stack[-1]
        if frame["kind"] == "[":
            for branch in self._branches(frame["schema"]):
                if branch.get("type") in (None, "array") and ("items" in branch or "prefixItems" in branch):
                    prefix = branch.get("prefixItems") or []
                    n = frame["count"]
                    return prefix[n] if n < len(prefix) else branch.get("items", {})
            return {}
        key = frame["used"][-1] if frame["used"] else ""
        options = [b["properties"][key] for b in self._fitting(frame, key)]
        return options[0] if len(options) == 1 else {"anyOf": options} if options else {}

    # ------------------------------------------------------------------ one character
    def _char(self, ch: str) -> None:
        mode = self.mode
        if mode == "tail":
            self.tail_pos += 1
            return
        if mode == "string":
            if ch == '"':
                self._end_string()
            elif ch == "\\":
                self.mode = "escape"
            else:
                self.buffer += ch
            return
        if mode == "escape":
            self.mode, self.hex_left = ("hex", 4) if ch == "u" else ("string", 0)
            self.buffer += "\\" + ch
            return
        if mode == "hex":
            self.hex_left -= 1
            if self.hex_left == 0:
                self.mode = "string"
            return
        if mode == "literal":
            self.literal = self.literal[1:]
            if not self.literal:
                self._end_value()
            return
        if mode == "number":
            if ch in "0123456789-+.eE":
                self.buffer += ch
                return
            self._end_value()
            mode = self.mode
        self.last = ch
        if ch in " \t\r\n":
            return
        if mode in ("value", "value_or_end"):
            if ch == "]" and mode == "value_or_end":
                self._close()
            elif ch == "{":
                self.stack.append({"kind": "{", "schema": self._value_schema(), "used": [], "values": {}, "count": 0})
                self.mode = "key_or_end"
            elif ch == "[":
                self.stack.append({"kind": "[", "schema": self._value_schema(), "used": [], "values": {}, "count": 0})
                self.mode = "value_or_end"
            elif ch == '"':
                self.mode, self.is_key, self.buffer = "string", False, ""
            elif ch in "-0123456789":
                self.mode, self.buffer = "number", ch
            elif ch in "tfn":
                self.mode, self.literal = "literal", {"t": "rue", "f": "alse", "n": "ull"}[ch]
            return
        if mode in ("key_or_end", "key"):
            if ch == "}":
                self._close()
            elif ch == '"':
                self.mode, self.is_key, self.buffer = "string", True, ""
            return
        if mode == "colon":
            self.mode = "value"
            return
        if mode == "after":
            if ch == ",":
                self.mode = "key" if self.stack[-1]["kind"] == "{" else "value"
            elif ch in "}]":
                self._close()

    def _end_string(self) -> None:
        if self.is_key:
            self.stack[-1]["used"].append(self.buffer)
            self.mode = "colon"
            return
        if self.stack and self.stack[-1]["kind"] == "{" and self.stack[-1]["used"]:
            self.stack[-1]["values"][self.stack[-1]["used"][-1]] = self.buffer
        self._end_value()

    def _end_value(self) -> None:
        if self.stack and self.stack[-1]["kind"] == "[":
            self.stack[-1]["count"] += 1
        self.mode = "after" if self.stack else "tail"
        self.buffer = ""

    def _close(self) -> None:
        self.stack.pop()
        self._end_value()

    # ------------------------------------------------------------------ the completion
    def closer(self) -> str:
        """The shortest text that completes the value and the tail from here."""
        if self.mode == "tail":
            return self.tail[self.tail_pos:]
        piece = self._piece()
        if piece:  # finish the item being written, then close from the state it leaves
            twin = self.copy()
            twin.feed(piece)
            return piece + twin._close_frames()
        return self._close_frames()

    def _piece(self) -> str:
        """The shortest text that finishes the key, value or pair being written ("" if none is)."""
        mode, frame = self.mode, self.stack[-1] if self.stack else None
        if mode == "string" and self.is_key:
            key = self._next_keys(frame, self.buffer)[0]
            branch = self._object_branch({**frame, "used": frame["used"] + [key]}) or self._object_branch(frame)
            return key[len(self.buffer):] + '": ' + self.shortest((branch.get("properties") or {}).get(key, {}))
        if mode in ("string", "escape", "hex"):
            text = '"' if mode == "escape" else "0" * self.hex_left if mode == "hex" else ""
            options = [json.loads(s) for s in self._string_options()]
            matching = [o for o in options if o.startswith(self.buffer)] if mode == "string" else []
            return text + (min(matching, key=len)[len(self.buffer):] if matching else "") + '"'
        if mode == "number":
            return "" if _number_complete(self.buffer) else "0"
        if mode == "literal":
            return self.literal
        if mode == "colon":
            return ": " + self.shortest(self._value_schema())
        if mode == "value":
            return (" " if self.last and self.last in ",:" else "") + self.shortest(self._value_schema())
        if mode == "key":
            key = self._next_keys(frame, "")[0]
            branch = self._object_branch({**frame, "used": frame["used"] + [key]}) or self._object_branch(frame)
            value = self.shortest((branch.get("properties") or {}).get(key, {}))
            return (" " if self.last == "," else "") + json.dumps(key, ensure_ascii=False) + ": " + value
        return ""

    def _next_keys(self, frame: dict, start: str) -> list[str]:
        """Keys that may come next in `frame` and start with `start`, best first (keys come in schema order)."""
        for branch in [self._object_branch(frame)] + self._fitting(frame):
            order = list(branch.get("properties") or {})
            after = max((order.index(k) + 1 for k in frame["used"] if k in order), default=0)
            required = set(branch.get("required") or [])
            candidates = []
            for k in order[after:]:
                if k.startswith(start):
                    candidates.append(k)
                if k in required:  # a key after a missing required one would skip it
                    break
            if candidates:
                return candidates
        return [start or "_"]

    def _close_frames(self) -> str:
        """Close every open object (adding its missing required keys) and array, then the tail."""
        text = ""
        for depth in range(len(self.stack) - 1, -1, -1):
            frame = self.stack[depth]
            if frame["kind"] == "[":
                text += "]"
                continue
            pairs = self._required_pairs(self._object_branch(frame), frame["used"])
            if pairs:
                text += (", " if frame["used"] else "") + ", ".join(pairs)
            text += "}"
        return text + self.tail

    def _string_options(self) -> list[str]:
        """JSON texts of the strings the value being written may be (empty: any string)."""
        options: list[str] = []
        for branch in self._branches(self._value_schema()):
            if "const" in branch:
                options.append(json.dumps(branch["const"], ensure_ascii=False))
            elif "enum" in branch:
                options.extend(json.dumps(v, ensure_ascii=False) for v in branch["enum"])
            elif branch.get("type") in (None, "string") or isinstance(branch.get("type"), list):
                return []
        return [o for o in options if o.startswith('"')]


def _admits(schema: dict, value: str) -> bool:
    if "const" in schema:
        return schema["const"] == value
    if "enum" in schema:
        return value in schema["enum"]
    return True


def _number_complete(text: str) -> bool:
    import re

    return re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", text) is not None


# --------------------------------------------------------------------------- the token filter


_TOKENIZERS: dict[tuple[int, int], tuple[object, object]] = {}


def ll_tokenizer(tokenizer, n_vocab: int):
    """llguidance's view of a fast HF tokenizer (built once per tokenizer and vocabulary size)."""
    import llguidance

    key = (id(tokenizer), n_vocab)
    entry = _TOKENIZERS.get(key)
    if entry is None or entry[0] is not tokenizer:
        backend = copy.copy(tokenizer.backend_tokenizer)
        backend.no_padding()
        backend.no_truncation()
        eos = getattr(tokenizer, "eos_token_id", None)
        entry = (tokenizer, llguidance.LLTokenizer(backend.to_str(), n_vocab=n_vocab, eos_token=eos))
        _TOKENIZERS[key] = entry
    return entry[1]


class SchemaConstraint:
    """A `logits_processor` for `Session.stream` that holds tool calls to their JSON schemas.

    Args:
        tokenizer: the model's (fast) tokenizer.
        tools: tool schemas in OpenAI function format (`{"type": "function", "function": ...}`).
        max_new_tokens: the reply's token budget (the call is closed before it runs out).
        prefix: the text the reply was forced to start with (may already open the call).
    """

    def __init__(self, tokenizer, tools: Sequence[dict], *, max_new_tokens: int, prefix: str = ""):
        import llguidance

        if not tools:
            raise ValueError("SchemaConstraint needs at least one tool")
        self.tokenizer, self.budget = tokenizer, max_new_tokens
        self.names = tuple(t.get("function", t)["name"] for t in tools)
        self.schema = call_schema(tools)
        self.grammar = llguidance.LLMatcher.grammar_from_lark(call_grammar(tools))
        self.text = prefix  # reply text so far
        self.seen = 0
        self.matcher = None
        self.closing: ShortestClose | None = None
        self.broken = False
        self._ll = None
        self._texts: dict[int, str | None] = {}

    # ------------------------------------------------------------------ the filter
    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        if self._ll is None:
            self._ll = ll_tokenizer(self.tokenizer, logits.shape[-1])
            self._activate()
        for token in generated[self.seen:]:
            self._advance(token)
        self.seen = len(generated)
        if self.matcher is None or self.broken or self.matcher.is_stopped():
            return logits
        allowed = self._mask(logits.shape[-1])
        closer = self.closing.closer()
        left = self.budget - len(generated)
        if left <= len(closer) + _NEAR:
            allowed = self._within_budget(allowed, logits, closer, left)
        if not bool(allowed.any()):
            log.warning("no token continues the tool call %r; not constraining", self.text[-40:])
            self.broken = True
            return logits
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    @property
    def done(self) -> bool:
        return self.matcher is not None and self.matcher.is_stopped()

    # ------------------------------------------------------------------ helpers
    def _activate(self) -> None:
        at = self.text.find(OPEN)
        if self.matcher is not None or at < 0 or self._ll is None:
            return
        import llguidance

        self.matcher = llguidance.LLMatcher(self._ll, self.grammar, log_level=0)
        if self.matcher.is_error():
            log.warning("llguidance cannot compile the tool schemas (%s); not constraining", self.matcher.get_error())
            self.broken = True
            return
        self.closing = ShortestClose(self.schema, CLOSE)
        rest = self.text[at + len(OPEN):]
        if rest:
            self._consume_text(rest)

    def _consume_text(self, text: str) -> None:
        if not self.matcher.consume_tokens(self._ll.tokenize_str(text)):
            log.warning("the tool call %r left its schema; not constraining", self.text[-60:])
            self.broken = True
            return
        self.closing.feed(text)

    def _advance(self, token: int) -> None:
        piece = self._text(token)
        if self.matcher is None:
            self.text += piece or ""
            self._activate()
            return
        self.text += piece or ""
        if self.broken or self.matcher.is_stopped():
            return
        if not self.matcher.consume_token(token):
            log.warning("token %d left the tool call's schema (%s); not constraining", token,
                        self.matcher.get_error()[:200])
            self.broken = True
            return
        self.closing.feed(piece or "")

    def _text(self, token: int) -> str | None:
        if token not in self._texts:
            text = self._ll.decode_str([token]) if token < self._ll.vocab_size else ""
            self._texts[token] = text if text and "\ufffd" not in text else None
        return self._texts[token]

    def _mask(self, vocab: int) -> torch.Tensor:
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = np.zeros(vocab, dtype=bool)
        n = min(vocab, bits.size)
        allowed[:n] = bits[:n].astype(bool)
        return torch.from_numpy(allowed)

    def _within_budget(self, allowed: torch.Tensor, logits: torch.Tensor, closer: str, left: int) -> torch.Tensor:
        """Allowed tokens after which the call can still be closed in the tokens left (one per character)."""
        keep = torch.zeros_like(allowed)
        if left <= len(closer) + 1:  # only the shortest completion itself
            for token in allowed.nonzero().flatten().tolist():
                text = self._text(token)
                if text and closer.startswith(text):
                    keep[token] = True
            return keep if bool(keep.any()) else allowed
        scores = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
        found = 0
        for token in torch.argsort(scores, descending=True).tolist():
            if scores[token] == float("-inf"):
                break
            text = self._text(token)
            if not text:
                continue
            twin = self.closing.copy()
            twin.feed(text)
            if len(twin.closer()) < left - 1:
                keep[token] = True
                found += 1
                if found >= _ENOUGH:
                    break
        return keep if bool(keep.any()) else allowed
