"""The Jacobian as a linear operator, for ``tr_solver='lsmr'``.

With ``'lsmr'`` the solvers only multiply by ``J`` and ``J^T``.  What a linearization
keeps of the Jacobian (its ``J`` field) is then one of:

* :class:`MatrixFree` -- JAX autodiff without ``jac_sparsity``: nothing but the
  robust loss's row scale.  Each outer iteration ``jax.linearize``s the residual
  once; ``J v`` is that ``jvp`` and ``J^T u`` its transpose (a ``vjp``).  No
  ``m x n`` array exists anywhere.
* :class:`Compressed` -- ``jac_sparsity`` given: the values at the pattern's
  nonzeros (``nlsq._sparsity``), memory O(nnz).
* :class:`Dense` -- a ``jac`` callable, ``'2-point'``/``'3-point'`` without a
  pattern, or a host model: the dense Jacobian, as scipy has it in these cases
  (its ``lsmr`` then works on the dense matrix too).

A robust loss rescales rows as scipy's ``scale_for_robust_loss_function`` does
(on the values for Dense/Compressed, as a row scale for MatrixFree).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _sparsity
from ._common import EPS
from ._loss import loss_rho


class Dense(NamedTuple):
    J: jax.Array  # (m, n), scaled for the robust loss


class Compressed(NamedTuple):
    values: jax.Array  # (nnz,), scaled for the robust loss


class MatrixFree(NamedTuple):
    row_scale: jax.Array  # (m,): the robust loss's sqrt(rho' + 2 rho'' f^2), ones if linear


def representation(problem) -> str:
    """'sparse', 'matrix-free' or 'dense': how an 'lsmr' fit of ``problem`` holds J."""
    if problem.sparsity is not None:
        return "sparse"
    if problem.jac_mode == "auto":
        return "matrix-free"
    return "dense"


class LinearMap:
    """``A`` through ``A @ v`` (vector or ``(n, k)`` matrix) and ``A.T @ u``; lives in one trace."""

    def __init__(self, matvec: Callable, rmatvec: Callable):
        self.matvec = matvec
        self.rmatvec = rmatvec

    def __matmul__(self, v):
        if v.ndim == 1:
            return self.matvec(v)
        return jax.vmap(self.matvec, in_axes=1, out_axes=1)(v)

    @property
    def T(self) -> LinearMap:  # noqa: N802 - numpy's name
        return LinearMap(self.rmatvec, self.matvec)


def _robust_rows(problem, f_true):
    """``(row_scale, f)`` for the robust loss (scipy's formula); ``(None, f)`` when linear."""
    rho = loss_rho(problem.loss, f_true, problem.f_scale)
    if rho is None:
        return None, f_true
    J_scale = rho[1] + 2 * rho[2] * f_true**2
    J_scale = jnp.sqrt(jnp.where(J_scale < EPS, EPS, J_scale))
    return J_scale, f_true * rho[1] / J_scale


def linearize(problem, x, f_true):
    """``(data, f, g)`` at ``x``: the Jacobian as kept (see the module), ``f`` and ``g = J^T f``
    scaled for the robust loss."""
    row_scale, f = _robust_rows(problem, f_true)
    kind = representation(problem)
    if kind == "sparse":
        _sparsity.check_rows(problem.sparsity, f_true.shape[0], x.shape[0])
        values = _sparsity.jacobian_values(problem, x)
        if row_scale is not None:
            values = values * row_scale[problem.sparsity.rows]
        return Compressed(values), f, _sparsity.rmatvec(problem.sparsity, values, f)
    if kind == "matrix-free":
        _, vjp = jax.vjp(problem.fun, x)
        scale = jnp.ones_like(f) if row_scale is None else row_scale
        (g,) = vjp(scale * f)
        return MatrixFree(scale), f, g
    J = problem.jac(x)
    if row_scale is not None:
        J = J * row_scale[:, None]
    return Dense(J), f, J.T @ f


def jacobian_map(problem, x, data) -> LinearMap:
    """``J`` at ``x`` as a :class:`LinearMap`; matrix-free: one ``jax.linearize`` here."""
    if isinstance(data, Dense):
        return LinearMap(lambda v: data.J @ v, lambda u: data.J.T @ u)
    if isinstance(data, Compressed):
        sp = problem.sparsity
        return LinearMap(
            lambda v: _sparsity.matvec(sp, data.values, v),
            lambda u: _sparsity.rmatvec(sp, data.values, u),
        )
    _, jvp = jax.linearize(problem.fun, x)
    vjp = jax.linear_transpose(jvp, x)
    scale = data.row_scale
    return LinearMap(lambda v: scale * jvp(v), lambda u: vjp(scale * u)[0])


def right_multiplied(A: LinearMap, d) -> LinearMap:
    """``A diag(d)`` (scipy's ``right_multiplied_operator``)."""
    return LinearMap(lambda v: A.matvec(d * v), lambda u: d * A.rmatvec(u))


def column_norms(problem, data):
    """Column norms of J (for ``x_scale='jac'``); not available matrix-free."""
    if isinstance(data, Dense):
        return jnp.sqrt(jnp.sum(data.J * data.J, axis=0))
    if isinstance(data, Compressed):
        return _sparsity.column_norms(problem.sparsity, data.values)
    raise ValueError(
        "x_scale='jac' needs the Jacobian's column norms, which the matrix-free "
        "tr_solver='lsmr' never forms; give `jac_sparsity` or a numeric `x_scale`."
    )


def compute_jac_scale(problem, data, scale_inv_old=None):
    """scipy's ``compute_jac_scale`` on the kept Jacobian: never shrinks once started."""
    scale_inv = column_norms(problem, data)
    if scale_inv_old is None:
        scale_inv = jnp.where(scale_inv == 0, 1.0, scale_inv)
    else:
        scale_inv = jnp.maximum(scale_inv, scale_inv_old)
    return 1.0 / scale_inv, scale_inv


def dense_jacobian(problem, x, data):
    """The ``m x n`` Jacobian (loss-scaled) formed once, for ``curve_fit``'s covariance."""
    if isinstance(data, Dense):
        return data.J
    if isinstance(data, Compressed):
        sp = problem.sparsity
        n = x.shape[0]
        return jnp.zeros((sp.m, n), data.values.dtype).at[sp.rows, sp.cols].set(data.values)
    return data.row_scale[:, None] * jax.jacfwd(problem.fun)(x)


def result_arrays(problem, x, data, f):
    """``(jac, R)`` for ``SolveResult``: the kept Jacobian's array (``J``, its values at
    the pattern, or the row scale: ``least_squares`` builds scipy's ``res.jac`` from it)
    and, when a covariance is wanted, the reduced Jacobian of ``J`` formed once at ``x``
    (``curve_fit``'s ``pcov`` is the same ``(J^T J)^{-1}`` as scipy's, which forms J too)."""
    from ._reduce import reduce_jacobian

    array = data[0]
    if not problem.want_pcov:
        return array, jnp.zeros((0, x.shape[0]), x.dtype)
    R, _ = reduce_jacobian(dense_jacobian(problem, x, data), f)
    return array, R


@jax.jit
def _jvp_at(problem, x, row_scale, v):
    return row_scale * jax.jvp(problem.fun, (x,), (v,))[1]


@jax.jit
def _vjp_at(problem, x, row_scale, u):
    return jax.vjp(problem.fun, x)[1](row_scale * u)[0]


def returned_jacobian(problem, result):
    """scipy's ``res.jac`` for an 'lsmr' fit (from ``SolveResult.jac``'s array).

    A dense Jacobian (``jac`` callable, finite differences, host model) stays dense;
    with ``jac_sparsity`` it is the ``csr_array`` scipy returns; matrix-free it is a
    ``scipy.sparse.linalg.LinearOperator`` whose products are ``jvp``/``vjp`` at
    ``res.x`` (row-scaled for the robust loss, as scipy's modified Jacobian).
    """
    from scipy.sparse.linalg import LinearOperator

    from ._jax_compat import enable_x64
    from ._sparsity import to_scipy

    array = np.asarray(result.jac)
    n = result.x.shape[0]
    if array.ndim == 2:
        return array
    if problem.sparsity is not None:
        return to_scipy(problem.sparsity, array, n)
    x = np.asarray(result.x, dtype=np.float64)

    def matvec(v):
        with enable_x64(True):
            v = np.asarray(v, dtype=np.float64).reshape(n)
            return np.asarray(_jvp_at(problem, x, array, v))

    def rmatvec(u):
        with enable_x64(True):
            u = np.asarray(u, dtype=np.float64).reshape(array.shape[0])
            return np.asarray(_vjp_at(problem, x, array, u))

    return LinearOperator((array.shape[0], n), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
