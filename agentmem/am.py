"""Attention Matching algebra: replace a span's keys and values by a few keys (C1),
log-weights (beta) and fitted values (C2) that reproduce the span's attention.

Everything here is batched over G independent "heads" (batch x KV heads of one layer)
and done in fp32. Shapes: queries (G, n, D), keys (G, T, D), values (G, T, Dv),
prior bias (G, T) (0 for plain tokens, beta of earlier compactions, -inf for padding).

For a query q the span contributes the mass Z(q) = sum_j exp(s q.K_j + prior_j) and the
local output y(q) = softmax(s q.K^T + prior) V. With row-normalised
Phi_ij = exp(s q_i.K_j + prior_j - m_i) the mass is b = Phi 1, and a subset S with
weights w reproduces it when Phi[:, S] w ~ b. docs/attention-matching.md walks through
the three steps (keys, beta, values).
"""

from __future__ import annotations

import abc
import contextlib
import math
import time
from dataclasses import dataclass

import torch


@dataclass
class Targets:
    """What a compact replacement must reproduce for the reference queries."""

    phi: torch.Tensor  # (G, n, T) exp(logits - row max)
    mass: torch.Tensor  # (G, n) phi.sum(-1)
    outputs: torch.Tensor  # (G, n, Dv) softmax(logits) @ V
    valid: torch.Tensor  # (G, T) bool, slots that are not padding


@dataclass
class Fit:
    """A compact replacement of a span, padded to the longest head."""

    index: torch.Tensor  # (G, t) long, positions of the kept keys in the span
    bias: torch.Tensor  # (G, t) fp32 beta; -inf on padding slots
    values: torch.Tensor  # (G, t, Dv) fp32


def span_logits(queries: torch.Tensor, keys: torch.Tensor, prior: torch.Tensor, scale: float) -> torch.Tensor:
    # (G, n, D) x (G, T, D) -> (G, n, T)
    return torch.baddbmm(prior.unsqueeze(1), queries, keys.transpose(1, 2), alpha=scale)


def targets(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, prior: torch.Tensor, scale: float
) -> Targets:
    """Mass and local output of the span for each query (the quantities to match)."""
    logits = span_logits(queries, keys, prior, scale)
    logits = logits - logits.amax(-1, keepdim=True)
    phi = logits.exp_()  # (G, n, T)
    mass = phi.sum(-1)  # (G, n)
    outputs = torch.bmm(phi, values) / mass.unsqueeze(-1)
    return Targets(phi=phi, mass=mass, outputs=outputs, valid=torch.isfinite(prior))


@dataclass
class Reduced:
    """What a top-k fit needs of the span's attention, from one pass over the (G, n, T) scores.

    The same quantities as `Targets`, without keeping Phi: a top-k selection needs only a
    score per key, and beta needs only the kept keys' columns, which `columns` rebuilds
    exactly from the row maxima.
    """

    rowmax: torch.Tensor  # (G, n) max logit per query (Phi's normaliser)
    mass: torch.Tensor  # (G, n)
    outputs: torch.Tensor  # (G, n, Dv)
    rms: torch.Tensor  # (G, T) RMS over queries of each key's attention probability
    peak: torch.Tensor  # (G, T) max over queries of each key's attention probability (KVzip's score)
    valid: torch.Tensor  # (G, T) bool


