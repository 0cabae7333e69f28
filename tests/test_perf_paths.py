"""The fast paths held to the dense oracle: the float64 Gram path, its pieces, and its plumbing."""
from __future__ import annotations

import pytest
import torch

from conftest import ARCHS, make_model, write_json
from layergrad.run import engine
from layergrad import spectra as S
from layergrad.config import RunConfig
from layergrad.measure.measurer import Measurer, _each_example
from layergrad.inputs.targets import Target, find_targets
from layergrad.store import load_results
from helpers import loaded, oracle_for

# The Gram path squares singular values in float64: s_k is off by at most ~sqrt(u) * s_1 ~ 1e-8 s_1.
GRAM_ATOL = 5e-8

SHAPES = [(5, 16, 8), (40, 16, 8), (7, 7, 7), (1, 4, 6), (12, 9, 30), (3, 50, 50), (300, 280, 320), (270, 64, 300)]


def _pair(t, i, o, seed, decay=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(t, i, dtype=torch.float64, generator=g)
    if decay is not None:  # inputs whose singular values fall geometrically to `decay`: a wide-ranging spectrum
        U, _, Vh = torch.linalg.svd(X, full_matrices=False)
        X = U @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(decay)).item(), U.shape[-1], dtype=torch.float64)) @ Vh
    D = torch.randn(t, o, dtype=torch.float64, generator=g)
    return X.to(dtype), D.to(dtype)


def _max_err(s, want):
    return ((s.double() - want[: s.shape[-1]]).abs().max() / want[0]).item()


@pytest.mark.parametrize("side", S.GRAM_SIDES)
@pytest.mark.parametrize("t,i,o", SHAPES, ids=[f"t{t}-i{i}-o{o}" for t, i, o in SHAPES])
def test_every_gram_side_equals_dense_oracle(t, i, o, side):
    X, D = _pair(t, i, o, seed=t + i + o)
    want = S.dense_svdvals(X, D)
    s = S.gram_svdvals(X, D, side)
    assert s.shape == (min(t, i, o),) and s.dtype == torch.float64
    assert bool((s[:-1] >= s[1:]).all())  # descending
    assert _max_err(s, want) < GRAM_ATOL
    assert s.sum().item() == pytest.approx(want.sum().item(), rel=1e-9)


@pytest.mark.parametrize("side", S.GRAM_SIDES)
def test_gram_path_on_a_spectrum_spanning_six_decades(side):
    X, D = _pair(40, 64, 48, seed=7, decay=1e-6)
    want = S.dense_svdvals(X, D)
    assert want[-1] / want[0] < 1e-5  # the case is hard: the smallest values are tiny
    s = S.gram_svdvals(X, D, side)
    assert _max_err(s, want) < GRAM_ATOL
    assert s.sum().item() == pytest.approx(want.sum().item(), rel=1e-8)


def test_float32_inputs_gram_path_is_at_least_as_exact_as_float32_qr():
    """From float32 X, D (what a float32 model captures) against the float64 oracle of those same values."""
    X, D = _pair(60, 96, 80, seed=3, decay=1e-3, dtype=torch.float32)
    want = S.dense_svdvals(X.double(), D.double())
    gram = S.gram_svdvals(X, D, "token")
    qr = S.factored_svdvals(X.unsqueeze(0), D.unsqueeze(0))[0]
    assert _max_err(gram, want) < GRAM_ATOL
    assert _max_err(gram, want) <= _max_err(qr, want)
    nuc = lambda s: abs(s.double().sum().item() - want.sum().item()) / want.sum().item()  # noqa: E731
    assert nuc(gram) < 1e-9 and nuc(gram) <= nuc(qr)


def test_singular_input_falls_back_from_cholesky_and_stays_exact():
    """Repeated tokens in layer 0 give identical rows of X: K_X is singular, Cholesky may break down."""
    X, D = _pair(12, 20, 16, seed=11)
    X[5] = 0.0  # a zero row makes the Cholesky breakdown certain (a zero pivot)
    X[7] = X[3]  # a repeated row
    F, lower = S.psd_factor(S.gram(X))
    assert lower is False
    torch.testing.assert_close(F @ F.mT, S.gram(X), rtol=0, atol=1e-12 * S.gram(X).abs().max().item())
    want = S.dense_svdvals(X, D)
    assert _max_err(S.gram_svdvals(X, D, "token"), want) < GRAM_ATOL


