"""Unit tests of the math core: no model, tensors only."""
import math

import pytest
import torch

from layergrad import spectra as S

SHAPES = [  # (t, i, o): short sequences, long sequences, square, a single token
    (5, 16, 8), (40, 16, 8), (7, 7, 7), (1, 4, 6), (12, 9, 30), (3, 50, 50),
]


@pytest.mark.parametrize("t,i,o", SHAPES, ids=[f"t{t}-i{i}-o{o}" for t, i, o in SHAPES])
def test_factored_equals_dense_oracle(t, i, o):
    g = torch.Generator().manual_seed(t * 1000 + i * 10 + o)
    X = torch.randn(4, t, i, dtype=torch.float64, generator=g)
    D = torch.randn(4, t, o, dtype=torch.float64, generator=g)
    dense = S.dense_svdvals(X, D)
    fact = S.factored_svdvals(X, D)
    r = fact.shape[-1]
    assert r == min(t, i, o)
    torch.testing.assert_close(fact, dense[:, :r], rtol=1e-10, atol=1e-12)
    # beyond the rank everything is zero
    assert dense[:, r:].abs().max().item() < 1e-10 if dense.shape[-1] > r else True


def test_zero_padding_rows_change_nothing():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2, 6, 10, dtype=torch.float64, generator=g)
    D = torch.randn(2, 6, 5, dtype=torch.float64, generator=g)
    Xp = torch.cat([X, torch.zeros(2, 4, 10, dtype=torch.float64)], 1)
    Dp = torch.cat([D, torch.zeros(2, 4, 5, dtype=torch.float64)], 1)
    torch.testing.assert_close(S.factored_svdvals(Xp, Dp)[:, :5], S.factored_svdvals(X, D), rtol=1e-10, atol=1e-12)


def test_metrics_of_known_spectrum():
    s = torch.tensor([[4.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    st = S.spectrum_stats(s, full_rank=4)
    assert st.nuclear.item() == 8.0
    assert st.spectral.item() == 4.0
    assert st.frobenius.item() == pytest.approx(math.sqrt(24))
    assert st.min_sigma.item() == 0.0
    assert st.top1_share.item() == 0.5
    p = [0.5, 0.25, 0.25]
    assert st.effective_rank.item() == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)))
    assert st.stable_rank.item() == pytest.approx(24 / 16)


def test_min_sigma_is_zero_below_full_rank_and_smallest_at_full_rank():
    s = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    assert S.spectrum_stats(s, full_rank=5).min_sigma.item() == 0.0
    assert S.spectrum_stats(s, full_rank=2).min_sigma.item() == 1.0


def test_effective_rank_of_flat_spectrum_is_its_length():
    s = torch.ones(1, 7, dtype=torch.float64)
    assert S.spectrum_stats(s, 7).effective_rank.item() == pytest.approx(7.0)


def test_zero_gradient_gives_nan_ratios_not_fake_numbers():
    """A zero gradient beside a nonzero one in the same batch: the zero row's ratios are NaN (never an
    effective rank of 1), with a reason; the other row is untouched."""
    s = torch.tensor([[0.0, 0.0, 0.0], [2.0, 1.0, 1.0]], dtype=torch.float64)
    st = S.spectrum_stats(s, 3)
    assert st.nuclear[0].item() == 0.0 and st.spectral[0].item() == 0.0 and st.min_sigma[0].item() == 0.0
    assert math.isnan(st.top1_share[0].item()) and math.isnan(st.stable_rank[0].item())
    assert math.isnan(st.effective_rank[0].item())
    assert st.effective_rank[1].item() == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))))
    assert S.undefined_reason(0.0) == S.ZERO_GRADIENT and "effective_rank" in S.ZERO_GRADIENT
    assert S.undefined_reason(4.0) is None


def test_rank_bound_gives_exact_zeros_and_min_sigma():
    """Values past an example's own rank bound are exact zeros, and min_sigma is 0 below full rank."""
    s = torch.tensor([[3.0, 2.0, 1e-9, 1e-9], [3.0, 2.0, 1.0, 0.5]], dtype=torch.float64)
    st = S.spectrum_stats(s, 4, rank=torch.tensor([2, 4]))
    assert st.spectrum[0].tolist() == [3.0, 2.0, 0.0, 0.0] and st.nuclear[0].item() == 5.0
    assert st.min_sigma[0].item() == 0.0 and st.min_sigma[1].item() == 0.5


