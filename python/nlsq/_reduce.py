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
    """Moore-Penrose ``(J^T J)^+`` discarding tiny singular values (scipy's curve_fit rule)."""
    _, s, VT = jnp.linalg.svd(R, full_matrices=False)
    threshold = EPS * jnp.maximum(m, n) * s[0]  # m may be traced (padded data)
    keep = s > threshold
    w = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0) ** 2, 0.0)
    return (VT.T * w) @ VT
