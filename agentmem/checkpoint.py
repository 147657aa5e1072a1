"""A session's state as stored data: its KV checkpoint layers and its policy.

The engine saves these with every turn (`Session.save`) and reads them back on resume;
nothing here touches the store or keeps state of its own.
"""

from __future__ import annotations

import logging

import torch

from . import hf
from .errors import ConfigError
from .policies import Policy

log = logging.getLogger(__name__)

CHECKPOINT_BLOCK = 64  # slots per stored KV block


def checkpoint_layers(cache, saved_blocks: list[list[str]], stable: int) -> list[dict]:
    """`cache` as checkpoint layers; blocks unchanged since the last save are passed by hash.

    Args:
        cache: the session's cache.
        saved_blocks: per layer, the block hashes of the last stored checkpoint.
        stable: logical tokens whose slots have not changed since that checkpoint.
    """
    state = hf.cache_state(cache, block=CHECKPOINT_BLOCK)
    for idx, (layer, entry) in enumerate(zip(cache.layers, state)):
        previous = saved_blocks[idx] if idx < len(saved_blocks) else []
        if entry["kind"] == "sliding" or not previous or stable <= 0:
            continue
        if isinstance(layer, hf.CompactedLayer):
            kept = layer.slots_before(stable)  # a later drop or compaction may have merged runs around it
        else:
            kept = stable
        for j in range(min(len(previous), kept // CHECKPOINT_BLOCK, len(entry["blocks"]))):
            entry["blocks"][j] = previous[j]
    return state


def recent_state(recent: dict) -> list[dict]:
    """Recent decode queries as checkpoint entries: a resumed session compacts like this one."""
    return [{"kind": "queries", "meta": {"layer": idx}, "blocks": [{"queries": torch.cat(list(ring), dim=2)}]}
            for idx, ring in sorted(recent.items()) if ring]


def policy_data(policy: Policy) -> dict:
    """The policy as `Policy.from_dict` reads it back, or a summary for a class it cannot."""
    try:
        return policy.to_dict()
    except ConfigError:  # a user class not registered by name: it cannot be rebuilt on resume
        return {"summary": _policy_summary(policy)}


def stored_policy(loaded, session_id: str) -> Policy | None:
    """The policy a stored session was saved with (newest first), or None for the default."""
    for data in ((loaded.state or {}).get("policy"), (loaded.config or {}).get("policy")):
        if not isinstance(data, dict):
            continue
        if "summary" in data or "trigger" not in data or not isinstance(data["trigger"], dict):
            # A user-defined policy class, or a session from before policies were stored whole.
            log.warning("session %r: its policy (%s) cannot be rebuilt here; using the default policy. Pass "
                        "policy= to resume it under the policy it was made with", session_id, data)
            return None
        try:
            return Policy.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"session {session_id!r}: its stored policy cannot be rebuilt here ({exc}); "
                              f"register its classes, or pass policy= to resume it under another one") from exc
    return None


def _policy_summary(policy: Policy) -> dict:
    return {"trigger": repr(policy.trigger), "ratio": repr(policy.ratio), "pin": repr(policy.pin),
            "method": policy.method, "protect_recent": policy.protect_recent}