def test_nonzero_terms_counts_tokens_with_both_factors_nonzero():
    X = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0], [1.0, 1.0]])
    D = torch.tensor([[1.0], [5.0], [0.0], [1.0]])
    assert int(S.nonzero_terms(X, D)) == 2


def test_elementwise_stats_equal_dense():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(3, 5, 6, dtype=torch.float64, generator=g)
    D = torch.randn(3, 5, 4, dtype=torch.float64, generator=g)
    G = S.dense_gradient(X, D)
    mean, mx, mn = S.elementwise_stats(X, D)
    torch.testing.assert_close(mean, G.mean(dim=(-2, -1)))
    torch.testing.assert_close(mx, G.amax(dim=(-2, -1)))
    torch.testing.assert_close(mn, G.amin(dim=(-2, -1)))


def test_cosine_from_factors_equals_dense():
    g = torch.Generator().manual_seed(4)
    Xa, Xb = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=g)
    Da, Db = torch.randn(2, 2, 5, 4, dtype=torch.float64, generator=g)
    Ga, Gb = S.dense_gradient(Xa, Da), S.dense_gradient(Xb, Db)
    want = (Ga * Gb).sum((-2, -1)) / (Ga.norm(dim=(-2, -1)) * Gb.norm(dim=(-2, -1)))
    a, b = S.InnerOperand(Xa, Da, "gram"), S.InnerOperand(Xb, Db, "gram")  # from the factors
    torch.testing.assert_close(a.cosine(b), want)
    torch.testing.assert_close(a.cosine(a), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("route", ["gram", "dense"])
def test_inner_operand_routes_equal_an_einsum_oracle(route):
    from layergrad.spectra.products import InnerOperand

    g = torch.Generator().manual_seed(5)
    Xa, Xb = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=g)
    Da, Db = torch.randn(2, 3, 7, 4, dtype=torch.float64, generator=g)
    Xa[1, 5:], Da[1, 5:], Xb[1, 5:], Db[1, 5:] = 0, 0, 0, 0  # a padded example
    oracle = {k: torch.einsum("nto,nti->noi", D, X) for k, (X, D) in {"a": (Xa, Da), "b": (Xb, Db)}.items()}
    want = torch.einsum("noi,noi->n", oracle["a"], oracle["b"]) / (
        torch.einsum("noi,noi->n", oracle["a"], oracle["a"]).sqrt() * torch.einsum("noi,noi->n", oracle["b"], oracle["b"]).sqrt())
    a, b = InnerOperand(Xa, Da, route), InnerOperand(Xb, Db, route)
    torch.testing.assert_close(a.cosine(b), want, rtol=1e-12, atol=1e-14)
    mixed = InnerOperand(Xb, Db, "gram" if route == "dense" else "dense")  # one of each: still exact
    torch.testing.assert_close(a.cosine(mixed), want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.sq, torch.einsum("noi,noi->n", oracle["a"], oracle["a"]), rtol=1e-12, atol=1e-14)


def test_inner_route_forms_the_dense_gradient_only_for_long_texts():
    from layergrad.spectra.products import inner_route

    assert inner_route(50, 576, 576, pairs=3) == "gram"      # (t, t) matrices are small
    assert inner_route(4096, 576, 576, pairs=3) == "dense"   # 4096^2 x 1152 per product vs 576^2 after one 4096 x 576^2
    assert inner_route(100, 576, 576, pairs=1) == "gram"
    assert inner_route(400, 576, 576, pairs=60) == "dense"   # every pair of layers: many products per module
    assert inner_route(100, 576, 576, pairs=60) == "gram"    # ... but a 576 x 576 gradient is larger than 100 x (576 + 576) factors


def test_choose_method_prefers_factored_for_short_and_dense_for_long():
    assert S.choose_method(50, 2048, 2048) == "factored"
    assert S.choose_method(8000, 64, 64) == "dense"


def test_fp32_factored_close_to_fp64_oracle():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(2, 30, 64, dtype=torch.float64, generator=g)
    D = torch.randn(2, 30, 48, dtype=torch.float64, generator=g) * 1e-4
    want = S.dense_svdvals(X, D)[:, :30]
    got = S.factored_svdvals(X.float(), D.float()).double()
    assert ((got - want).abs().max() / want.max()).item() < 1e-5
