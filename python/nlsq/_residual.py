"""Residual functions and Jacobians handed to the jitted solvers.

A *residual spec* is a small hashable object: it is part of the static key of
the jitted solver, so two fits with the same model and options share one
compiled loop while the data travel as traced arguments (no retrace for new
data of the same shape).  ``__call__(x, data)`` evaluates the residual vector
with ``jax.numpy``; ``host(x, data)`` evaluates it with NumPy for the fallback
path, where a model JAX cannot trace runs on the host through
``jax.pure_callback``.

Jacobians: ``jax.jacfwd`` (``jax.jacrev`` when there are fewer residuals than
parameters) unless the user passes ``jac``; finite differences like scipy's
``'2-point'``/``'3-point'`` on request, and always for host models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._common import EPS

#: Errors that mean "this function cannot be traced by JAX" (NumPy on tracers etc.).
TRACE_ERRORS: tuple[type[BaseException], ...] = (
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


class HostFallbackWarning(UserWarning):
    """A model could not be traced by JAX and is evaluated on the host instead."""


@dataclass(frozen=True, eq=False)
class _Unhashable:
    """Wraps a static argument that cannot be hashed: keyed by identity (retraces)."""

    value: Any


def _as_1d(out, what: str):
    if out.ndim > 1:
        raise ValueError(f"`{what}` must return at most 1-d array_like. f0.shape: {out.shape}")
    return out.reshape(-1)


def _solve_lower(L, b, xp):
    if xp is np:
        from scipy.linalg import solve_triangular

        return solve_triangular(L, b, lower=True)
    return jax.scipy.linalg.solve_triangular(L, b, lower=True)


@dataclass(frozen=True)
class FunResidual:
    """``fun(x, *args, **kwargs)`` of ``least_squares``.

    Array arguments are traced (``data``); every other leaf of ``args``/``kwargs``
    is static (``static_leaves``) and keyed by value.
    """

    fun: Callable
    jac: Callable | None
    treedef: Any
    static_leaves: tuple
    dynamic_index: tuple

    def _args(self, data):
        leaves = list(self.static_leaves)
        for i, leaf in zip(self.dynamic_index, data, strict=True):
            leaves[i] = leaf
        leaves = [leaf.value if isinstance(leaf, _Unhashable) else leaf for leaf in leaves]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def __call__(self, x, data, xp=jnp):
        args, kwargs = self._args(data)
        out = xp.atleast_1d(xp.asarray(self.fun(x, *args, **kwargs), dtype=xp.float64))
        return _as_1d(out, "fun")

    def user_jac(self, x, data, xp=jnp):
        args, kwargs = self._args(data)
        return xp.atleast_2d(xp.asarray(self.jac(x, *args, **kwargs), dtype=xp.float64))

    @property
    def name(self) -> str:
        return getattr(self.fun, "__name__", repr(self.fun))


def split_args(args, kwargs) -> tuple[Any, tuple, tuple, tuple]:
    """(treedef, static leaves, dynamic leaf positions, dynamic leaves) of ``(args, kwargs)``."""
    leaves, treedef = jax.tree_util.tree_flatten((tuple(args), dict(kwargs)))
    static, dyn_idx, dyn = [], [], []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, (np.ndarray, jax.Array, float, np.floating)):
            static.append(None)
            dyn_idx.append(i)
            dyn.append(leaf)
        else:
            try:
                hash(leaf)
            except TypeError:
                leaf = _Unhashable(leaf)
            static.append(leaf)
    return treedef, tuple(static), tuple(dyn_idx), tuple(dyn)


@dataclass(frozen=True)
class ModelResidual:
    """``transform @ (f(xdata, *p) - ydata)`` of ``curve_fit``; data = (xdata, ydata, transform).

    ``transform_kind``: 0 none, 1 ``1/sigma`` (scalar or 1-D), 2 Cholesky factor of
    the covariance matrix (residuals are whitened by a triangular solve).
    """

    model: Callable
    jac: Callable | None
    transform_kind: int

    def _weigh(self, r, transform, xp):
        if self.transform_kind == 1:
            return transform * r if r.ndim == 1 else transform[:, None] * r
        if self.transform_kind == 2:
            return _solve_lower(transform, r, xp)
        return r

    def __call__(self, x, data, xp=jnp):
        xdata, ydata, transform = data
        out = xp.asarray(self.model(xdata, *[x[i] for i in range(x.shape[0])]), dtype=xp.float64)
        if out.shape != ydata.shape and out.size != 1:
            raise ValueError(
                f"The model returned an array of shape {out.shape}, but `ydata` has shape "
                f"{ydata.shape}."
            )
        r = xp.reshape(out - ydata, (-1,))
        return self._weigh(r, transform, xp)

    def user_jac(self, x, data, xp=jnp):
        xdata, _, transform = data
        J = xp.atleast_2d(
            xp.asarray(self.jac(xdata, *[x[i] for i in range(x.shape[0])]), dtype=xp.float64)
        )
        return self._weigh(J, transform, xp)

    @property
    def name(self) -> str:
        return getattr(self.model, "__name__", repr(self.model))


def _fd_steps(x, lb, ub, method: str, diff_step, xp):
    """Absolute steps and one-sidedness, as scipy's ``approx_derivative`` chooses them."""
    rel = EPS**0.5 if method == "2-point" else EPS ** (1 / 3)
    sign = xp.where(x >= 0, 1.0, -1.0)
    h_default = rel * sign * xp.maximum(1.0, xp.abs(x))
    if diff_step is None:
        h = h_default
    else:
        # diff_step may be traced; NaN stands for "scipy's default".
        h = diff_step * sign * xp.abs(x)
        h = xp.where(xp.isnan(h) | (h == 0), h_default, h)
    h = (x + h) - x
    lower_dist = x - lb
    upper_dist = ub - x
    if method == "2-point":
        x1 = x + h
        violated = (x1 < lb) | (x1 > ub)
        fitting = xp.abs(h) <= xp.maximum(lower_dist, upper_dist)
        h = xp.where(violated & fitting, -h, h)
        h = xp.where((upper_dist >= lower_dist) & ~fitting, upper_dist, h)
        h = xp.where((upper_dist < lower_dist) & ~fitting, -lower_dist, h)
        return h, None
    h_abs = xp.abs(h)
    central = (lower_dist >= h_abs) & (upper_dist >= h_abs)
    forward = (upper_dist >= lower_dist) & ~central
    backward = (upper_dist < lower_dist) & ~central
    h = xp.where(forward, xp.minimum(h, 0.5 * upper_dist), h)
    h = xp.where(backward, -xp.minimum(h, 0.5 * lower_dist), h)
    one_sided = forward | backward
    min_dist = xp.minimum(upper_dist, lower_dist)
    adj = ~central & (xp.abs(h) <= min_dist)
    h = xp.where(adj, min_dist, h)
    one_sided = one_sided & ~adj
    return h, one_sided


