"""Captured reference queries: the queries a session's own prefill and decode asked.

A session runs every token of its history through attention once. Attention Matching
needs reference queries, the questions the future will ask of a span; the repeat-prefill
pass gets them by reading the span a second time, at about the cost of a prefill. A
`QuerySample` keeps a bounded sample of the queries the session asked anyway, so a
compaction can fit on them without that pass.

The sample is stratified over positions: a position p is kept while p % stride == 0, and
the stride doubles whenever the sample would exceed `capacity` positions, so the kept
positions always cover the whole history evenly (never a recent window). Every query
head of a kept position is kept: fitting on all query heads of a KV head is what keeps a
span's facts (docs/LOG.md, "AM levers").

A query captured at position p asked from p, but every later question about the span is
asked from after the cache's end. Before fitting, `reference` rotates each query with
RoPE to ask from the cache's end (`hf.rope`: its score against a key at j then depends on
length - j, as a later question's does). On SmolLM2 that kept more of a span's facts than
rotating only the span's queries to a repeat's positions, or not rotating at all
(docs/LOG.md, "captured reference queries").
"""

from __future__ import annotations

import numbers

import torch

from .errors import ConfigError, CorruptSessionError
from .hf import rope

DEFAULT_CAPACITY = 1024  # positions per layer; SmolLM2-135M: 35 MB in fp16 (9 query heads x 64 x 30 layers)
STATE_BLOCK = 64  # positions per stored block (unchanged blocks are passed by hash)
REFERENCE_MODES = ("repeat", "captured", "both")  # where a compaction gets its reference queries


