"""Precision of float32 routes to the singular values of G = D^T X, on real gradients (issue 16, item 3).

Captures real ``X`` ``(T, i)`` and ``D`` ``(T, o)`` of the embedded default model (SmolLM2-135M-Instruct,
float32) on GSM8K records (Simplified and Detailed CoT, ``../shared/data/cot_500``), one example per
batch (no padding) through the engine's own :class:`~layergrad.run.step.BatchRunner` and capture hooks
with a sink that keeps the factors of the selected layers' modules. For each module and example:

* ``ref``: ``torch.linalg.svdvals`` of the float64 dense ``G = D.double().T @ X.double()``: the exact
  singular values of the captured float32 data (products of float32 numbers are exact in float64; the
  sums and the SVD add ``~u64 * s_1``, ``u64 = 1.1e-16``). Values past the example's ``nonzero_terms``
  are exact zeros and set so.

Candidates (``u32 = 6.0e-8``, ``u64 = 1.1e-16``; ``kappa = ||X||_2 ||D||_2 / s_1 >= 1`` measures how much
of the factors' size cancels in their product; reported per module):

``f64 gram <side>``
    Today's path (:func:`layergrad.spectra.svd.gram_svdvals`): the side's Gram-type matrix ``S`` and its
    eigenvalues in float64. An eigenvalue is off by ``~u64 * ||S|| = u64 * s_1^2`` (Weyl, backward-stable
    solver), so ``s_k`` by ``min(u64 s_1^2 / (2 s_k), sqrt(u64) s_1)``: at most ``1e-8 s_1``.
    ``f64 gram cost``: the side :func:`~layergrad.spectra.methods.gram_side` picks (what runs).
``f32 gram <side>``
    The same, with ``S`` formed and solved in float32: ``|s_k - s_k'| <= sqrt(c u32) s_1 ~ 2.4e-4 s_1``
    for the small values; forming ``S`` in float32 alone already perturbs it by ``u32 * ||X||^2 ||D||^2``.
``f64 gram, f32 eig`` / ``f32 gram, f64 eig``
    One half of the work in float32 each: either half alone squares ``u32`` into the same ``sqrt(u32) s_1``
    bound (which half sets the floor).
``ritz <side> f32|f64``
    Eigenvectors ``V`` of the float32 ``S``, then ``s_k = ||G^T v_k||`` through the factors (out side:
    ``X^T (D v_k)``; in: ``D^T (X v_k)``; token: ``D^T (F w_k)`` with ``F F^T = X X^T``; product:
    ``G^T v_k``), in float32 or in float64. ``||G^T v||^2`` is the Rayleigh quotient of ``v``: stationary at
    eigenvectors, so an eigenvector error ``theta`` costs only ``theta^2 * gap``, and values well separated
    from the rest come out to ``~u32^2 s_1^2 / gap`` -- but float32 eigenvectors of eigenvalues within
    ``u32 s_1^2`` of each other (every ``s_k < 2.4e-4 s_1``) are arbitrary mixtures of that cluster, and
    their Rayleigh quotients are averages over it: the small values stay ``~sqrt(u32) s_1`` off. In float32
    the column norm adds ``u32 * kappa * s_1``.
``qr f32``
    The ``factored`` way in float32 (:func:`~layergrad.spectra.svd.factored_svdvals`): Householder QR of
    ``X^T`` and ``D^T`` and an SVD of the small core, all backward stable, no squaring: each value within
    ``~c u32 ||X|| ||D|| = c u32 kappa s_1`` (``c`` a modest polynomial in the sizes). Householder QR is
    backward stable column by column (token by token: each row of ``X`` and ``D`` is perturbed relative to
    its own norm), so rows of very different scales (the tied head's two calls) do not raise the bound to
    the whole factors' ``kappa``; and the float32 SVD of the core adds its own ``~c u32 s_1``: no float32
    route goes below that floor.
``dense f32``
    ``svdvals`` of ``G`` formed in float32: ``~u32 * || |D|^T |X| || + u32 s_1`` per value.
``f64 gram cost, distinct rows``
    Diagnostic: today's path after :func:`~layergrad.spectra.svd.distinct_rows` (repeated token rows merged
    exactly, so values that are exact zeros come out as zeros rather than ``sqrt(u64) s_1`` noise).
``float32-qr``
    :func:`layergrad.spectra.svd.float32_qr_svdvals` (``--gram-precision float32-qr``): ``distinct_rows``, then
    ``qr f32``, then its 16 largest values refined by one float64 Rayleigh-Ritz step through the float32 factors.
    The merge removes the hundreds of values that are exact zeros (layer 0's q, k, v, whose input is a function
    of the token id; the tied head's one-hot rows) from the float32 floor's reach; the refinement removes the
    float32 SVD's share of the largest values' error (spectral norm, stable rank, top-1 share), second order
    in the vectors' error, leaving the float32 QR's backward error.
``qr f32, core svd f64`` / ``qr f32, svd refined f64``
    Diagnostics: the float32 QR factors with the core's SVD in float64, and with the float32 SVD's values
    refined by float64 products (Ogita-Aishima's first step): how much of ``qr f32``'s error is the SVD's.
``dense f64->f32 svd``
    ``G`` formed in float64, rounded to float32 and its SVD in float32: ``~c u32 * s_1``: how good a float32
    SVD of the exact matrix is (the floor of every float32 route; this one's product is float64).

Statistics that sum over every value (nuclear norm, effective rank) collect the per-value floor of every
route over the hundreds of values that are (nearly) zero: the effective rank, whose terms ``p ln p`` weigh a
small ``p`` by ``|ln p| ~ 20``, is the most sensitive.

For each candidate: the largest ``|s_k - s_k_ref| / s_1_ref`` over modules and examples, the largest
relative errors of nuclear, Frobenius, spectral norm, effective rank, stable rank and top-1 share
(:func:`layergrad.spectra.metrics.spectrum_stats`), of ``min_sigma`` relative to ``s_1``, and the CPU
time summed over every case relative to ``f64 gram cost`` (same process, one thread, interleaved).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/precision.py --json /tmp/precision.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from layergrad.spectra import methods, metrics, svd  # noqa: E402

F32, F64 = torch.float32, torch.float64
MAX_SIDE = 4096  # larger side matrices are skipped (the output head's out side)
STATS = ("nuclear", "frobenius", "spectral", "effective_rank", "stable_rank", "top1_share")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Capture: the engine's batch runner with a sink that keeps each selected module's factors
# ---------------------------------------------------------------------------------------


class KeepSink:
    """Keeps ``X``, ``D`` of one-example batches (no padding), as captured (float32)."""

    def __init__(self):
        self.kept: dict[str, tuple] = {}

    def begin(self, mask, consumers, by_layer_role):
        assert mask.shape[0] == 1 and bool(mask.all()), "one example per batch, no padding"
        self.consumers = dict(consumers)

    def accept(self, target, X, D, x_key):
        self.kept[target.name] = (target, X[0].detach().clone(), D[0].detach().clone(),
                                  max(self.consumers.get(x_key, 1), 1))

    def finish(self):
        from layergrad.measure.sink import Measured

        return Measured()


def capture(n_examples: int, layers: list[int], lm_head: bool, data_dir: Path | None):
    import workloads as W
    from layergrad.inputs.targets import find_targets
    from layergrad.run.plan import pad_id_of
    from layergrad.run.step import BatchRunner

    data_dir = Path(data_dir) if data_dir else W.default_data_dir()
    missing = [str(data_dir / f) for f in W.DATA_FILES if not (data_dir / f).exists()]
    if missing:
        return None, f"real GSM8K data not found ({', '.join(missing)}): nothing measured"
    wl = W.load_workload("default", dtype="float32")
    per_file = (n_examples + 1) // 2
    examples, source = W.load_examples(per_file, data_dir)
    examples, encs, _ = W.encode_all(examples, wl.tokenizer)
    # alternate the files: Simplified CoT (short), Detailed CoT (long), ...
    half = len(encs) // 2
    order = [j for pair in zip(range(half), range(half, len(encs))) for j in pair][:n_examples]
    layers = [l if l >= 0 else wl.n_layers + l for l in layers]
    targets = [t for t in find_targets(wl.model, "all,lm_head" if lm_head else "all")
               if t.layer in layers or (lm_head and t.role == "lm_head")]
    cases = []
    for j in order:
        sink = KeepSink()
        runner = BatchRunner(wl.model, targets, sink, torch.device("cpu"), pad_id_of(wl.tokenizer))
        with runner.hooks():
            runner.run([encs[j]])
        for name, (t, X, D, shared) in sink.kept.items():
            cases.append(dict(example=j, source=examples[j].source, T=X.shape[0], name=name, role=t.role,
                              layer=t.layer, X=X, D=D, shared=shared))
        log(f"example {j} ({examples[j].source}, {encs[j].n_tokens} tokens): {len(sink.kept)} modules")
    desc = (f"{wl.description}; {source}; examples {order} ({', '.join(str(encs[j].n_tokens) for j in order)} tokens); "
            f"layers {layers}{' and lm_head' if lm_head else ''}")
    return cases, desc


# ---------------------------------------------------------------------------------------
# The candidates: (X (T, i) float32, D (T, o) float32) -> singular values (min(T, i, o),), float64
# ---------------------------------------------------------------------------------------


def side_matrix(X, D, side: str, dt: torch.dtype):
    """The side's ``S`` in ``dt`` (as :func:`svd.gram_svdvals`), and what ``G^T v`` / ``G w`` needs (Ritz)."""
    if side == "token":
        F, lower = svd.psd_factor(svd.gram(X, dt))
        return svd.congruence(F, svd.gram(D, dt), lower), F
    if side == "out":
        Dd = D.to(dt)
        return Dd.mT @ (svd.gram(X, dt) @ Dd), None
    if side == "in":
        Xd = X.to(dt)
        return Xd.mT @ (svd.gram(D, dt) @ Xd), None
    G = D.to(dt).mT @ X.to(dt)
    return (G @ G.mT if G.shape[0] <= G.shape[1] else G.mT @ G), G


