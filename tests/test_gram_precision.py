"""The opt-in float32 route (``gram_precision="float32-qr"``) held to an oracle that shares no code with it.

The oracle is this file's own: float64 ``torch.linalg.svdvals`` of ``D.double().T @ X.double()`` over an
example's real rows. The route merges repeated token rows exactly and then works in float32 (QR, SVD), so
each value may be off by the float32 floor, ~10 u32 s_1 (u32 = 6e-8): the tests allow 3e-6 s_1 on these
small sizes, which a float32 Gram matrix (sqrt(u32) s_1 = 2.4e-4 s_1) misses by orders of magnitude (the
last test checks that the tolerance separates the two). Also: exact zeros past the distinct rows, padded
batches (right, left, scattered) per example and batched, the Measurer on both paths, config validation,
the flag, the manifest, and a resume with another value refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_model
from helpers import MANY, config, loaded, measure_shared, padding_mask, tree_digest
from layergrad.inputs.targets import Target
from layergrad.measure.measurer import Measurer
from layergrad.spectra import svd

TOL = 3e-6  # per singular value, relative to s_1 (float32 floor ~10 u32 = 6e-7; a float32 Gram: ~2e-4)


def oracle(X: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Singular values of D^T X, float64, from the dense gradient (no code shared with the route)."""
    return torch.linalg.svdvals(D.double().T @ X.double())


def graded(t, i, o, decades, seed, rank=None):
    """X (t, i), D (t, o) float32 with ``G = D^T X = Q_D diag(s) Q_X^T``, ``s`` spanning ``decades`` (rank ``rank``)."""
    g = torch.Generator().manual_seed(seed)
    k = min(t, i, o) if rank is None else rank
    W = torch.linalg.qr(torch.randn(t, k, dtype=torch.float64, generator=g)).Q  # (t, k) orthonormal columns
    QX = torch.linalg.qr(torch.randn(i, k, dtype=torch.float64, generator=g)).Q
    QD = torch.linalg.qr(torch.randn(o, k, dtype=torch.float64, generator=g)).Q
    half = torch.logspace(0, -decades / 2, k, dtype=torch.float64)
    return (W @ (QX * half).T).float(), (W @ (QD * half).T).float()  # D^T X = QD diag(half^2) QX^T


def check(s, X, D, tol=TOL):
    want = oracle(X, D)
    r = min(X.shape[0], X.shape[1], D.shape[1])
    assert s.shape == (r,) and s.dtype == torch.float64
    err = (s - want[:r]).abs().max().item() / want[0].item()
    assert err < tol, f"max |s - s_ref| / s_1 = {err:.2e} >= {tol:.0e}"
    return err


CASES = {  # name -> (X, D)
    "random": lambda: (torch.randn(40, 24), torch.randn(40, 16)),
    "more-tokens-than-features": lambda: (torch.randn(90, 12), torch.randn(90, 20)),
    "six-decades": lambda: graded(60, 48, 32, 6, seed=1),
    "ten-decades": lambda: graded(80, 40, 40, 10, seed=2),
    "rank-deficient": lambda: graded(50, 30, 30, 3, seed=3, rank=7),
    "scales-apart": lambda: (torch.cat([torch.randn(30, 20), 1e-4 * torch.randn(30, 20)]),
                             torch.cat([1e-4 * torch.randn(30, 25), torch.randn(30, 25)])),  # a tied head's two calls
}


@pytest.mark.parametrize("name", list(CASES))
def test_one_example_equals_the_oracle(name):
    torch.manual_seed(0)
    X, D = CASES[name]()
    check(svd.float32_qr_svdvals(X, D), X, D)


