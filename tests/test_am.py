"""The Attention Matching algebra on synthetic heads."""

import math

import pytest
import torch

from agentmem import am


def heads(G=3, T=64, D=16, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(G, T, D, generator=g)
    values = torch.randn(G, T, D, generator=g)
    queries = torch.randn(G, 2 * n, D, generator=g)
    return keys, values, queries[:, :n], queries[:, n:]


def attention(q, k, v, bias, scale):
    return torch.softmax(am.span_logits(q, k, bias, scale), -1) @ v


def rel_error(fit, keys, values, held_out, scale):
    kept = torch.gather(keys, 1, fit.index.unsqueeze(-1).expand(-1, -1, keys.shape[-1]))
    ref = attention(held_out, keys, values, torch.zeros(keys.shape[:2]), scale)
    out = attention(held_out, kept, fit.values, fit.bias, scale)
    return ((out - ref).norm() / ref.norm()).item()


def test_full_budget_reproduces_attention():
    keys, values, fit_q, held = heads()
    scale = 0.25
    fit = am.match(fit_q, keys, values, torch.zeros(3, 64), scale, torch.full((3,), 64))
    assert rel_error(fit, keys, values, held, scale) < 1e-2


def test_matching_beats_keeping_keys_without_weights():
    keys, values, fit_q, held = heads(T=128)
    scale = 0.25
    budgets = torch.full((3,), 16)
    fit = am.match(fit_q, keys, values, torch.zeros(3, 128), scale, budgets)
    plain = am.Fit(index=fit.index, bias=torch.zeros_like(fit.bias),
                   values=torch.gather(values, 1, fit.index.unsqueeze(-1).expand(-1, -1, 16)))
    assert rel_error(fit, keys, values, held, scale) < 0.7 * rel_error(plain, keys, values, held, scale)


def test_per_head_budgets_pad_with_minus_inf():
    keys, values, fit_q, _ = heads()
    fit = am.match(fit_q, keys, values, torch.zeros(3, 64), 0.25, torch.tensor([4, 8, 2]))
    assert fit.index.shape == (3, 8)
    assert torch.isinf(fit.bias).sum(-1).tolist() == [4, 0, 6]
    assert torch.isfinite(fit.values).all()


def test_prior_bias_is_honoured():
    """Doubling a key with beta = -log 2 each is the same span; matching sees through it."""
    keys, values, fit_q, held = heads(T=32)
    scale = 0.25
    twin_keys, twin_values = torch.cat([keys, keys], 1), torch.cat([values, values], 1)
    prior = torch.full((3, 64), -math.log(2.0))
    fit = am.match(fit_q, twin_keys, twin_values, prior, scale, torch.full((3,), 32))
    assert rel_error(fit, keys, values, held, scale) < 1e-2


def test_weights_stay_in_bounds():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 50, 6, generator=g)
    b = torch.rand(2, 50, generator=g) * 10
    gram, rhs = a.transpose(1, 2) @ a, (a.transpose(1, 2) @ b.unsqueeze(-1)).squeeze(-1)
    w = am.solve_weights(gram, rhs, lo=0.5, hi=2.0)
    assert (w >= 0.5 - 1e-6).all() and (w <= 2.0 + 1e-6).all()


def _normal_equations(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return a.transpose(1, 2) @ a, (a.transpose(1, 2) @ b.unsqueeze(-1)).squeeze(-1)


def test_weights_inside_their_bounds_are_the_least_squares_solution():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 80, 7, generator=g, dtype=torch.float64)
    truth = 1.0 + 0.5 * torch.rand(3, 7, generator=g, dtype=torch.float64)
    b = (a @ truth.unsqueeze(-1)).squeeze(-1)
    w = am.solve_weights(*_normal_equations(a, b), lo=0.1, hi=10.0)
    torch.testing.assert_close(w, truth, rtol=1e-4, atol=1e-6)


def test_a_weight_pushed_past_its_bound_is_pinned_and_the_rest_refit():
    """One active-set step: the violator sits at its bound, the others solve the rest exactly."""
    g = torch.Generator().manual_seed(2)
    a = torch.rand(1, 60, 4, generator=g, dtype=torch.float64)
    b = (a @ torch.tensor([[[2.0], [1.0], [-3.0], [1.5]]], dtype=torch.float64)).squeeze(-1)
    w = am.solve_weights(*_normal_equations(a, b), lo=0.0, hi=10.0)
    assert w[0, 2] == 0.0
    free = [0, 1, 3]
    rest = torch.linalg.lstsq(a[0][:, free], b[0]).solution  # w[2] = 0 contributes nothing
    torch.testing.assert_close(w[0, free], rest, rtol=1e-4, atol=1e-6)