def eig_values(S, r, dt):
    return svd.sqrt_eigvalsh(S.to(dt), r).to(F64)


def gram_route(side, form_dt, eig_dt):
    def f(X, D, r):
        S, _ = side_matrix(X, D, side, form_dt)
        return eig_values(S, r, eig_dt)
    return f


def ritz_route(side, norm_dt):
    """Float32 eigenvectors of the float32 side matrix; values as norms of G^T v (or G v) through the factors."""
    def f(X, D, r):
        S, aux = side_matrix(X, D, side, F32)
        V = torch.linalg.eigh(S).eigenvectors.flip(-1)[:, :r].to(norm_dt)  # top r, descending
        Xn, Dn = X.to(norm_dt), D.to(norm_dt)
        if side == "out":  # S = G G^T (o, o): G^T v = X^T (D v)
            B = Xn.mT @ (Dn @ V)
        elif side == "in":  # S = G^T G (i, i): G v = D^T (X v)
            B = Dn.mT @ (Xn @ V)
        elif side == "token":  # S = (D^T F)^T (D^T F): D^T F w
            B = Dn.mT @ (aux.to(norm_dt) @ V)
        else:
            G = aux.to(norm_dt)
            B = (G.mT @ V) if G.shape[0] <= G.shape[1] else (G @ V)
        return torch.linalg.vector_norm(B, dim=0).sort(descending=True).values.to(F64)
    return f