def test_repeated_tokens_give_exact_zeros_and_bf16_inputs():
    """Layer 0's q, k, v: equal input rows (a function of the token id) bound the rank; the values past the
    distinct rows are exact zeros, not float32 noise (the effective rank depends on it)."""
    g = torch.Generator().manual_seed(4)
    vocab = torch.randn(9, 32, generator=g)
    ids = torch.randint(0, 9, (60,), generator=g)
    X, D = vocab[ids], torch.randn(60, 16, generator=g)
    s = svd.float32_qr_svdvals(X, D)
    check(s, X, D)
    distinct = int(torch.unique(ids).numel())
    assert (s[distinct:] == 0).all() and (s[:distinct] > 0).all()
    # equal output-gradient rows (one-hot rows of a tied head's embedding call) merge too
    Xh, Dh = torch.randn(40, 12, generator=g), torch.nn.functional.one_hot(ids[:40], 20).float()
    sh = svd.float32_qr_svdvals(Xh, Dh)
    check(sh, Xh, Dh)
    assert (sh[int(torch.unique(ids[:40]).numel()):] == 0).all()
    Xb, Db = X.bfloat16(), D.bfloat16()
    check(svd.float32_qr_svdvals(Xb, Db), Xb, Db)


def test_distinct_rows_is_exact():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(30, 6, generator=g)
    X[10:20] = X[3]
    D = torch.randn(30, 5, generator=g)
    D[25:] = D[0]
    Xu, Du = svd.distinct_rows(X, D)
    assert Xu.shape[0] < 30
    torch.testing.assert_close(Du.T @ Xu, D.double().T @ X.double(), rtol=1e-13, atol=1e-13)


def _padded(lengths, t, i, o, pad, seed):
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    X, D = torch.randn(n, t, i, generator=g), torch.randn(n, t, o, generator=g)
    X[:, 3] = X[:, 1]  # a repeated token in every example
    mask = padding_mask(lengths, t, pad, g)
    return X * mask.unsqueeze(-1), D * mask.unsqueeze(-1), mask


