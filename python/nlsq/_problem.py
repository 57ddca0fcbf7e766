"""One frozen ``Problem``: every argument of a fit, checked once.

``least_squares``, ``curve_fit`` and ``CurveFit.fit`` each turn their own
arguments into a residual (``_residual``) and then call :func:`make_problem`,
which applies scipy's checks (method, loss, tolerances, bounds, ``x_scale``,
``max_nfev``, ``verbose``) in one place and returns a ``Problem``.

A ``Problem`` is a JAX pytree with two parts:

* traced leaves -- ``x0``, bounds, scales, tolerances, ``max_nfev``,
  ``f_scale``, ``diff_step`` and the per-dataset arrays in ``data``.  New
  values of the same shapes reuse the compiled solver; a batch of problems is
  a ``Problem`` whose leaves have a leading axis (``vmap``).
* static metadata -- the residual (model identity), the Jacobian mode, the
  method, the loss, whether there are bounds, the scaling mode, the verbosity
  and whether a covariance is wanted.  All hashable: ``jax.jit`` keys its cache
  on them, so a fit compiles once per (model, shapes, options).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ._common import EPS, make_strictly_feasible_np
from ._loss import validate_loss
from ._residual import HostResidual, autodiff_jacobian, fd_jacobian_jax

METHODS = ("trf", "dogbox", "lm")
JAC_OPTIONS = (None, "2-point", "3-point", "cs")


@dataclasses.dataclass(frozen=True)
class Problem:
    # Traced leaves.
    x0: Any
    lb: Any
    ub: Any
    x_scale: Any  # ones when ``jac_scale``
    ftol: Any
    xtol: Any
    gtol: Any
    max_nfev: Any
    f_scale: Any
    diff_step: Any  # NaN: scipy's default step
    data: Any  # pytree of arrays handed to the residual
    # Static metadata.
    residual: Any  # FunResidual | ModelResidual | HostResidual
    jac_mode: str  # 'auto' | 'user' | '2-point' | '3-point' | 'host'
    method: str  # 'trf' | 'dogbox' | 'lm'
    loss: Any  # name or callable
    bounded: bool
    jac_scale: bool  # x_scale='jac'
    verbose: int
    want_pcov: bool
    # Set by ``_solve.fit`` when a ``callback`` is given: the id of the fit's
    # host-side slots (callback, user exception) and the switch that makes the
    # driver call back every iteration.  None (no leaf) otherwise, so batched
    # problems (``curve_fit_many``'s vmap) carry nothing extra.
    fit_id: Any = None
    has_callback: bool = False
    layout: Any = None  # nlsq._sharding.RowLayout: rows chunked / sharded (trf)
    mesh: Any = None  # the data's jax.sharding.Mesh: verbose rows written by one device
    # tr_solver='lsmr' (nlsq._tr_lsmr): its LsmrOptions, and jac_sparsity's pattern
    # and column groups (nlsq._sparsity.Sparsity, traced indices) when one is given.
    tr_solver: str = "exact"
    lsmr_options: Any = None
    sparsity: Any = None

    @property
    def n(self) -> int:
        return self.x0.shape[-1]

    @functools.cached_property
    def m(self) -> int:
        """Number of residuals (known at trace time).

        Cached on the instance (shapes are fixed with its leaves): the solver asks
        several times while it is traced, and each answer traces the model again.
        """
        if isinstance(self.residual, HostResidual):
            return self.residual.m
        rows = getattr(self.residual, "rows", None)
        if rows is not None:  # known from the data's shape (nlsq._buckets)
            return rows(self.data)
        return jax.eval_shape(self.fun, self.x0).shape[0]

    def fun(self, x):
        """Residuals at ``x``."""
        return self.residual(x, self.data)

    def jac(self, x):
        """Jacobian at ``x`` as the problem's ``jac_mode`` says."""
        res = self.residual
        if self.jac_mode == "host":
            return res.jacobian(x, self.data, self.lb, self.ub, self.diff_step)
        if self.jac_mode == "user":
            J = res.user_jac(x, self.data)
            expected = (self.m, x.shape[0])
            if J.shape != expected:
                raise ValueError(
                    f"The return value of `jac` has wrong shape: expected {expected}, "
                    f"actual {J.shape}."
                )
            return J
        if self.jac_mode in ("2-point", "3-point"):
            return fd_jacobian_jax(self.fun, x, self.lb, self.ub, self.jac_mode, self.diff_step)
        return autodiff_jacobian(self.fun, x, self.m)

    def with_callback(self, fit_id: int, has_callback: bool = True) -> Problem:
        """This problem run as fit ``fit_id``, calling its callback or not."""
        return dataclasses.replace(self, fit_id=np.int64(fit_id), has_callback=has_callback)

    def with_start(self, x0, data) -> Problem:
        """This problem with another start and data of the same shapes and dtypes.

        A copy of the instance's fields with two replaced: every other field, and
        the cached ``m``, hold for the new values.  ``dataclasses.replace`` would
        run ``__init__`` over all fields again, a twentieth of a warm small fit
        (``nlsq._warm``).
        """
        problem = object.__new__(Problem)
        fields = problem.__dict__
        fields.update(self.__dict__)
        fields["x0"] = x0
        fields["data"] = data
        return problem

    def on_host(self, residual: HostResidual) -> Problem:
        """The same problem with its residual evaluated on the host (NumPy)."""
        return dataclasses.replace(self, residual=residual, jac_mode="host")