@pytest.mark.parametrize("t", [100, 300, 301])
def test_blocked_gram_and_congruence_equal_plain_products(t):
    g = torch.Generator().manual_seed(t)
    A = torch.randn(t, 2500, dtype=torch.float32, generator=g)  # more columns than one conversion block
    want = A.double() @ A.double().mT
    K = S.gram(A)
    assert K.dtype == torch.float64
    torch.testing.assert_close(K, want, rtol=1e-12, atol=1e-9)
    F = torch.linalg.cholesky(want + t * torch.eye(t, dtype=torch.float64))
    M = torch.randn(t, t, dtype=torch.float64, generator=g)
    M = M + M.mT
    for lower in (True, False):
        torch.testing.assert_close(S.congruence(F, M, lower), F.mT @ M @ F, rtol=1e-12, atol=1e-9)


def test_gram_side_picks_the_small_matrix_at_the_extremes():
    assert S.gram_side(500, 2048, 2048, x_shared_by=3) == "token"  # q of a wide model: t x t
    assert S.gram_side(500, 2048, 256, x_shared_by=3) == "out"  # k, v with grouped-query attention: o x o
    assert S.gram_side(4000, 64, 48) == "product"  # far more tokens than features: G itself is small
    assert S.gram_side(4000, 64, 2048) in ("in", "product")  # i x i
    # an input's factorisation already paid for makes the token side cheaper, never dearer
    for t, i, o in [(300, 576, 576), (700, 576, 1536), (200, 2048, 5632)]:
        if S.gram_side(t, i, o, x_shared_by=2) == "token":
            assert S.gram_side(t, i, o, x_shared_by=2, have_k_x=True, have_f_x=True) == "token"


def test_choose_method_constants_keep_the_extremes():
    assert S.choose_method(50, 2048, 2048) == "factored"
    assert S.choose_method(8000, 64, 64) == "dense"


# ---------------------------------------------------------------------------------------
# The sink: padding, a module called twice, examples in parallel
# ---------------------------------------------------------------------------------------


def _measure(X, D, mask, method, threads=None, o=None, i=None, calls=1):
    t = Target("m", None, 0, "q", o or D.shape[-1], i or X.shape[-1], "linear")
    meas = Measurer(stats_dtype=torch.float32, spectrum_k=None, method=method)
    meas.begin(mask, {("x",): 1}, {})
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        meas.accept(t, X, D, ("x",))
    finally:
        torch.set_num_threads(before)
    return meas.results["m"]


@pytest.mark.parametrize("threads", [1, 2])
def test_sink_gram_path_equals_oracle_per_example_with_padding(threads):
    g = torch.Generator().manual_seed(0)
    lengths = [9, 4, 7]
    n, t, i, o = len(lengths), max(lengths), 12, 10
    X = torch.randn(n, t, i, dtype=torch.float64, generator=g)  # padding rows are NOT zero: the sink must ignore them
    D = torch.randn(n, t, o, dtype=torch.float64, generator=g)
    mask = torch.zeros(n, t, dtype=torch.long)
    for b, L in enumerate(lengths):
        mask[b, :L] = 1
    res = _measure(X, D, mask, "gram", threads)
    assert res.method == "gram"
    for b, L in enumerate(lengths):
        want = S.dense_svdvals(X[b, :L], D[b, :L])
        assert res.stats["nuclear"][b].item() == pytest.approx(want.sum().item(), rel=1e-9)
        assert res.stats["spectral"][b].item() == pytest.approx(want[0].item(), rel=1e-9)
        assert res.stats["min_sigma"][b].item() == pytest.approx(want[min(i, o) - 1].item() if L >= min(i, o) else 0.0, abs=GRAM_ATOL * want[0].item())
        assert abs(res.spectrum[b, :L].double() - want[:L]).max().item() < 1e-6 * want[0].item()
        assert res.rank[b].item() == min(L, i, o)
        assert res.spectrum[b, res.rank[b]:].abs().sum().item() == 0.0  # nothing past the example's own rank bound


