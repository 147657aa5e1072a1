"""Heads of one layer at different widths, stored without padding: borrowed slots.

A cache layer is a rectangle: every KV head holds the same number of slots. Compaction
with per-head budgets wants heads of one layer at different widths (one head may carry
the facts, another only a sink). Padding each head to the widest wastes the bytes the
ratio promises (1.6x at 50x on SmolLM2). Instead a compacted run is stored at the mean
width: a head that needs more than that *borrows* the spare slots of heads that need
fewer. A borrowed slot sits in the lender's row with bias -inf there, so the lender's
queries never see it; `Borrowed` records, per owner head, where its borrowed slots are
and their beta, and attention adds them back for the owner (`attend`).

Every operation that moves physical slots (crop, drop, splice, checkpoints) moves the
borrowed positions with them (`Borrowed.remap`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_NEG_INF = float("-inf")


@dataclass
class Borrowed:
    """Slots each (batch, KV head) owns in other heads' rows, padded to the most any head owns.

    `heads`, `slots`: (B, H, X) int32, the physical head and slot holding owner (b, h)'s
    x-th borrowed key and value; `bias`: (B, H, X) fp32, its beta, -inf on padding;
    `owns`: (B, H, 1) bool, whether the owner borrowed any. Treat it as immutable: every
    operation returns a new record (`owns` is computed once).
    """

    heads: torch.Tensor
    slots: torch.Tensor
    bias: torch.Tensor

    def __post_init__(self):
        self.owns = torch.isfinite(self.bias).any(-1, keepdim=True)  # (B, H, 1): borrows at least one slot

    @staticmethod
    def record_bytes() -> int:
        """Bytes of one (batch, owner head)'s record of one borrowed slot: head, slot (int32), beta (fp32)."""
        return 12

    @property
    def count(self) -> int:
        """Borrowed slots in use, summed over batch and owner heads."""
        return int(torch.isfinite(self.bias).sum())

    def per_head(self) -> torch.Tensor:
        """Borrowed slots each (batch, owner head) uses: (B, H) long."""
        return torch.isfinite(self.bias).sum(-1)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.heads, self.slots, self.bias))

    def remap(self, start: int, end: int, width: int) -> Borrowed | None:
        """After physical slots [start, end) were replaced by `width` new ones: entries inside go,
        later ones shift by width - (end - start). None when nothing is left."""
        inside = (self.slots >= start) & (self.slots < end)
        bias = self.bias.masked_fill(inside, _NEG_INF)
        slots = torch.where(self.slots >= end, self.slots + (width - (end - start)), self.slots)
        return Borrowed(self.heads, slots, bias).compacted()

    def compacted(self) -> Borrowed | None:
        """The same entries with padding moved last and trimmed; None when there are none."""
        live = torch.isfinite(self.bias)
        width = int(live.sum(-1).max()) if live.numel() else 0
        if width == 0:
            return None
        order = torch.argsort((~live).to(torch.int8), dim=-1, stable=True)[..., :width]
        bias = torch.gather(self.bias, -1, order)
        keep = torch.isfinite(bias)
        return Borrowed(torch.gather(self.heads, -1, order).masked_fill(~keep, 0),
                        torch.gather(self.slots, -1, order).masked_fill(~keep, 0), bias)

    def joined(self, other: Borrowed | None) -> Borrowed:
        if other is None:
            return self
        return Borrowed(torch.cat([self.heads, other.heads], -1), torch.cat([self.slots, other.slots], -1),
                        torch.cat([self.bias, other.bias], -1)).compacted()

    def select_batch(self, index) -> Borrowed:
        return Borrowed(self.heads[index], self.slots[index], self.bias[index])

    def repeat_batch(self, repeats: int) -> Borrowed:
        return Borrowed(*(t.repeat_interleave(repeats, dim=0) for t in (self.heads, self.slots, self.bias)))

    def gather(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each owner's borrowed keys and values: (B, H, X, D) and (B, H, X, Dv)."""
        batch = torch.arange(keys.shape[0], device=keys.device).view(-1, 1, 1).expand_as(self.heads)
        heads, slots = self.heads.long(), self.slots.long()
        return keys[batch, heads, slots], values[batch, heads, slots]

    def check(self, shape: tuple[int, int, int], lent: torch.Tensor) -> None:
        """Raise ValueError unless every entry points inside a (B, H, P) layer, at a slot whose own
        bias (`lent`, (B, H, P)) is -inf, no two at one slot, and every beta is finite or -inf."""
        batch, heads, slots = shape
        if self.heads.shape != self.slots.shape or self.heads.shape != self.bias.shape or self.heads.dim() != 3 \
                or tuple(self.heads.shape[:2]) != (batch, heads):
            raise ValueError(f"borrowed slots of shape {tuple(self.heads.shape)} do not fit a layer of "
                             f"{batch} x {heads} heads")
        if torch.isnan(self.bias).any() or torch.isposinf(self.bias).any():
            raise ValueError("a borrowed slot's beta is NaN or +inf")
        live = torch.isfinite(self.bias)
        h, s = self.heads[live].long(), self.slots[live].long()
        if h.numel() == 0:
            return
        if int(h.min()) < 0 or int(h.max()) >= heads or int(s.min()) < 0 or int(s.max()) >= slots:
            raise ValueError(f"a borrowed slot points outside the layer's {heads} heads x {slots} slots")
        b = torch.arange(batch, device=h.device).view(-1, 1, 1).expand_as(self.heads)[live]
        if torch.isfinite(lent[b, h, s]).any():
            raise ValueError("a borrowed slot sits where the lending head's own bias is finite")
        flat = (b * heads + h) * slots + s
        if flat.unique().numel() != flat.numel():
            raise ValueError("two borrowed slots point at the same physical slot")

    def to_entries(self) -> list[list]:
        """JSON-able entries [batch, owner, head, slot, beta] (beta round-trips exactly through float64)."""
        live = torch.isfinite(self.bias)
        where = live.nonzero().tolist()  # row-major, as boolean indexing below
        columns = zip(where, self.heads[live].tolist(), self.slots[live].tolist(), self.bias[live].tolist())
        return [[b, g, h, s, beta] for (b, g, _), h, s, beta in columns]

    @classmethod
    def from_entries(cls, entries, batch: int, heads: int, device=None) -> Borrowed | None:
        """Records from entries [batch, owner, head, slot, beta] (`to_entries`'s, or `pack`'s), in order per
        owner; ValueError on a malformed entry."""
        if not entries:
            return None
        used: dict[tuple[int, int], int] = {}
        places, heads_at, slots_at, betas = [], [], [], []
        for entry in entries:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 5
                    and all(isinstance(v, int) for v in entry[:4]) and isinstance(entry[4], (int, float))):
                raise ValueError(f"a borrowed-slot entry {entry!r} is not [batch, owner, head, slot, beta]")
            b, g = entry[0], entry[1]
            if not (0 <= b < batch and 0 <= g < heads and 0 <= entry[2] < 2**31 and 0 <= entry[3] < 2**31) \
                    or not math.isfinite(entry[4]):
                raise ValueError(f"a borrowed-slot entry {entry!r} is outside {batch} x {heads} heads or not finite")
            x = used[b, g] = used.get((b, g), -1) + 1
            places.append((b, g, x))
            heads_at.append(entry[2])
            slots_at.append(entry[3])
            betas.append(float(entry[4]))
        width = max(used.values()) + 1
        heads_of = torch.zeros(batch, heads, width, dtype=torch.int32)
        slots_of = torch.zeros(batch, heads, width, dtype=torch.int32)
        beta_of = torch.full((batch, heads, width), _NEG_INF)
        at = tuple(torch.tensor(places).T)
        heads_of[at] = torch.tensor(heads_at, dtype=torch.int32)
        slots_of[at] = torch.tensor(slots_at, dtype=torch.int32)
        beta_of[at] = torch.tensor(betas)
        return cls(heads_of.to(device), slots_of.to(device), beta_of.to(device))