def stored_description(problem: Problem) -> tuple | None:
    """The static part of ``problem`` for the program store (``nlsq._programs``), or
    None when its program must not be stored: a verbose table or callback (host
    routes, fit ids), a chunked or sharded layout, LSMR, a callable loss, or a
    residual that cannot describe itself (a user Jacobian, a NumPy model on the
    host, arguments of ``least_squares`` without a stable description)."""
    if (
        problem.verbose
        or problem.has_callback
        or problem.fit_id is not None
        or problem.layout is not None
        or problem.mesh is not None
        or problem.lsmr_options is not None
        or problem.sparsity is not None
        or not isinstance(problem.loss, str)
    ):
        return None
    describe_residual = getattr(problem.residual, "stored_description", None)
    residual = describe_residual() if describe_residual is not None else None
    if residual is None:
        return None
    return (
        residual,
        problem.jac_mode,
        problem.method,
        problem.loss,
        problem.bounded,
        problem.jac_scale,
        problem.want_pcov,
        problem.tr_solver,
    )


_TRACED = ("x0", "lb", "ub", "x_scale", "ftol", "xtol", "gtol", "max_nfev", "f_scale",
           "diff_step", "data", "fit_id", "sparsity")  # fmt: skip
_STATIC = ("residual", "jac_mode", "method", "loss", "bounded", "jac_scale", "verbose",
           "want_pcov", "has_callback", "layout", "mesh", "tr_solver", "lsmr_options")  # fmt: skip
jax.tree_util.register_dataclass(Problem, data_fields=list(_TRACED), meta_fields=list(_STATIC))


def check_method(method) -> None:
    if method not in METHODS:
        raise ValueError("`method` must be 'trf', 'dogbox' or 'lm'.")


def check_jac(jac) -> tuple[str, Callable | None]:
    """``(mode, user_jac)``: ``'user'`` for a callable, ``'2-point'``/``'3-point'`` finite
    differences, else ``'auto'`` (JAX autodiff, also for scipy's ``'cs'``)."""
    if not callable(jac) and jac not in JAC_OPTIONS:
        raise ValueError("`jac` must be None, '2-point', '3-point', 'cs' or callable.")
    if callable(jac):
        return "user", jac
    if jac in ("2-point", "3-point"):
        return jac, None
    return "auto", None