def reduce(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None, prior: torch.Tensor,
           scale: float, *, normaliser: torch.Tensor | None = None, block: int = 256) -> Reduced:
    """One pass over the span's scores (see `Reduced`), `block` queries at a time.

    Each block's (G, block, T) scores stay in the CPU's cache through the row max, exp,
    mass, output and per-key reductions, which are memory-bound on the whole (G, n, T).
    Without `values` only the scores are wanted: `outputs` is left empty (G, n, 0).

    `normaliser` (G, n), when given, is each query's log-sum-exp over everything it attended
    to (the whole cache, not only the span; NaN where unknown). The key scores (`peak`,
    `rms`) are then probabilities of that whole attention, as KVzip scores keys: a query
    that mostly looks elsewhere gives every span key a small score instead of spreading a
    full unit of probability over the span. The fit's quantities do not change.
    """
    G, n, _ = queries.shape
    rowmax, mass, outputs, peak, sumsq = [], [], [], None, None
    blocks = queries.split(block, dim=1)
    norms = normaliser.split(block, dim=1) if normaliser is not None else [None] * len(blocks)
    for rows, norm in zip(blocks, norms):
        logits = span_logits(rows, keys, prior, scale)  # (G, b, T)
        top = logits.amax(-1, keepdim=True)
        phi = logits.sub_(top).exp_()
        total = phi.sum(-1)  # (G, b)
        if values is not None:
            outputs.append(torch.bmm(phi, values) / total.unsqueeze(-1))
        probs = phi.mul_(_row_scale(total, top.squeeze(-1), norm).unsqueeze(-1))
        high = probs.amax(1)
        squares = probs.square_().sum(1)
        peak = high if peak is None else torch.maximum(peak, high)
        sumsq = squares if sumsq is None else sumsq.add_(squares)
        rowmax.append(top.squeeze(-1))
        mass.append(total)
    out = torch.cat(outputs, dim=1) if values is not None else queries.new_zeros(G, n, 0)
    return Reduced(rowmax=torch.cat(rowmax, dim=1), mass=torch.cat(mass, dim=1), outputs=out,
                   rms=sumsq.div_(n).sqrt_(), peak=peak, valid=torch.isfinite(prior))


def _row_scale(total: torch.Tensor, top: torch.Tensor, lse: torch.Tensor | None) -> torch.Tensor:
    """What turns a row of Phi into probabilities: 1 / mass over the span, or exp(top - lse) over all
    the query saw; never above the span's own (the span is part of all), and the span's where unknown."""
    span = total.reciprocal()
    if lse is None:
        return span
    whole = (top - lse).exp()
    return torch.where(torch.isnan(whole), span, torch.minimum(span, whole))


def columns(queries: torch.Tensor, keys: torch.Tensor, prior: torch.Tensor, scale: float,
            rowmax: torch.Tensor) -> torch.Tensor:
    """Phi's columns for `keys` (G, t, D) with bias `prior` (G, t): (G, n, t), as `targets` computes them."""
    return span_logits(queries, keys, prior, scale).sub_(rowmax.unsqueeze(-1)).exp_()


def budget_mask(budgets: torch.Tensor, width: int) -> torch.Tensor:
    """(G,) budgets -> (G, width) bool, True for the first budgets[g] slots."""
    return torch.arange(width, device=budgets.device).unsqueeze(0) < budgets.unsqueeze(1)


# ------------------------------------------------------------------------ key selection


