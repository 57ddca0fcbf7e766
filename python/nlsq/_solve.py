"""The one jitted entry point shared by ``least_squares`` and ``curve_fit``.

``solve(spec, ...)`` is ``jax.jit``-compiled with ``spec`` static: the spec
holds the residual (model/function identity), the Jacobian mode, method, loss,
bounds presence, scaling mode and verbosity.  Everything numeric (x0, data,
bounds, tolerances, ``max_nfev``, ``f_scale``) is traced, so refitting the same
model with new data of the same shape reuses the compiled executable.
JAX's own jit cache keys on (spec, shapes, dtypes), which is exactly
"compiled once per (model, shapes, dtypes, options)".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from ._common import EPS
from ._lm import lm
from ._residual import HostResidual, autodiff_jacobian, fd_jacobian_jax
from ._trf import SolveResult, trf
from ._verbose import make_log_row


@dataclass(frozen=True)
class SolverSpec:
    residual: Any  # FunResidual | ModelResidual | HostResidual
    jac_mode: str  # 'auto' | 'user' | '2-point' | '3-point' | 'host'
    method: str  # 'trf' | 'lm'
    loss: Any  # name or callable
    bounded: bool
    jac_scale: bool
    verbose: int
    want_pcov: bool
    layout: Any = None  # nlsq._sharding.RowLayout: chunked / sharded rows (trf)
    mesh: Any = None  # the data's jax.sharding.Mesh: verbose rows written by one device


def _jacobian(spec: SolverSpec, fun, data, lb, ub, diff_step, m: int):
    res = spec.residual
    if spec.jac_mode == "host":
        return lambda x: res.jacobian(x, data, lb, ub, diff_step)
    if spec.jac_mode == "user":

        def user(x):
            J = res.user_jac(x, data)
            if J.shape != (m, x.shape[0]):
                raise ValueError(
                    f"The return value of `jac` has wrong shape: expected {(m, x.shape[0])}, "
                    f"actual {J.shape}."
                )
            return J

        return user
    if spec.jac_mode in ("2-point", "3-point"):
        return lambda x: fd_jacobian_jax(fun, x, lb, ub, spec.jac_mode, diff_step)
    return lambda x: autodiff_jacobian(fun, x, m)


def pcov_from_R(R, m: int, n: int):
    """Moore-Penrose ``(J^T J)^+`` discarding tiny singular values (scipy's curve_fit rule)."""
    _, s, VT = jnp.linalg.svd(R, full_matrices=False)
    threshold = EPS * max(m, n) * s[0]
    keep = s > threshold
    w = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0) ** 2, 0.0)
    return (VT.T * w) @ VT


@partial(jax.jit, static_argnames=("spec",))
def solve(
    spec: SolverSpec, x0, lb, ub, x_scale, ftol, xtol, gtol, max_nfev, f_scale, diff_step, data
) -> tuple[SolveResult, jax.Array | None]:
    res = spec.residual
    if isinstance(res, HostResidual):
        m = res.m
    else:
        m = jax.eval_shape(lambda x: res(x, data), x0).shape[0]
    n = x0.shape[0]
    if spec.method == "lm" and m < n:
        raise ValueError(
            "Method 'lm' doesn't work when the number of residuals is less than the number "
            f"of variables (m={m} < n={n})."
        )

    def fun(x):
        return res(x, data)

    jac = _jacobian(spec, fun, data, lb, ub, diff_step, m)
    log_row = make_log_row(spec.verbose)
    if spec.mesh is not None and log_row is not None:
        from ._sharding import log_row_on_mesh

        log_row = log_row_on_mesh(spec.verbose, spec.mesh)
    linearize_at = None
    if spec.layout is not None and spec.method == "trf":
        from ._sharding import make_linearizer

        linearize_at = make_linearizer(
            spec.layout, res, spec.jac_mode, data, lb, ub, diff_step, spec.loss, f_scale
        )
    if spec.method == "lm":
        out = lm(
            fun,
            jac,
            x0,
            ftol,
            xtol,
            gtol,
            max_nfev,
            x_scale,
            jac_scale=spec.jac_scale,
            log_row=log_row,
        )
    else:
        out = trf(
            fun,
            jac,
            x0,
            lb,
            ub,
            ftol,
            xtol,
            gtol,
            max_nfev,
            x_scale,
            f_scale,
            loss=spec.loss,
            bounded=spec.bounded,
            jac_scale=spec.jac_scale,
            log_row=log_row,
            linearize_at=linearize_at,
        )
    if spec.layout is not None:
        m = spec.layout.m_valid
    pcov = pcov_from_R(out.R, m, n) if spec.want_pcov else None
    return out, pcov
