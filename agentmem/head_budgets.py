"""Nonuniform head budgets: per-(layer, KV head) shares of the compaction budget.

A profile is JSON `{"model": NAME, "signature": {...}, "proportions": {"L{l}H{h}": p}}`
with the proportions summing to 1. `agentmem profile-heads` measures one (see
`agentmem.bench.profile_heads`); the profiles of the built-in models ship in
`agentmem/profiles/`. A head's budget is in proportion to `p * (span / ratio)`; the
budgets are capped (see `allocate`) and what a capped head cannot take goes to the
others, so a profile moves budget between heads without changing the total.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import torch

from . import hf
from .errors import ConfigError, ModelMismatchError


def signature(model: torch.nn.Module) -> dict:
    """The config fields a profile depends on."""
    config = hf.text_config(model)
    return {
        "model_type": config.model_type,
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": hf.kv_geometry(model).kv_heads,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
    }


def shipped() -> list[dict]:
    """Profiles that ship with agentmem."""
    out = []
    folder = resources.files("agentmem") / "profiles"
    if not folder.is_dir():
        return out
    for item in folder.iterdir():
        if item.name.endswith(".json"):
            out.append(json.loads(item.read_text()))
    return out


def validate(proportions: dict[str, float]) -> dict[str, float]:
    """Check keys look like L{l}H{h}, values are >= 0 and sum to 1."""
    if not proportions:
        raise ConfigError("a head profile needs at least one 'L{layer}H{head}' entry")
    for key, value in proportions.items():
        if not (key.startswith("L") and "H" in key) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"bad head profile entry {key!r}: {value!r}; expected 'L{{layer}}H{{head}}': share >= 0")
    total = sum(proportions.values())
    if not math.isclose(total, 1.0, rel_tol=1e-3):
        raise ConfigError(f"head profile shares sum to {total:.4f}; they must sum to 1")
    return {k: float(v) for k, v in proportions.items()}


def resolve(head_budgets, model: torch.nn.Module) -> dict[str, float] | None:
    """Turn the `head_budgets` option into proportions (None: uniform budgets).

    "auto" takes the shipped profile of this model if there is one; a dict is used as
    given; a str or Path names a profile JSON file.
    """
    if head_budgets is None or head_budgets == "uniform":
        return None
    if head_budgets == "auto":
        sig = signature(model)
        for profile in shipped():
            if profile.get("signature") == sig:
                return validate(profile["proportions"])
        return None
    if isinstance(head_budgets, dict):
        return validate(head_budgets)
    path = Path(head_budgets)
    if not path.is_file():
        raise ConfigError(f"head_budgets={head_budgets!r}: expected 'auto', 'uniform', a dict or a JSON file path")
    profile = json.loads(path.read_text())
    if "signature" in profile and profile["signature"] != signature(model):
        raise ModelMismatchError(f"the head profile {path} was measured on another model ({profile.get('model')})")
    return validate(profile.get("proportions", profile))


def allocate(weights: torch.Tensor, caps: torch.Tensor, total: int) -> torch.Tensor:
    """Integer budgets in proportion to `weights`, each in [1, cap], summing to `total`.

    Water-filling: a head whose proportional share passes its cap (or falls below one
    slot) is fixed there and the rest is shared again among the others. When the caps
    cannot hold `total` every head gets its cap; when `total` is below one slot per
    head every head gets one.
    """
    weights = weights.double().clamp_min(0)
    caps = caps.long().clamp_min(1)
    n = weights.numel()
    if total >= int(caps.sum()):
        return caps.clone()
    if total <= n:
        return torch.ones(n, dtype=torch.long)
    share = torch.zeros(n, dtype=torch.double)
    fixed = torch.zeros(n, dtype=torch.bool)
    for _ in range(2 * n + 1):
        free = ~fixed
        left = total - share[fixed].sum()
        w = weights[free]
        part = w / w.sum() * left if w.sum() > 0 else torch.full_like(w, float(left) / len(w))
        over, under = part > caps[free], part < 1
        if not over.any() and not under.any():
            share[free] = part
            break
        # fix the heads past their bound (caps first: they free budget for the rest), then share again
        bound, value = (over, caps[free].double()) if over.any() else (under, torch.ones_like(part))
        index = free.nonzero().squeeze(1)[bound]
        share[index] = value[bound]
        fixed[index] = True
    out = share.floor().long()  # each share lies in [1, cap], so each floor does too
    short = total - int(out.sum())  # fewer than the heads with a fractional share, all below their cap
    out[torch.argsort(share - out.double(), descending=True)[:short]] += 1  # largest remainders first
    return out


def neediest_head_widths(scores: dict[int, torch.Tensor], valid: dict[int, torch.Tensor],
                         total: int) -> dict[int, int]:
    """Per-layer widths, summing to at most `total`, that give a layer what its neediest head asks.

    `scores[l]` and `valid[l]` are (G, T_l); `total` is the slots per head summed over the
    layers. Under one threshold on the scores a head asks for as many slots as it has
    scores above it, and a layer, stored at one width for all its heads, needs the count of
    its neediest head. The k-th slot of layer l is asked for at any threshold up to
    max over heads of the head's k-th largest score, so ranking those claims across layers
    (every layer keeps one slot) gives the lowest threshold whose widths fit `total`.
    The other heads of a layer fill the same width with their own best keys.
    """
    layers = list(scores)
    claims, owner = [], []
    for n, i in enumerate(layers):
        ranked = scores[i].masked_fill(~valid[i], -1.0).sort(dim=-1, descending=True).values  # (G, T)
        cap = max(1, int(valid[i].sum(-1).min()))
        claim = ranked.max(0).values[1:cap]  # slot 1 is every layer's; slots past the cap cannot be kept
        claims.append(claim)
        owner.append(torch.full_like(claim, n, dtype=torch.long))
    flat, who = torch.cat(claims), torch.cat(owner)
    spare = max(0, min(total - len(layers), flat.numel()))
    picked = who[flat.topk(spare).indices] if spare else who[:0]
    extra = torch.bincount(picked, minlength=len(layers))
    return {i: 1 + int(extra[n]) for n, i in enumerate(layers)}


def per_head_counts(scores: dict[int, torch.Tensor], valid: dict[int, torch.Tensor], total: int,
                    heads: int, record_cost: float = 0.0) -> dict[int, torch.Tensor]:
    """Per-(layer, head) slot counts from one ranking, at the bytes of `total` slots per head.

    `scores[l]`, `valid[l]` are (G, T_l) with G = batch x `heads`; `total` is the slots per
    head summed over the layers, as in `neediest_head_widths`. Under a threshold on the
    scores each head keeps the keys above it (at least one). A layer's heads are stored at
    the mean of their counts (`agentmem.hf.ragged`: a head that needs more borrows the
    spare slots of heads that need fewer), so a layer costs ceil(its heads' sum / heads)
    slots per head, plus `record_cost` slots for each borrowed slot its neediest head
    records (the record's bytes over a slot's). Each layer's rounding remainder goes to its
    next-best keys; the lowest threshold whose layers then fit `total` is found by bisection.
    Returns layer -> (G,) long.
    """
    ranked = {i: s.masked_fill(~valid[i], float("-inf")).sort(dim=-1, descending=True).values
              for i, s in scores.items()}
    usable = {i: v.sum(-1).clamp(min=1) for i, v in valid.items()}

    def allocation(threshold: float) -> tuple[dict[int, torch.Tensor], float]:
        out, cost = {}, 0.0
        for i, s in scores.items():
            count = ((s >= threshold) & valid[i]).sum(-1).clamp(min=1).minimum(usable[i])
            width = max(1, int((count.reshape(-1, heads).sum(-1).add(heads - 1) // heads).max()))
            out[i] = _fill(ranked[i], usable[i], count, width, heads)
            cost += width + record_cost * max(0, int(out[i].max()) - width)
        return out, cost

    lo, hi = 0.0, 1.0 + 1e-6  # scores are probabilities: above 1 every head keeps one slot
    best, _ = allocation(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        counts, cost = allocation(mid)
        if cost > total:
            lo = mid
        else:
            hi, best = mid, counts
    return best


def _fill(ranked: torch.Tensor, usable: torch.Tensor, count: torch.Tensor, width: int, heads: int) -> torch.Tensor:
    """Give each batch row's spare slots (width x heads - its heads' counts) to its next-best keys.

    `ranked` (G, T) holds each head's scores in descending order (-inf past its valid keys)."""
    rank = torch.arange(ranked.shape[-1]).unsqueeze(0)
    open_ = (rank >= count.unsqueeze(1)) & (rank < usable.unsqueeze(1))  # claims not yet granted
    count = count.clone()
    for b in range(count.numel() // heads):
        rows = slice(b * heads, (b + 1) * heads)
        spare = width * heads - int(count[rows].sum())
        claims = ranked[rows].masked_fill(~open_[rows], float("-inf")).flatten()
        spare = min(spare, int(torch.isfinite(claims).sum()))
        if spare > 0:
            picked = claims.topk(spare).indices // ranked.shape[-1]
            count[rows] += torch.bincount(picked, minlength=heads)
    return count