def select_top(scores: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
    """Indices of the `width` highest scores per head, padding never chosen: (G, width)."""
    scores = scores.masked_fill(~valid, float("-inf"))
    return scores.topk(width, dim=-1).indices


def highest_attention_scores(t: Targets) -> torch.Tensor:
    """RMS over queries of each key's attention probability: (G, T)."""
    probs = t.phi / t.mass.unsqueeze(-1)
    return probs.pow(2).mean(1).sqrt()


def max_attention_scores(t: Targets) -> torch.Tensor:
    """Each key's largest attention probability over the queries (KVzip's score): (G, T)."""
    return (t.phi / t.mass.unsqueeze(-1)).amax(1)


def select_omp(
    t: Targets, width: int, *, per_step: int = 1, refit_every: int = 1, w_max: float = math.exp(7)
) -> torch.Tensor:
    """Greedy matching pursuit on the mass: the columns of Phi that best rebuild b.

    Keeps an incrementally grown Gram matrix and the picked columns so a refit costs one
    small solve, and computes the residual's correlation with every column once per refit.
    Returns (G, width) indices in the order they were picked (a prefix is a good
    smaller selection, which is how per-head budgets are applied).
    """
    G, n, T = t.phi.shape
    width = min(width, T)
    picked = torch.zeros(G, width, dtype=torch.long, device=t.phi.device)
    chosen = t.phi.new_zeros(G, n, width)  # the picked columns of Phi, in pick order
    taken = ~t.valid.clone()
    gram = t.phi.new_zeros(G, width, width)
    rhs = t.phi.new_zeros(G, width)
    residual = t.mass.clone()
    corr = None
    count, step = 0, 0
    while count < width:
        k = min(per_step, width - count)
        if corr is None:  # the residual changes only at a refit, and so does this (G, T) product
            # Raw correlation, not divided by the column's norm: that favours keys with a large
            # mass, which is what the attention needs (dividing cost 2x in KL at 10x, docs/LOG.md).
            corr = torch.bmm(residual.unsqueeze(1), t.phi).squeeze(1)  # (G, T)
        new = corr.masked_fill(taken, float("-inf")).topk(k, dim=-1).indices  # (G, k)
        chosen[:, :, count : count + k] = torch.gather(t.phi, 2, new.unsqueeze(1).expand(G, n, k))
        new_cols = chosen[:, :, count : count + k]  # (G, n, k)
        cross = torch.bmm(new_cols.transpose(1, 2), chosen[:, :, : count + k])  # (G, k, count+k)
        gram[:, count : count + k, : count + k] = cross
        gram[:, : count + k, count : count + k] = cross.transpose(1, 2)
        rhs[:, count : count + k] = torch.bmm(new_cols.transpose(1, 2), t.mass.unsqueeze(-1)).squeeze(-1)
        picked[:, count : count + k] = new
        taken.scatter_(1, new, True)
        count += k
        step += 1
        if step % refit_every == 0 or count == width:
            w = solve_weights(gram[:, :count, :count], rhs[:, :count], lo=0.0, hi=w_max, iters=2)
            residual = t.mass - torch.bmm(chosen[:, :, :count], w.unsqueeze(-1)).squeeze(-1)
            corr = None
    return picked


# ----------------------------------------------------------------------- weights (beta)


def solve_weights(
    gram: torch.Tensor,
    rhs: torch.Tensor,
    *,
    lo: float,
    hi: float,
    active: torch.Tensor | None = None,
    iters: int = 8,
) -> torch.Tensor:
    """Bounded least squares min ||A w - b|| with lo <= w <= hi, from A^T A and A^T b.

    An active-set iteration: solve on the free set, pin violators to their bound, repeat.
    `active` (G, k) bool marks the slots that exist; the others get w = 0.
    """
    G, k, _ = gram.shape
    if active is None:
        active = torch.ones(G, k, dtype=torch.bool, device=gram.device)
    ridge = 1e-6 * _active_mean(gram.diagonal(dim1=1, dim2=2), active).clamp_min(1e-30)  # (G,)
    fixed = ~active
    fixed_value = torch.zeros_like(rhs)
    w = torch.zeros_like(rhs)
    for _ in range(max(1, iters)):
        free = ~fixed
        # the free slots' block of the Gram matrix plus the ridge; an identity row for each fixed slot
        system = gram.masked_fill(~(free.unsqueeze(2) & free.unsqueeze(1)), 0.0)
        system.diagonal(dim1=1, dim2=2).add_(torch.where(free, ridge.unsqueeze(1), torch.ones_like(rhs)))
        b = torch.where(free, rhs - torch.bmm(gram, fixed_value.unsqueeze(-1)).squeeze(-1), fixed_value)
        w, info = torch.linalg.solve_ex(system, b)
        if bool((info != 0).any()):  # numerically singular (near-identical columns): a least-squares solution
            w = torch.linalg.lstsq(system, b.unsqueeze(-1)).solution.squeeze(-1)
        low, high = free & (w < lo), free & (w > hi)
        if not bool((low | high).any()):
            break
        fixed_value = torch.where(low, torch.full_like(w, lo), torch.where(high, torch.full_like(w, hi), fixed_value))
        fixed = fixed | low | high
    w = w.clamp(lo, hi)
    return torch.where(active, w, torch.zeros_like(w))


def _active_mean(diag: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Mean of each row's entries on its real slots (G,): a ridge scaled by it ignores padding."""
    return (diag * active).sum(-1) / active.sum(-1).clamp_min(1)


def fit_beta(t: Targets, index: torch.Tensor, active: torch.Tensor, *, lo: float, hi: float) -> torch.Tensor:
    """beta = log w for the kept keys; -inf on inactive (padding) slots. (G, t) fp32."""
    G, n, _ = t.phi.shape
    cols = torch.gather(t.phi, 2, index.unsqueeze(1).expand(G, n, index.shape[1]))  # (G, n, t)
    return beta_from_columns(cols, t.mass, active, lo=lo, hi=hi)


def beta_from_columns(cols: torch.Tensor, mass: torch.Tensor, active: torch.Tensor, *, lo: float,
                      hi: float) -> torch.Tensor:
    """`fit_beta` from the kept keys' columns of Phi (G, n, t) and the mass (G, n)."""
    gram = torch.bmm(cols.transpose(1, 2), cols)
    rhs = torch.bmm(cols.transpose(1, 2), mass.unsqueeze(-1)).squeeze(-1)
    w = solve_weights(gram, rhs, lo=lo, hi=hi, active=active)
    return torch.where(active, w.clamp_min(1e-30).log(), torch.full_like(w, float("-inf")))


# ------------------------------------------------------------------------------ values


def fit_values(
    queries: torch.Tensor,
    kept_keys: torch.Tensor,
    beta: torch.Tensor,
    outputs: torch.Tensor,
    scale: float,
    *,
    ridge: float = 1e-4,
) -> torch.Tensor:
    """Least-squares values C2 so that softmax(s Q C1^T + beta) C2 ~ the span's outputs."""
    x = torch.softmax(span_logits(queries, kept_keys, beta, scale), dim=-1)  # (G, n, t)
    gram = torch.bmm(x.transpose(1, 2), x)  # (G, t, t)
    diag = gram.diagonal(dim1=1, dim2=2)
    lam = ridge * _active_mean(diag, torch.isfinite(beta)).clamp_min(1e-12)  # (G,)
    gram = gram + torch.diag_embed(lam.unsqueeze(-1).expand_as(diag))
    rhs = torch.bmm(x.transpose(1, 2), outputs)  # (G, t, Dv)
    chol, info = torch.linalg.cholesky_ex(gram)
    if bool((info == 0).all()):
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.lstsq(gram, rhs).solution


# ---------------------------------------------------------------------------- one span


class SpanScores:
    """One layer's span and its reference queries, with the attention quantities a key
    selection reads, each computed once: `probs` (G, n, T), the one-pass `summary`
    (`Reduced`), or all of Phi (`targets`). The fit reuses whichever was computed.

    `normaliser` (G, n), when given, makes the summary's key scores probabilities of each
    query's whole attention (see `reduce`); `at_start` says the span begins at token 0.
    """

    def __init__(self, queries: torch.Tensor | None, keys: torch.Tensor, values: torch.Tensor, prior: torch.Tensor,
                 scale: float, *, normaliser: torch.Tensor | None = None, at_start: bool = True,
                 summary: Reduced | None = None, phases: dict[str, float] | None = None):
        self.queries = None if queries is None else queries.float()
        self.keys, self.values, self.prior = keys.float(), values.float(), prior.float()
        self.scale, self.normaliser, self.at_start, self.phases = scale, normaliser, at_start, phases
        self._summary, self._targets = summary, None
        self.valid = torch.isfinite(self.prior)  # (G, T) slots that are not padding

    def compute(self, what: str | None) -> None:
        """Compute what a selection reads ("probs", "summary", "targets" or None) before it runs."""
        if what == "summary":
            self.summary()
        elif what == "targets":
            self.targets()

    def summary(self) -> Reduced:
        if self._summary is None:
            with timed(self.phases, "targets"):
                self._summary = reduce(self._asked(), self.keys, self.values, self.prior, self.scale,
                                       normaliser=self.normaliser)
        return self._summary

    def targets(self) -> Targets:
        if self._targets is None:
            with timed(self.phases, "targets"):
                self._targets = targets(self._asked(), self.keys, self.values, self.prior, self.scale)
        return self._targets

    def probs(self) -> torch.Tensor:
        """Each reference query's attention probabilities over the span: (G, n, T)."""
        return torch.softmax(span_logits(self._asked(), self.keys, self.prior, self.scale), dim=-1)

    def _asked(self) -> torch.Tensor:
        if self.queries is None:
            raise ValueError("this key selection needs reference queries, and none were given")
        return self.queries


class Selection(abc.ABC):
    """A key selection: `select(span, width)` -> (G, width) long positions of the kept slots.

    `scores` names what it reads of the `SpanScores` (None: positions only, no queries);
    `beta_bounds` bounds the weights w = exp(beta) that the fit may give the kept keys.
    """

    name = "selection"
    scores: str | None = "summary"
    beta_bounds = (math.exp(-3), math.exp(3))
    window = 0  # > 0: its queries are the span's last `window` tokens read again, not a repeat pass

    @abc.abstractmethod
    def select(self, span: SpanScores, width: int) -> torch.Tensor:
        """The kept positions per head, (G, width) long, never a padding slot when a real one is left."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TopAttention(Selection):
    """The keys with the highest attention: RMS over the queries ("rms") or the max ("peak", KVzip's)."""

    def __init__(self, score: str = "rms"):
        if score not in ("rms", "peak"):
            raise ValueError(f"TopAttention score must be 'rms' or 'peak', got {score!r}")
        self.score = score
        self.name = "highest" if score == "rms" else "max"

    def select(self, span: SpanScores, width: int) -> torch.Tensor:
        summary = span.summary()
        return select_top(summary.rms if self.score == "rms" else summary.peak, span.valid, width)

    def __repr__(self) -> str:
        return f"TopAttention({self.score!r})"


class MatchingPursuit(Selection):
    """OMP on the span's mass (`select_omp`): `per_step` keys per step, a refit every `refit_every` steps."""

    name = "omp"
    scores = "targets"
    beta_bounds = (math.exp(-7), math.exp(7))

    def __init__(self, per_step: int = 1, refit_every: int = 1):
        self.per_step, self.refit_every = per_step, refit_every

    def select(self, span: SpanScores, width: int) -> torch.Tensor:
        return select_omp(span.targets(), width, per_step=self.per_step, refit_every=self.refit_every)

    def __repr__(self) -> str:
        return f"MatchingPursuit(per_step={self.per_step}, refit_every={self.refit_every})"


def named_selection(name: str, *, per_step: int = 1, refit_every: int = 1) -> Selection:
    """The AM key selection called `name`: "omp", "highest" (RMS attention) or "max" (peak attention)."""
    if name == "omp":
        return MatchingPursuit(per_step, refit_every)
    if name in ("highest", "max"):
        return TopAttention("rms" if name == "highest" else "peak")
    raise ValueError(f"unknown key selection {name!r}; choose 'omp', 'highest' or 'max'")


def match(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    prior: torch.Tensor,
    scale: float,
    budgets: torch.Tensor,
    *,
    selection: Selection | str = "omp",
    per_step: int = 1,
    refit_every: int = 1,
    w_bounds: tuple[float, float] | None = None,
    phases: dict[str, float] | None = None,
    reduced: Reduced | None = None,
    normaliser: torch.Tensor | None = None,
) -> Fit:
    """Attention-match one span for G heads with per-head budgets (G,) long.

    `selection` picks the keys (a `Selection`, or a name for `named_selection` with
    `per_step` and `refit_every`). `phases`, when given, accumulates the seconds of each
    step: "targets", "selection", "beta" and "values". A top-k selection runs on
    `reduce`'s one pass (pass `reduced` when it was already made for these queries, and
    `normaliser` to score keys over the whole context); OMP needs all of Phi.
    """
    if isinstance(selection, str):
        selection = named_selection(selection, per_step=per_step, refit_every=refit_every)
    span = SpanScores(queries, keys, values, prior, scale, normaliser=normaliser, summary=reduced, phases=phases)
    span.compute(selection.scores)
    width = int(budgets.max())
    with timed(phases, "selection"):
        index = selection.select(span, width)
    return fit(span, index, budgets, bounds=w_bounds or selection.beta_bounds)


def fit(span: SpanScores, index: torch.Tensor, budgets: torch.Tensor, *, bounds: tuple[float, float]) -> Fit:
    """Beta (NNLS on the mass) and least-squares values for the kept keys `index` (G, width).

    Uses all of Phi when the selection computed it, else the one-pass summary (the same
    columns, rebuilt from the row maxima). The prior bias of a kept key (an earlier beta)
    is folded into the new beta.

    The solves cost about n t^2 per head at width t, so heads whose budgets differ widely
    (per-head budgets: one head may keep five times what another does) are solved in
    groups of similar budgets, each at its own width, rather than all padded to the widest.
    """
    groups = budget_groups(budgets)
    if len(groups) == 1:
        return _fit_heads(span, index, budgets, bounds, None)
    heads, width = index.shape
    bias = torch.full((heads, width), float("-inf"), device=index.device)
    values = torch.zeros(heads, width, span.values.shape[-1], device=index.device)
    for rows in groups:
        part = int(budgets[rows].max())
        got = _fit_heads(span, index[rows, :part], budgets[rows], bounds, rows)
        bias[rows, :part], values[rows, :part] = got.bias, got.values
    return Fit(index=index, bias=bias, values=values)


def budget_groups(budgets: torch.Tensor, *, spread: float = 1.5) -> list[torch.Tensor]:
    """Head indices grouped so that within a group the widest budget is at most `spread` times
    the narrowest (one group when they all are)."""
    order = torch.argsort(budgets)
    groups, current = [], [int(order[0])]
    for head in order[1:].tolist():
        if int(budgets[head]) > spread * max(1, int(budgets[current[0]])):
            groups.append(torch.tensor(current))
            current = []
        current.append(head)
    groups.append(torch.tensor(current))
    return groups


def _fit_heads(span: SpanScores, index: torch.Tensor, budgets: torch.Tensor, bounds: tuple[float, float],
               rows: torch.Tensor | None) -> Fit:
    """`fit` for the heads `rows` of the span (all when None), their kept keys `index`."""
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t if rows is None else t[rows]

    width = index.shape[1]
    active = budget_mask(budgets, width)
    keys, prior, queries = pick(span.keys), pick(span.prior), pick(span.queries)
    gathered = index.unsqueeze(-1).expand(-1, -1, keys.shape[-1])
    kept, kept_prior = torch.gather(keys, 1, gathered), torch.gather(prior, 1, index)
    lo, hi = bounds
    with timed(span.phases, "beta"):
        if span._targets is not None:
            t = span._targets
            t = Targets(pick(t.phi), pick(t.mass), pick(t.outputs), pick(t.valid))
            mass, outputs = t.mass, t.outputs
            beta = fit_beta(t, index, active, lo=lo, hi=hi)
        else:
            summary = span.summary()
            mass, outputs = pick(summary.mass), pick(summary.outputs)
            cols = columns(queries, kept, kept_prior, span.scale, pick(summary.rowmax))
            beta = beta_from_columns(cols, mass, active, lo=lo, hi=hi)
    with timed(span.phases, "values"):
        beta = beta + kept_prior.masked_fill(~active, 0.0)
        fitted = fit_values(queries, kept, beta, outputs, span.scale)
        fitted = fitted.masked_fill(~active.unsqueeze(-1), 0.0)
    return Fit(index=index, bias=beta, values=fitted)


@contextlib.contextmanager
def timed(phases: dict[str, float] | None, name: str):
    """Add the block's wall seconds to phases[name] (nothing when phases is None)."""
    if phases is None:
        yield
        return
    began = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - began
