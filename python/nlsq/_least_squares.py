"""``least_squares``: scipy's signature and checks in front of the jitted solvers.

x64: every fit runs inside ``jax.enable_x64(True)`` -- a scoped configuration
context (JAX >= 0.4.31), so results are float64 as in scipy while the process
wide ``jax_enable_x64`` flag the user chose stays untouched.  The compiled
solver is cached under the x64 setting it was traced with.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable

import jax
import numpy as np
from scipy.optimize import Bounds, OptimizeResult

from ._common import BAD_START, EPS, TERMINATION_MESSAGES, make_strictly_feasible_np
from ._distributed import fetch, table_verbosity
from ._loss import validate_loss
from ._residual import (
    TRACE_ERRORS,
    FunResidual,
    HostFallbackWarning,
    HostResidual,
    split_args,
)
from ._sharding import data_mesh
from ._solve import SolverSpec, solve
from ._verbose import log_closing, log_header

__all__ = ["least_squares"]

# Functions found not to be traceable: skip the failed trace next time (and warn once).
_HOST_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HOST_MODELS_STRONG: set = set()


def _known_host(fn) -> bool:
    try:
        return fn in _HOST_MODELS
    except TypeError:
        return fn in _HOST_MODELS_STRONG


def _mark_host(fn) -> None:
    try:
        _HOST_MODELS[fn] = True
    except TypeError:
        _HOST_MODELS_STRONG.add(fn)


def _as_traced_arg(a):
    """Floating arguments travel as float64 (scipy computes in float64); others as they are."""
    arr = a if isinstance(a, jax.Array) else np.asarray(a)
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.float64:
        return arr.astype(np.float64)
    return arr


def prepare_bounds(bounds, n: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(bounds, Bounds):
        lb, ub = bounds.lb, bounds.ub
    else:
        try:
            size = len(bounds)
        except TypeError as err:
            raise ValueError(
                "`bounds` must be a 2-tuple (lb, ub) or scipy.optimize.Bounds."
            ) from err
        if size != 2:
            raise ValueError("`bounds` must contain 2 elements.")
        lb, ub = bounds
    lb = np.asarray(lb, dtype=float)
    ub = np.asarray(ub, dtype=float)
    if lb.ndim == 0:
        lb = np.resize(lb, n)
    if ub.ndim == 0:
        ub = np.resize(ub, n)
    return lb, ub


def check_tolerance(ftol, xtol, gtol, method: str):
    def check(tol, name):
        if tol is None:
            tol = 0
        elif tol < EPS:
            warnings.warn(
                f"Setting `{name}` below the machine epsilon ({EPS:.2e}) effectively "
                "disables the corresponding termination condition.",
                stacklevel=4,
            )
        return float(tol)

    ftol, xtol, gtol = check(ftol, "ftol"), check(xtol, "xtol"), check(gtol, "gtol")
    if method == "lm" and (ftol < EPS or xtol < EPS or gtol < EPS):
        raise ValueError(
            f"All tolerances must be higher than machine epsilon ({EPS:.2e}) for method 'lm'."
        )
    if ftol < EPS and xtol < EPS and gtol < EPS:
        raise ValueError(
            f"At least one of the tolerances must be higher than machine epsilon ({EPS:.2e})."
        )
    return ftol, xtol, gtol


def jacobian_mode(jac) -> tuple[str, Callable | None]:
    """``(mode, user_jac)`` for the solver spec: ``'user'`` for a callable,
    ``'2-point'``/``'3-point'`` finite differences, else ``'auto'`` (JAX autodiff)."""
    if callable(jac):
        return "user", jac
    if jac in ("2-point", "3-point"):
        return jac, None
    return "auto", None


def check_x_scale(x_scale, x0, method: str):
    if x_scale is None:
        x_scale = "jac" if method == "lm" else 1.0
    if isinstance(x_scale, str) and x_scale == "jac":
        return x_scale
    try:
        x_scale = np.asarray(x_scale, dtype=float)
        valid = bool(np.all(np.isfinite(x_scale)) and np.all(x_scale > 0))
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise ValueError("`x_scale` must be 'jac' or array_like with positive numbers.")
    if x_scale.ndim == 0:
        x_scale = np.resize(x_scale, x0.shape)
    if x_scale.shape != x0.shape:
        raise ValueError("Inconsistent shapes between `x_scale` and `x0`.")
    return x_scale


def run_solver(
    residual,
    *,
    fn_for_fallback: Callable,
    data,
    x0: np.ndarray,
    lb: np.ndarray,
    ub: np.ndarray,
    jac_mode: str,
    method: str,
    loss,
    f_scale: float,
    x_scale,
    ftol: float,
    xtol: float,
    gtol: float,
    max_nfev: int | None,
    diff_step,
    verbose: int,
    want_pcov: bool,
    layout=None,
):
    """Validate-free core shared by least_squares and curve_fit (inside enable_x64).

    ``layout`` (:class:`nlsq._sharding.RowLayout`): chunked / sharded rows.
    """
    # One table per fit, written by process 0 under jax.distributed.
    verbose = table_verbosity(verbose)
    n = x0.size
    bounded = bool(np.any(np.isfinite(lb) | np.isfinite(ub)))
    jac_scale = isinstance(x_scale, str)
    xs = np.ones(n) if jac_scale else x_scale
    if max_nfev is None:
        max_nfev = 100 * n
    args = (
        x0,
        lb,
        ub,
        xs,
        np.float64(ftol),
        np.float64(xtol),
        np.float64(gtol),
        np.int64(max_nfev),
        np.float64(f_scale),
        np.float64(np.nan if diff_step is None else diff_step),
        data,
    )

    def spec_for(res, mode):
        return SolverSpec(
            residual=res,
            jac_mode=mode,
            method=method,
            loss=loss,
            bounded=bounded,
            jac_scale=jac_scale,
            verbose=verbose,
            want_pcov=want_pcov,
            layout=layout if mode != "host" else None,
            mesh=data_mesh(data),
        )

    def host_spec():
        np_data = jax.tree_util.tree_map(np.asarray, data)
        f0 = np.asarray(residual(x0.copy(), np_data, xp=np), dtype=np.float64)
        return spec_for(HostResidual(residual, int(f0.size)), "host")

    log_header(verbose)
    if _known_host(fn_for_fallback):
        spec = host_spec()
    else:
        spec = spec_for(residual, jac_mode)
        try:
            out, pcov = solve(spec, *args)
        except TRACE_ERRORS as err:
            _mark_host(fn_for_fallback)
            warnings.warn(
                f"{residual.name!r} cannot be traced by JAX ({type(err).__name__}); it is "
                "evaluated on the host through jax.pure_callback with a '2-point' "
                "finite-difference Jacobian (slower). Write it with jax.numpy to fit on the "
                "device.",
                HostFallbackWarning,
                stacklevel=4,
            )
            spec = host_spec()
        else:
            spec = None
    if spec is not None:
        out, pcov = solve(spec, *args)
    out, pcov = fetch((out, pcov))
    if layout is not None and layout.m_valid != layout.m:
        out = out._replace(fun=out.fun[: layout.m_valid])
    status = int(out.status)
    if status == BAD_START:
        if verbose:
            # The header and row 0 are already in the ring: write them before raising.
            from .utils import async_logger

            async_logger.flush()
        raise ValueError("Residuals are not finite in the initial point.")
    message = TERMINATION_MESSAGES[status]
    log_closing(verbose, message, out.nfev, out.initial_cost, out.cost, out.optimality)
    result = OptimizeResult(
        x=np.asarray(out.x),
        cost=float(out.cost),
        fun=out.fun if isinstance(out.fun, jax.Array) else np.asarray(out.fun),
        jac=out.jac if isinstance(out.jac, jax.Array) else np.asarray(out.jac),
        grad=np.asarray(out.grad),
        optimality=float(out.optimality),
        active_mask=np.asarray(out.active_mask, dtype=int),
        nfev=int(out.nfev),
        njev=int(out.njev),
        status=status,
        message=message,
        success=status > 0,
    )
    return result, pcov


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
    method : {'trf', 'lm'}
        Trust Region Reflective (default, bounds allowed) or Levenberg-Marquardt
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
    tr_solver, tr_options, jac_sparsity, callback, workers
        Accepted for signature compatibility; only the dense exact solver exists,
        so anything else raises ``ValueError``.
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
    if method not in ("trf", "dogbox", "lm"):
        raise ValueError("`method` must be 'trf', 'dogbox' or 'lm'.")
    if method == "dogbox":
        raise ValueError("method='dogbox' is not implemented in nlsq; use 'trf' or 'lm'.")
    if jac not in (None, "2-point", "3-point", "cs") and not callable(jac):
        raise ValueError("`jac` must be None, '2-point', '3-point', 'cs' or callable.")
    if tr_solver not in (None, "exact"):
        raise ValueError("`tr_solver` must be None or 'exact' (nlsq has no 'lsmr').")
    if jac_sparsity is not None:
        raise ValueError("`jac_sparsity` is not supported by nlsq (dense Jacobians only).")
    if callback is not None:
        raise ValueError("`callback` is not supported: the iteration loop runs compiled.")
    if workers is not None:
        raise ValueError("`workers` is not supported by nlsq.")
    validate_loss(loss)
    if method == "lm" and loss != "linear":
        raise ValueError("method='lm' supports only 'linear' loss function.")
    if verbose not in (0, 1, 2):
        raise ValueError("`verbose` must be in [0, 1, 2].")
    if max_nfev is not None and max_nfev <= 0:
        raise ValueError("`max_nfev` must be None or positive integer.")
    if np.iscomplexobj(x0):
        raise ValueError("`x0` must be real.")
    x0 = np.atleast_1d(np.asarray(x0, dtype=float))
    if x0.ndim > 1:
        raise ValueError("`x0` must have at most 1 dimension.")
    lb, ub = prepare_bounds(bounds, x0.shape[0])
    if method == "lm" and not np.all((lb == -np.inf) & (ub == np.inf)):
        raise ValueError("Method 'lm' doesn't support bounds.")
    if lb.shape != x0.shape or ub.shape != x0.shape:
        raise ValueError("Inconsistent shapes between bounds and `x0`.")
    if np.any(lb >= ub):
        raise ValueError("Each lower bound must be strictly less than each upper bound.")
    if not np.all((x0 >= lb) & (x0 <= ub)):
        raise ValueError("Initial guess is outside of provided bounds")
    x_scale = check_x_scale(x_scale, x0, method)
    ftol, xtol, gtol = check_tolerance(ftol, xtol, gtol, method)
    if method == "trf":
        x0 = make_strictly_feasible_np(x0, lb, ub)
    kwargs = {} if kwargs is None else kwargs
    jac_mode, user_jac = jacobian_mode(jac)
    with jax.enable_x64(True):
        treedef, static, dyn_idx, dyn = split_args(args, kwargs)
        dyn = tuple(_as_traced_arg(a) for a in dyn)
        residual = FunResidual(fun, user_jac, treedef, static, dyn_idx)
        result, _ = run_solver(
            residual,
            fn_for_fallback=fun,
            data=dyn,
            x0=x0,
            lb=lb,
            ub=ub,
            jac_mode=jac_mode,
            method=method,
            loss=loss,
            f_scale=float(f_scale),
            x_scale=x_scale,
            ftol=ftol,
            xtol=xtol,
            gtol=gtol,
            max_nfev=max_nfev,
            diff_step=diff_step,
            verbose=verbose,
            want_pcov=False,
        )
    return result
