"""``least_squares``: scipy's signature and checks in front of the jitted solvers.

x64: every fit runs inside ``jax.enable_x64(True)`` -- a scoped configuration
context (JAX >= 0.4.31), so results are float64 as in scipy while the process
wide ``jax_enable_x64`` flag the user chose stays untouched.  The compiled
solver is cached under the x64 setting it was traced with.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import numpy as np
from scipy.optimize import OptimizeResult

from ._cache import code_keyed, enable_persistent_cache
from ._jax_compat import enable_x64
from ._operator import returned_jacobian
from ._problem import check_jac, check_method, make_problem
from ._residual import FunResidual, split_args
from ._sharding import with_rows
from ._solve import fit
from ._tr_lsmr import choose_tr_solver, configure
from ._workers import WorkerPool, check_workers

__all__ = ["least_squares"]


def _as_traced_arg(a):
    """Floating arguments travel as float64 (scipy computes in float64); others as they are."""
    arr = a if isinstance(a, jax.Array) else np.asarray(a)
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.float64:
        return arr.astype(np.float64)
    return arr


def least_squares(
    fun: Callable,
    x0,
    jac=None,
    bounds=(-np.inf, np.inf),
    method: str = "trf",
    ftol: float | None = 1e-8,
    xtol: float | None = 1e-8,
    gtol: float | None = 1e-8,
    x_scale=None,
    loss="linear",
    f_scale: float = 1.0,
    diff_step=None,
    tr_solver=None,
    tr_options=None,
    jac_sparsity=None,
    max_nfev: int | None = None,
    verbose: int = 0,
    args=(),
    kwargs=None,
    callback=None,
    workers=None,
) -> OptimizeResult:
    """Solve a nonlinear least-squares problem with bounds (scipy-compatible).

    Parameters
    ----------
    fun : callable
        ``fun(x, *args, **kwargs) -> (m,)`` residuals, written with ``jax.numpy``
        (a NumPy-only function still works: it runs on the host, with a warning).
    x0 : array_like, shape (n,)
        Initial guess.
    jac : None, callable, '2-point', '3-point' or 'cs'
        None (default) and 'cs': exact Jacobian by JAX autodiff (``jacfwd``, or
        ``jacrev`` when m < n).  A callable ``jac(x, *args, **kwargs) -> (m, n)``
        is used as given; '2-point'/'3-point' are scipy's finite differences.
    bounds : 2-tuple or scipy.optimize.Bounds
        Lower and upper bounds (scalars broadcast).
    method : {'trf', 'dogbox', 'lm'}
        Trust Region Reflective (default, bounds allowed), dogleg with
        rectangular trust regions (bounds allowed) or Levenberg-Marquardt
        (no bounds, linear loss).
    ftol, xtol, gtol : float or None
        scipy's termination tolerances.
    x_scale : None, array_like or 'jac'
        Variable scales (None: 1.0 for 'trf', 'jac' for 'lm', as scipy >= 1.16).
    loss : {'linear', 'soft_l1', 'huber', 'cauchy', 'arctan'} or callable
        Robust loss ``rho(z)`` returning shape ``(3, m)``.
    f_scale : float
        Soft margin between inlier and outlier residuals.
    diff_step : float, optional
        Relative finite-difference step for '2-point'/'3-point' and host models.
    callback : callable, optional
        scipy >= 1.16: ``callback(intermediate_result)`` (an ``OptimizeResult``
        with ``x fun nit nfev cost``) or ``callback(x)``, called after every
        iteration (one host call each; none without a callback).  Raising
        ``StopIteration`` ends the fit with status -2.  Ignored with a warning by
        ``'lm'``, as in scipy.
    tr_solver : {None, 'exact', 'lsmr'}
        scipy's: 'exact' (dense SVD of the reduced Jacobian) or 'lsmr' (large
        problems: LSMR for the Gauss-Newton step, then a 2-D subspace trust-region
        step for 'trf', dogleg for 'dogbox').  With 'lsmr' and JAX autodiff the
        Jacobian is never formed: ``J v`` and ``J^T u`` are ``jvp``/``vjp`` of
        ``fun``, linearized once per iteration.  None: 'lsmr' when
        ``jac_sparsity`` is given (and ``jac`` is not callable), else 'exact'.
        Ignored by 'lm' (MINPACK), as in scipy.
    tr_options : dict, optional
        'lsmr' only: ``scipy.sparse.linalg.lsmr``'s ``damp atol btol conlim maxiter``,
        and ``regularize`` (bool, 'trf', default True).
    jac_sparsity : array_like or scipy.sparse matrix, shape (m, n), optional
        Nonzero pattern of the Jacobian: the columns are grouped (no two in a group
        share a row) and the Jacobian comes from one ``jvp`` (or one finite
        difference with '2-point') per group, kept as its nonzeros only.  Forces
        'lsmr'; ``res.jac`` is then a ``scipy.sparse.csr_array``.  Ignored when
        ``jac`` is callable (as in scipy).
    workers : int or map-like callable, optional
        scipy's: evaluates finite differences as ``workers(fun, iterable)``.  In nlsq
        only a NumPy ``fun`` on the host path has host-side finite differences; a
        JAX ``fun`` differentiates inside the compiled loop, where ``workers`` has no
        effect.  An int is a thread pool of that size (-1: one per CPU).
    max_nfev : int, optional
        Function evaluations allowed (default ``100 * n``).
    verbose : {0, 1, 2}
        0 silent; 1 table header, every 10th iteration and the closing lines;
        2 scipy's full iteration table.  Written by the ring logger, complete on return.
    args, kwargs
        Extra arguments of ``fun`` and ``jac``.  Array arguments are traced (new
        values do not recompile); other arguments are static (hashed).

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x cost fun jac grad optimality active_mask nfev njev status message success``.
    """
    check_method(method)
    jac_mode, user_jac = check_jac(jac)
    tr_solver = choose_tr_solver(tr_solver, method, jac_sparsity, callable(jac))
    check_workers(workers)
    if callback is not None and not callable(callback):
        raise ValueError("`callback` must be callable or None.")
    if method == "lm" and callback is not None:
        # scipy's MINPACK path has no per-iteration hook: it warns and ignores it.
        warnings.warn(
            "Callback function specified, but not supported with `lm` method.", stacklevel=2
        )
        callback = None
    kwargs = {} if kwargs is None else kwargs
    enable_persistent_cache()
    with enable_x64(True):
        treedef, static, dyn_idx, dyn = split_args(args, kwargs)
        dyn = tuple(_as_traced_arg(a) for a in dyn)
        problem = make_problem(
            FunResidual(code_keyed(fun), code_keyed(user_jac), treedef, static, dyn_idx),
            dyn,
            x0,
            jac_mode=jac_mode,
            bounds=bounds,
            method=method,
            loss=loss,
            f_scale=f_scale,
            x_scale=x_scale,
            ftol=ftol,
            xtol=xtol,
            gtol=gtol,
            max_nfev=max_nfev,
            diff_step=diff_step,
            verbose=verbose,
        )
        problem = configure(
            problem,
            tr_solver,
            tr_options,
            jac_sparsity,
            callable(jac),
        )
        with WorkerPool(workers) as pool:
            result, _ = fit(with_rows(problem, None), fun, callback=callback, workers=pool.map)
        if problem.tr_solver == "lsmr":
            result.jac = returned_jacobian(problem, result)
    return result
