"""The Gram path batched: one symmetric eigensolver call for many examples and modules. Tensors only.

Conventions as in :mod:`.svd` (n: examples, t: tokens, i: input, o: output features). Inputs are
padded batches ``X`` ``(n, t, i)``, ``D`` ``(n, t, o)`` whose padding rows are zero, anywhere on the
token axis (right or left padding, a module called several times).

Why this is exact. Zero rows of ``X`` and ``D`` add nothing to ``G = D^T X``. Each side's matrix
``S`` of a padded example is the real example's ``S`` bordered by zero rows and columns (``out``,
``in``, ``product``: their products only see zero rows; ``token``: see :func:`psd_factor_batched`),
so its eigenvalues are the real ones plus zeros. Zero-padding ``S`` ``(m, m)`` further to a size
class ``(M, M)`` adds ``M - m`` more zeros. :func:`sqrt_eigvalsh_batched` keeps the ``r`` largest
and clips negatives to 0, exactly as :func:`~layergrad.spectra.svd.sqrt_eigvalsh`: where the real
``S`` has fewer than ``r`` nonnegative eigenvalues, the zeros that padding adds stand where rounding
left negatives that would have been clipped to 0 anyway. Values past an example's
``nonzero_terms`` are exact zeros, as in :func:`~layergrad.spectra.svd.gram_svdvals`.

Why batched. On CUDA a float64 ``eigvalsh`` of a few hundred rows is latency-bound (~4-5 ms a call,
BENCHMARKS.md, section GPU) and torch loops over a batch for ``n > 32`` (pytorch#175585);
:func:`eigvalsh_stack` hands a whole stack to cuSOLVER's batched solver through CuPy (the optional
extra ``layergrad[gpu]``; zero-copy via DLPack) and otherwise to ``torch.linalg.eigvalsh`` (the
CPU, and the fallback).

The float32 route (``gram_precision="float32-qr"``) has no eigenproblems: a padded batch goes to
:func:`~layergrad.spectra.svd.float32_qr_svdvals` as it is (one implementation for both paths), which merges
each example's repeated rows (padding rows merge into one zero row) and runs one batched float32 QR and SVD.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from layergrad.spectra.svd import GRAM_DTYPE, GRAM_SIDES, nonzero_terms

__all__ = ["size_class", "eigvalsh_stack", "sqrt_eigvalsh_batched", "solve_stacks", "gram_batched",
           "psd_factor_batched", "gram_matrices", "batched_gram_svdvals", "EIG_BACKENDS"]

# Size classes and stack sizes. To be set from the GPU measurement (benchmarks/gpu_eig.py, in
# benchmarks/gpu_checks.sh); until then: classes 2^k and 1.5 * 2^k from SIZE_CLASS_MIN (padding adds less
# than half to m, so under 3.4x the m^3 work of that problem, and on CUDA, where these solves are
# latency-bound, that is cheaper than a call per size; it merges every module of a batch whose
# side has the same size, e.g. the token side of q, k, v, o, gate, up, down), and stacks of at most
# STACK_BYTES of float64 matrices per solver call (bounded memory: the solver's copy and workspace are of
# the same order).
SIZE_CLASS_MIN = 32
STACK_BYTES = 512 * 2**20

#: ``eigvalsh_stack`` backends: ``auto`` (CuPy's cuSOLVER batched solver on CUDA when CuPy imports,
#: else torch), ``cupy`` (required: an error when unavailable), ``torch``. ``LAYERGRAD_EIG_BACKEND``
#: overrides ``auto`` (for measurements).
EIG_BACKENDS = ("auto", "cupy", "torch")


def size_class(m: int) -> int:
    """The padded size of an ``(m, m)`` eigenproblem: the smallest of ``SIZE_CLASS_MIN``, 48, 64, 96,
    128, 192, ... (``2^k`` and ``1.5 * 2^k``) that is at least ``m``."""
    if m <= SIZE_CLASS_MIN:
        return SIZE_CLASS_MIN
    p = 1 << (m - 1).bit_length()  # the next power of two >= m
    return p * 3 // 4 if p * 3 // 4 >= m else p


# ---------------------------------------------------------------------------------------
# One solver call for a stack
# ---------------------------------------------------------------------------------------


def _cupy():
    """CuPy, or ``None`` when it does not import (no extra installed, no CUDA runtime)."""
    try:
        import cupy  # noqa: PLC0415  (the optional extra layergrad[gpu]: imported only when asked for)
    except Exception:  # ImportError, or a CUDA library that fails to load
        return None
    return cupy


def _cupy_eigvalsh(S: Tensor, cp) -> Tensor:
    """``(B, M, M)`` CUDA float64 -> ``(B, M)`` ascending, by CuPy (cuSOLVER's batched solver) on
    torch's current stream; in and out by DLPack, no copy through the host."""
    dev = S.device.index if S.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(S.device)
    with cp.cuda.Device(dev), cp.cuda.ExternalStream(stream.cuda_stream, dev):
        w = cp.linalg.eigvalsh(cp.from_dlpack(S.contiguous()))
    return torch.from_dlpack(w)


def eigvalsh_stack(S: Tensor, backend: str = "auto") -> Tensor:
    """Eigenvalues, ascending, of a stack of symmetric matrices: ``(B, M, M) -> (B, M)``, one call.

    On CUDA with CuPy (``auto``, ``cupy``) cuSOLVER's batched solver; otherwise, and for any stack whose
    result is not finite, ``torch.linalg.eigvalsh`` (which on CUDA loops over the stack for ``M > 32``).
    """
    if backend not in EIG_BACKENDS:
        raise ValueError(f"unknown eigensolver backend {backend!r}; choose one of {', '.join(EIG_BACKENDS)}")
    if backend == "auto":
        backend = os.environ.get("LAYERGRAD_EIG_BACKEND", "auto")
    if S.is_cuda and backend in ("auto", "cupy") and S.shape[0] > 0:
        cp = _cupy()
        if cp is None and backend == "cupy":
            raise RuntimeError("the cupy eigensolver backend needs CuPy: pip install 'layergrad[gpu]'")
        if cp is not None:
            w = _cupy_eigvalsh(S, cp)
            if bool(torch.isfinite(w).all()):  # one synchronisation per stack
                return w
    return torch.linalg.eigvalsh(S)


def sqrt_eigvalsh_batched(S: Tensor, r: int, k: Tensor | None = None, backend: str = "auto") -> Tensor:
    """The batched :func:`~layergrad.spectra.svd.sqrt_eigvalsh`: ``(B, M, M) -> (B, r)``, descending.

    Exactly ``r`` values, negatives clipped to 0, nothing thresholded; with ``k`` ``(B,)``, values from
    index ``k[b]`` on are set to exact zeros (past an example's ``nonzero_terms``).
    """
    return _keep(eigvalsh_stack(S, backend).flip(-1), r, k)


def _keep(w: Tensor, r: int, k: Tensor | None) -> Tensor:
    """``(B, M)`` descending eigenvalues -> ``(B, r)`` singular values: the ``r`` largest, negatives
    clipped to 0, and exact zeros from index ``k[b]`` on."""
    s = w[..., :r].clamp_min(0).sqrt()
    if k is not None:
        keep = torch.arange(r, device=s.device) < k.to(s.device).unsqueeze(-1)  # (B, r)
        s = torch.where(keep, s, torch.zeros((), dtype=s.dtype, device=s.device))
    return s


def solve_stacks(items: list[tuple[Tensor, int, Tensor | None]], backend: str = "auto",
                 stack_bytes: int = STACK_BYTES) -> list[Tensor]:
    """Singular values from many stacks at once: ``[(S_j (n_j, m_j, m_j), r_j, k_j (n_j,) or None)] ->
    [(n_j, r_j)]``, in order.

    Stacks are zero-padded to their :func:`size_class` and every stack of one class is solved in one
    call per ``stack_bytes`` of matrices (exact: see the module docstring).
    """
    out: list[Tensor | None] = [None] * len(items)
    classes: dict[tuple, list[int]] = {}
    for j, (S, r, _) in enumerate(items):
        if S.shape[-1] < r:
            raise ValueError(f"stack {j}: r={r} values asked of {S.shape[-1]} x {S.shape[-1]} matrices")
        classes.setdefault((size_class(S.shape[-1]), S.device, S.dtype), []).append(j)
    for (M, device, dtype), js in classes.items():
        per_call = max(1, stack_bytes // (M * M * dtype.itemsize))
        # (job, row) for every matrix of the class, solved per_call at a time
        rows = [(j, b) for j in js for b in range(items[j][0].shape[0])]
        parts: dict[int, list[Tensor]] = {j: [] for j in js}
        for c in range(0, len(rows), per_call):
            chunk = rows[c : c + per_call]
            stack = torch.zeros(len(chunk), M, M, dtype=dtype, device=device)  # (B, M, M)
            # contiguous runs of one job are copied in one slice
            runs = _runs(chunk)
            pos = 0
            for j, b0, b1 in runs:
                m = items[j][0].shape[-1]
                stack[pos : pos + b1 - b0, :m, :m] = items[j][0][b0:b1]
                pos += b1 - b0
            w = eigvalsh_stack(stack, backend).flip(-1)  # (B, M) descending
            pos = 0
            for j, b0, b1 in runs:
                parts[j].append(w[pos : pos + b1 - b0])
                pos += b1 - b0
            del stack
        for j in js:
            S, r, k = items[j]
            w = torch.cat(parts[j]) if parts[j] else S.new_zeros(0, M)
            out[j] = _keep(w, r, k)  # (n_j, r)
    return out  # type: ignore[return-value]


def _runs(chunk: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """``[(j, b), ...]`` -> ``[(j, b0, b1), ...]``: maximal runs of consecutive rows of one job."""
    runs: list[list[int]] = []
    for j, b in chunk:
        if runs and runs[-1][0] == j and runs[-1][2] == b:
            runs[-1][2] = b + 1
        else:
            runs.append([j, b, b + 1])
    return [tuple(r) for r in runs]  # type: ignore[misc]


# ---------------------------------------------------------------------------------------
# The sides' matrices for a padded batch
# ---------------------------------------------------------------------------------------


def gram_batched(A: Tensor, dtype: torch.dtype = GRAM_DTYPE, block: int = 1024) -> Tensor:
    """``A A^T`` per example: ``(n, t, f) -> (n, t, t)`` in ``dtype``, ``block`` columns converted at a time."""
    n, t, f = A.shape
    K = A.new_zeros((n, t, t), dtype=dtype)
    for c in range(0, f, block):
        Ac = A[..., c : c + block].to(dtype)  # (n, t, block)
        K.baddbmm_(Ac, Ac.mT)
    return K


def psd_factor_batched(K: Tensor, empty: Tensor) -> Tensor:
    """``F`` ``(n, t, t)`` with ``F F^T = K + diag(empty)`` for ``K`` ``(n, t, t)`` positive semi-definite
    whose rows and columns are zero where ``empty`` ``(n, t)`` is true (padding, or a token whose input
    row is zero).

    The ones on those diagonal entries make the batched Cholesky factor exist for every example whose real
    block is definite (one call, one synchronisation for the whole batch); it is the real block's factor
    bordered by an identity. Where it breaks down (a singular real block), that example takes
    eigenvectors scaled by the square roots of its eigenvalues clamped at 0, with ``F F^T = K``.
    Either way ``F^T K_D F``, with ``K_D`` zero on the ``empty`` rows, has the real example's eigenvalues
    plus zeros.
    """
    L, info = torch.linalg.cholesky_ex(K + torch.diag_embed(empty.to(K.dtype)))
    bad = torch.nonzero(info).flatten().tolist()
    if bad:
        w, V = torch.linalg.eigh(K[bad])
        L[bad] = V * w.clamp_min(0).sqrt().unsqueeze(-2)
    return L


def gram_matrices(X: Tensor, D: Tensor, side: str, *, K_X: Tensor | None = None, F_X: Tensor | None = None) -> Tensor:
    """The side's symmetric matrix ``S`` per example of a padded batch, float64:
    ``(n, t, i), (n, t, o) -> (n, m, m)`` with ``m`` = ``t`` (token), ``o`` (out), ``i`` (in),
    ``min(o, i)`` (product). ``S``'s eigenvalues are the squared singular values of ``G = D^T X``
    and zeros. ``K_X = gram_batched(X)`` and ``F_X`` (from :func:`psd_factor_batched` with
    ``empty = (X == 0).all(-1)``) may be passed in when modules share ``X``.
    """
    if side not in GRAM_SIDES:
        raise ValueError(f"unknown Gram side {side!r}; choose one of {', '.join(GRAM_SIDES)}")
    dt = GRAM_DTYPE
    o, i = D.shape[-1], X.shape[-1]
    if side == "token":
        empty = (X == 0).all(-1)  # (n, t): padding, and tokens whose input adds nothing to G
        if F_X is None:
            F_X = psd_factor_batched(K_X if K_X is not None else gram_batched(X), empty)
        Dz = D * (~empty).unsqueeze(-1).to(D.dtype)  # zero where F F^T has its bordering identity
        return F_X.mT @ gram_batched(Dz) @ F_X  # (n, t, t)
    if side == "out":
        K = K_X if K_X is not None else gram_batched(X)
        Dd = D.to(dt)
        return Dd.mT @ (K @ Dd)  # (n, o, o)
    if side == "in":
        Xd = X.to(dt)
        return Xd.mT @ (gram_batched(D) @ Xd)  # (n, i, i)
    G = D.to(dt).mT @ X.to(dt)  # (n, o, i)
    return G @ G.mT if o <= i else G.mT @ G


def batched_gram_svdvals(X: Tensor, D: Tensor, side: str, *, K_X: Tensor | None = None, F_X: Tensor | None = None,
                         backend: str = "auto") -> Tensor:
    """Singular values of every example's ``G = D^T X`` of a padded batch (zero padding rows), float64:
    ``(n, t, i), (n, t, o) -> (n, min(t, i, o))``, descending; example ``b``'s values past
    ``min(nonzero_terms, i, o)`` are exact zeros (as :func:`~layergrad.spectra.svd.gram_svdvals`).
    One solver call per :data:`STACK_BYTES`.
    """
    t, i, o = X.shape[-2], X.shape[-1], D.shape[-1]
    r = min(t, i, o)
    S = gram_matrices(X, D, side, K_X=K_X, F_X=F_X)
    k = nonzero_terms(X, D).clamp(max=r)
    return solve_stacks([(S, r, k)], backend)[0]
