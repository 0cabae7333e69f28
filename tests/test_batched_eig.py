"""The batched Gram path held to the dense float64 oracle on the CPU: padding (right, left,
scattered, a module called twice), size classes, chunked stacks, eigenvalues near 0, an all-zero
example, the Cholesky fallback, the solver's fallback when CuPy is missing, and the Measurer's
``eig_batch`` against its per-example path."""
from __future__ import annotations

import sys

import pytest
import torch

from helpers import measure_shared, padding_mask
from layergrad import spectra as S
from layergrad.inputs.targets import Target
from layergrad.measure.measurer import Measurer
from layergrad.spectra import batched as B

# The Gram path squares singular values in float64: s_k is off by at most ~sqrt(u) * s_1 ~ 1e-8 s_1.
GRAM_ATOL = 5e-8


def _batch(lengths, t, i, o, seed, pad="right", dtype=torch.float64):
    """A padded batch with zero padding rows, and each example's real rows."""
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    X = torch.randn(n, t, i, dtype=torch.float64, generator=g)
    D = torch.randn(n, t, o, dtype=torch.float64, generator=g)
    mask = padding_mask(lengths, t, pad, g)
    X, D = X * mask.unsqueeze(-1), D * mask.unsqueeze(-1)
    return X.to(dtype), D.to(dtype), mask


def _check(s, X, D, mask, atol=GRAM_ATOL):
    t, i, o = X.shape[-2], X.shape[-1], D.shape[-1]
    assert s.shape == (X.shape[0], min(t, i, o)) and s.dtype == torch.float64
    for b in range(X.shape[0]):
        rows = torch.nonzero(mask[b]).flatten()
        want = S.dense_svdvals(X[b, rows].double(), D[b, rows].double())  # (min(o, i),)
        r = min(t, i, o)
        want = torch.cat([want, want.new_zeros(max(0, r - want.shape[0]))])[:r]
        scale = max(want[0].item(), 1e-300)
        assert (s[b] - want).abs().max().item() <= atol * scale, (b, (s[b] - want).abs().max().item() / scale)
        k = min(len(rows), i, o)
        assert s[b, k:].abs().sum().item() == 0.0  # exact zeros past the example's rank bound


CASES = [  # (lengths, t, i, o)
    ([9, 4, 7], 9, 12, 10),
    ([1, 5, 3], 5, 6, 8),  # a sequence of length 1
    ([40, 17], 40, 16, 8),  # t > i, o
    ([33, 20, 2], 33, 50, 50),  # t just past a size class
    ([70, 64], 70, 30, 90),
]


@pytest.mark.parametrize("pad", ["right", "left", "scattered"])
@pytest.mark.parametrize("side", S.GRAM_SIDES)
@pytest.mark.parametrize("lengths,t,i,o", CASES, ids=[f"t{c[1]}-i{c[2]}-o{c[3]}" for c in CASES])
def test_every_side_batched_with_padding_equals_dense_oracle(lengths, t, i, o, side, pad):
    X, D, mask = _batch(lengths, t, i, o, seed=t + i + o, pad=pad)
    _check(B.batched_gram_svdvals(X, D, side), X, D, mask)


@pytest.mark.parametrize("side", S.GRAM_SIDES)
def test_an_all_zero_example_and_a_zero_input_row(side):
    X, D, mask = _batch([6, 6, 3], 6, 8, 7, seed=3)
    X[1] = 0  # an example whose inputs are all zero: G = 0, every value exactly 0
    X[2, 1] = 0  # a real token whose input row is zero: it adds nothing to G (its D row still nonzero)
    s = B.batched_gram_svdvals(X, D, side)
    assert s[1].abs().sum().item() == 0.0
    _check(s, X, D, mask)