@pytest.mark.parametrize("pad", ["right", "left", "scattered"])
@pytest.mark.parametrize("t,i,o", [(12, 20, 8), (30, 10, 14)])
def test_padded_batch_equals_the_oracle_per_example(pad, t, i, o):
    lengths = [t, t // 2, 1, 0]
    X, D, mask = _padded(lengths, t, i, o, pad, seed=6)
    s = svd.float32_qr_svdvals(X, D)
    r = min(t, i, o)
    assert s.shape == (len(lengths), r)
    for b, L in enumerate(lengths):
        rows = torch.nonzero(mask[b]).flatten()
        if L == 0:
            assert (s[b] == 0).all()
            continue
        want = oracle(X[b, rows], D[b, rows])
        assert (s[b, : min(r, want.shape[0])] - want[:r]).abs().max().item() < TOL * want[0].item()
        assert (s[b, min(L, r):] == 0).all()
        # the same example alone, over its real rows
        alone = svd.float32_qr_svdvals(X[b, rows], D[b, rows])
        assert (alone - s[b, : alone.shape[0]]).abs().max().item() < TOL * want[0].item()


def _measure(targets, X, Ds, mask, eig_batch, precision):
    return measure_shared(Measurer(stats_dtype=torch.float32, spectrum_k=None, eig_batch=eig_batch, gram_precision=precision),
                          targets, X, Ds, mask)


@pytest.mark.parametrize("eig_batch", ["off", "on"])
def test_measurer_uses_the_route_on_both_paths(eig_batch):
    """Padding rows NOT zero in the captured tensors (the sink masks them); three modules share X."""
    g = torch.Generator().manual_seed(7)
    lengths, t, i = [9, 4, 7], 9, 12
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for b, L in enumerate(lengths):
        mask[b, :L] = 1
    targets = [Target(n, None, 0, n, o, i, "linear") for n, o in (("q", 10), ("k", 4), ("v", 4))]
    X = torch.randn(len(lengths), t, i, generator=g)
    X[:, 2] = X[:, 0]
    Ds = [torch.randn(len(lengths), t, tg.out_features, generator=g) for tg in targets]
    res = _measure(targets, X, Ds, mask, eig_batch, "float32-qr")
    default = _measure(targets, X, Ds, mask, eig_batch, "float64")
    for tg, Dt in zip(targets, Ds):
        a = res[tg.name]
        assert a.method == "float32-qr" and default[tg.name].method == "gram"
        for b, L in enumerate(lengths):
            want = oracle(X[b, :L], Dt[b, :L])
            r = min(L, i, tg.out_features)
            assert (a.spectrum[b, :r].double() - want[:r]).abs().max().item() < TOL * want[0].item()
            assert a.stats["nuclear"][b].item() == pytest.approx(want.sum().item(), rel=2e-6)
            assert a.stats["nuclear"][b].item() == pytest.approx(default[tg.name].stats["nuclear"][b].item(), rel=2e-6)


def test_float64_statistics_are_not_affected():
    """gram_precision is the gram family's arithmetic; float64 statistics take the QR family either way."""
    g = torch.Generator().manual_seed(8)
    mask = torch.ones(2, 6, dtype=torch.long)
    tg = Target("m", None, 0, "q", 5, 7, "linear")
    X, D = torch.randn(2, 6, 7, generator=g), torch.randn(2, 6, 5, generator=g)
    for precision in ("float64", "float32-qr"):
        meas = Measurer(stats_dtype=torch.float64, gram_precision=precision)
        meas.begin(mask, {("x",): 1}, {})
        meas.accept(tg, X, D, ("x",))
        assert meas.finish().modules["m"].method in ("factored", "dense")


def test_bad_values_are_errors():
    from layergrad.config import RunConfig
    from layergrad.errors import ConfigError

    assert RunConfig(data=["x.json"], out="o").gram_precision == "float64"
    RunConfig(data=["x.json"], out="o", gram_precision="float32-qr").validate()
    with pytest.raises(ConfigError, match=r"--gram-precision\): unknown gram precision 'float32qr' \(did you mean 'float32-qr'\?\)"):
        RunConfig(data=["x.json"], out="o", gram_precision="float32qr").validate()
    meas = Measurer(gram_precision="half")
    meas.begin(torch.ones(1, 2, dtype=torch.long), {("x",): 1}, {})
    with pytest.raises(ValueError, match="unknown gram_precision"):
        meas.accept(Target("m", None, 0, "q", 3, 3, "linear"), torch.randn(1, 2, 3), torch.randn(1, 2, 3), ("x",))


def test_the_flag_reaches_the_config_and_a_bad_value_exits(tmp_path, capsys):
    from layergrad.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "--data", "x.json", "--out", str(tmp_path / "o"), "--gram-precision", "float16"])
    assert info.value.code == 2
    assert "--gram-precision" in capsys.readouterr().err


def test_manifest_records_it_and_a_resume_with_another_value_is_refused(tmp_path, tokenizer):
    from layergrad.run import engine
    from layergrad.store import ConfigMismatch

    model = make_model("llama", len(tokenizer))
    first = config(tmp_path, MANY[:2], modules="attn", stats_dtype="float32", gram_precision="float32-qr")
    engine.run(first, loaded=loaded(model, tokenizer))
    manifest = json.loads((Path(first.out) / "manifest.json").read_text())
    assert manifest["gram_precision"] == "float32-qr"
    before = tree_digest(Path(first.out))
    second = config(tmp_path, MANY[:2], modules="attn", stats_dtype="float32")  # the default, float64
    with pytest.raises(ConfigMismatch) as info:
        engine.run(second, loaded=loaded(model, tokenizer))
    assert "--gram-precision: float32-qr (stored) vs float64 (now)" in str(info.value)
    assert tree_digest(Path(first.out)) == before


def test_the_tolerance_separates_the_route_from_a_float32_gram():
    """The tests can fail: a float32 Gram matrix of the same inputs misses TOL by far."""
    X, D = CASES["six-decades"]()
    S = (D.T @ X) @ (D.T @ X).T  # float32 Gram matrix (out side)
    s32 = torch.linalg.eigvalsh(S).flip(-1).clamp_min(0).sqrt().double()[: min(X.shape[0], X.shape[1], D.shape[1])]
    with pytest.raises(AssertionError):
        check(s32, X, D)
    assert check(svd.float32_qr_svdvals(X, D), X, D) < TOL / 3
