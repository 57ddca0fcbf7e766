"""Running a ``Problem``: the one jitted entry point and its host-side wrapper.

``solve(problem)`` is ``jax.jit``-compiled; the ``Problem`` pytree carries its
options as static metadata and its numbers as traced leaves, so JAX's jit
cache keys on exactly (model, options, shapes, dtypes): refitting the same
model with new data of the same shape reuses the compiled executable.

A Levenberg-Marquardt problem that ``nlsq._lm.single_fit_by_gram`` admits is
traced by the Gram route (``nlsq._reduce``: no LAPACK QR, one fused pass over the
rows per linearization); ``solve_by_qr`` is the QR route's program, which reruns
such a fit when its Gram route lost digits (:func:`_solve_by_gram`).

``run_fit(problem, model)`` is what ``curve_fit`` calls: the verbose header and
closing lines, the fallback to the host for functions JAX cannot trace, and the
results on the host (``Solved``, one transfer); ``fit`` (``least_squares``) makes
scipy's ``OptimizeResult`` of them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
import weakref
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _kernel
from ._buckets import true_m
from ._cache import SINGLE_FIT_OPTIONS, SolverJit
from ._common import BAD_START, TERMINATION_MESSAGES, norm
from ._distributed import fetch, table_verbosity
from ._dogbox import DOGBOX
from ._driver import Method, run
from ._lm import LM, single_fit_by_gram
from ._problem import Problem, stored_description
from ._reduce import gram_reduction, pcov_from_R, pcov_from_triangular, vectorized_small_svd
from ._residual import (
    TRACE_ERRORS,
    HostFallbackWarning,
    HostResidual,
    UserTraceFailure,
    end_fit,
    new_fit_id,
    register_callback,
    remember_evaluation,
    take_user_exception,
)
from ._trf import TRF
from ._verbose import TABLE_LOCK, log_closing, log_header, rows_in_blocks
from ._workers import forget_workers, register_workers

METHODS: dict[str, Method] = {"trf": TRF, "dogbox": DOGBOX, "lm": LM}


#: The scalars of a ``SolveResult``, in the order ``_solve`` packs them, and then
#: the Gram route's pivot ratio (:func:`_solve_by_gram`).
_SCALARS = ("cost", "optimality", "nfev", "njev", "status", "initial_cost")

#: A Gram-route fit whose ``R`` had a smaller scaled pivot at some accepted
#: linearization (``nlsq._reduce.gram_pivot_ratio``; ``R``'s relative error is about
#: ``EPS / ratio``) is fitted again by the QR route (``curve_fit_many`` uses the same
#: threshold, ``nlsq._many.MIN_GRAM_PIVOT_RATIO``).  Chosen with ``benches/probe_single_gram.py
#: --threshold`` (NIST StRD models, polynomials on shifted intervals): at scipy's
#: default tolerances, popt's largest difference from the QR route's, against the
#: largest parameter, was below about ``1e-14 / ratio`` (4e-11 at ratio 2e-4,
#: 2e-10 at 5e-7), with the same nfev and status wherever the ratio stayed above
#: this; below it the differences reached 1e-9 and more.
MIN_SINGLE_GRAM_PIVOT_RATIO = 1e-4

#: A logged small fit (``nlsq._kernel``) runs its first steps as one kernel that
#: keeps their rows, this many at most (a small fit seldom takes more; later
#: steps run, logged, as in any other fit).
ROWS_IN_A_KERNEL = 64

# Tolerances below scipy's defaults do not switch a fit to the QR route: the two
# routes round the quantities of the convergence tests differently (the Gram
# route's R carries EPS / ratio, its squared norm is summed in another order), so
# near the rounding they may stop at different evaluations.  Of the 26 NIST StRD
# fits above the pivot threshold (benches/probe_single_gram.py --threshold, with
# PROBE_TIGHT setting every tolerance), nfev or status differed in none at 1e-8,
# 1 at 1e-9 and 1e-10, 3 at 1e-12 and 12 at 1e-14, where both routes still met
# the certified values to 7-11 digits (each the closer in about half the fits).
# A switch on the tolerance would cost a second program whenever a fit changes
# its tolerances (they are traced values, tests/test_curve_fit.py).


def _solve(problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(small, fun, jac)``: everything but the per-row outputs packed in ONE float64
    vector (:func:`unpack`), so a fit brings its results to the host in one transfer
    instead of one per field (each costs a few microseconds, as much as the whole
    loop of a small fit).  Integers (counts, status) are exact in float64.

    A problem that ``nlsq._lm.single_fit_by_gram`` admits is traced by the Gram
    route (:func:`_solve_by_gram`); the decision rests on the static fields and
    shapes the jit cache keys on."""
    if single_fit_by_gram(problem):
        if not _kernel.wanted(problem.m):
            return _solve_by_gram(problem)
        if not problem.verbose:
            return _kernel.call(_solve_by_gram_in_a_kernel, problem)
        if not rows_in_blocks():
            return _solve_by_gram(problem)
        # A logged fit: its records are custom calls, which no kernel holds; its
        # first steps are one kernel that keeps their rows (nlsq._driver.run).
        with vectorized_small_svd():
            return _solve_by_gram(problem, rows_in_a_kernel=ROWS_IN_A_KERNEL)
    return _solve_by_qr(problem)