def pack(keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, start: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Borrowed | None]:
    """Store a run whose heads use different numbers of slots at one width, without padding.

    Args:
        keys, values: (B, H, W, D), (B, H, W, Dv), each head's slots first, padding after.
        bias: (B, H, W) fp32, beta on a head's slots and -inf on its padding.
        start: the physical slot at which the run will sit in its layer.

    Returns:
        (keys, values, bias, borrowed): the run at width ceil(max over batch of the slots
        used / H), a head's first slots in its own row, the rest in the spare slots of
        heads that use fewer (their bias -inf there); `borrowed` locates those at
        `start + slot`, or None when every head fits the width.
    """
    batch, heads, widest = bias.shape
    counts = torch.isfinite(bias).sum(-1)  # (B, H)
    width = max(1, max(-(-int(c.sum()) // heads) for c in counts))
    if width >= widest:
        return keys, values, bias, None
    moves = []  # (batch, owner, its slot, lending head, slot there)
    for b in range(batch):
        spare = iter([(h, s) for h in range(heads) for s in range(int(counts[b, h]), width)])
        moves += [(b, g, s, *next(spare)) for g in range(heads) for s in range(width, int(counts[b, g]))]
    out_keys, out_values = keys[:, :, :width].clone(), values[:, :, :width].clone()
    out_bias = bias[:, :, :width].clone()
    if not moves:
        return out_keys, out_values, out_bias, None
    b, g, s, h, slot = torch.tensor(moves, device=bias.device).T
    out_keys[b, h, slot], out_values[b, h, slot] = keys[b, g, s], values[b, g, s]
    betas = bias[b, g, s].tolist()
    entries = [[m[0], m[1], m[3], start + m[4], beta] for m, beta in zip(moves, betas)]
    return out_keys, out_values, out_bias, Borrowed.from_entries(entries, batch, heads, bias.device)


def unpack(keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, borrowed: Borrowed | None,
           start: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Physical slots [start, end) of a layer as each head sees them: its own slots, then the
    ones it borrowed in that range (bias -inf on padding). (B, H, T', D), (B, H, T', Dv), (B, H, T')."""
    own = keys[:, :, start:end], values[:, :, start:end], bias[:, :, start:end]
    if borrowed is None:
        return own
    inside = (borrowed.slots >= start) & (borrowed.slots < end)
    part = Borrowed(borrowed.heads, borrowed.slots, borrowed.bias.masked_fill(~inside, _NEG_INF)).compacted()
    if part is None:
        return own
    k, v = part.gather(keys, values)
    return (torch.cat([own[0], k], dim=2), torch.cat([own[1], v], dim=2), torch.cat([own[2], part.bias], dim=-1))


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
           borrowed: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
           scaling: float, *, with_lse: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention over a layer's own slots and each head's borrowed ones, merged by log-sum-exp.

    Args:
        query: (B, H_q, q, D); key, value: (B, H_kv, k, D), (B, H_kv, k, Dv); bias (B, H_kv, k)
            fp32, -inf at lent slots; borrowed: the owners' (keys, values, bias, owns): keys
            and values from `Borrowed.gather`, `Borrowed.bias` and `.owns`; mask: transformers'
            (B, 1, q, >=k) bool or additive mask, or None.

    Borrowed slots lie in compacted runs, before every query, so the mask is not applied
    to them. Two attention calls, one over the layer and one over the few borrowed slots,
    each returning its log-sum-exp; the main part's share of the total mass is
    sigmoid(lse_main - lse_borrowed). Returns the output (B, H_q, q, Dv) and, with
    `with_lse`, each query's log-sum-exp over both (B, H_q, q).
    """
    batch, q_heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[-2]
    rows_per = q_heads // kv_heads
    # query head i reads KV head i // r: its rows become rows of that KV head (no K/V repeat)
    rows = query.reshape(batch, kv_heads, rows_per * q_len, dim)
    additive = bias.unsqueeze(2).to(query.dtype)  # (B, H_kv, 1, k)
    if mask is not None:
        mask = mask[..., -kv_len:]
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, _NEG_INF)
        mask = mask.to(query.dtype)
        if mask.shape[-2] != 1:
            mask = mask.repeat(1, 1, rows_per, 1) if mask.shape[1] == 1 else mask.reshape(
                batch, kv_heads, rows_per * q_len, kv_len)
        additive = additive + mask
    b_keys, b_values, b_bias, owns = borrowed
    out_main, lse_main = _attend_rows(rows, key, value, additive, scaling)
    out_lent, lse_lent = _attend_rows(rows, b_keys, b_values, b_bias.unsqueeze(2).to(query.dtype), scaling)
    lse_lent = lse_lent.float().masked_fill(~owns, _NEG_INF)  # the kernel reports 0 for a head that owns none
    share = torch.sigmoid(lse_main.float() - lse_lent).unsqueeze(-1).to(out_main.dtype)
    out = out_lent + (out_main - out_lent) * share
    out = out.reshape(batch, q_heads, q_len, value.shape[-1])
    if not with_lse:
        return out, None
    return out, torch.logaddexp(lse_main.float(), lse_lent).reshape(batch, q_heads, q_len)


def _attend_rows(rows, key, value, additive, scaling):
    """Output and log-sum-exp of rows (B, H_kv, n, D) over key/value with an additive mask."""
    if rows.device.type == "cpu" and key.shape[-1] == value.shape[-1]:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            rows, key, value, 0.0, False, attn_mask=additive, scale=scaling)
    logits = torch.matmul(rows.float(), key.float().transpose(-1, -2)) * scaling + additive.float()
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.matmul(torch.softmax(logits, dim=-1), value.float()).nan_to_num(0.0)  # an empty row: 0
    return out.to(value.dtype), lse