def test_weights_of_identical_columns_and_padding_slots():
    """Duplicate keys make the Gram matrix singular: the weights stay finite and in bounds;
    slots that do not exist get 0."""
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 40, 5, generator=g)
    a[:, :, 4] = a[:, :, 3]
    b = torch.rand(2, 40, generator=g)
    active = torch.tensor([[True] * 5, [True, True, True, True, False]])
    w = am.solve_weights(*_normal_equations(a, b), lo=0.05, hi=20.0, active=active)
    assert torch.isfinite(w).all()
    assert (w[active] >= 0.05 - 1e-6).all() and (w[active] <= 20.0 + 1e-6).all()
    assert w[1, 4] == 0.0


@pytest.mark.parametrize("selection", ["highest", "max"])
def test_the_one_pass_top_k_fit_equals_the_fit_on_all_of_phi(selection):
    """`reduce` keeps no Phi, yet selects, weighs and fits exactly as `targets` does."""
    torch.manual_seed(0)
    G, n, T, D = 3, 96, 80, 16
    q, k, v = torch.randn(G, n, D), torch.randn(G, T, D), torch.randn(G, T, 8)
    prior = torch.randn(G, T).clamp(-2, 2)
    prior[1, -5:] = float("-inf")  # padding of a shorter head
    budgets = torch.tensor([10, 7, 12])
    t = am.targets(q, k, v, prior, 0.3)
    scores = am.highest_attention_scores(t) if selection == "highest" else am.max_attention_scores(t)
    index = am.select_top(scores, t.valid, 12)
    active = am.budget_mask(budgets, 12)
    beta = am.fit_beta(t, index, active, lo=math.exp(-3), hi=math.exp(3)) + torch.gather(prior, 1, index).masked_fill(
        ~active, 0.0)
    fit = am.match(q, k, v, prior, 0.3, budgets, selection=selection)
    assert torch.equal(fit.index, index)
    torch.testing.assert_close(fit.bias, beta, rtol=1e-4, atol=1e-5)
    reduced = am.reduce(q, k, v, prior, 0.3)
    torch.testing.assert_close(reduced.rms, am.highest_attention_scores(t), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(reduced.peak, am.max_attention_scores(t), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(reduced.outputs, t.outputs, rtol=1e-4, atol=1e-5)
    again = am.match(q, k, v, prior, 0.3, budgets, selection=selection, reduced=reduced)
    assert torch.equal(again.index, fit.index) and torch.equal(again.values, fit.values)


@pytest.mark.parametrize("selection", ["highest", "max"])
def test_heads_of_very_different_budgets_fit_as_if_padded_together(selection, monkeypatch):
    """Grouping heads by budget (each group solved at its own width) changes no fitted number: the
    ridges scale with a head's real slots, not its padding."""
    keys, values, fit_q, _ = heads(G=4, T=96)
    prior = torch.zeros(4, 96)
    budgets = torch.tensor([40, 3, 8, 36])
    assert [g.tolist() for g in am.budget_groups(budgets)] == [[1], [2], [3, 0]]
    grouped = am.match(fit_q, keys, values, prior, 0.25, budgets, selection=selection)
    monkeypatch.setattr(am, "budget_groups", lambda b, **_: [torch.arange(len(b))])
    together = am.match(fit_q, keys, values, prior, 0.25, budgets, selection=selection)
    assert torch.equal(grouped.index, together.index)
    assert torch.equal(torch.isinf(grouped.bias), torch.isinf(together.bias))
    finite = torch.isfinite(together.bias)
    # beta within the fp32 solve's own error (up to 3e-5 against float64 here); a ridge scaled by
    # padding moves the values by 1e-3 to 1e-2, which the second check catches
    torch.testing.assert_close(grouped.bias[finite], together.bias[finite], rtol=1e-4, atol=5e-5)
    torch.testing.assert_close(grouped.values, together.values, rtol=1e-4, atol=1e-4)
