"""The capture sink: per-example statistics of one module's gradient, batch by batch.

Receives ``X`` ``(n, t, i)`` and ``D`` ``(n, t, o)`` for a module of a padded batch and keeps only
small per-example results; the big tensors are freed on return. Inputs shared by several modules
(q, k, v; gate, up) are factorised once.

Two computations (``method``):

* ``gram`` (``auto`` with float32 statistics): one example at a time over its real tokens only
  (no padding work), the squared singular values as eigenvalues of a float64 Gram-type matrix,
  the cheapest of :data:`~layergrad.spectra.svd.GRAM_SIDES` per example and module (:func:`~layergrad.spectra.methods.gram_side`).
* ``factored`` / ``dense`` (``auto`` with float64 statistics): batched over the padded batch with
  padding rows zeroed, in ``stats_dtype``, by QR factors or the dense gradient
  (:func:`~layergrad.spectra.methods.choose_method`); their error is ``u * s_1``, which float64 statistics keep.

With ``gram_precision="float32-qr"`` (opt-in, for GPUs with weak FP64) the gram family computes each
example's values by :func:`~layergrad.spectra.svd.float32_qr_svdvals` instead (repeated token rows merged
exactly, then QR and SVD in float32; result rows say ``method = float32-qr``): per example over its real
tokens, or for the whole padded batch at once where the eigenproblems would be batched (``eig_batch``).

The Gram path's eigenproblems are solved either per example (the CPU default: examples in parallel on
CPU threads, each over its real tokens) or batched (``eig_batch``: ``auto`` turns it on for CUDA tensors,
where one float64 ``eigvalsh`` call costs milliseconds of latency whatever its size): each module's
side matrices are built for the whole padded batch (:func:`~layergrad.spectra.batched.gram_matrices`,
exact: padding adds only zero eigenvalues), queued, and solved together, one solver call per size class
and :data:`~layergrad.spectra.batched.STACK_BYTES`, when the queue holds ``eig_queue_bytes`` of matrices
and at :meth:`Measurer.finish`. The queue bounds the extra memory: at most ``eig_queue_bytes`` plus one
module's matrices.

With ``token_shares``, also each token's part ``<d_t x_t^T, G>`` of ``||G||_F^2``
(:func:`~layergrad.spectra.products.token_contributions`), per example over its real tokens, in
float64, from the ``(T, T)`` Gram matrices (``K_X`` shared with the Gram path and across q/k/v),
summed over the calls of a module and over the modules of a layer's role group (attn, mlp).

With ``cosine``, the cosines of pairs of gradients (next layer, q~o, k~v)
(:class:`~layergrad.spectra.products.InnerOperand`); with ``cosine_layers`` also every pair of layers
of one role (kinds ``gap2``, ``gap3``, ...: the follow-up paper's layer x layer matrices). A module
waits for its partners with its masked ``X`` and ``D`` (each product then costs ``T^2 (i + o)``) or,
for long texts, its dense gradient ``D^T X`` (formed once for ``T i o``, then ``i o`` per product):
whichever :func:`~layergrad.spectra.products.inner_route` finds cheaper for the module's number of
partners (about ``L`` per module with ``cosine_layers``). Both are exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from layergrad import vocab
from layergrad.spectra import batched, methods, metrics, products, svd
from layergrad.inputs.targets import ROLE_GROUPS, Target
from layergrad.measure.sink import Measured

COSINE_PAIRS = ("next_layer", "q_o", "k_v")
EIG_BATCH = vocab.EIG_BATCH  # the Gram path's eigenproblems batched: auto (on CUDA) | on | off
GRAM_PRECISIONS = vocab.GRAM_PRECISIONS  # the gram family's arithmetic: float64 | float32-qr


@dataclass
class ModuleResult:
    target: Target
    method: str
    stats: dict[str, Tensor]  # metric -> (n,) on CPU, float64
    spectrum: Tensor  # (n, k) on CPU, float32; example b's row holds min(k, rank[b]) values, then zeros
    rank: Tensor  # (n,) int64: each example's rank bound min(T_b * calls, i, o) (T_b its own tokens)
    elementwise: tuple[Tensor, Tensor, Tensor] | None = None


@dataclass
class Measurer:
    stats_dtype: torch.dtype = torch.float32
    spectrum_k: int | None = 64  # None: the full spectrum
    elementwise: bool = False
    cosine: bool = False
    cosine_layers: bool = False  # with cosine: every pair of layers of one role (kinds gap2, gap3, ...), kept to the batch's end
    method: str = "auto"  # auto | gram | factored | dense
    eig_batch: str = "auto"  # auto | on | off: the Gram path batched over examples and modules (auto: on CUDA)
    eig_queue_bytes: int = 1 << 30  # batched: side matrices queued before a solve (memory bound)
    token_shares: bool = False  # per-token parts of ||G||^2 per (layer, role group): Measured.shares
    gram_precision: str = "float64"  # vocab.GRAM_PRECISIONS: the gram family's arithmetic (float32-qr: svd.float32_qr_svdvals)
    results: dict[str, ModuleResult] = field(default_factory=dict)
    cosines: list[tuple[str, str, str, Tensor]] = field(default_factory=list)  # (kind, a, b, (n,))

    def begin(self, mask: Tensor, consumers: dict[tuple, int], by_layer_role: dict[tuple[int, str], Target]) -> None:
        """Start a batch: ``mask`` ``(n, t)`` is 1 at real tokens, 0 at padding."""
        self._mask = mask
        self._consumers = dict(consumers)
        self._rx: dict[tuple, Tensor] = {}
        self._xm: dict[tuple, Tensor] = {}
        self._grams: dict[tuple, list[dict[str, Tensor]]] = {}  # per shared input, per example: K_X, F_X
        self._rows: dict[int, list] = {}
        self._by_layer_role = by_layer_role
        self._pending: dict[str, products.InnerOperand] = {}
        self._bgrams: dict[tuple, dict[str, Tensor]] = {}  # batched: per shared input, K_X and F_X (n, t, t)
        self._queue: list[tuple[ModuleResult, Tensor, int, Tensor]] = []  # batched: (result, S, r, k) to solve
        self._queue_bytes = 0
        self.results = {}
        self.cosines = []
        self.shares: dict[tuple[int, str], list[Tensor | None]] = {}  # (layer, group) -> per example (T_b,)

    def _masked(self, A: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``A`` in ``dtype`` (default: the statistics') with its padding rows zeroed."""
        dtype = dtype or self.stats_dtype
        m = self._mask.to(device=A.device)
        t = A.shape[-2]
        if t != m.shape[-1]:  # a module called several times: its calls are concatenated on t
            m = m.repeat(1, t // m.shape[-1])
        return A.to(dtype) * m.unsqueeze(-1).to(dtype)

    def resolve_method(self, t: int, i: int, o: int, shared: int) -> str:
        family = methods.method_for(self.method, self.stats_dtype.itemsize)  # the user's precision -> a family
        return methods.cheapest("qr", t, i, o, x_shared_by=shared) if family == "qr" else family

    def _check_shapes(self, target: Target, X: Tensor, D: Tensor) -> None:
        """Every captured tensor is ``(n, t * calls, ·)`` for the batch's ``(n, t)`` mask, or nothing is stored."""
        n, t = self._mask.shape
        ok = (X.dim() == 3 and D.dim() == 3 and X.shape[:2] == D.shape[:2] and X.shape[0] == n and X.shape[1] % t == 0
              and X.shape[1] > 0 and X.shape[-1] == target.in_features and D.shape[-1] == target.out_features)
        if not ok:
            from layergrad.measure.capture import CaptureError

            raise CaptureError(
                f"{target.name}: captured input {tuple(X.shape)} and output gradient {tuple(D.shape)} do not match the "
                f"batch's {n} examples x {t} tokens and the module's {target.in_features} -> {target.out_features} "
                "features; its tokens cannot be attributed to examples, so nothing is stored"
            )

    def example_ranks(self, t: int, i: int, o: int) -> Tensor:
        """``(n,)`` rank bounds ``min(T_b * calls, i, o)`` for a module's token axis of length ``t``."""
        calls = t // self._mask.shape[-1]
        tokens = self._mask.to("cpu").sum(-1).to(torch.long) * calls
        return tokens.clamp(max=min(i, o))

    def finish(self) -> Measured:
        """This batch's results (the :class:`~layergrad.measure.sink.Sink` protocol)."""
        self._solve_queue()
        return Measured(modules=dict(self.results), cosines=list(self.cosines), shares=dict(self.shares))

    def accept(self, target: Target, X: Tensor, D: Tensor, x_key: tuple) -> None:
        self._check_shapes(target, X, D)
        n, t, _ = X.shape
        o, i = target.out_features, target.in_features
        shared = max(self._consumers.get(x_key, 1), 1)  # 0 or absent: captured after begin (reentrant recomputation)
        method = self.resolve_method(t, i, o, shared)
        if self.gram_precision not in GRAM_PRECISIONS:
            raise ValueError(f"unknown gram_precision {self.gram_precision!r}; choose one of {', '.join(GRAM_PRECISIONS)}")
        if method == "gram" and self.gram_precision == "float32-qr":
            method = "float32-qr"  # the gram family in float32 (the result rows say so)
        batch_eig = method == "gram" and self.batches_eigenproblems(X.device)
        Xm = Dm = None
        if method not in ("gram", "float32-qr") or self.elementwise or self.cosine:
            if x_key not in self._xm:
                self._xm[x_key] = self._masked(X)
            Xm = self._xm[x_key]
            Dm = self._masked(D)
        s = None
        if batch_eig:
            S, r, k = self._gram_batched(X, D, x_key, i, o, shared)
        elif method == "gram":
            s = self._gram(X, D, x_key, i, o, shared)
        elif method == "float32-qr":
            if self.batches_eigenproblems(X.device):  # the padded batch at once (as the batched Gram path)
                s = svd.float32_qr_svdvals(self._batch_input(X, x_key), self._masked(D, D.dtype))
            else:  # example by example over its real tokens (as the per-example Gram path)
                s = self._gram(X, D, x_key, i, o, shared, route=svd.float32_qr_svdvals)
        elif method == "factored":
            if x_key not in self._rx:
                self._rx[x_key] = svd.r_factor(Xm)
            s = svd.factored_svdvals(Xm, Dm, R_X=self._rx[x_key])
        elif method == "dense":
            s = svd.dense_svdvals(Xm, Dm)
        else:
            raise ValueError(f"unknown method {method!r}; choose auto, gram, factored or dense")
        rank = self.example_ranks(t, i, o)
        result = ModuleResult(target=target, method=method, stats={}, spectrum=torch.zeros(n, 0), rank=rank)
        if s is None:  # batched: solved with others, at the latest in finish()
            self._queue.append((result, S, r, k))
            self._queue_bytes += S.numel() * S.element_size()
        else:
            bound = rank if method in ("gram", "float32-qr") else torch.minimum(rank, svd.nonzero_terms(Xm, Dm).to("cpu"))  # gram: per example
            self._fill(result, s, bound)
        if self.elementwise:
            result.elementwise = tuple(v.to("cpu", torch.float64) for v in products.elementwise_stats(Xm, Dm))
        self.results[target.name] = result
        if self.cosine:
            self._cosine(target, Xm, Dm)
        if self.token_shares:
            self._token_shares(target, X, D, x_key)
        del Xm, Dm, s
        # free shared factors once every consumer is done
        self._consumers[x_key] = shared - 1
        if self._consumers[x_key] <= 0:
            self._rx.pop(x_key, None)
            self._xm.pop(x_key, None)
            self._grams.pop(x_key, None)
            self._bgrams.pop(x_key, None)
        if self._queue_bytes >= self.eig_queue_bytes:
            self._solve_queue()

    def _fill(self, result: ModuleResult, s: Tensor, bound: Tensor) -> None:
        """A result's statistics and stored spectrum from its singular values ``s`` ``(n, r)``."""
        o, i = result.target.out_features, result.target.in_features
        st = metrics.spectrum_stats(s, min(o, i), bound)
        spectrum = st.spectrum if self.spectrum_k is None else st.spectrum[..., : self.spectrum_k]
        result.stats = {k: getattr(st, k).to("cpu", torch.float64) for k in metrics.METRIC_NAMES}
        result.spectrum = spectrum.to("cpu", torch.float32)

    # -- the Gram path batched (eig_batch) -------------------------------------------------
    def batches_eigenproblems(self, device: torch.device) -> bool:
        """Whether the Gram path's eigenproblems are batched for tensors on ``device``."""
        if self.eig_batch not in EIG_BATCH:
            raise ValueError(f"unknown eig_batch {self.eig_batch!r}; choose one of {', '.join(EIG_BATCH)}")
        return self.eig_batch == "on" or (self.eig_batch == "auto" and device.type == "cuda")

    def _batch_input(self, X: Tensor, x_key: tuple) -> Tensor:
        """The padded batch's input ``X`` with its padding rows zeroed, in its own dtype: masked once per
        shared input (q, k, v), kept with the input's batched Gram factors until its last consumer."""
        c = self._bgrams.setdefault(x_key, {})
        if "X" not in c:
            c["X"] = self._masked(X, X.dtype)
        return c["X"]

    def _gram_batched(self, X: Tensor, D: Tensor, x_key: tuple, i: int, o: int, shared: int) -> tuple[Tensor, int, Tensor]:
        """The side matrices ``S`` ``(n, m, m)`` of the padded batch, ``r = min(t, i, o)`` and each example's
        ``k`` ``(n,)`` (values past it are exact zeros), to be solved later. As the per-example path, from
        the captured values in their own dtype (padding rows zeroed), squared in float64."""
        t = X.shape[-2]
        c = self._bgrams.setdefault(x_key, {})
        Xm, Dm = self._batch_input(X, x_key), self._masked(D, D.dtype)
        side = methods.gram_side(t, i, o, x_shared_by=shared, have_k_x="K" in c, have_f_x="F" in c)
        if side in ("token", "out") and "K" not in c:
            c["K"] = batched.gram_batched(Xm)  # (n, t, t)
        if side == "token" and "F" not in c:
            c["F"] = batched.psd_factor_batched(c["K"], (Xm == 0).all(-1))
        r = min(t, i, o)
        S = batched.gram_matrices(Xm, Dm, side, K_X=c.get("K"), F_X=c.get("F"))
        return S, r, svd.nonzero_terms(Xm, Dm).clamp(max=r)

    def _solve_queue(self) -> None:
        """Solve every queued module's eigenproblems together and fill their results."""
        queue, self._queue, self._queue_bytes = self._queue, [], 0
        if not queue:
            return
        spectra = batched.solve_stacks([(S, r, k) for _, S, r, k in queue])
        for (result, _, _, _), s in zip(queue, spectra):
            self._fill(result, s, result.rank)

    def _real_rows(self, t: int) -> list[slice | Tensor]:
        """Per example, its real tokens on a module's token axis of length ``t``: a slice when they
        are a prefix (right padding), else an index tensor."""
        if t not in self._rows:
            m = self._mask
            if t != m.shape[-1]:  # a module called several times: its calls are concatenated on t
                m = m.repeat(1, t // m.shape[-1])
            m = m.to("cpu", torch.bool)
            rows = []
            for mb in m:
                k = int(mb.sum())
                rows.append(slice(0, k) if bool(mb[:k].all()) else torch.nonzero(mb).flatten())
            self._rows[t] = rows
        return self._rows[t]

    def _gram(self, X: Tensor, D: Tensor, x_key: tuple, i: int, o: int, shared: int, route=None) -> Tensor:
        """``(n, min(t, i, o))`` float64 singular values, example by example over its real tokens; ``route``
        ``(X_b, D_b) -> values`` instead of the float64 Gram sides (``svd.float32_qr_svdvals``)."""
        n, t, _ = X.shape
        r = min(t, i, o)
        rows = self._real_rows(t)
        cache = self._grams.setdefault(x_key, [{} for _ in range(n)])  # per example: K_X, F_X
        found: list[Tensor | None] = [None] * n

        def one(b: int) -> None:
            idx = rows[b]
            Xb = X[b, idx] if isinstance(idx, slice) else X[b].index_select(0, idx.to(X.device))
            Db = D[b, idx] if isinstance(idx, slice) else D[b].index_select(0, idx.to(D.device))
            T = Xb.shape[0]
            if T == 0:
                return
            if route is not None:
                found[b] = route(Xb, Db)
                return
            c = cache[b]
            side = methods.gram_side(T, i, o, x_shared_by=shared, have_k_x="K" in c, have_f_x="F" in c)
            if side in ("token", "out") and "K" not in c:
                c["K"] = svd.gram(Xb)
            if side == "token" and "F" not in c:
                c["F"] = svd.psd_factor(c["K"])
            found[b] = svd.gram_svdvals(Xb, Db, side, K_X=c.get("K"), F_X=c.get("F"))

        _each_example(one, n, X.device, longest_first=sorted(range(n), key=lambda b: -_count(rows[b], t)))
        out = torch.zeros(n, r, dtype=svd.GRAM_DTYPE, device=X.device)
        for b, s in enumerate(found):
            if s is not None:
                out[b, : s.shape[-1]] = s
        return out

    # -- token shares: each token's part of ||G||^2, per example, from (T, T) matrices ----
    def _token_shares(self, target: Target, X: Tensor, D: Tensor, x_key: tuple) -> None:
        """Add ``<d_t x_t^T, G>`` ``(T_b,)`` of every example to its (layer, role group) sum."""
        group = next((g for g, roles in ROLE_GROUPS.items() if target.role in roles), None)
        if target.layer < 0 or group is None:  # outside the layer stack (lm_head, embeddings) or role unknown
            return
        n, t, _ = X.shape
        calls = t // self._mask.shape[-1]
        rows = self._real_rows(t)
        cache = self._grams.setdefault(x_key, [{} for _ in range(n)])  # K_X shared with the Gram path and q/k/v
        acc = self.shares.setdefault((target.layer, group), [None] * n)
        for b in range(n):
            idx = rows[b]
            Xb = X[b, idx] if isinstance(idx, slice) else X[b].index_select(0, idx.to(X.device))  # (T_b * calls, i)
            Db = D[b, idx] if isinstance(idx, slice) else D[b].index_select(0, idx.to(D.device))  # (T_b * calls, o)
            if Xb.shape[0] == 0:
                continue
            if "K" not in cache[b]:
                cache[b]["K"] = svd.gram(Xb)
            c = products.token_contributions(Xb, Db, K_X=cache[b]["K"])  # (T_b * calls,)
            c = c.reshape(calls, -1).sum(0).to("cpu")  # the calls' rows are the same tokens, call by call
            acc[b] = c if acc[b] is None else acc[b] + c

    # -- cosine similarities of pairs of gradients, from the factors ---------------------
    def _partners(self, t: Target) -> list[tuple[str, Target]]:
        lr = self._by_layer_role
        out = []
        if t.layer >= 0:
            nxt = lr.get((t.layer + 1, t.role))
            if nxt is not None:
                out.append(("next_layer", t, nxt))
            prv = lr.get((t.layer - 1, t.role))
            if prv is not None:
                out.append(("next_layer", prv, t))
            if self.cosine_layers:  # every other layer of the role, two or more apart (one apart: next_layer)
                for (layer, role), other in lr.items():
                    if role == t.role and abs(layer - t.layer) >= 2:
                        lo, hi = (t, other) if t.layer < layer else (other, t)
                        out.append((f"gap{hi.layer - lo.layer}", lo, hi))
            for kind, a, b in (("q_o", "q", "o"), ("k_v", "k", "v")):
                if t.role in (a, b):
                    other = lr.get((t.layer, b if t.role == a else a))
                    if other is not None:
                        first = t if t.role == a else other
                        second = other if t.role == a else t
                        out.append((kind, first, second))
        return [(k, a, b) for k, a, b in out if (a.out_features, a.in_features) == (b.out_features, b.in_features)]

    def _cosine(self, t: Target, Xm: Tensor, Dm: Tensor) -> None:
        partners = self._partners(t)
        route = products.inner_route(Xm.shape[-2], Xm.shape[-1], Dm.shape[-1], pairs=len(partners))
        self._pending[t.name] = products.InnerOperand(Xm, Dm, route)  # |G|^2 once per module
        for kind, a, b in partners:
            other = b if a.name == t.name else a
            if other.name in self._pending:
                cos = self._pending[a.name].cosine(self._pending[b.name])
                self.cosines.append((kind, a.name, b.name, cos.to("cpu", torch.float64)))
        # a module's factors are needed until each of its partners has arrived
        for name in list(self._pending):
            tgt = self.results[name].target
            if all(
                (b if a.name == name else a).name in self.results for _, a, b in self._partners(tgt)
            ):
                self._pending.pop(name)


# ---------------------------------------------------------------------------------------
# Examples in parallel on CPU
# ---------------------------------------------------------------------------------------


def _count(idx, t: int) -> int:
    return len(range(t)[idx]) if isinstance(idx, slice) else int(idx.numel())


def _each_example(fn, n: int, device: torch.device, longest_first: list[int]) -> None:
    """``fn(b)`` for every example of a batch.

    On a CPU with several torch threads, the examples run concurrently, each single-threaded: the
    symmetric eigensolver and Cholesky (MKL's LAPACK) gain only ~1.3x from a second thread on an
    idle 2-core machine and lose 2-500x when another process holds a core (threads wait for each
    other at every step of the tridiagonal reduction); independent single-threaded examples gain
    ~2x and cannot stall. ``fn`` must touch only its own example's data.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads <= 1 or n <= 1:
        for b in longest_first:
            fn(b)
        return
    from concurrent.futures import ThreadPoolExecutor

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(threads, n)) as pool:
            for _ in pool.map(fn, longest_first):  # re-raises the first failure
                pass
    finally:
        torch.set_num_threads(threads)