def qr_route(dt):
    def f(X, D, r):
        return svd.factored_svdvals(X.to(dt).unsqueeze(0), D.to(dt).unsqueeze(0))[0, :r].to(F64)
    return f


def qr32_core_svd64(X, D, r):
    """Diagnostic: float32 QR factors, their core multiplied and its SVD in float64 (where the floor is)."""
    RX, RD = svd.r_factor(X.unsqueeze(0)), svd.r_factor(D.unsqueeze(0))
    return torch.linalg.svdvals(svd.core(RX.double(), RD.double()))[0, :r]


def qr32_refined(X, D, r):
    """Float32 QR and float32 SVD of the core, then the singular values refined by float64 products only
    (the first step of Ogita and Aishima's refinement, 2020): with ``T = U^T C V``, ``R = I - U^T U``,
    ``S = I - V^T V`` in float64, ``s_k = T_kk / (1 - (R_kk + S_kk) / 2)``: second-order accurate for values
    separated by more than the float32 SVD's error ``~u32 s_1``; within such a cluster the float32 singular
    vectors mix and the values are averages over it."""
    RX, RD = svd.r_factor(X.unsqueeze(0))[0], svd.r_factor(D.unsqueeze(0))[0]
    C32 = RD @ RX.mT
    U, _, Vh = torch.linalg.svd(C32, full_matrices=False)
    U, V, C = U.double(), Vh.mT.double(), RD.double() @ RX.double().mT
    T = (U.mT @ C @ V).diagonal()
    R = 1 - (U * U).sum(0)  # diag(I - U^T U)
    S = 1 - (V * V).sum(0)
    return (T / (1 - (R + S) / 2)).abs().sort(descending=True).values[:r]


