"""The batched Gram path on CUDA, held to the dense float64 oracle on the CPU: each solver
backend (CuPy's cuSOLVER batched solver, torch's), padding and size classes, the fallback without
CuPy, and the Measurer's automatic choice. Skipped without CUDA; run with ``-m gpu`` (benchmarks/gpu_checks.sh).
No timing is asserted here: the speed is measured by benchmarks/gpu_eig.py and the benchmark."""
from __future__ import annotations

import sys

import pytest
import torch

from layergrad import spectra as S
from layergrad.inputs.targets import Target
from layergrad.measure.measurer import Measurer
from layergrad.spectra import batched as B

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

GRAM_ATOL = 5e-8
BACKENDS = ["torch"] + (["cupy"] if B._cupy() is not None else [])


def _psd_stack(n, m, rank, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, m, rank, dtype=torch.float64, generator=g)
    A = A * torch.logspace(0, -6, rank, dtype=torch.float64)  # eigenvalues over twelve decades
    return A @ A.mT


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,m,rank", [(7, 20, 20), (16, 40, 25), (8, 200, 200), (4, 535, 300), (2, 768, 768)])
def test_eigvalsh_stack_on_cuda_equals_cpu_float64(n, m, rank, backend):
    Sm = _psd_stack(n, m, rank, seed=m)
    want = torch.linalg.eigvalsh(Sm)
    got = B.eigvalsh_stack(Sm.cuda(), backend).cpu()
    assert torch.isfinite(got).all()
    # a backward stable symmetric eigensolver: each eigenvalue within a few u * ||S||
    assert ((got - want).abs().amax(-1) / want[..., -1]).max().item() < 1e-12


def test_eigvalsh_stack_cupy_required_but_missing_is_an_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    Sm = _psd_stack(3, 50, 50, seed=1).cuda()
    with pytest.raises(RuntimeError, match="needs CuPy"):
        B.eigvalsh_stack(Sm, "cupy")
    torch.testing.assert_close(B.eigvalsh_stack(Sm, "auto"), torch.linalg.eigvalsh(Sm), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", S.GRAM_SIDES)
def test_batched_gram_svdvals_on_cuda_with_padding_equals_dense_oracle(side, backend):
    g = torch.Generator().manual_seed(2)
    lengths, t, i, o = [70, 33, 1, 64], 70, 48, 90
    n = len(lengths)
    X = torch.randn(n, t, i, dtype=torch.float64, generator=g)
    D = torch.randn(n, t, o, dtype=torch.float64, generator=g)
    mask = torch.zeros(n, t, dtype=torch.bool)
    for b, L in enumerate(lengths):
        mask[b, t - L :] = True  # left padding
    X, D = X * mask.unsqueeze(-1), D * mask.unsqueeze(-1)
    X[1, -3:] = X[1, -6:-3]  # a singular K_X: the Cholesky fallback on the GPU
    s = B.batched_gram_svdvals(X.cuda(), D.cuda(), side, backend=backend).cpu()
    for b, L in enumerate(lengths):
        rows = torch.nonzero(mask[b]).flatten()
        want = S.dense_svdvals(X[b, rows], D[b, rows])[: min(t, i, o)]
        assert (s[b, : want.shape[0]] - want).abs().max().item() <= GRAM_ATOL * want[0].item()
        assert s[b, min(L, i, o):].abs().sum().item() == 0.0


def test_measurer_auto_batches_on_cuda_and_equals_the_cpu_per_example_path():
    g = torch.Generator().manual_seed(3)
    lengths, t, i = [9, 4, 7, 1], 9, 64
    n = len(lengths)
    mask = torch.zeros(n, t, dtype=torch.long)
    for b, L in enumerate(lengths):
        mask[b, :L] = 1
    targets = [Target(name, None, 0, role, o, i, "linear") for name, role, o in (("q", "q", 64), ("k", "k", 16), ("v", "v", 16))]
    X = torch.randn(n, t, i, dtype=torch.bfloat16, generator=g)
    D = [torch.randn(n, t, tg.out_features, dtype=torch.bfloat16, generator=g) for tg in targets]

    def measure(device):
        meas = Measurer(stats_dtype=torch.float32, spectrum_k=None)
        assert meas.batches_eigenproblems(torch.device(device)) == (device == "cuda")
        meas.begin(mask.to(device), {("x",): 3}, {})
        for tg, Dt in zip(targets, D):
            meas.accept(tg, X.to(device), Dt.to(device), ("x",))
        return meas.finish().modules

    gpu, cpu = measure("cuda"), measure("cpu")
    for tg in targets:
        for key in cpu[tg.name].stats:
            torch.testing.assert_close(gpu[tg.name].stats[key], cpu[tg.name].stats[key], rtol=1e-6, atol=1e-7, equal_nan=True)
        torch.testing.assert_close(gpu[tg.name].spectrum, cpu[tg.name].spectrum, rtol=1e-5, atol=1e-6)