def fd_jacobian_jax(fun, x, lb, ub, method: str, diff_step):
    """Finite-difference Jacobian with all columns evaluated in one ``vmap``."""
    h, one_sided = _fd_steps(x, lb, ub, method, diff_step, jnp)
    f0 = fun(x)
    E = jnp.diag(h)
    f1 = jax.vmap(fun)(x + E)  # (n, m)
    if method == "2-point":
        return ((f1 - f0) / h[:, None]).T
    f2 = jax.vmap(fun)(x + jnp.where(one_sided[:, None], 2 * E, -E))
    one = (-3 * f0 + 4 * f1 - f2) / (2 * h[:, None])
    cen = (f1 - f2) / (2 * h[:, None])
    return jnp.where(one_sided[:, None], one, cen).T


def fd_jacobian_np(fun, x, lb, ub, diff_step):
    """Host '2-point' Jacobian (scipy's scheme) for models evaluated by NumPy."""
    h, _ = _fd_steps(x, lb, ub, "2-point", diff_step, np)
    f0 = fun(x)
    J = np.empty((f0.size, x.size))
    for j in range(x.size):
        x1 = x.copy()
        x1[j] += h[j]
        J[:, j] = (fun(x1) - f0) / h[j]
    return J


def autodiff_jacobian(fun, x, m: int):
    n = x.shape[0]
    return jax.jacrev(fun)(x) if m < n else jax.jacfwd(fun)(x)


@dataclass(frozen=True)
class HostResidual:
    """A residual evaluated on the host (NumPy) through ``jax.pure_callback``."""

    inner: Any  # FunResidual | ModelResidual
    m: int

    def __call__(self, x, data):
        def cb(x, data):
            return np.asarray(self.inner(np.asarray(x), _to_np(data), xp=np), dtype=np.float64)

        return _host_call(cb, (self.m,), x, data)

    def jacobian(self, x, data, lb, ub, diff_step):
        n = x.shape[0]

        def cb(x, data, lb, ub, diff_step):
            x = np.asarray(x)
            d = _to_np(data)
            if self.inner.jac is not None:
                return np.asarray(self.inner.user_jac(x, d, xp=np), dtype=np.float64)
            return fd_jacobian_np(
                lambda p: np.asarray(self.inner(p, d, xp=np), dtype=np.float64),
                x,
                np.asarray(lb),
                np.asarray(ub),
                float(diff_step),
            )

        return _host_call(cb, (self.m, n), x, data, lb, ub, diff_step)


def _host_call(cb, shape, *args):
    """``jax.pure_callback`` that moves float64/int64 across intact in both directions.

    ``jax.enable_x64`` is thread-local, and XLA may run a callback on a worker
    thread where it is off: JAX would then hand the callback float32 copies of
    its float64 operands and demand a float32 result.  So every 64-bit operand
    and the result travel as pairs of uint32 (which no x64 setting touches) and
    are reinterpreted on each side.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    dtypes = [np.dtype(leaf.dtype) for leaf in leaves]
    wide = [dt.itemsize == 8 for dt in dtypes]
    packed = [
        jax.lax.bitcast_convert_type(leaf, jnp.uint32) if w else leaf
        for leaf, w in zip(leaves, wide, strict=True)
    ]

    def bits(*flat):
        restored = [
            np.ascontiguousarray(a).view(dt).reshape(a.shape[:-1]) if w else np.asarray(a)
            for a, dt, w in zip(flat, dtypes, wide, strict=True)
        ]
        out = np.ascontiguousarray(cb(*jax.tree_util.tree_unflatten(treedef, restored)))
        return out.astype(np.float64, copy=False).view(np.uint32).reshape(shape + (2,))

    spec = jax.ShapeDtypeStruct(shape + (2,), jnp.uint32)
    raw = jax.pure_callback(bits, spec, *packed, vmap_method="sequential")
    return jax.lax.bitcast_convert_type(raw, jnp.float64)


def _to_np(tree):
    return jax.tree_util.tree_map(lambda a: a if a is None else np.asarray(a), tree)