def dense32(X, D, r):
    return torch.linalg.svdvals(D.mT @ X)[:r].to(F64)


def dense64_svd32(X, D, r):
    return torch.linalg.svdvals((D.double().mT @ X.double()).float())[:r].to(F64)


def f64_cost(X, D, r, shared=1):
    T, i = X.shape
    side = methods.gram_side(T, i, D.shape[-1], x_shared_by=shared)
    return svd.gram_svdvals(X, D, side)


distinct_rows = svd.distinct_rows


def merged(route, dt):
    """``route`` on :func:`distinct_rows` (in ``dt``), its values past the merged rank bound exact zeros."""
    def f(X, D, r, shared=1):
        Xu, Du = (A.to(dt) for A in distinct_rows(X, D))
        k = min(int(svd.nonzero_terms(Xu, Du)), r)
        s = route(Xu, Du, min(Xu.shape[0], r)) if route is not f64_cost else f64_cost(Xu, Du, min(Xu.shape[0], r), shared)
        out = torch.zeros(r, dtype=F64)
        out[:k] = s[:k]
        return out
    return f


def candidates() -> dict:
    c = {"f64 gram cost": None}  # filled per case (needs `shared`)
    for side in svd.GRAM_SIDES:
        c[f"f64 gram {side}"] = lambda X, D, r, s=side: svd.gram_svdvals(X, D, s)
    for side in svd.GRAM_SIDES:
        c[f"f32 gram {side}"] = gram_route(side, F32, F32)
    for side in ("out", "token"):
        c[f"f64 gram {side}, f32 eig"] = gram_route(side, F64, F32)
        c[f"f32 gram {side}, f64 eig"] = gram_route(side, F32, F64)
    for side in svd.GRAM_SIDES:
        for nd, name in ((F32, "f32"), (F64, "f64")):
            c[f"ritz {side} {name}"] = ritz_route(side, nd)
    c["qr f32"] = qr_route(F32)
    c["qr f32, core svd f64"] = qr32_core_svd64
    c["qr f32, svd refined f64"] = qr32_refined
    c["qr f64"] = qr_route(F64)
    c["dense f32"] = dense32
    c["dense f64->f32 svd"] = dense64_svd32
    c["f64 gram cost, distinct rows"] = None  # filled per case (needs `shared`)
    c["float32-qr"] = lambda X, D, r: svd.float32_qr_svdvals(X, D)  # the library's route (--gram-precision float32-qr)
    return c


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def stats_of(s: torch.Tensor, full: int, rank: int) -> dict:
    st = metrics.spectrum_stats(s.unsqueeze(0), full, torch.tensor([rank]))
    return {k: float(getattr(st, k)[0]) for k in STATS + ("min_sigma",)}


