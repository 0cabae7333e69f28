"""Measure the cost constants of :mod:`layergrad.spectra` on this machine.

Prints, for each operation the cost model uses, its time relative to a float64 matrix product of
the same size (``2 a b c`` operations for ``(a, b) @ (b, c)``), as the constants in spectral.py
express them. Minimum over interleaved repeats (the least disturbed run of each), 2 threads.

    .venv/bin/python benchmarks/calibrate.py [--threads 2] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    sizes = (192, 384, 576, 768)
    ops = {}
    for m in sizes:
        A = torch.randn(m, m, dtype=torch.float64, generator=g)
        S = A @ A.mT + m * torch.eye(m, dtype=torch.float64)
        T = torch.randn(m, 4 * m, dtype=torch.float64, generator=g)
        ops[("mm64", m)] = (lambda A=A: A @ A, 2.0 * m**3)
        ops[("eig", m)] = (lambda S=S: torch.linalg.eigvalsh(S), m**3)
        ops[("chol", m)] = (lambda S=S: torch.linalg.cholesky_ex(S), m**3)
        ops[("svd32", m)] = (lambda A=A.float(): torch.linalg.svdvals(A), m**3)
        ops[("qr32", m)] = (lambda T=T.float(): torch.linalg.qr(T.mT, mode="r"), 2.0 * 4 * m * m * m - 2.0 * m**3 / 3)
        ops[("gemm64", m)] = (lambda T=T: T @ T.mT, 2.0 * 4 * m * m * m)
    best: dict = {}
    for _ in range(a.repeats):
        for k, (fn, _) in ops.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best.get(k, float("inf")), time.perf_counter() - t0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = {}
    for m in sizes:
        rate = ops[("gemm64", m)][1] / best[("gemm64", m)]  # float64 operations per second at this size
        rows[m] = {
            "fp64 GF/s": rate / 1e9,
            "EIG_COST": best[("eig", m)] * rate / m**3,
            "CHOL_COST": best[("chol", m)] * rate / m**3,
            "SVD_COST (fp32)": best[("svd32", m)] * rate / m**3,
            "QR_SLOWDOWN (fp32)": best[("qr32", m)] / (ops[("qr32", m)][1] / rate),
        }
    keys = list(next(iter(rows.values())))
    print(f"{'m':>6} " + " ".join(f"{k:>18}" for k in keys))
    for m, r in rows.items():
        print(f"{m:>6} " + " ".join(f"{r[k]:>18.2f}" for k in keys))
    print(f"{'median':>6} " + " ".join(f"{statistics.median(r[k] for r in rows.values()):>18.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
