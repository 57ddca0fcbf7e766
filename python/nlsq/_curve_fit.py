"""``curve_fit`` (scipy-compatible) and ``CurveFit`` (bind a model once, fit many times)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# scipy.linalg also holds the LAPACK kernels jaxlib lowers every QR and SVD of a fit
# to (it imports the module on the first lowering), so it is loaded here either way;
# scipy.optimize is not (nlsq.__getattr__).
from scipy.linalg import LinAlgError, cholesky

from . import _warm
from ._buckets import PaddedModelResidual, buckets_enabled, model_is_rowwise, pad
from ._cache import code_keyed, enable_persistent_cache
from ._jax_compat import enable_x64
from ._problem import check_jac, check_method, make_problem, prepare_bounds
from ._residual import ModelResidual
from ._sharding import plan_rows, with_rows
from ._solve import run_fit
from ._tr_lsmr import choose_tr_solver, configure
from ._workers import WorkerPool, check_workers

__all__ = ["curve_fit", "CurveFit"]

_LSQ_KWARGS = {"ftol", "xtol", "gtol", "max_nfev", "maxfev", "x_scale", "loss", "f_scale",
               "diff_step", "tr_solver", "tr_options", "jac_sparsity", "workers", "callback",
               "chunk_size", "mesh"}  # fmt: skip


def _n_params(f: Callable) -> int:
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError) as err:
        raise ValueError("Unable to determine number of fit parameters.") from err
    args = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(args) < 2:
        raise ValueError("Unable to determine number of fit parameters.")
    return len(args) - 1


def _initialize_feasible(lb, ub):
    p0 = np.ones_like(lb)
    lb_finite = np.isfinite(lb)
    ub_finite = np.isfinite(ub)
    both = lb_finite & ub_finite
    p0[both] = 0.5 * (lb[both] + ub[both])
    only_lb = lb_finite & ~ub_finite
    p0[only_lb] = lb[only_lb] + 1
    only_ub = ~lb_finite & ub_finite
    p0[only_ub] = ub[only_ub] - 1
    return p0


@jax.jit
def _all_finite(a):
    return jnp.all(jnp.isfinite(a))


@jax.jit
def _any_zero(a):
    return jnp.any(a == 0)


def _reciprocal(a):
    with enable_x64(True):
        return 1.0 / a.astype(jnp.float64)


def _as_float_array(a, check_finite: bool, what: str):
    if isinstance(a, jax.Array):
        # Stays where it is (sharded, or spanning processes); checked on the device.
        if check_finite:
            with enable_x64(True):  # as it is: no float32 copy of the data
                finite = bool(_all_finite(a))
            if not finite:
                raise ValueError(f"`{what}` must not contain infs or NaNs (check_finite=True).")
        return a
    a = np.asarray(a, dtype=float)
    if check_finite and not np.all(np.isfinite(a)):
        raise ValueError(f"`{what}` must not contain infs or NaNs (check_finite=True).")
    return a


def curve_fit(
    f: Callable,
    xdata,
    ydata,
    p0=None,
    sigma=None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds=(-np.inf, np.inf),
    method: str | None = None,
    jac: Callable | str | None = None,
    *,
    full_output: bool = False,
    nan_policy: str | None = None,
    verbose: int = 0,
    buckets: bool | None = None,
    **kwargs,
):
    """Fit ``f(xdata, *params)`` to ``ydata`` by nonlinear least squares (scipy-compatible).

    Parameters
    ----------
    f : callable
        Model ``f(x, p1, p2, ...)`` written with ``jax.numpy``.  A NumPy-only model
        still works: it is detected, evaluated on the host through
        ``jax.pure_callback`` with a '2-point' Jacobian, and a
        ``HostFallbackWarning`` says so (once per model).
    xdata : array_like
        Independent variable(s), any shape the model understands (e.g. ``(n, 2)``).
    ydata : array_like, shape (m,)
        Dependent data.
    p0 : array_like, optional
        Initial guess (default: ones, or the middle of finite bounds).
    sigma : None, array_like (m,) or (m, m)
        Standard deviations of ``ydata`` or its covariance matrix.
    absolute_sigma : bool
        Use ``sigma`` in an absolute sense (no rescaling of ``pcov``).
    check_finite : bool, optional
        Reject non-finite inputs (default True unless ``nan_policy`` is given).
    bounds : 2-tuple or scipy.optimize.Bounds
        Bounds on the parameters.
    method : {None, 'trf', 'dogbox', 'lm'}
        None follows scipy: 'lm' without bounds, 'trf' with bounds (and, unlike
        scipy, which would fail there, 'trf' with a robust ``loss``); 'lm'
        refuses bounds.
    jac : callable, str or None
        ``jac(x, *params) -> (m, n)``; None or 'cs' for JAX autodiff;
        '2-point'/'3-point' for finite differences.
    full_output : bool
        Also return ``infodict, mesg, ier``.
    nan_policy : {None, 'raise', 'omit'}
        What to do with NaNs in the data.
    verbose : {0, 1, 2}
        Iteration table through the ring logger (see ``least_squares``).
    buckets : bool, optional
        Pad the data with zero-weight rows to a ladder of sizes so that fits of
        nearby lengths share one compiled program (``nlsq._buckets``; results are
        unchanged).  Default: on unless ``NLSQ_BUCKETS=off``.
    **kwargs
        ``ftol xtol gtol max_nfev (maxfev) x_scale loss f_scale diff_step``, and:

        ``tr_solver``, ``tr_options``, ``jac_sparsity``, ``workers``: as in
        :func:`nlsq.least_squares` (method None becomes 'trf' with 'lsmr' or a
        pattern).  With 'lsmr', ``pcov`` is still the full ``(J^T J)^{-1}``: the
        Jacobian is formed once, at the solution (as scipy's ``curve_fit``, which
        takes the SVD of ``res.jac``); the iterations never form it.

        ``chunk_size`` (int or None): rows per chunk of the Jacobian.  None (default)
        chunks long problems automatically (about 32 MB of ``[J | f]`` per chunk once
        the Jacobian would fill four chunks); 0 never chunks.  A chunked fit never
        holds the ``m x n`` Jacobian: its reduced problem is accumulated by a
        chunked QR inside the compiled loop, and the solver keeps the ``n x n``
        triangle ``R`` (``R^T R = J^T J``, whence ``pcov``) in its place.

        ``mesh`` (``jax.sharding.Mesh``): shard host data over this mesh's devices
        (padded with zero-weight rows to a multiple of the device count).  Data
        already given as ``jax.Array``s sharded over a mesh are fitted where they
        are without it.  Sharded fits (and fits under ``jax.distributed``) need
        1-D ``ydata``, ``xdata`` of shape ``(m,)``, ``(m, k)`` or ``(k, m)``, and
        ``sigma`` as a scalar or 1-D array.

    Returns
    -------
    popt, pcov : ndarray
        Optimal parameters and their estimated covariance (``inf`` with an
        ``OptimizeWarning`` when it cannot be estimated).
    infodict, mesg, ier
        With ``full_output``: ``{'nfev', 'fvec'}``, the termination message and status.
    """
    return CurveFit(f, jac=jac, method=method).fit(
        xdata,
        ydata,
        p0=p0,
        sigma=sigma,
        absolute_sigma=absolute_sigma,
        check_finite=check_finite,
        bounds=bounds,
        full_output=full_output,
        nan_policy=nan_policy,
        verbose=verbose,
        buckets=buckets,
        _stacklevel=3,
        **kwargs,
    )


class CurveFit:
    """A model bound once for many fits.

    ``CurveFit(f).fit(xdata, ydata, p0=...)`` takes the arguments of
    :func:`curve_fit` (minus ``f``, ``jac``, ``method``).  The compiled solver is
    cached per (model, options, shapes, dtypes), so every fit after the first
    with data of the same shape runs the compiled loop without tracing again;
    ``curve_fit`` itself shares that cache, this class just keeps the model and
    options in one place.
    """

    def __init__(self, f: Callable, *, jac=None, method: str | None = None):
        if not callable(f):
            raise TypeError("`f` must be callable.")
        if method is not None:
            check_method(method)
        check_jac(jac)
        self.f = f
        self.jac = jac
        self.method = method

    def fit(
        self,
        xdata,
        ydata,
        p0=None,
        sigma=None,
        absolute_sigma: bool = False,
        check_finite: bool | None = None,
        bounds=(-np.inf, np.inf),
        *,
        full_output: bool = False,
        nan_policy: str | None = None,
        verbose: int = 0,
        buckets: bool | None = None,
        _stacklevel: int = 2,
        **kwargs,
    ):
        """Fit the bound model; see :func:`curve_fit` for the arguments and results."""
        f, method = self.f, self.method
        warm_key = _warm.key_of(
            f, self.jac, method, xdata, ydata, p0, sigma, absolute_sigma, check_finite, bounds,
            full_output, nan_policy, verbose, buckets, kwargs,
        )  # fmt: skip
        plan = _warm.find(warm_key)
        if plan is not None:
            out = self._fit_warm(
                plan, xdata, ydata, p0, sigma, absolute_sigma, check_finite, _stacklevel + 1
            )
            if out is not None:
                return out
        if "args" in kwargs:
            raise ValueError("'args' is not a supported keyword argument.")
        unknown = set(kwargs) - _LSQ_KWARGS
        if unknown:
            raise TypeError(f"curve_fit() got unexpected keyword argument(s) {sorted(unknown)}")
        if p0 is None:
            n = _n_params(f)
        else:
            p0 = np.atleast_1d(np.asarray(p0, dtype=float))
            if p0.ndim > 1:
                raise ValueError("`p0` must have at most 1 dimension.")
            n = p0.size
        lb, ub = prepare_bounds(bounds, n)
        if lb.shape != (n,) or ub.shape != (n,):
            raise ValueError(
                f"Inconsistent shapes between bounds and `p0`: bounds have shapes {lb.shape} "
                f"and {ub.shape}, there are {n} parameters."
            )
        if p0 is None:
            p0 = _initialize_feasible(lb, ub)
        bounded = bool(np.any((lb > -np.inf) | (ub < np.inf)))
        if method is None:
            # scipy's rule: 'lm' without bounds, 'trf' with them.  A robust loss also
            # takes 'trf' (scipy's 'lm' is leastsq, which would reject `loss`).
            robust = kwargs.get("loss", "linear") != "linear"
            # Likewise 'lsmr' / jac_sparsity (large problems), which 'lm' cannot use.
            large = kwargs.get("tr_solver") == "lsmr" or kwargs.get("jac_sparsity") is not None
            method = "trf" if bounded or robust or large else "lm"
        if method == "lm" and bounded:
            raise ValueError(
                "Method 'lm' only works for unconstrained problems. Use 'trf' or 'dogbox' instead."
            )
        if method == "lm" and kwargs.get("callback") is not None:
            # scipy hands **kwargs to leastsq, which has no callback: a TypeError there too.
            raise TypeError("curve_fit(method='lm') does not take `callback` (scipy's leastsq "
                            "has none); use method='trf'.")  # fmt: skip
        for name in ("tr_solver", "jac_sparsity"):
            if method == "lm" and kwargs.get(name) not in (None, "exact"):
                raise TypeError(f"curve_fit(method='lm') does not take `{name}` (scipy's leastsq "
                                "has none); use method='trf' or 'dogbox'.")  # fmt: skip
        if check_finite is None:
            check_finite = nan_policy is None
        if nan_policy not in (None, "raise", "omit"):
            if nan_policy == "propagate":
                raise ValueError("`nan_policy='propagate'` is not supported by this function.")
            raise ValueError("nan_policy must be one of {None, 'raise', 'omit'}.")
        ydata = _as_float_array(ydata, check_finite, "ydata")
        if isinstance(xdata, (list, tuple, np.ndarray)):
            xdata = _as_float_array(xdata, check_finite, "xdata")
        elif isinstance(xdata, jax.Array):
            xdata = _as_float_array(xdata, check_finite, "xdata")
        if ydata.size == 0:
            raise ValueError("`ydata` must not be empty!")
        ydata = jnp.atleast_1d(ydata) if isinstance(ydata, jax.Array) else np.atleast_1d(ydata)
        if not check_finite and nan_policy is not None:
            x_np = np.asarray(xdata, dtype=float)
            has_nan = np.isnan(x_np)
            if has_nan.ndim:
                has_nan = has_nan.any(axis=tuple(range(has_nan.ndim - 1)))
            has_nan = has_nan | np.isnan(ydata)
            if has_nan.any():
                if nan_policy == "raise":
                    raise ValueError("The input contains nan values")
                keep = ~has_nan
                xdata = x_np[..., keep]
                ydata = ydata[keep]
                if sigma is not None:
                    sigma = np.asarray(sigma)
                    if sigma.ndim == 1:
                        sigma = sigma[keep]
                    elif sigma.ndim == 2:
                        sigma = sigma[keep][:, keep]
        if ydata.size != 1 and ydata.size < n:  # size 1: broadcast against the model, as scipy
            raise TypeError(
                f"The number of func parameters={n} must not exceed the number of data "
                f"points={ydata.size}"
            )

        transform, kind = None, 0
        if isinstance(sigma, jax.Array) and sigma.ndim == 1 and sigma.shape == ydata.shape:
            # A device (possibly sharded) sigma stays on the device: 1/sigma there.
            with enable_x64(True):
                any_zero = bool(_any_zero(sigma))
            if any_zero:
                raise ValueError("`sigma` must not contain zeros.")
            transform, kind = _reciprocal(sigma), 1
        elif sigma is not None:
            sigma = np.asarray(sigma, dtype=float)
            if sigma.size == 1 or sigma.shape == (ydata.size,):
                if np.any(sigma == 0):
                    raise ValueError("`sigma` must not contain zeros.")
                transform, kind = 1.0 / sigma, 1
            elif sigma.shape == (ydata.size, ydata.size):
                try:
                    transform, kind = cholesky(sigma, lower=True), 2
                except LinAlgError as e:
                    raise ValueError("`sigma` must be positive definite.") from e
            else:
                raise ValueError(
                    f"`sigma` has incorrect shape {sigma.shape}: expected ({ydata.size},) or "
                    f"({ydata.size}, {ydata.size})."
                )

        jac_mode, user_jac = check_jac(self.jac)
        jac_sparsity = kwargs.get("jac_sparsity")
        tr_solver = choose_tr_solver(
            kwargs.get("tr_solver"), method, jac_sparsity, callable(user_jac)
        )
        check_workers(kwargs.get("workers"))
        chunk_size = kwargs.get("chunk_size")
        if tr_solver == "lsmr":
            if chunk_size or kwargs.get("mesh") is not None:
                raise ValueError("tr_solver='lsmr' works on whole rows: no `chunk_size` or `mesh`.")
            chunk_size = 0  # LSMR never forms the m x n Jacobian that chunking avoids

        enable_persistent_cache()
        with enable_x64(True):
            if isinstance(xdata, jax.Array) and xdata.dtype != np.float64:
                xdata = xdata.astype(np.float64)
            if isinstance(ydata, jax.Array) and ydata.dtype != np.float64:
                ydata = ydata.astype(np.float64)
            # Long or sharded rows: chunked / per-device reduction (nlsq._sharding);
            # such fits are not padded to a shape bucket.
            xdata, ydata, transform, kind, layout = plan_rows(
                xdata,
                ydata,
                transform,
                kind,
                n,
                chunk_size=chunk_size,
                mesh=kwargs.get("mesh"),
            )
            if layout is not None and tr_solver == "lsmr":
                raise ValueError("tr_solver='lsmr' cannot fit data sharded over a mesh.")
            model = code_keyed(f)
            m = ydata.size
            padded = (
                layout is None
                and tr_solver != "lsmr"
                and not isinstance(ydata, jax.Array)
                and buckets_enabled(buckets)
                and kind in (0, 1)
                and user_jac is None
                and not callable(kwargs.get("loss"))
                and ydata.ndim == 1
                and np.ndim(xdata) == 1
                and np.shape(xdata)[0] == m
                and model_is_rowwise(model, n)
            )
            if padded:
                residual = PaddedModelResidual(model, None, 1)
                data = pad(xdata, ydata, transform, kind)
            else:
                residual = ModelResidual(model, code_keyed(user_jac), kind)
                data = (xdata, ydata, transform)
            problem = make_problem(
                residual,
                data,
                p0,
                jac_mode=jac_mode,
                bounds=(lb, ub),
                method=method,
                loss=kwargs.get("loss", "linear"),
                f_scale=kwargs.get("f_scale", 1.0),
                x_scale=kwargs.get("x_scale"),
                ftol=kwargs.get("ftol", 1e-8),
                xtol=kwargs.get("xtol", 1e-8),
                gtol=kwargs.get("gtol", 1e-8),
                max_nfev=kwargs.get("max_nfev", kwargs.get("maxfev")),
                diff_step=kwargs.get("diff_step"),
                verbose=verbose,
                want_pcov=True,
            )
            problem = configure(
                problem,
                tr_solver,
                kwargs.get("tr_options"),
                jac_sparsity,
                callable(user_jac),
            )
            if layout is not None or any(isinstance(a, jax.Array) for a in (xdata, ydata)):
                problem = with_rows(problem, layout)  # else no layout and no mesh: as made
            with WorkerPool(kwargs.get("workers")) as pool:
                res, message = run_fit(
                    problem,
                    f,
                    callback=kwargs.get("callback"),
                    rows=full_output,
                    stacklevel=_stacklevel + 2,  # _fit, run_fit, then this method's frames
                    workers=pool.map,
                )
            if warm_key is not None and padded:
                _warm.remember(warm_key, problem)
        return _results(res, message, m, n, padded, absolute_sigma, full_output, _stacklevel + 1)

    def _fit_warm(self, plan, xdata, ydata, p0, sigma, absolute_sigma, check_finite, stacklevel):
        """A call with the route of an earlier one (``nlsq._warm``), or None where its
        values need the full path."""
        n = plan.template.n
        data = _warm.warm_data(xdata, ydata, sigma, n, check_finite is not False)
        problem = None if data is None else plan.problem(p0, data)
        if problem is None:
            return None
        with enable_x64(True):
            res, message = run_fit(problem, self.f, rows=False, stacklevel=stacklevel + 2)
        m = ydata.shape[0]
        return _results(res, message, m, n, True, absolute_sigma, False, stacklevel + 1)


def _results(res, message, m, n, padded, absolute_sigma, full_output, stacklevel):
    """``curve_fit``'s return value from the solver's host results."""
    fvec = res.fun
    if padded and full_output:  # else fun stayed on the device, unread
        fvec = fvec[:m]
    if res.status <= 0:
        raise RuntimeError("Optimal parameters not found: " + message)
    popt = res.x
    ysize = m if padded else fvec.size
    cost = 2 * res.cost
    pcov = res.pcov  # a fresh array (nlsq._solve.unpack)
    warn_cov = False
    if np.isnan(pcov).any():
        pcov.fill(np.inf)
        warn_cov = True
    elif not absolute_sigma:
        if ysize > n:
            pcov = pcov * (cost / (ysize - n))
        else:
            pcov.fill(np.inf)
            warn_cov = True
    if warn_cov:
        from scipy.optimize import OptimizeWarning

        warnings.warn(
            "Covariance of the parameters could not be estimated",
            category=OptimizeWarning,
            stacklevel=stacklevel,
        )
    if full_output:
        fvec = fvec if isinstance(fvec, jax.Array) else np.asarray(fvec)
        infodict = {"nfev": res.nfev, "fvec": fvec}
        return popt, pcov, infodict, message, res.status
    return popt, pcov
