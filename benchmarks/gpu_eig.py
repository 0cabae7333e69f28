"""The batched float64 eigensolvers on CUDA: time per matrix by backend, size and stack size (issue 16).

For each size ``M`` (the size classes of ``spectra.batched``) and stack size ``B``: ``loop`` (torch's
``eigvalsh`` one matrix a call: the per-example path), ``torch`` (one batched call; torch loops inside for
M > 32) and ``cupy`` (CuPy's cuSOLVER batched solver), milliseconds per matrix (median of 3 after a
warm-up, CUDA-synchronised wall clock), and each backend's largest error against float64 LAPACK on the
CPU (relative to the largest eigenvalue). With ``--dtypes float64,float32`` (the default) each row also times
the batched backends (``torch``, ``cupy``) on the same matrices rounded to float32 (keys ``*_f32_*``): the
speed a float32 eigensolver would give on GPUs with weak FP64. Its eigenvalue error ``e`` (relative to the
largest) means singular values off by up to ``sqrt(e) * s_1``: ~2e-4 s_1 for the small ones, which is why
layergrad does not use it (BENCHMARKS.md, "Precision of float32 routes on real gradients"). Also: a stack of ``m``-sized matrices padded to its class
against the same stack unpadded, to set SIZE_CLASS growth. And the whole per-module computation of the two
arithmetics of float32 statistics (``--gram-precision``; ``route`` rows, ``--route-width`` features): the float64
Gram path (token side, batched eigensolver) against ``float32-qr`` (distinct rows, float32 QR and SVD), each
with its largest error against float64 SVD on the CPU (relative to ``s_1``). The eigensolver rows stop at 60%
of ``--budget-s``, the route rows at 80%. Results go to ``--json`` after every row.

    PYTHONPATH=src python3 benchmarks/gpu_eig.py --json $OUT/gpu_eig.json --budget-s 150
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from layergrad.spectra import batched as B  # noqa: E402


DEV = "cuda"  # main(): --device (cpu: a dry run of the script before the one GPU call)


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def _time(fn, reps=3):
    fn()
    _sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True)
    p.add_argument("--sizes", default="64,128,256,384,512,768,1024")
    p.add_argument("--stacks", default="1,8,64,256")
    p.add_argument("--dtypes", default="float64,float32",
                   help="float64 (the Gram path's), and float32 rows of the batched backends for comparison")
    p.add_argument("--route-width", type=int, default=1024, help="features i = o of the route rows' X and D")
    p.add_argument("--route-sizes", default="128,256,512", help="tokens t of the route rows")
    p.add_argument("--budget-s", type=float, default=150.0, help="stop starting new rows after this many seconds")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run (small --sizes/--stacks/--route-sizes)")
    a = p.parse_args(argv)
    global DEV
    DEV = a.device
    start = time.perf_counter()
    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    if not set(dtypes) <= {"float64", "float32"}:
        p.error(f"--dtypes: float64 and/or float32, not {a.dtypes!r}")
    have_cupy = B._cupy() is not None
    res = {"device": torch.cuda.get_device_name() if DEV == "cuda" else DEV, "torch": torch.__version__, "cupy": None, "rows": [], "route": [],
           "padding": []}
    if have_cupy:
        res["cupy"] = B._cupy().__version__
    save = lambda: Path(a.json).write_text(json.dumps(res, indent=1))  # noqa: E731
    g = torch.Generator().manual_seed(0)
    for M in map(int, a.sizes.split(",")):
        for n in map(int, a.stacks.split(",")):
            if n * M * M * 8 > 2 * B.STACK_BYTES or time.perf_counter() - start > 0.6 * a.budget_s:
                continue
            A = torch.randn(n, M, M // 2, dtype=torch.float64, generator=g)  # rank M/2: half the eigenvalues are 0
            S = (A @ A.mT).to(DEV)
            want = torch.linalg.eigvalsh(S[: min(n, 8)].cpu())
            row = {"M": M, "B": n}
            backends = {"loop": lambda: [torch.linalg.eigvalsh(S[b]) for b in range(n)],
                        "torch": lambda: B.eigvalsh_stack(S, "torch")}
            if have_cupy:
                backends["cupy"] = lambda: B.eigvalsh_stack(S, "cupy")
            if "float32" in dtypes:
                S32 = S.float()
                backends["torch_f32"] = lambda: B.eigvalsh_stack(S32, "torch")
                if have_cupy:
                    backends["cupy_f32"] = lambda: B.eigvalsh_stack(S32, "cupy")
            for name, fn in backends.items():
                if name == "loop" and n * M > 64 * 1024:  # the loop is the slow one: keep it short
                    continue
                if "float64" not in dtypes and not name.endswith("_f32"):
                    continue
                sec = _time(fn)
                w = fn()
                w = torch.stack(w) if isinstance(w, list) else w
                err = ((w[: want.shape[0]].cpu().double() - want).abs().amax(-1) / want[..., -1]).max().item()
                row[f"{name}_ms_per_matrix"] = 1e3 * sec / n
                row[f"{name}_max_rel_err"] = err
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()
    # the two arithmetics of float32 statistics, the whole computation of one module of a batch
    from layergrad.spectra import svd as SV  # noqa: PLC0415

    W = a.route_width
    for t in map(int, a.route_sizes.split(",")):
        for n in (8, 64):
            if n * t * t * 8 * 4 > 2 * B.STACK_BYTES or time.perf_counter() - start > 0.8 * a.budget_s:
                continue
            X = torch.randn(n, t, W, generator=g).to(DEV)
            Dm = (torch.randn(n, t, W, generator=g) * torch.logspace(0, -4, W)).to(DEV)  # a spectrum over decades
            want = torch.linalg.svdvals(Dm[0].cpu().double().mT @ X[0].cpu().double())[: min(t, W)]
            row = {"t": t, "i": W, "o": W, "B": n}
            for name, fn in {"float64_gram_token": lambda: B.batched_gram_svdvals(X, Dm, "token"),
                             "float32_qr": lambda: SV.float32_qr_svdvals(X, Dm)}.items():
                row[f"{name}_ms_per_example"] = 1e3 * _time(fn) / n
                row[f"{name}_max_err_over_s1"] = ((fn()[0].cpu() - want).abs().max() / want[0]).item()
            res["route"].append(row)
            print(json.dumps(row), flush=True)
            save()
    # padding to a size class: m-sized problems solved at M = size_class(m), against unpadded
    for m in (200, 300, 535):
        if time.perf_counter() - start > a.budget_s:
            break
        n = 64
        A = torch.randn(n, m, m, dtype=torch.float64, generator=g)
        S = (A @ A.mT).to(DEV)
        M = B.size_class(m)
        P = torch.zeros(n, M, M, dtype=torch.float64, device=DEV)
        P[:, :m, :m] = S
        row = {"m": m, "M": M, "B": n}
        for name in (["cupy"] if have_cupy else []) + ["torch"]:
            row[f"{name}_unpadded_ms"] = 1e3 * _time(lambda: B.eigvalsh_stack(S, name)) / n
            row[f"{name}_padded_ms"] = 1e3 * _time(lambda: B.eigvalsh_stack(P, name)) / n
        res["padding"].append(row)
        print(json.dumps(row), flush=True)
        save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