def _solve_by_gram_in_a_kernel(problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`_solve_by_gram` with no LAPACK call, so that its program can be one
    kernel (``nlsq._kernel``): the step's small SVD by Jacobi rotations (as the
    batched fits take it, ``nlsq._reduce.vectorized_small_svd``; the two agree to
    rounding)."""
    with vectorized_small_svd():
        return _solve_by_gram(problem)


def _check_lm_rows(problem: Problem) -> None:
    m, n = problem.m, problem.n
    if problem.method == "lm" and m < n:
        raise ValueError(
            "Method 'lm' doesn't work when the number of residuals is less than the number "
            f"of variables (m={m} < n={n})."
        )


def _true_m(problem: Problem):
    m_true = true_m(problem)
    if problem.layout is not None:
        m_true = problem.layout.m_valid  # without the mesh's zero-weight padding rows
    return problem.m if m_true is None else m_true


def _pack(out, pcov, pivot_ratio) -> jax.Array:
    f64 = jnp.float64
    parts = [out.x, out.grad, out.active_mask.astype(f64)]
    scalars = [jnp.asarray(getattr(out, k), f64) for k in _SCALARS]
    parts.append(jnp.stack([*scalars, jnp.asarray(pivot_ratio, f64)]))
    if pcov is not None:
        parts.append(pcov.ravel())
    return jnp.concatenate([p.astype(f64) for p in parts])


def _solve_by_qr(problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`_solve` by the QR route (every problem but the Gram route's)."""
    _check_lm_rows(problem)
    out = run(METHODS[problem.method], problem)
    pcov = pcov_from_R(out.R, _true_m(problem), problem.n) if problem.want_pcov else None
    return _pack(out, pcov, 1.0), out.fun, out.jac