@pytest.mark.parametrize("side", S.GRAM_SIDES)
def test_eigenvalues_near_zero_and_a_singular_input_take_the_cholesky_fallback(side):
    """Repeated input rows (layer 0's repeated tokens) make K_X singular: the batched Cholesky fails for
    that example only; a rank-2 gradient has eigenvalues that are 0 in exact arithmetic and +-u s_1^2 here."""
    X, D, mask = _batch([10, 10], 10, 12, 9, seed=4)
    X[0, 5:] = X[0, :5]  # rank 5
    g = torch.Generator().manual_seed(5)
    X[1] = torch.randn(10, 2, dtype=torch.float64, generator=g) @ torch.randn(2, 12, dtype=torch.float64, generator=g)  # rank 2
    K = B.gram_batched(X)
    assert torch.linalg.cholesky_ex(K)[1].ne(0).all()  # both singular: the fallback is exercised
    F = B.psd_factor_batched(K, (X == 0).all(-1))
    torch.testing.assert_close(F @ F.mT, K, rtol=0, atol=1e-12 * K.abs().max().item())
    s = B.batched_gram_svdvals(X, D, side)
    _check(s, X, D, mask)
    assert (s >= 0).all()  # negatives from rounding clipped, never returned


def test_size_classes():
    assert [B.size_class(m) for m in (1, 32, 33, 48, 49, 64, 65, 96, 97, 128, 129, 535, 4096)] == \
        [32, 32, 48, 48, 64, 64, 96, 96, 128, 128, 192, 768, 4096]
    for m in range(1, 3000):
        M = B.size_class(m)
        assert m <= M and (m <= B.SIZE_CLASS_MIN or M < 1.5 * m)


@pytest.mark.parametrize("stack_bytes", [B.STACK_BYTES, 1, 3 * 48 * 48 * 8])
def test_stacks_of_several_sizes_in_shared_size_classes_equal_one_at_a_time(stack_bytes):
    """Stacks of sizes 40, 45 (one class: 48), 7 and 100, chunked down to one matrix a call."""
    g = torch.Generator().manual_seed(6)
    items, want = [], []
    for n, m, r, rank in [(3, 40, 40, 40), (2, 45, 30, 45), (4, 7, 5, 3), (1, 100, 100, 60)]:
        A = torch.randn(n, m, rank, dtype=torch.float64, generator=g)
        Sm = A @ A.mT  # (n, m, m) PSD of rank `rank`
        k = torch.randint(0, r + 1, (n,), generator=g)
        items.append((Sm, r, k))
        w = torch.stack([S.sqrt_eigvalsh(Sm[b], r) for b in range(n)])
        want.append(torch.where(torch.arange(r) < k.unsqueeze(-1), w, torch.zeros(())))
    got = B.solve_stacks(items, stack_bytes=stack_bytes)
    for (Sm, r, _), s, w in zip(items, got, want):
        assert s.shape == (Sm.shape[0], r)
        torch.testing.assert_close(s, w, rtol=0, atol=GRAM_ATOL * w.max().item())
    assert B.solve_stacks([]) == []
    with pytest.raises(ValueError, match="r=5"):
        B.solve_stacks([(torch.eye(3).double().expand(1, 3, 3), 5, None)])