def prepare_bounds(bounds, n: int) -> tuple[np.ndarray, np.ndarray]:
    # A ``scipy.optimize.Bounds`` exists only once its module is imported: looking it
    # up there keeps scipy out of ``import nlsq`` (a third of its import time).
    optimize = sys.modules.get("scipy.optimize")
    if optimize is not None and isinstance(bounds, optimize.Bounds):
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
        lb = np.full(n, lb)
    if ub.ndim == 0:
        ub = np.full(n, ub)
    return lb, ub


def check_tolerance(ftol, xtol, gtol, method: str):
    def check(tol, name):
        if tol is None:
            tol = 0
        elif tol < EPS:
            warnings.warn(
                f"Setting `{name}` below the machine epsilon ({EPS:.2e}) effectively "
                "disables the corresponding termination condition.",
                stacklevel=5,
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


def check_x0(x0) -> np.ndarray:
    if np.iscomplexobj(x0):
        raise ValueError("`x0` must be real.")
    x0 = np.atleast_1d(np.asarray(x0, dtype=float))
    if x0.ndim > 1:
        raise ValueError("`x0` must have at most 1 dimension.")
    return x0


def make_problem(
    residual,
    data,
    x0,
    *,
    jac_mode: str,
    bounds=(-np.inf, np.inf),
    method: str = "trf",
    loss="linear",
    f_scale=1.0,
    x_scale=None,
    ftol=1e-8,
    xtol=1e-8,
    gtol=1e-8,
    max_nfev=None,
    diff_step=None,
    verbose: int = 0,
    want_pcov: bool = False,
) -> Problem:
    """scipy's ``least_squares`` argument checks, once, into a frozen ``Problem``."""
    check_method(method)
    validate_loss(loss)
    if method == "lm" and loss != "linear":
        raise ValueError("method='lm' supports only 'linear' loss function.")
    if verbose not in (0, 1, 2):
        raise ValueError("`verbose` must be in [0, 1, 2].")
    if max_nfev is not None and max_nfev <= 0:
        raise ValueError("`max_nfev` must be None or positive integer.")
    x0 = check_x0(x0)
    n = x0.shape[0]
    lb, ub = prepare_bounds(bounds, n)
    # The common case, no bounds at all, skips the checks that cannot fail then.
    unbounded = bool(np.all((lb == -np.inf) & (ub == np.inf)))
    if method == "lm" and not unbounded:
        raise ValueError("Method 'lm' doesn't support bounds.")
    if lb.shape != x0.shape or ub.shape != x0.shape:
        raise ValueError(
            f"Inconsistent shapes between bounds and `x0`: bounds have shapes {lb.shape} and "
            f"{ub.shape}, `x0` has {x0.shape}."
        )
    if not unbounded:
        if np.any(lb >= ub):
            raise ValueError("Each lower bound must be strictly less than each upper bound.")
        outside = np.flatnonzero((x0 < lb) | (x0 > ub))
        if outside.size:
            raise ValueError(
                f"Initial guess is outside of provided bounds (`x0` index {outside.tolist()})."
            )
    x_scale = check_x_scale(x_scale, x0, method)
    ftol, xtol, gtol = check_tolerance(ftol, xtol, gtol, method)
    if method == "trf" and not unbounded:
        x0 = make_strictly_feasible_np(x0, lb, ub)
    jac_scale = isinstance(x_scale, str)
    f64 = np.float64
    return Problem(
        x0=x0,
        lb=lb,
        ub=ub,
        x_scale=np.ones(n) if jac_scale else x_scale,
        ftol=f64(ftol),
        xtol=f64(xtol),
        gtol=f64(gtol),
        max_nfev=np.int64(100 * n if max_nfev is None else max_nfev),
        f_scale=f64(f_scale),
        diff_step=f64(np.nan if diff_step is None else diff_step),
        data=data,
        residual=residual,
        jac_mode=jac_mode,
        method=method,
        loss=loss,
        bounded=not unbounded and bool(np.any(np.isfinite(lb) | np.isfinite(ub))),
        jac_scale=jac_scale,
        verbose=verbose,
        want_pcov=want_pcov,
    )
