"""The reduced Jacobian: one QR of ``[J | f]`` per linearization, and the thin SVD.

Every trust-region solve, quadratic model and covariance works with the
``n x n`` factor ``R`` and ``Q^T f`` instead of the ``m x n`` Jacobian:
``||J s|| = ||R s||`` and ``U^T f = U_R^T Q^T f`` make this exact algebra.
This is the single place that forms the reduction, so a different one (for
instance accumulated over chunks of residuals) replaces this module only.

Two routes to the thin SVD
--------------------------
One fit uses LAPACK (``gesdd``).  ``curve_fit_many`` runs a thousand small fits
at once, where a batched LAPACK call loops over the fits one small matrix at a
time (a transposed copy and a call per fit: about 2 ms per iteration for
``B = 1000``, ``n = 3``).  While its program is traced
(:func:`vectorized_small_svd`), the SVD of a small matrix comes instead
from one-sided Jacobi rotations (Hestenes 1958; Demmel & Veselic 1992: singular
values to high relative accuracy), written as element-wise code that XLA
vectorizes across the batch (about 10x faster there).  Both are exact to
rounding, so the two routes agree to rounding (``tests/test_many.py`` checks
this, also for ill-conditioned, rank-deficient and tall matrices).  It is used
for the solvers' steps with ``n <= FUSED_MAX_N`` columns only, where its
unrolled code stays small (it adds about 0.6 s to the batched program's first
compilation; the QR route's covariance, computed once per fit, keeps LAPACK's
SVD, the Gram route's is ``R^{-1} R^{-T}``, :func:`pcov_from_triangular`).

Two routes to ``R``
-------------------
TRF and dogbox fits, and the Levenberg-Marquardt fits that are chunked,
sharded, logged, called back or given another Jacobian, take LAPACK's QR.
Cholesky QR written as separate sums (shifted, three passes, as accurate as
Householder) streamed the ``B x m`` columns through memory a pass per product
and was slower than the batched ``geqrf`` at ``B = 1000``, ``m = 512``.  The
other Levenberg-Marquardt fits (:func:`gram_reduction`: batched ones, and single
ones that ``nlsq._lm.single_fit_by_gram`` admits) instead take ``R`` from the
Gram matrix of ``[J | f]`` with all its sums as ONE reduction
(:func:`reduce_by_gram`), which XLA fuses with the model and its derivatives:
one pass over the rows per linearization.  Forming ``J^T J`` squares the
condition number, so fits whose scaled pivots (:func:`gram_pivot_ratio`) fall
below ``nlsq._solve.MIN_SINGLE_GRAM_PIVOT_RATIO`` (single fits and batched ones
alike) are refitted by the QR route.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax import lax

from ._common import EPS

#: Largest number of parameters for which the fused route is used.
FUSED_MAX_N = 8
#: Jacobi sweeps at most (each sweep rotates every pair of columns once);
#: convergence is quadratic, so small matrices need 4 to 6.
_MAX_SWEEPS = 30

_FUSED = contextvars.ContextVar("nlsq_fused_small_svd", default=False)


@contextlib.contextmanager
def _switched_on(flag: contextvars.ContextVar) -> Iterator[None]:
    """``flag`` true while tracing inside the ``with`` block (this context only)."""
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


def vectorized_small_svd() -> contextlib.AbstractContextManager[None]:
    """Trace the SVDs of small matrices as element-wise code (batched fits; see the module doc)."""
    return _switched_on(_FUSED)


def _fused(n: int) -> bool:
    return _FUSED.get() and n <= FUSED_MAX_N


def reduce_jacobian(J, f):
    """``(R, Q^T f)`` from one QR of ``[J | f]``; ``(J, f)`` itself when QR would not shrink J."""
    m, n = J.shape
    if m <= n + 1:
        return J, f
    R_aug = jnp.linalg.qr(jnp.concatenate([J, f[:, None]], axis=1), mode="r")
    return R_aug[:n, :n], R_aug[:n, n]


def thin_svd(A):
    """``U (r, n), s (n,), V^T (n, n)`` of an ``r x n`` matrix, ``r >= n``; ``s`` descending."""
    if A.shape[0] >= A.shape[1] and _fused(A.shape[1]):
        return _jacobi_svd(A)
    return jnp.linalg.svd(A, full_matrices=False)


def pcov_from_R(R, m: int, n: int):
    """``(J^T J)^{-1}`` from the reduced Jacobian, or NaN where it does not exist.

    scipy's rule for a negligible singular value is ``s <= eps * max(m, n) * s[0]``
    (the threshold of its Moore-Penrose inverse in ``curve_fit``).  A Jacobian with
    such a singular value is rank deficient: some combination of parameters has no
    effect on the residuals, so their variance is unbounded.  scipy's pseudo-inverse
    would report 0 along that direction (a parameter "known exactly"); its default
    method ``'lm'`` reports an all-``inf`` matrix with ``OptimizeWarning`` when the
    pivoted QR of J has an exact zero pivot.  We return NaN for every rank deficient
    Jacobian, which ``curve_fit`` turns into scipy's all-``inf`` matrix and warning.
    """
    # LAPACK's SVD on either route: it runs once per fit, and the Jacobi loop would
    # only add compile time here.
    _, s, VT = jnp.linalg.svd(R, full_matrices=False)
    threshold = EPS * jnp.maximum(m, n) * s[0]  # m may be traced (padded data)
    rank_deficient = jnp.any(s <= threshold) | (s.shape[0] < n)
    s_safe = jnp.where(rank_deficient, 1.0, s)
    pcov = (VT.T / s_safe**2) @ VT
    return jnp.where(rank_deficient | ~jnp.isfinite(s[0]), jnp.nan, pcov)


# --- The fused route ---


def _dot(a, b):
    return jnp.sum(a * b)


def _jacobi_svd(A):
    """Thin SVD by one-sided Jacobi: rotate column pairs of ``A V`` until orthogonal.

    The columns are kept as separate arrays, so a rotation is element-wise code
    (no scatter into a matrix): small programs, quick to compile.
    """
    n = A.shape[1]

    def sweep(carry):
        W, V, _, count = carry
        W, V = list(W), list(V)
        rotated = jnp.asarray(False)
        for i in range(n - 1):
            for j in range(i + 1, n):
                a, b, g = _dot(W[i], W[i]), _dot(W[j], W[j]), _dot(W[i], W[j])
                rotate = jnp.abs(g) > EPS * jnp.sqrt(a * b)
                # The rotation that zeroes g (Rutishauser's formulas, smaller angle).
                zeta = (b - a) / (2 * jnp.where(rotate, g, 1.0))
                t = jnp.where(zeta >= 0, 1.0, -1.0) / (jnp.abs(zeta) + jnp.sqrt(1 + zeta * zeta))
                t = jnp.where(rotate, t, 0.0)
                c = 1 / jnp.sqrt(1 + t * t)
                s = c * t
                W[i], W[j] = c * W[i] - s * W[j], s * W[i] + c * W[j]
                V[i], V[j] = c * V[i] - s * V[j], s * V[i] + c * V[j]
                rotated = rotated | rotate
        return tuple(W), tuple(V), rotated, count + 1

    eye = jnp.eye(n, dtype=A.dtype)
    start = (tuple(A.T), tuple(eye), jnp.asarray(True), 0)
    W, V, _, _ = lax.while_loop(lambda c: c[2] & (c[3] < _MAX_SWEEPS), sweep, start)
    norms = jnp.sqrt(jnp.sum(jnp.stack(W, axis=1) ** 2, axis=0))
    s, W, V = _sorted_descending([norms[k] for k in range(n)], list(W), list(V))
    W, V, s = jnp.stack(W, axis=1), jnp.stack(V, axis=1), jnp.stack(s)
    U = jnp.where(s > 0, W / jnp.where(s > 0, s, 1.0), 0.0)
    return U, s, V.T


def _sorted_descending(s: list, W: list, V: list):
    """``s`` sorted descending, columns of ``W`` and ``V`` alike, stably (equal values keep
    their order): odd-even transposition, ``n`` rounds of compare-and-swap of
    neighbours.  Element-wise (a batched sort op was slower for a few columns)."""
    n = len(s)
    for round_ in range(n):
        for i in range(round_ % 2, n - 1, 2):
            swap = s[i] < s[i + 1]
            for cols in (s, W, V):
                cols[i], cols[i + 1] = (
                    jnp.where(swap, cols[i + 1], cols[i]),
                    jnp.where(swap, cols[i], cols[i + 1]),
                )
    return s, W, V


# --- The Gram route (batched Levenberg-Marquardt) ---
#
# A batched ``geqrf`` is one LAPACK call per fit on a column-major copy of
# ``[J | f]``: for ``B = 1000`` fits of ``m = 512`` rows and 3 parameters, the copy
# and the calls took about half of ``curve_fit_many``'s time.  For few parameters
# the same ``R`` and ``Q^T f`` follow from the ``(n + 1) x (n + 1)`` Gram matrix of
# ``[J | f]``: ``R`` is the Cholesky factor of ``J^T J`` (Householder's ``R`` up to
# the signs of its rows, which nothing downstream sees) and ``Q^T f = R^{-T} J^T f``.
# Its sums are one reduction with several outputs, which XLA fuses with the model
# and its derivatives, across the batch, with no ``m x n`` array written.  Forming
# ``J^T J`` squares the condition number: the scaled pivots
# (:func:`gram_pivot_ratio`) say when that loses digits, and ``curve_fit_many``
# refits such fits with the QR route.

_GRAM = contextvars.ContextVar("nlsq_gram_reduction", default=False)


def gram_reduction() -> contextlib.AbstractContextManager[None]:
    """Trace Levenberg-Marquardt's reduced Jacobian by the Gram route (batched fits, and
    single fits that ``nlsq._lm.single_fit_by_gram`` admits)."""
    return _switched_on(_GRAM)


def use_gram(n: int) -> bool:
    """Whether the reduction of an ``n``-parameter Jacobian takes the Gram route here."""
    return _GRAM.get() and n <= FUSED_MAX_N


def _sums(terms: list) -> list:
    """The sums of equally long vectors, as ONE reduction with several outputs.

    XLA then evaluates the model, its derivatives and every product in one pass
    over the rows (one fusion); separate sums were a pass and a library call each,
    about four times slower for the ``B x m`` arrays of a batch.
    """
    zeros = tuple(jnp.zeros((), t.dtype) for t in terms)

    def add(a, b):
        return tuple(x + y for x, y in zip(a, b, strict=True))

    return list(lax.reduce(tuple(terms), zeros, add, (0,)))


def reduce_by_gram(fun, x):
    """``(R, Q^T f, ||f||^2)`` of the Jacobian of ``fun`` at ``x`` and ``f = fun(x)``, by
    the Gram route; ``f`` is evaluated here, with the derivatives.

    The Jacobian's columns are forward derivatives along the coordinate axes.  A
    pivot that is not positive (a column that depends linearly on the previous
    ones, to rounding) gives a zero row of ``R`` and a zero entry of ``Q^T f``.
    ``||f||^2`` and ``Q^T f`` come from the same residuals and the same reduction:
    the caller compares norms so obtained with each other only (a norm of the
    same residuals summed in another order differs in its last bits, and steps
    that change the cost by rounding only are then accepted differently).
    """
    n = x.shape[0]
    basis = jnp.eye(n, dtype=x.dtype)
    f, columns = jax.vmap(lambda v: jax.jvp(fun, (x,), (v,)), out_axes=(None, 0))(basis)
    cols = [columns[k] for k in range(n)]
    pairs = [(i, j) for i in range(n) for j in range(i, n)]
    products = [cols[i] * cols[j] for i, j in pairs] + [cols[i] * f for i in range(n)]
    sums = _sums(products + [f * f])
    gram = dict(zip(pairs, sums[: len(pairs)], strict=True))
    grad = sums[len(pairs) : -1]
    zero = jnp.zeros((), x.dtype)
    R = [[zero] * n for _ in range(n)]
    qtf = [zero] * n
    for k in range(n):  # Cholesky, row by row: R[k, k:] and (Q^T f)[k]
        pivot = gram[k, k] - sum((R[i][k] * R[i][k] for i in range(k)), zero)
        positive = pivot > 0
        r_kk = jnp.sqrt(jnp.where(positive, pivot, 1.0))
        R[k][k] = jnp.where(positive, r_kk, 0.0)
        for j in range(k + 1, n):
            off = gram[k, j] - sum((R[i][k] * R[i][j] for i in range(k)), zero)
            R[k][j] = jnp.where(positive, off / r_kk, 0.0)
        rest = grad[k] - sum((R[i][k] * qtf[i] for i in range(k)), zero)
        qtf[k] = jnp.where(positive, rest / r_kk, 0.0)
    return jnp.stack([jnp.stack(row) for row in R]), jnp.stack(qtf), sums[-1]


def gram_pivot_ratio(R):
    """``min_k R_kk^2 / ||R_{:,k}||^2``: how much of each column is new against the previous
    ones (1 for orthogonal columns, 0 for a dependent one).  The Gram route's ``R``
    carries a relative error of about ``EPS / ratio``."""
    colnorm2 = jnp.sum(R * R, axis=0)
    return jnp.min(
        jnp.where(colnorm2 > 0, jnp.diagonal(R) ** 2 / jnp.where(colnorm2 > 0, colnorm2, 1.0), 0.0)
    )


def pcov_from_triangular(R, m, n: int):
    """``((J^T J)^{-1}, certain)`` from the Gram route's upper triangular ``R``.

    ``R^{-1}`` by back substitution, element-wise (it vectorizes across a batch,
    where :func:`pcov_from_R`'s LAPACK SVD is a call per fit).  ``certain`` says
    that :func:`pcov_from_R`'s rank test cannot fail: ``1 / ||R^{-1}||_F`` bounds
    the smallest singular value from below and ``||R||_F`` the largest from above.
    Where it is False the caller must use :func:`pcov_from_R`.
    """
    zero = jnp.zeros((), R.dtype)
    diag = jnp.diagonal(R)
    safe = jnp.where(diag != 0, diag, 1.0)
    inv = [[zero] * n for _ in range(n)]
    for j in range(n):
        inv[j][j] = 1.0 / safe[j]
        for i in range(j - 1, -1, -1):
            acc = sum((R[i, k] * inv[k][j] for k in range(i + 1, j + 1)), zero)
            inv[i][j] = -acc / safe[i]
    pcov = jnp.stack(
        [
            jnp.stack(
                [sum((inv[i][k] * inv[j][k] for k in range(max(i, j), n)), zero) for j in range(n)]
            )  # fmt: skip
            for i in range(n)
        ]
    )
    inv_norm = jnp.sqrt(sum((inv[i][j] ** 2 for i in range(n) for j in range(i, n)), zero))
    r_norm = jnp.sqrt(jnp.sum(R * R))
    certain = (
        jnp.all(diag != 0)
        & jnp.isfinite(inv_norm * r_norm)
        & (EPS * jnp.maximum(m, n) * r_norm * inv_norm < 1)
    )
    return pcov, certain