class QuerySample:
    """A bounded, position-stratified sample of each full-attention layer's queries.

    Attributes:
        capacity: most positions kept per layer.
        stride: positions kept are the multiples of this power of two.
        positions: (n,) long, the kept positions in increasing order (shared by all layers).
        queries: layer -> (B, H_q, n, D) post-norm, post-RoPE queries in `dtype`.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, dtype: torch.dtype = torch.float16):
        if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral) or capacity < 1:
            raise ConfigError(f"capacity must be an int >= 1 (positions kept per layer), got {capacity!r}")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ConfigError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
        self.capacity, self.dtype = int(capacity), dtype
        self.stride = 1
        self.positions = torch.zeros(0, dtype=torch.long)
        self.queries: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return int(self.positions.numel())

    @property
    def nbytes(self) -> int:
        return sum(q.numel() * q.element_size() for q in self.queries.values())

    def copy(self) -> QuerySample:
        """An independent copy (the tensors are shared: the sample never writes into them)."""
        twin = QuerySample(self.capacity, dtype=self.dtype)
        twin.stride, twin.positions, twin.queries = self.stride, self.positions, dict(self.queries)
        return twin

    def add(self, queries: dict[int, torch.Tensor], first: int) -> None:
        """Record the queries of tokens first, first + 1, ... from one forward pass.

        Args:
            queries: layer -> (B, H_q, q, D), the same q for every layer (one model call).
            first: the position of the first of the q tokens. Kept positions at or after
                it are replaced (a prefill done again after a rewind).
        """
        if not queries:
            return
        sizes = {q.shape[-2] for q in queries.values()}
        if len(sizes) != 1:
            raise ConfigError(f"one call's queries must cover the same tokens in every layer, got lengths {sizes}")
        if self.queries and set(queries) != set(self.queries):
            raise ConfigError(f"queries of layers {sorted(queries)} do not match the sample's {sorted(self.queries)}")
        self.truncate(first)
        count = sizes.pop()
        positions = torch.arange(first, first + count)
        keep = positions % self.stride == 0
        for idx, q in queries.items():
            new = q[:, :, keep.to(q.device)].detach().to(self.dtype)
            old = self.queries.get(idx)
            self.queries[idx] = new if old is None else torch.cat([old, new.to(old.device)], dim=2)
        self.positions = torch.cat([self.positions, positions[keep]])
        while len(self) > self.capacity:
            self._thin()

    def truncate(self, length: int) -> None:
        """Forget positions >= `length` (the session's history was cut there)."""
        keep = self.positions < length
        if bool(keep.all()):
            return
        self._keep(keep)

    def covers(self, start: int) -> bool:
        """Whether the sample has been kept since before `start` (it holds the span's queries)."""
        return len(self) > 0 and int(self.positions[0]) <= start + self.stride

    def reference(self, model: torch.nn.Module, start: int, end: int, length: int,
                  layers: list[int]) -> dict[int, torch.Tensor]:
        """The captured queries that bear on span [start, end) of a `length`-token cache.

        Positions >= start (inside the span and after it), each rotated to ask from the
        cache's end (see the module docstring).

        Returns:
            layer -> (B, H_q, n, D) fp32; empty when no kept position is >= start.
        """
        mask = (self.positions >= start) & (self.positions < length)
        if not bool(mask.any()):
            return {}
        positions = self.positions[mask]
        delta = length - positions
        out = {}
        for idx in layers:
            if idx not in self.queries:
                continue
            q = self.queries[idx]
            q = q[:, :, mask.to(q.device)].float()
            out[idx] = rope.rotate(q, rope.inverse_frequencies(model, idx).to(q.device), delta.to(q.device))
        return out

    def _thin(self) -> None:
        self.stride *= 2
        self._keep(self.positions % self.stride == 0)

    def _keep(self, keep: torch.Tensor) -> None:
        self.positions = self.positions[keep]
        for idx, q in self.queries.items():
            self.queries[idx] = q[:, :, keep.to(q.device)]

    # ------------------------------------------------------------------ persistence
    def state(self) -> list[dict]:
        """Checkpoint entries, one per layer, in blocks of `STATE_BLOCK` positions."""
        entries = []
        for idx, q in sorted(self.queries.items()):
            blocks = [{"queries": part.contiguous(), "positions": pos.unsqueeze(0).contiguous()}
                      for part, pos in zip(q.split(STATE_BLOCK, dim=2), self.positions.split(STATE_BLOCK))]
            entries.append({"kind": "captured", "meta": {"layer": idx, "stride": self.stride,
                                                         "capacity": self.capacity}, "blocks": blocks})
        return entries

    @classmethod
    def from_state(cls, entries: list[dict], *, session: str, capacity: int | None = None,
                   dtype: torch.dtype = torch.float16) -> QuerySample:
        """A sample rebuilt from `state()` entries.

        Raises:
            CorruptSessionError: the entries disagree (positions, strides, shapes) or hold
                non-finite numbers.
        """
        def corrupt(why: str) -> CorruptSessionError:
            return CorruptSessionError(f"session {session!r}: its captured queries are damaged ({why}); "
                                       "Store.drop_checkpoints() removes them (the session is prefilled again)")

        stored_capacity = None
        sample = None
        for entry in entries:
            meta = entry.get("meta") or {}
            idx, stride = meta.get("layer"), meta.get("stride")
            if not _int(idx) or not _int(stride) or stride < 1 or stride & (stride - 1):
                raise corrupt(f"layer {idx!r}, stride {stride!r}")
            stored_capacity = meta.get("capacity") if _int(meta.get("capacity")) else stored_capacity
            blocks = entry.get("blocks") or []
            try:
                q = torch.cat([b["queries"] for b in blocks], dim=2) if blocks else None
                pos = torch.cat([b["positions"].reshape(-1) for b in blocks]) if blocks else None
            except (KeyError, TypeError, RuntimeError, AttributeError) as exc:
                raise corrupt(f"layer {idx}: {type(exc).__name__}: {exc}") from exc
            if q is None or q.dim() != 4 or pos.dtype != torch.long or pos.numel() != q.shape[2]:
                raise corrupt(f"layer {idx} holds no (B, H_q, n, D) queries with one position each")
            if not bool(torch.isfinite(q.float()).all()):
                raise corrupt(f"layer {idx} holds NaN or infinite queries")
            if pos.numel() > 1 and not bool((pos[1:] > pos[:-1]).all()):
                raise corrupt(f"layer {idx}: positions are not increasing")
            if sample is None:
                sample = cls(capacity or stored_capacity or max(DEFAULT_CAPACITY, pos.numel()), dtype=dtype)
                sample.stride, sample.positions = stride, pos
            elif stride != sample.stride or not torch.equal(pos, sample.positions):
                raise corrupt(f"layer {idx}'s positions differ from layer {sorted(sample.queries)[0]}'s")
            sample.queries[idx] = q.to(dtype)
        if sample is None:
            return cls(capacity or DEFAULT_CAPACITY, dtype=dtype)
        while len(sample) > sample.capacity:
            sample._thin()
        return sample


def _int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)