def _solve_by_gram(
    problem: Problem, rows_in_a_kernel: int = 0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`_solve` by the Gram route (``nlsq._reduce``): ``R`` from the Gram matrix of
    ``[J | f]``, one fused pass over the rows per linearization, no LAPACK QR.

    The packed ``pivot_ratio`` is the smallest scaled pivot of the accepted
    linearizations (0 where the covariance's rank test is not settled by ``R``'s
    bounds); below :data:`MIN_SINGLE_GRAM_PIVOT_RATIO`, :func:`_fit` runs the fit
    again by the QR route (:data:`solve_by_qr`), so its result is the QR route's.
    The residuals (``fun``, and ``cost`` from them), which the Gram route never
    keeps, are evaluated once at the solution, as the QR route computes them; so
    are ``jac`` and ``grad = J^T f`` for ``least_squares``.  ``curve_fit`` (the
    problems that want ``pcov``, as in ``nlsq._operator.result_arrays``) never reads
    them: forming ``J`` once more cost a quarter of the program at n = 1e5, so its
    ``jac`` is ``R`` and its ``grad`` ``R^T Q^T f``."""
    _check_lm_rows(problem)
    with gram_reduction():
        out = run(LM, problem, rows_in_a_kernel=rows_in_a_kernel)
    pivot_ratio = out.pivot_ratio
    fun = problem.fun(out.x)
    out = out._replace(fun=fun, cost=0.5 * norm(fun) ** 2)  # as result() of the QR route
    if not problem.want_pcov:
        jac = problem.jac(out.x)
        out = out._replace(jac=jac, grad=jac.T @ fun)
    pcov = None
    if problem.want_pcov:
        pcov, certain = pcov_from_triangular(out.R, _true_m(problem), problem.n)
        pivot_ratio = jnp.where(certain, pivot_ratio, 0.0)
    return _pack(out, pcov, pivot_ratio), out.fun, out.jac


class Solved(NamedTuple):
    """A ``SolveResult`` on the host (minus ``R``), and ``pcov`` (None unless wanted)."""

    x: np.ndarray
    cost: float
    fun: Any
    jac: Any
    grad: np.ndarray
    optimality: float
    active_mask: np.ndarray
    nfev: int
    njev: int
    status: int
    initial_cost: float
    pcov: np.ndarray | None
    # The Gram route's smallest scaled pivot (_solve_by_gram); 1 on the QR route.
    pivot_ratio: float = 1.0


def unpack(small: np.ndarray, fun, jac, n: int) -> Solved:
    """The host view of ``_solve``'s packed vector (one writable copy, then slices)."""
    small = np.array(small)
    k = 3 * n
    scalars = small[k : k + len(_SCALARS) + 1].tolist()
    cost, optimality, nfev, njev, status, initial_cost, pivot_ratio = scalars
    pcov = small[k + len(scalars) :]
    return Solved(
        x=small[:n],
        cost=cost,
        fun=fun,
        jac=jac,
        grad=small[n : 2 * n],
        optimality=optimality,
        active_mask=small[2 * n : k].astype(int),
        nfev=int(nfev),
        njev=int(njev),
        status=int(status),
        initial_cost=initial_cost,
        pcov=pcov.reshape(n, n) if pcov.size else None,
        pivot_ratio=pivot_ratio,
    )


def _note_rerun(verbose: int, ratio: float) -> None:
    """Between a verbose fit's two tables: the Gram route's table is complete, and
    one line says why a second table follows (the QR route's run, the result)."""
    log_closing(verbose)
    print(
        f"nlsq: the Gram route lost digits (smallest scaled pivot {ratio:.1e} < "
        f"{MIN_SINGLE_GRAM_PIVOT_RATIO:.0e}); the fit runs again by the QR route:",
        file=sys.stdout,
        flush=True,
    )
    log_header(verbose)


def _packed_pivot_ratio(small, n: int) -> float:
    """The pivot ratio ``_pack`` put after the scalars (1 on the QR route)."""
    return float(small[3 * n + len(_SCALARS)])


# The store route keys a program by the function's name too: the Gram and the QR
# programs of one problem are stored apart.
solve = SolverJit(_solve, SINGLE_FIT_OPTIONS, describe=stored_description)
#: The QR route's program for every problem: the refit of a Gram-route fit that
#: lost digits (:func:`_solve_by_gram`).
solve_by_qr = SolverJit(_solve_by_qr, SINGLE_FIT_OPTIONS, describe=stored_description)


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


def _on_host(problem: Problem, fit_id: int) -> Problem:
    """``problem`` with its residual evaluated by NumPy on the host.

    Evaluating the user's function once here gives m, and lets a genuine error in
    it (ZeroDivisionError, a wrong shape...) surface as itself.  Its data become
    ``(fit_id, data)``: the id names the slot where an exception the user's code
    raises mid-fit is kept (``_residual._ABORTS``).
    """
    residual = problem.residual
    np_data = jax.tree_util.tree_map(np.asarray, problem.data)
    x0 = np.array(problem.x0)
    f0 = np.asarray(residual(x0, np_data, xp=np), dtype=np.float64)
    remember_evaluation(fit_id, x0, f0)  # the loop's first evaluation, as in scipy
    host = problem.on_host(HostResidual(residual, int(f0.size)))
    return dataclasses.replace(host, data=(np.int64(fit_id), problem.data))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else ""


def _to_host(outs, rows: bool):
    """``_solve``'s outputs on the host: one ``device_get`` of them all (the per-row
    ``fun``/``jac`` left on the device unless ``rows``); arrays spanning other
    processes' devices go through :func:`nlsq._distributed.fetch`."""
    small, fun, jac = outs
    if not (small.is_fully_addressable and fun.is_fully_addressable):
        return fetch(outs)
    _poll_until_ready(small)
    if rows:
        return jax.device_get(outs)
    return np.asarray(small), fun, jac


#: How long the host polls a fit's results before it blocks on them (seconds).
_POLL_SECONDS = 300e-6


def _poll_until_ready(result: jax.Array) -> None:
    """Poll ``result.is_ready()`` for up to :data:`_POLL_SECONDS` before the host blocks.

    A small fit's program ends within a few hundred microseconds; blocking on it
    puts the host thread to sleep, and waking it costs 20-40 µs on a busy or
    virtualized machine (``benches/probe_single_kernel.py``), a tenth of the
    fit.  A longer fit then blocks as before, having spent this much CPU time.
    """
    deadline = time.perf_counter() + _POLL_SECONDS
    while not result.is_ready() and time.perf_counter() < deadline:
        _yield_cpu()


def _no_yield() -> None:
    pass


#: Between polls the host thread offers its core to XLA's threads (the program's
#: own among them): 3 % faster small fits than a bare spin on 2 cores
#: (interleaved, n = 1e3: 248 / 256 µs).  Where the OS has no ``sched_yield``, it spins.
_yield_cpu = getattr(os, "sched_yield", _no_yield)


def _run(problem: Problem, fit_id: int, rows: bool = True, program: Any = None):
    """Run the compiled loop (``program``, :data:`solve` unless given); an exception
    of the user's code raised in a host callback (residual, Jacobian, ``callback``)
    is re-raised as itself."""
    try:
        return _to_host((program or solve)(problem), rows)
    except jax.errors.JaxRuntimeError:
        user_error = take_user_exception(fit_id)
        if user_error is None:
            raise
        if problem.verbose:
            # The rows logged before the error are in the ring: write them first.
            from .utils import async_logger

            async_logger.flush()
        raise user_error from None


def fit(
    problem: Problem, model: Any, callback: Any = None, rows: bool = True, workers: Any = None
) -> tuple[Any, np.ndarray | None]:
    """Run ``problem`` (inside ``jax.enable_x64``) into scipy's ``OptimizeResult``, and
    ``pcov`` (None unless ``problem.want_pcov``); see :func:`run_fit`."""
    from scipy.optimize import OptimizeResult  # here: `import nlsq` stays without scipy

    # The fallback warning points at least_squares' caller: _fit, run_fit, fit, least_squares.
    out, message = run_fit(problem, model, callback, rows, stacklevel=5, workers=workers)
    result = OptimizeResult(
        x=out.x,
        cost=out.cost,
        # Per-row outputs spanning other processes stay global jax.Arrays.
        fun=out.fun if isinstance(out.fun, jax.Array) else np.asarray(out.fun),
        jac=out.jac if isinstance(out.jac, jax.Array) else np.asarray(out.jac),
        grad=out.grad,
        optimality=out.optimality,
        active_mask=out.active_mask,
        nfev=out.nfev,
        njev=out.njev,
        status=out.status,
        message=message,
        success=out.status > 0,
    )
    return result, out.pcov


def run_fit(
    problem: Problem,
    model: Any,
    callback: Any = None,
    rows: bool = True,
    stacklevel: int = 4,
    workers: Any = None,
) -> tuple[Solved, str]:
    """Run ``problem`` (inside ``jax.enable_x64``): the host results and scipy's message.

    ``model`` is the user's function, remembered when it cannot be traced so later
    fits go to the host directly; ``callback`` is scipy's
    ``callback(intermediate_result)`` (or ``callback(x)``).  ``rows=False`` leaves
    ``fun`` and ``jac`` on the device (``curve_fit`` without ``full_output`` never
    reads them).  ``stacklevel`` is the host-fallback warning's, counted from ``_fit``.
    ``workers`` is the map-like callable of host finite differences (``nlsq._workers``).
    """
    fit_id = new_fit_id()
    if workers is not None:
        register_workers(fit_id, workers)
    if callback is not None:
        register_callback(fit_id, callback)
        problem = problem.with_callback(fit_id)
    try:
        if not problem.verbose:
            return _fit(problem, model, fit_id, rows, stacklevel)
        with TABLE_LOCK:  # verbose tables of concurrent fits stay whole
            return _fit(problem, model, fit_id, rows, stacklevel)
    finally:
        end_fit(fit_id)
        forget_workers(fit_id)


def _fit(problem: Problem, model: Any, fit_id: int, rows: bool, stacklevel: int):
    # One table per fit: under jax.distributed, process 0 writes it (rows included).
    verbose = table_verbosity(problem.verbose) if problem.verbose else 0
    log_header(verbose)
    if _known_host(model):
        small, fun, jac = _run(_on_host(problem, fit_id), fit_id, rows)
    else:
        untraceable = None
        try:
            small, fun, jac = _run(problem, fit_id, rows)
        except (UserTraceFailure, *TRACE_ERRORS) as err:
            untraceable = err.original if isinstance(err, UserTraceFailure) else err
        if untraceable is not None:
            host = _on_host(problem, fit_id)  # raises the user's own error if genuine
            _mark_host(model)
            warnings.warn(
                f"{problem.residual.name!r} cannot be traced by JAX "
                f"({type(untraceable).__name__}: {_first_line(untraceable)}); it is evaluated "
                "on the host through jax.pure_callback with a '2-point' finite-difference "
                "Jacobian unless `jac` is given (slower). Write it with jax.numpy to fit on "
                "the device.",
                HostFallbackWarning,
                stacklevel=stacklevel,
            )
            small, fun, jac = _run(host, fit_id, rows)
    pivot_ratio = _packed_pivot_ratio(small, problem.n)
    if pivot_ratio < MIN_SINGLE_GRAM_PIVOT_RATIO:  # the QR route's fit (_solve_by_gram)
        if verbose:
            _note_rerun(verbose, pivot_ratio)
        small, fun, jac = _run(problem, fit_id, rows, program=solve_by_qr)
    layout = problem.layout
    if layout is not None and layout.m_valid != layout.m:
        fun = fun[: layout.m_valid]
    out = unpack(small, fun, jac, problem.n)
    status = out.status
    if status == BAD_START:
        if verbose:
            # The header and row 0 are already in the ring: write them before raising.
            from .utils import async_logger

            async_logger.flush()
        raise ValueError("Residuals are not finite in the initial point.")
    message = TERMINATION_MESSAGES[status]
    log_closing(verbose)  # the solver logged the closing lines; complete the table
    return out, message
