"""The reduced problem of a long fit, accumulated chunk by chunk (TSQR).

The trust-region solvers need only ``n x n``-sized facts about the Jacobian
``J`` (``m x n``) at the current point: ``R`` and ``Q^T f`` from a QR
factorisation of ``[J | f]`` (after the robust-loss rescaling of every row),
the gradient ``g = J^T f``, and the column norms of ``J`` for ``x_scale='jac'``
(which equal the column norms of ``R``).  All of them are sums over rows, so
they can be gathered without ever holding ``J`` whole:

* the rows are cut into chunks of ``chunk`` rows (the last one may be shorter);
* each chunk's residuals and Jacobian block are evaluated, rescaled for the loss,
  and absorbed into the running triangle: ``R_aug <- qr([R_aug; J_c | f_c])``,
  ``g <- g + J_c^T f_c`` (a tall-skinny QR, Demmel et al. 2012, "TSQR");
* the chunks are visited by ``lax.fori_loop`` inside the compiled solver, so
  peak memory is one chunk's Jacobian, not ``m x n``.

``R_aug`` equals the triangle of the one-shot QR up to the signs of its rows,
which the solvers never see (they use ``R`` through its SVD together with the
matching ``Q^T f``), and up to rounding.

The same accumulation runs on every device's block of rows in the sharded
path (:mod:`nlsq._sharding`), which then combines the per-device triangles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from ._loss import loss_rho, scale_for_robust_loss_function
from ._residual import fd_jacobian_jax

#: Bytes of Jacobian chunk (rows x (n + 1) float64) the automatic choice aims at.
CHUNK_BYTES = 32 * 2**20
#: Chunking starts by default when the Jacobian would be this many chunks or more.
AUTO_MIN_CHUNKS = 4


def default_chunk_rows(n_params: int) -> int:
    """Rows per chunk for ``n_params`` parameters: about ``CHUNK_BYTES`` of ``[J | f]``."""
    return max(1024, CHUNK_BYTES // (8 * (n_params + 1)))


def choose_chunk(m: int, n_params: int, chunk_size: int | None) -> int | None:
    """Rows per chunk, or None for the one-shot (unchunked) reduction.

    ``chunk_size``: None chooses from ``m`` and ``n_params`` (chunked only when the
    Jacobian would fill at least ``AUTO_MIN_CHUNKS`` chunks); 0 never chunks; a
    positive int is the number of rows per chunk.
    """
    if chunk_size is None:
        rows = default_chunk_rows(n_params)
        return rows if m >= AUTO_MIN_CHUNKS * rows else None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
        raise ValueError(f"`chunk_size` must be None or a non-negative int, got {chunk_size!r}.")
    if chunk_size == 0:
        return None
    return chunk_size


@dataclass(frozen=True)
class RowData:
    """How the rows of ``(xdata, ydata, transform)`` lie: which axis of each holds them.

    ``x_axis``: the axis of ``xdata`` that runs over the rows (0 for shape ``(m,)``
    and ``(m, k)``, 1 for scipy's ``(k, m)``); ``t_rows``: whether ``transform``
    (``1/sigma``) has one entry per row (else it is a scalar and is not sliced).
    """

    x_axis: int
    t_rows: bool

    def slice(self, data, start, size: int):
        xdata, ydata, transform = data
        xd = lax.dynamic_slice_in_dim(xdata, start, size, axis=self.x_axis)
        yd = lax.dynamic_slice_in_dim(ydata, start, size, axis=0)
        td = lax.dynamic_slice_in_dim(transform, start, size, axis=0) if self.t_rows else transform
        return xd, yd, td


def chunk_jacobian(residual, jac_mode: str, lb, ub, diff_step) -> Callable:
    """``(x, data_chunk) -> J_chunk`` for the Jacobian modes that work row by row."""
    if jac_mode == "auto":
        return lambda x, d: jax.jacfwd(lambda p: residual(p, d))(x)
    if jac_mode == "user":
        return lambda x, d: residual.user_jac(x, d)
    if jac_mode in ("2-point", "3-point"):
        return lambda x, d: fd_jacobian_jax(
            lambda p: residual(p, d), x, lb, ub, jac_mode, diff_step
        )
    raise ValueError(f"Jacobian mode {jac_mode!r} cannot be evaluated chunk by chunk.")


def absorb(R_aug, g, J, f):
    """Fold the rows ``[J | f]`` into the triangle ``R_aug`` and the gradient ``g``."""
    n1 = R_aug.shape[0]
    stacked = jnp.concatenate([R_aug, jnp.concatenate([J, f[:, None]], axis=1)], axis=0)
    return jnp.linalg.qr(stacked, mode="r")[:n1], g + J.T @ f


def reduce_rows(
    x,
    f_true,
    data,
    rows: RowData,
    m: int,
    chunk: int,
    residual,
    jac_chunk: Callable,
    loss,
    f_scale,
):
    """``(R_aug, g)`` of the ``m`` rows of ``data`` at ``x``, ``chunk`` rows at a time.

    ``R_aug`` is the ``(n+1) x (n+1)`` triangle of ``[J | f]`` (loss-rescaled), so
    ``R = R_aug[:n, :n]`` and ``Q^T f = R_aug[:n, n]``; ``g = J^T f``.  ``f_true``
    are the residuals at ``x`` (already computed by the solver): the loss weights
    come from exactly those values, as in the one-shot path (huber's weight of an
    outlier is a cancellation that would amplify recomputed last bits).
    """
    n = x.shape[0]
    dtype = x.dtype

    def block(d, f):
        J = jac_chunk(x, d)
        rho = loss_rho(loss, f, f_scale)
        if rho is not None:
            J, f = scale_for_robust_loss_function(J, f, rho)
        return J, f

    R_aug = jnp.zeros((n + 1, n + 1), dtype)
    g = jnp.zeros((n,), dtype)
    n_full, rest = divmod(m, chunk)
    if n_full:

        def body(i, carry):
            start = i * chunk
            f = lax.dynamic_slice_in_dim(f_true, start, chunk)
            J, f = block(rows.slice(data, start, chunk), f)
            return absorb(*carry, J, f)

        R_aug, g = lax.fori_loop(0, n_full, body, (R_aug, g))
    if rest:
        start = n_full * chunk
        J, f = block(rows.slice(data, start, rest), lax.slice_in_dim(f_true, start, m))
        R_aug, g = absorb(R_aug, g, J, f)
    return R_aug, g