def test_solver_falls_back_to_torch_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    assert B._cupy() is None
    g = torch.Generator().manual_seed(7)
    A = torch.randn(3, 20, 20, dtype=torch.float64, generator=g)
    Sm = A @ A.mT
    want = torch.linalg.eigvalsh(Sm)
    for backend in ("auto", "cupy", "torch"):  # on CPU tensors every backend is torch's
        torch.testing.assert_close(B.eigvalsh_stack(Sm, backend), want, rtol=0, atol=0)
    monkeypatch.setenv("LAYERGRAD_EIG_BACKEND", "torch")
    torch.testing.assert_close(B.eigvalsh_stack(Sm), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown eigensolver backend"):
        B.eigvalsh_stack(Sm, "magma")


# ---------------------------------------------------------------------------------------
# The Measurer: eig_batch="on" on the CPU equals its per-example path and the oracle
# ---------------------------------------------------------------------------------------


def _measure(targets, X, D, mask, eig_batch, queue_bytes=1 << 30):
    return measure_shared(Measurer(stats_dtype=torch.float32, spectrum_k=None, method="gram", eig_batch=eig_batch,
                                   eig_queue_bytes=queue_bytes), targets, X, D, mask)


@pytest.mark.parametrize("queue_bytes", [1 << 30, 0], ids=["one-solve", "solve-per-module"])
def test_measurer_batched_equals_per_example_and_oracle_with_padding_and_shared_input(queue_bytes):
    """Three modules read one input (K_X and its factor shared; q, k, v of grouped-query attention:
    outputs 10, 4, 4); padding rows are NOT zero in the captured tensors: the sink must mask them."""
    g = torch.Generator().manual_seed(8)
    lengths, t, i = [9, 4, 7, 1], 9, 12
    n = len(lengths)
    mask = torch.zeros(n, t, dtype=torch.long)
    for b, L in enumerate(lengths):
        mask[b, :L] = 1
    targets = [Target(name, None, 0, role, o, i, "linear") for name, role, o in (("q", "q", 10), ("k", "k", 4), ("v", "v", 4))]
    X = torch.randn(n, t, i, dtype=torch.float32, generator=g)
    D = [torch.randn(n, t, tg.out_features, dtype=torch.float32, generator=g) for tg in targets]
    on = _measure(targets, X, D, mask, "on", queue_bytes)
    off = _measure(targets, X, D, mask, "off")
    for tg, Dt in zip(targets, D):
        a, b = on[tg.name], off[tg.name]
        assert a.method == b.method == "gram"
        torch.testing.assert_close(a.rank, b.rank, rtol=0, atol=0)
        for key in a.stats:
            torch.testing.assert_close(a.stats[key], b.stats[key], rtol=1e-6, atol=1e-7, equal_nan=True)
        assert a.spectrum.shape == b.spectrum.shape
        for bb, L in enumerate(lengths):
            want = S.dense_svdvals(X[bb, :L].double(), Dt[bb, :L].double())
            assert a.stats["nuclear"][bb].item() == pytest.approx(want.sum().item(), rel=1e-9)
            assert (a.spectrum[bb, :L].double() - want[:L]).abs().max().item() < 1e-6 * want[0].item()
            assert a.spectrum[bb, a.rank[bb]:].abs().sum().item() == 0.0


def test_measurer_batched_module_called_twice():
    """Calls concatenated on the token axis with the mask repeated: real rows are not a prefix."""
    g = torch.Generator().manual_seed(9)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    X = torch.randn(2, 8, 5, dtype=torch.float64, generator=g)
    D = torch.randn(2, 8, 6, dtype=torch.float64, generator=g)
    tg = Target("m", None, 0, "q", 6, 5, "linear")
    res = _measure([tg], X, [D], mask, "on")["m"]
    for b in range(2):
        rows = torch.nonzero(mask[b].repeat(2)).flatten()
        want = S.dense_svdvals(X[b, rows], D[b, rows])
        assert res.stats["nuclear"][b].item() == pytest.approx(want.sum().item(), rel=1e-9)


def test_eig_batch_auto_is_off_on_cpu_and_bad_values_are_errors():
    assert not Measurer().batches_eigenproblems(torch.device("cpu"))
    assert Measurer().batches_eigenproblems(torch.device("cuda"))
    assert Measurer(eig_batch="on").batches_eigenproblems(torch.device("cpu"))
    assert not Measurer(eig_batch="off").batches_eigenproblems(torch.device("cuda"))
    with pytest.raises(ValueError, match="unknown eig_batch"):
        Measurer(eig_batch="yes").batches_eigenproblems(torch.device("cpu"))


def test_run_config_validates_eig_batch():
    from layergrad.config import RunConfig
    from layergrad.errors import ConfigError

    assert RunConfig(data=["x.json"], out="o").eig_batch == "auto"
    RunConfig(data=["x.json"], out="o", eig_batch="on").validate()
    with pytest.raises(ConfigError, match="eig_batch"):
        RunConfig(data=["x.json"], out="o", eig_batch="always").validate()