def test_sink_gram_path_for_a_module_called_twice_sums_both_calls():
    """Calls concatenated on the token axis with the mask repeated: real rows are not a prefix."""
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    X = torch.randn(2, 8, 5, dtype=torch.float64, generator=g)
    D = torch.randn(2, 8, 6, dtype=torch.float64, generator=g)
    res = _measure(X, D, mask, "gram", threads=2)
    for b in range(2):
        rows = torch.nonzero(mask[b].repeat(2)).flatten()
        want = S.dense_svdvals(X[b, rows], D[b, rows])
        assert res.stats["nuclear"][b].item() == pytest.approx(want.sum().item(), rel=1e-9)


def test_examples_in_parallel_restore_the_thread_count_and_raise():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        _each_example(lambda b: seen.append((b, torch.get_num_threads())), 3, torch.device("cpu"), [2, 0, 1])
        assert sorted(b for b, _ in seen) == [0, 1, 2] and all(k == 1 for _, k in seen)
        assert torch.get_num_threads() == 2

        def boom(b):
            raise RuntimeError(f"example {b}")

        with pytest.raises(RuntimeError, match="example"):
            _each_example(boom, 2, torch.device("cpu"), [0, 1])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_parallel_and_sequential_examples_agree():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(4, 30, 20, dtype=torch.float32, generator=g)
    D = torch.randn(4, 30, 24, dtype=torch.float32, generator=g)
    mask = torch.ones(4, 30, dtype=torch.long)
    mask[1, 20:] = 0
    a = _measure(X, D, mask, "gram", threads=1)
    b = _measure(X, D, mask, "gram", threads=2)
    for k in a.stats:
        torch.testing.assert_close(a.stats[k], b.stats[k], rtol=1e-12, atol=0, equal_nan=True)


# ---------------------------------------------------------------------------------------
# The engine: float32 statistics take the Gram path on every architecture, and match the oracle
# ---------------------------------------------------------------------------------------


# One example a batch, the Gram path's own error is all there is: each singular value within a few
# sqrt(u) * s_1 (measured <= 5.8e-8 * s_1 on these models), so norms and shares within 1e-7. The
# effective rank of a rank-deficient gradient also sums p ln p over values that are zero in exact
# arithmetic and ~1e-8 * s_1 here (nothing is thresholded): measured <= 2.7e-7 relative, held to 1e-6.
# In padded batches the eager attention's float32 softmax rounds differently with the batch shape (~1e-7
# on a single role of Phi-3's fused qkv_proj; see test_engine.RTOL), so those are held to 1e-6.
@pytest.mark.parametrize("batch_size,rtol", [(1, 1e-7), (3, 1e-6)], ids=["one-a-batch", "padded"])
@pytest.mark.parametrize("arch", ARCHS)
def test_engine_float32_statistics_gram_path_equals_dense_oracle(tmp_path, tokenizer, records, arch, batch_size, rtol):
    model = make_model(arch, len(tokenizer))  # float64 model: the oracle is exact, the Gram path is float64 too
    data = write_json(tmp_path / "d.json", records)
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "run"), progress=False, stats_dtype="float32",
                    spectrum_k=None, modules="all", prompt_mode="base", batch_size=batch_size)
    engine.run(cfg, loaded=loaded(model, tokenizer))
    res = load_results(cfg.out)
    assert set(res.modules["method"]) == {"gram"}
    want = oracle_for(model, tokenizer, data, "base", find_targets(model, "all"))
    assert len(res.ok) == len(want)
    for _, r in res.modules.iterrows():
        o = want[r["id"]][1][r["module"]]
        scale = o["spectral"]
        for k in ("nuclear", "spectral", "frobenius", "top1_share", "effective_rank", "stable_rank"):
            assert r[k] == pytest.approx(o[k], rel=1e-6 if k == "effective_rank" else rtol), (r["module"], k)
        assert abs(r["min_sigma"] - o["min_sigma"]) <= GRAM_ATOL * scale
        s = torch.tensor(r["spectrum"], dtype=torch.float64)
        torch.testing.assert_close(s, o["svdvals"][: len(s)], rtol=1e-6, atol=1e-6 * scale)


