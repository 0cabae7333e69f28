"""The ways to compute an example's singular values, each with its cost: one registry.

Two families, chosen by the precision the user asked for (:func:`method_for`), then the cheapest
way of the family per module and example (:func:`cheapest`):

* ``qr`` (float64 statistics: error ``u * s_1`` in the statistics' dtype), batched over a padded
  batch: ``factored`` (the small core of the QR factors) or ``dense`` (``G`` itself);
* ``gram`` (float32 statistics: squares in float64, error ``sqrt(u) * s_1 ~ 1e-8 s_1``), one example
  at a time over its real tokens: the sides of :data:`~layergrad.spectra.svd.GRAM_SIDES`.

With ``RunConfig.gram_precision = "float32-qr"`` the ``gram`` family is computed instead by
:func:`~layergrad.spectra.svd.float32_qr_svdvals` (one way, no sides to choose; the arithmetic is the user's
choice, not the cost model's).

Each way's cost is an operation count (one example) scaled by constants measured on this kind of
machine; the costs only decide between ways of computing the same numbers, never what they are.
Ties go to the way listed first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from layergrad.spectra.svd import GRAM_SIDES, SYMMETRIC_SPLIT

# Relative costs in units of float64 matrix-product operations (``2 a b c`` for ``(a, b) @ (b, c)``),
# measured by ``benchmarks/calibrate.py --threads 1`` (the Gram path runs each example on one thread,
# see measure.py; torch 2.13 CPU with MKL, AMD EPYC; medians over m = 192..768): ``eigvalsh`` of an
# ``(m, m)`` float64 matrix ~ ``EIG_COST m^3``, a Cholesky ``CHOL_COST m^3``, ``svdvals`` of an
# ``(a, b)`` float32 matrix ~ ``SVD_COST a b min(a, b)``, and a float32 Householder QR (``mode="r"``)
# runs at ``1 / QR_SLOWDOWN`` the rate of a float64 product. Only ratios matter: each constant decides
# between ways of computing the same numbers, never what they are.
QR_SLOWDOWN = 0.85
SVD_COST = 8.0
EIG_COST = 5.5
CHOL_COST = 1.1


@dataclass(frozen=True)
class Way:
    name: str  # "factored", "dense", or a Gram side ("token", "out", "in", "product")
    family: str  # "qr" | "gram"
    cost: Callable[..., float]  # (t, i, o, *, x_shared_by, have_k_x, have_f_x) -> operations


def _qr(f: int, t: int, k: int) -> float:
    return QR_SLOWDOWN * (2.0 * f * t * k - 2.0 * k**3 / 3)


def _svd(a: int, b: int) -> float:
    return SVD_COST * a * b * min(a, b)


def _eig(m: int) -> float:
    return EIG_COST * m**3


def gram_cost(f: int, t: int) -> float:
    """Operations of :func:`~layergrad.spectra.svd.gram` on a ``(t, f)`` matrix."""
    return 2.0 * f * t * t * (0.75 if t >= SYMMETRIC_SPLIT else 1.0)


# QR of an (f, t) matrix 2 f t k - 2 k^3 / 3 with k = min(f, t); an SVD of the core (min(o, t), min(i, t))
# or of the dense (o, i) gradient. ``x_shared_by`` modules share the input's factor: each pays its share.
def _factored_cost(t, i, o, *, x_shared_by=1, **_):
    kx, kd = min(i, t), min(o, t)
    return _qr(i, t, kx) / x_shared_by + _qr(o, t, kd) + 2.0 * kd * t * kx + _svd(kd, kx)


def _dense_cost(t, i, o, **_):
    return 2.0 * o * t * i + _svd(o, i)


# The Gram sides: a shared input's K_X and factor are paid once (each of the x_shared_by modules pays its
# share, and nothing when they are already computed: have_k_x, have_f_x).
def _kx(t, i, x_shared_by, have_k_x):
    return 0.0 if have_k_x else gram_cost(i, t) / x_shared_by


def _token_cost(t, i, o, *, x_shared_by=1, have_k_x=False, have_f_x=False):
    fx = 0.0 if have_f_x else _kx(t, i, x_shared_by, have_k_x) + CHOL_COST * t**3 / x_shared_by
    return fx + gram_cost(o, t) + (2.5 if t >= SYMMETRIC_SPLIT else 4.0) * t**3 + _eig(t)


def _out_cost(t, i, o, *, x_shared_by=1, have_k_x=False, **_):
    return _kx(t, i, x_shared_by, have_k_x) + 2.0 * t * t * o + 2.0 * t * o * o + _eig(o)


def _in_cost(t, i, o, **_):
    return gram_cost(o, t) + 2.0 * t * t * i + 2.0 * t * i * i + _eig(i)


def _product_cost(t, i, o, **_):
    a, b = min(o, i), max(o, i)
    return 2.0 * t * i * o + 2.0 * a * a * b + _eig(a)


#: Every way, in tie-breaking order.
WAYS: dict[str, Way] = {w.name: w for w in (
    Way("factored", "qr", _factored_cost),
    Way("dense", "qr", _dense_cost),
    Way("token", "gram", _token_cost),
    Way("out", "gram", _out_cost),
    Way("in", "gram", _in_cost),
    Way("product", "gram", _product_cost),
)}
assert tuple(n for n, w in WAYS.items() if w.family == "gram") == GRAM_SIDES


def cheapest(family: str, t: int, i: int, o: int, **shared) -> str:
    """The name of the cheapest way of ``family`` for one example of ``t`` tokens (``shared``: the
    ``x_shared_by``/``have_k_x``/``have_f_x`` of the cost functions)."""
    ways = [w for w in WAYS.values() if w.family == family]
    return min(ways, key=lambda w: w.cost(t, i, o, **shared)).name


def method_for(method: str, stats_itemsize: int) -> str:
    """What the user's ``--method`` means for statistics of ``stats_itemsize`` bytes: ``gram``,
    ``factored``, ``dense``, or ``qr`` (the cheaper of factored and dense, per module).

    ``auto``: float32 (or narrower) statistics take the float64 Gram path (faster on a CPU, and more
    exact than float32 QR); float64 statistics take the QR family, whose error is ``u * s_1``.
    """
    if method != "auto":
        return method
    return "gram" if stats_itemsize < 8 else "qr"


def choose_method(t: int, i: int, o: int, *, x_shared_by: int = 1) -> str:
    """``"factored"`` or ``"dense"``, whichever is cheaper (the ``qr`` family)."""
    return cheapest("qr", t, i, o, x_shared_by=x_shared_by)


def gram_side(t: int, i: int, o: int, *, x_shared_by: int = 1, have_k_x: bool = False, have_f_x: bool = False) -> str:
    """The cheapest of :data:`~layergrad.spectra.svd.GRAM_SIDES` for one example."""
    return cheapest("gram", t, i, o, x_shared_by=x_shared_by, have_k_x=have_k_x, have_f_x=have_f_x)
