"""The reduced Jacobian: one QR of ``[J | f]`` per linearization.

Every trust-region solve, quadratic model and covariance works with the
``n x n`` factor ``R`` and ``Q^T f`` instead of the ``m x n`` Jacobian:
``||J s|| = ||R s||`` and ``U^T f = U_R^T Q^T f`` make this exact algebra.
This is the single place that forms the reduction, so a different one (for
instance accumulated over chunks of residuals) replaces this module only.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._common import EPS


def reduce_jacobian(J, f):
    """``(R, Q^T f)`` from one QR of ``[J | f]``; ``(J, f)`` itself when QR would not shrink J."""
    m, n = J.shape
    if m <= n + 1:
        return J, f
    R_aug = jnp.linalg.qr(jnp.concatenate([J, f[:, None]], axis=1), mode="r")
    return R_aug[:n, :n], R_aug[:n, n]


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
    _, s, VT = jnp.linalg.svd(R, full_matrices=False)
    threshold = EPS * jnp.maximum(m, n) * s[0]  # m may be traced (padded data)
    rank_deficient = jnp.any(s <= threshold) | (s.shape[0] < n)
    s_safe = jnp.where(rank_deficient, 1.0, s)
    pcov = (VT.T / s_safe**2) @ VT
    return jnp.where(rank_deficient | ~jnp.isfinite(s[0]), jnp.nan, pcov)