def _prescribed(t, i, o, decades, seed):
    """``X (t, i)``, ``D (t, o)`` whose ``G = D^T X`` has singular values ``logspace(0, -decades, r)``, ``r = min(t, i, o)``."""
    g = torch.Generator().manual_seed(seed)
    r = min(t, i, o)
    sv = torch.logspace(0, -decades, r, dtype=torch.float64)
    Qt = torch.linalg.qr(torch.randn(t, r, dtype=torch.float64, generator=g)).Q  # (t, r) orthonormal columns
    U = torch.linalg.qr(torch.randn(o, r, dtype=torch.float64, generator=g)).Q  # (o, r)
    V = torch.linalg.qr(torch.randn(i, r, dtype=torch.float64, generator=g)).Q  # (i, r)
    X = Qt @ V.mT  # (t, i)
    D = Qt @ (U * sv).mT  # (t, o): D^T X = U diag(sv) Qt^T Qt V^T = U diag(sv) V^T
    return X, D, sv


# Every Gram side's matrix is of order ~1000 here (token: t, out: o, in: i, product: min(o, i)).
@pytest.mark.parametrize("side", S.GRAM_SIDES)
def test_gram_path_spectrum_spanning_eight_decades_at_order_1000(side):
    """Nothing is thresholded: each of the min(t, i, o) values is within a few sqrt(u) * s_1 (u = 2^-53) of
    the exact one, also those far below sqrt(m u) * s_1 (the zeroing threshold the path once had)."""
    X, D, want = _prescribed(1000, 1024, 1010, decades=8, seed=5)
    s = S.gram_svdvals(X, D, side)
    assert s.shape == (1000,)
    err = (s - want).abs().max().item() / want[0].item()
    assert err < 5e-8, err
    small = want < (1000 * torch.finfo(torch.float64).eps) ** 0.5  # the values the old threshold zeroed
    assert small.sum() > 50 and bool((s[small] > 0).all())
    nuclear = want.sum().item()
    assert s.sum().item() == pytest.approx(nuclear, rel=1e-8)


def test_gram_side_choice_changes_nothing_beyond_rounding():
    X, D, want = _prescribed(300, 320, 310, decades=8, seed=9)
    vals = {side: S.gram_svdvals(X, D, side) for side in S.GRAM_SIDES}
    for a in S.GRAM_SIDES:
        for b in S.GRAM_SIDES:
            assert (vals[a] - vals[b]).abs().max().item() < 1e-7 * want[0].item(), (a, b)
    stats = {side: S.spectrum_stats(v.unsqueeze(0), 300) for side, v in vals.items()}
    for k in ("nuclear", "effective_rank", "min_sigma"):
        got = [float(getattr(st, k)[0]) for st in stats.values()]
        scale = float(want[0]) if k == "min_sigma" else max(abs(v) for v in got)
        assert max(got) - min(got) <= 1e-7 * scale, (k, got)


def test_captured_tensor_that_does_not_match_the_batch_is_an_error_not_a_number():
    """An input gathered to (1, N, i) (a logit shortcut left on by mistake) while the mask is (n, t)."""
    from layergrad.measure.capture import CaptureError

    meas = Measurer(stats_dtype=torch.float64, spectrum_k=None)
    meas.begin(torch.ones(2, 5, dtype=torch.long), {("x",): 1}, {})
    t = Target("lm_head", None, -1, "lm_head", 6, 4, "linear")
    with pytest.raises(CaptureError, match="cannot be attributed"):
        meas.accept(t, torch.randn(1, 7, 4, dtype=torch.float64), torch.randn(1, 7, 6, dtype=torch.float64), ("x",))
    with pytest.raises(CaptureError):  # one example: (1, N) against a (1, t) mask is caught by the token count
        meas.begin(torch.ones(1, 5, dtype=torch.long), {("x",): 1}, {})
        meas.accept(t, torch.randn(1, 3, 4, dtype=torch.float64), torch.randn(1, 3, 6, dtype=torch.float64), ("x",))
    assert meas.results == {}
