"""What replies cost in tokens: `Usage`, one record every surface reports from.

A reply (`agentmem.engine.Reply`) prefilled some tokens (its new messages and the reply
opener), found the rest of the conversation in the KV cache, and generated some. `Usage`
holds those three counts, summed over replies; `Usage.metadata` gives them in LangChain's
`UsageMetadata` shape, which `ChatAgentMem` and `agentmem chat --json` report and whose
`input_tokens` counts the cached tokens too (as hosted models count prompt caching).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Usage:
    """Tokens a run (or one reply) cost, summed over model replies."""

    requests: int = 0  # model replies
    prompt_tokens: int = 0  # tokens prefilled
    cached_tokens: int = 0  # tokens served from the KV cache instead
    completion_tokens: int = 0  # tokens generated

    @property
    def input_tokens(self) -> int:
        """Prompt tokens, cached or prefilled (openai-agents' name; as there, cached ones count).

        Unlike openai-agents' `total_tokens`, ours leaves the cached tokens out (it counts
        what the model computed), so `input_tokens + output_tokens` is larger.
        """
        return self.cached_tokens + self.prompt_tokens

    @property
    def output_tokens(self) -> int:
        """`completion_tokens`, by openai-agents' name."""
        return self.completion_tokens

    @property
    def total_tokens(self) -> int:
        """Tokens the model computed: prefilled plus generated (cached ones cost nothing)."""
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.cached_tokens += other.cached_tokens
        self.completion_tokens += other.completion_tokens

    @classmethod
    def of(cls, reply: Any) -> Usage:
        """One reply's usage (`reply` is an `agentmem.engine.Reply`)."""
        return cls(1, reply.prompt_tokens, reply.cached_tokens, reply.completion_tokens)

    def metadata(self) -> dict[str, Any]:
        """The counts in LangChain's `UsageMetadata` shape.

        `cache_read` counts tokens served from the KV cache, `cache_creation` the tokens
        prefilled; `input_tokens` is their sum, and `total_tokens` adds the output.
        """
        prompt = self.cached_tokens + self.prompt_tokens
        return {"input_tokens": prompt, "output_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens,
                "input_token_details": {"cache_read": self.cached_tokens, "cache_creation": self.prompt_tokens}}