def errors(s: torch.Tensor, ref: torch.Tensor, full: int, rank: int, k: int) -> dict:
    s = s.clone()
    s[k:] = 0  # values past nonzero_terms are exact zeros in every route (as gram_svdvals)
    s1 = float(ref[0])
    a, b = stats_of(s, full, rank), stats_of(ref, full, rank)
    out = {"sv": float((s.sort(descending=True).values - ref).abs().max()) / s1}
    for key in STATS:
        out[key] = abs(a[key] - b[key]) / abs(b[key])
    out["min_sigma"] = abs(a["min_sigma"] - b["min_sigma"]) / s1
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=4)
    p.add_argument("--layers", default="0,15,-1", help="decoder layers (negative: from the end)")
    p.add_argument("--lm-head", action="store_true", help="also the (tied) output head")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--reps", type=int, default=1, help="timed repetitions per case (medians)")
    p.add_argument("--routes", default=None, help="comma list of routes to measure (default: all); 'f64 gram cost' is "
                   "always measured (the time base)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cases, desc = capture(a.examples, [int(x) for x in a.layers.split(",")], a.lm_head, a.data_dir)
    if cases is None:
        print(f"precision.py: {desc}; skipped")
        return 0
    log(f"captured {len(cases)} cases in {time.perf_counter() - t0:.0f} s")
    cands = candidates()
    if a.routes:
        want = {"f64 gram cost"} | {w.strip() for w in a.routes.split(",") if w.strip()}
        unknown = want - set(cands)
        if unknown:
            p.error(f"--routes: unknown {sorted(unknown)}; choose from {list(cands)}")
        cands = {k: v for k, v in cands.items() if k in want}
    worst = {name: {} for name in cands}
    secs = {name: 0.0 for name in cands}
    per_case = []
    for ci, c in enumerate(cases):
        X, D = c["X"], c["D"]
        T, i = X.shape
        o = D.shape[-1]
        r = min(T, i, o)
        k = min(int(svd.nonzero_terms(X, D)), r)
        ref = torch.linalg.svdvals(D.double().mT @ X.double())[:r].clone()
        ref[k:] = 0
        kappa = float(torch.linalg.matrix_norm(X.double(), 2) * torch.linalg.matrix_norm(D.double(), 2) / ref[0])
        row = dict(example=c["example"], name=c["name"], T=T, i=i, o=o, k=k, kappa=kappa,
                   smin_over_s1=float(ref[k - 1] / ref[0]), s_r_over_s1=float(ref[r - 1] / ref[0]),
                   side=methods.gram_side(T, i, o, x_shared_by=c["shared"]), err={})
        sizes = {"token": T, "out": o, "in": i, "product": min(o, i)}
        timed = max(sizes.values()) <= MAX_SIDE  # times: only over the cases every candidate runs
        for name, fn in cands.items():
            side = next((w for w in name.split() if w.rstrip(",") in sizes), "product").rstrip(",")
            if name.startswith(("f64 gram", "f32 gram", "ritz")) and sizes[side] > MAX_SIDE:
                continue  # an (m, m) eigenproblem of the output head's 49,152 rows: not a candidate there
            if name == "f64 gram cost":
                fn = lambda X, D, r, sh=c["shared"]: f64_cost(X, D, r, sh)  # noqa: E731
            elif name == "f64 gram cost, distinct rows":
                fn = lambda X, D, r, sh=c["shared"]: merged(f64_cost, F64)(X, D, r, sh)  # noqa: E731
            times = []
            for _ in range(a.reps):
                t1 = time.perf_counter()
                s = fn(X, D, r)
                times.append(time.perf_counter() - t1)
            secs[name] += statistics.median(times) if timed else 0.0
            e = errors(s, ref, min(o, i), r, k)
            row["err"][name] = e
            for key, v in e.items():
                worst[name][key] = max(worst[name].get(key, 0.0), v)
        per_case.append(row)
        brief = ", ".join(f"{n} {row['err'][n]['sv']:.1e}" for n in ("f64 gram cost", "float32-qr", "qr f32", "f32 gram token")
                          if n in row["err"])
        log(f"{ci + 1}/{len(cases)} {c['name']} T={T}: kappa {kappa:.1f}, s_k/s_1 {row['smin_over_s1']:.1e}; {brief}")
    base = secs["f64 gram cost"]
    summary = {name: dict(worst[name], time_vs_f64_gram=secs[name] / base) for name in cands if worst[name]}
    res = dict(date=time.strftime("%Y-%m-%d"), torch=torch.__version__, captured=desc, cases=len(cases),
               seconds=time.perf_counter() - t0, summary=summary,
               kappa_max=max(r["kappa"] for r in per_case), kappa_median=statistics.median(r["kappa"] for r in per_case),
               per_case=per_case)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    keys = ["sv"] + list(STATS) + ["min_sigma"]
    print(f"{'route':26s} " + " ".join(f"{k[:10]:>10s}" for k in keys) + "   time")
    for name, row in summary.items():
        print(f"{name:26s} " + " ".join(f"{row[k]:10.1e}" for k in keys) + f"  {row['time_vs_f64_gram']:5.2f}")
    print(f"kappa = ||X|| ||D|| / s_1: median {res['kappa_median']:.1f}, max {res['kappa_max']:.1f}; {len(cases)} cases, "
          f"{res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
