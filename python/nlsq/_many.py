"""``curve_fit_many``: B independent fits of one model as one compiled program.

The B datasets are padded to one common length (the bucket of the longest, see
``nlsq._buckets``) with zero-weight rows and stacked, so the batch is one
``Problem`` whose traced leaves have a leading axis.  The solver's driver
(``init`` / ``step`` / ``result`` of the method, as in ``_driver.run``) is
``vmap``-ed over that axis: ``lax.while_loop`` under ``vmap`` runs until every fit
has stopped, and a fit that has stopped keeps its state unchanged (the batched
loop selects the old carry for it), so each fit ends on its own criteria with the
same iterates, counts and status as ``curve_fit`` on that dataset alone.

Speed
-----
Levenberg-Marquardt (the default method without bounds) takes its reduced
Jacobian from the Gram matrix (``nlsq._reduce``, the Gram route): per trial
point, one fused pass over the rows evaluates the model, its forward
derivatives, the residual norm and every sum, and nothing ``m``-long is kept
from one iteration to the next.  A fit whose Jacobian is too ill-conditioned
for that route at some iterate (:data:`MIN_GRAM_PIVOT_RATIO`), or whose
covariance it cannot settle, is fitted again by the QR route, as ``curve_fit``
does.  ``xdata`` and weights common to every dataset are passed once.

Logging
-------
Nothing is logged from inside the batched loop (where rows of all fits would
come out interleaved, iteration by iteration, and finished fits would still run
the body).  ``verbose=2`` keeps each fit's table rows in a small on-device
history (``max_nfev + 1`` rows of 6 numbers per fit) and writes, per fit, one whole
table with a fit-index column, then its closing lines; ``verbose=1`` writes one
summary line per fit (index, nfev, cost, status), in the order the fits
finished.  Both go through the ring logger, under the lock that keeps tables of
concurrent fits apart (``_verbose.TABLE_LOCK``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy.optimize import OptimizeWarning

from ._buckets import PaddedModelResidual, bucket_size, buckets_enabled, model_is_rowwise
from ._cache import SolverJit, code_keyed, enable_persistent_cache
from ._common import BAD_START, RUNNING, TERMINATION_MESSAGES
from ._curve_fit import _initialize_feasible, _n_params
from ._jax_compat import enable_x64
from ._lm import reduces_by_gram
from ._many_sharding import (
    batch_mesh,
    device_datasets,
    pad_batch,
    place_batch,
    shard_count,
    sharded_datasets,
    solve_on_mesh,
)
from ._problem import check_jac, make_problem, prepare_bounds, stored_description
from ._reduce import (
    gram_reduction,
    pcov_from_R,
    pcov_from_triangular,
    vectorized_small_svd,
)
from ._solve import METHODS, MIN_SINGLE_GRAM_PIVOT_RATIO
from ._verbose import write_many_tables

__all__ = ["ManyFitResult", "curve_fit_many"]


@dataclasses.dataclass
class ManyFitResult:
    """Results of :func:`curve_fit_many`, one entry per dataset along the first axis."""

    popt: np.ndarray  # (B, p)
    pcov: np.ndarray  # (B, p, p)
    status: np.ndarray  # (B,)
    success: np.ndarray  # (B,) bool
    nfev: np.ndarray  # (B,)
    cost: np.ndarray  # (B,) half the sum of squared weighted residuals (least_squares' cost)
    message: list[str]

    def __len__(self) -> int:
        return self.popt.shape[0]


class FitOutcome(NamedTuple):
    """What one fit of the batch hands back to the host: only what the result and the
    log use (the residuals and Jacobian, ``B x m`` each, stay on the device)."""

    x: jax.Array
    cost: jax.Array
    status: jax.Array
    nfev: jax.Array
    initial_cost: jax.Array
    optimality: jax.Array
    pcov: jax.Array  # (J^T J)^-1, unscaled; NaN where it does not exist
    iterations: jax.Array
    history: jax.Array | None  # verbose=2 table rows, else None
    # The smallest scaled pivot of R over the iterates (nlsq._reduce.gram_pivot_ratio)
    # when R came from the Gram matrix (0 where pcov's rank test is not settled),
    # else 1.
    pivot_ratio: jax.Array


#: Fits whose Gram-route R had a smaller scaled pivot at some iterate (R's relative
#: error about EPS / ratio) are fitted again with the QR route: the single fit's
#: threshold (see there), so a dataset takes the route ``curve_fit`` alone takes.
MIN_GRAM_PIVOT_RATIO = MIN_SINGLE_GRAM_PIVOT_RATIO


def _run_one(problem, history_len: int) -> FitOutcome:
    """The driver of ``_driver.run`` for one problem, keeping table rows when asked."""
    method = METHODS[problem.method]
    state = method.init(problem)
    by_gram = problem.method == "lm" and reduces_by_gram(problem, problem.x0.shape[0])

    def as_row(state):
        return jnp.stack([jnp.asarray(v, jnp.float64) for v in method.row(state)])

    history = jnp.zeros((history_len, 6)).at[0].set(as_row(state)) if history_len else None

    def body(carry):
        state, history = carry
        state = method.step(problem, state)
        if history is not None:
            slot = jnp.minimum(state.iteration, history_len - 1)
            history = history.at[slot].set(as_row(state))
        return state, history

    state, history = lax.while_loop(
        lambda carry: carry[0].status == RUNNING, body, (state, history)
    )
    out = method.result(problem, state)
    # The Gram route's smallest pivot over the iterates (LM keeps it); 1 elsewhere.
    pivot_ratio = jnp.asarray(out.pivot_ratio, jnp.float64)
    m_true = problem.residual.true_m(problem.data)
    if by_gram:
        pcov, certain = pcov_from_triangular(out.R, m_true, problem.n)
        # Where the rank test of pcov_from_R is not settled, the QR refit decides.
        pivot_ratio = jnp.where(certain, pivot_ratio, 0.0)
    else:
        pcov = pcov_from_R(out.R, m_true, problem.n)
    return FitOutcome(
        x=out.x,
        cost=out.cost,
        status=out.status,
        nfev=out.nfev,
        initial_cost=out.initial_cost,
        optimality=out.optimality,
        pcov=pcov,
        iterations=state.iteration,
        history=history,
        pivot_ratio=pivot_ratio,
    )


def _batch_axes(problem):
    """``vmap``'s ``in_axes`` for a stacked problem: every leaf has the batch axis
    first, but ``xdata`` and the weights given once (1-D, ``_host_padded``) are shared."""
    axes = jax.tree_util.tree_map(lambda _: 0, problem)
    X, _, W, _ = problem.data
    shared = [None if np.ndim(A) == 1 else 0 for A in (X, W)]
    return dataclasses.replace(axes, data=(shared[0], 0, shared[1], 0))


def _take_fits(problem, take: np.ndarray):
    """The fits ``take`` of a stacked problem (host arrays; shared leaves kept whole)."""
    axes = _batch_axes(problem)
    return jax.tree_util.tree_map(
        lambda axis, leaf: leaf if axis is None else np.asarray(leaf)[take],
        axes,
        problem,
        is_leaf=lambda node: node is None,
    )


def _run_batch_qr(problem, history_len: int) -> FitOutcome:
    """Every fit of the stacked ``problem`` (leading batch axis), vectorized."""
    # A batched LAPACK SVD loops over the fits one small matrix at a time; Jacobi
    # rotations written element-wise vectorize across them (see nlsq._reduce).
    with vectorized_small_svd():
        run = jax.vmap(lambda one: _run_one(one, history_len), in_axes=(_batch_axes(problem),))
        return run(problem)


def _run_batch(problem, history_len: int) -> FitOutcome:
    """As :func:`_run_batch_qr`, with Levenberg-Marquardt's ``R`` from the Gram matrix
    (a batched QR, too, is a LAPACK call per fit; see nlsq._reduce)."""
    with gram_reduction():
        return _run_batch_qr(problem, history_len)


def _stored_description(problem, history_len: int):
    """The batch's static part for the program store (``nlsq._programs``)."""
    static = stored_description(problem)
    return None if static is None else ("batch", static, history_len)


def _outcome_tree(problem, history_len: int):
    """The treedef of a storable batch's :class:`FitOutcome` (no verbose history)."""
    fields = dict.fromkeys(FitOutcome._fields, 0)
    return jax.tree_util.tree_structure(FitOutcome(**{**fields, "history": None}))


_solve_batch, _solve_batch_qr = (
    SolverJit(run, static_argnums=1, describe=_stored_description, outputs=_outcome_tree)
    for run in (_run_batch, _run_batch_qr)
)


def _solve_many(problem, history_len: int):
    return _solve_batch(problem, history_len)


def _refit_by_qr(problem, out: FitOutcome, history_len: int) -> FitOutcome:
    """``out`` (host arrays, B fits) with the fits whose Gram route lost digits
    (:data:`MIN_GRAM_PIVOT_RATIO`) fitted again by the QR route, as ``curve_fit`` does."""
    redo = np.flatnonzero(np.asarray(out.pivot_ratio) < MIN_GRAM_PIVOT_RATIO)
    if not redo.size:
        return out
    # The batch of refits is padded to a power of two (repeating the last one), so
    # few programs serve every count.
    size = 1 << int(redo.size - 1).bit_length()
    take = np.concatenate([redo, np.repeat(redo[-1:], size - redo.size)])
    subset = _take_fits(problem, take)
    again = jax.device_get(_solve_batch_qr(subset, history_len))

    def merge(old, new):
        merged = np.array(old)
        merged[redo] = np.asarray(new)[: redo.size]
        return merged

    return jax.tree_util.tree_map(merge, out, again)


def _as_rows(data, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (B, L), lengths (B,))``: a 2-D array as it is, or a sequence of B 1-D
    arrays stacked, each padded to the longest by repeating its last value."""
    if isinstance(data, np.ndarray | jax.Array):
        arr = np.asarray(data, dtype=float)
        if arr.ndim != 2:
            raise ValueError(
                f"`{what}` must be a 2-D array (batch, n) or a sequence of 1-D arrays; "
                f"got shape {arr.shape}."
            )
        return arr, np.full(arr.shape[0], arr.shape[1])
    if not isinstance(data, Sequence):
        raise ValueError(f"`{what}` must be a 2-D array or a sequence of 1-D arrays.")
    items = [np.asarray(d, dtype=float) for d in data]
    for i, d in enumerate(items):
        if d.ndim != 1:
            raise ValueError(f"`{what}[{i}]` must be 1-D; got shape {d.shape}.")
    lengths = np.array([d.size for d in items], dtype=int)
    rows = np.zeros((len(items), int(lengths.max(initial=0))))
    for i, d in enumerate(items):
        if d.size:
            rows[i, : d.size], rows[i, d.size :] = d, d[-1]
    return rows, lengths


def _padded_to(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` (from :func:`_as_rows`) extended to ``size`` columns by repeating the last."""
    out = np.empty((rows.shape[0], size))
    out[:, : rows.shape[1]] = rows
    out[:, rows.shape[1] :] = rows[:, -1:]
    return out


def _is_shared(rows: np.ndarray) -> bool:
    """Whether ``rows`` (B, L) is one row seen by every dataset (a broadcast, no copy)."""
    return rows.ndim == 2 and rows.shape[0] > 0 and rows.strides[0] == 0


def _inverse_sigma(sigma, lengths: np.ndarray) -> np.ndarray:
    """Row weights ``1 / sigma`` as (B, L) for every form of ``sigma``, checked; one
    row broadcast (:func:`_is_shared`) when every dataset has the same weights."""
    batch, longest = lengths.size, int(lengths.max())
    if sigma is None:
        return np.broadcast_to(np.ones(longest), (batch, longest))
    if not isinstance(sigma, list | tuple) and np.ndim(sigma) == 0:
        return np.broadcast_to(np.full(longest, 1.0 / float(sigma)), (batch, longest))
    S, s_len = _shared_or_rows(sigma, batch, "sigma")
    wrong = np.flatnonzero(s_len != lengths)
    if wrong.size:
        i = wrong[0]
        raise ValueError(f"dataset {i}: `sigma` must have shape ({lengths[i]},).")
    with np.errstate(divide="ignore"):
        W = np.broadcast_to(1.0 / S[0], S.shape) if _is_shared(S) else 1.0 / S
    not_finite = np.flatnonzero(~np.isfinite(W).all(axis=1))
    if not_finite.size:
        raise ValueError(f"dataset {not_finite[0]}: `sigma` must not contain zeros.")
    return W


def _shared_or_rows(value, batch: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, lengths)`` of ``value`` for ``batch`` datasets: one 1-D array shared by
    all (broadcast, no copy), or per-dataset rows (:func:`_as_rows`); the count checked."""
    if isinstance(value, np.ndarray | jax.Array) and np.ndim(value) == 1:
        shared = np.asarray(value, dtype=float)
        return np.broadcast_to(shared, (batch, shared.size)), np.full(batch, shared.size)
    rows, lengths = _as_rows(value, what)
    if lengths.size != batch:
        raise ValueError(f"`{what}` holds {lengths.size} datasets, `ydata` {batch}.")
    return rows, lengths


def _host_rows(xdata, ydata):
    """``(X, Y, lengths)``: the datasets as host rows (:func:`_as_rows`), checked."""
    Y, lengths = _as_rows(ydata, "ydata")
    batch = lengths.size
    if batch == 0:
        raise ValueError("`ydata` holds no dataset.")
    X, x_lengths = _shared_or_rows(xdata, batch, "xdata")
    for i in np.flatnonzero(x_lengths != lengths)[:1]:
        raise ValueError(
            f"dataset {i}: `xdata` has shape ({x_lengths[i]},), `ydata` ({lengths[i]},)."
        )
    # Padding repeats real values, so whole rows can be checked.
    for i in np.flatnonzero(~(np.isfinite(X).all(axis=1) & np.isfinite(Y).all(axis=1)))[:1]:
        raise ValueError(f"dataset {i}: `xdata`/`ydata` must not contain infs or NaNs.")
    return X, Y, lengths


def _per_fit(value, batch: int, p: int, what: str) -> np.ndarray:
    """A (p,) or scalar value shared by all fits, or (B, p) per fit -> (B, p)."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim <= 1:
        return np.broadcast_to(np.resize(arr, p) if arr.ndim == 0 else arr, (batch, p)).copy()
    if arr.shape != (batch, p):
        raise ValueError(f"`{what}` must have shape ({p},) or ({batch}, {p}); got {arr.shape}.")
    return arr.copy()


def _host_padded(model, p: int, X, Y, sigma, lengths):
    """``(X, Y, W)``: host rows padded with zero-weight rows to one bucket.

    ``X`` and ``W`` are one 1-D row shared by every fit when the datasets have one
    length and one ``xdata`` (weights): the batched program then reads them once
    (``_batch_axes``), not once per fit, and they are not copied B times here.
    """
    W = _inverse_sigma(sigma, lengths)

    longest = int(lengths.max())
    size = bucket_size(longest) if buckets_enabled() else longest
    if (size > lengths.min() or size > longest) and not model_is_rowwise(model, p):
        if lengths.min() != longest:
            raise ValueError(
                "datasets of different lengths are padded, which needs a model that works "
                "element by element (this one mixes data points); fit them with curve_fit."
            )
        size = longest
    uniform = lengths.min() == longest

    def padded(rows):
        if uniform and _is_shared(rows):
            return _padded_to(rows[:1], size)[0]
        return _padded_to(rows, size)

    # Zero-weight rows pad every dataset to ``size``.  ``ydata`` is never shared:
    # one dataset given as ``y[None]`` is a stride-0 row too.
    X, W = padded(X), padded(W)
    Y = _padded_to(Y, size)
    W[..., np.arange(size) >= (longest if W.ndim == 1 else lengths[:, None])] = 0.0
    return X, Y, W


def _first(rows):
    """The first dataset's row of ``rows`` (B, L), or the shared row itself (L,)."""
    return rows if np.ndim(rows) == 1 else rows[0]


def curve_fit_many(
    f: Callable,
    xdata,
    ydata,
    p0=None,
    sigma=None,
    absolute_sigma: bool = False,
    bounds=(-np.inf, np.inf),
    method: str | None = None,
    jac=None,
    verbose: int = 0,
    ftol: float = 1e-8,
    xtol: float = 1e-8,
    gtol: float = 1e-8,
    max_nfev: int | None = None,
    loss="linear",
    f_scale: float = 1.0,
    x_scale=1.0,
    mesh=None,
) -> ManyFitResult:
    """Fit ``f(x, *params)`` to B datasets at once, in one compiled program.

    Parameters
    ----------
    f : callable
        Element-wise model ``f(x, p1, p2, ...)`` written with ``jax.numpy``.
    xdata, ydata : array (B, n) or sequence of B 1-D arrays
        The datasets; lengths may differ (shorter ones are padded with zero-weight
        rows).  ``xdata`` may also be one 1-D array shared by every dataset.
    p0 : array (p,) or (B, p), optional
        Initial guesses, shared or per dataset (default as ``curve_fit``).
    sigma : None, scalar, array (n,), (B, n) or sequence of 1-D arrays
        Standard deviations of ``ydata`` (covariance matrices are not supported).
    absolute_sigma, method, ftol, xtol, gtol, max_nfev, loss, f_scale, x_scale
        As in ``curve_fit``, the same for every dataset.
    bounds : 2-tuple
        ``(lb, ub)``, each a scalar, (p,) shared, or (B, p) per dataset.
    jac : None, '2-point' or '3-point'
        Jacobian (JAX autodiff by default); callables are not supported here.
    verbose : {0, 1, 2}
        1: one summary line per fit; 2: each fit's iteration table (with a fit
        index column), written whole.
    mesh : jax.sharding.Mesh, optional
        Shard the batch over this mesh's devices: each device fits its own fits
        (``nlsq._many_sharding``; B is padded with dummy fits to a multiple of the
        device count).  ``ydata`` given as a ``(B, n)`` ``jax.Array`` whose first
        axis is sharded over a mesh is fitted where it is, without ``mesh``.

    Returns
    -------
    ManyFitResult
        ``popt (B, p)``, ``pcov (B, p, p)``, ``status``, ``success``, ``nfev``,
        ``cost`` (B,) and ``message`` (list).  Fits that fail are reported in
        ``status``/``success``, not raised.
    """
    if not callable(f):
        raise TypeError("`f` must be callable.")
    if verbose not in (0, 1, 2):
        raise ValueError("`verbose` must be in [0, 1, 2].")
    if method not in (None, "trf", "dogbox", "lm"):
        raise ValueError("`method` must be None, 'trf', 'dogbox' or 'lm'.")
    if callable(jac):
        raise ValueError("curve_fit_many does not take a `jac` callable; use None (autodiff).")
    if callable(loss):
        raise ValueError("curve_fit_many takes a loss name, not a callable.")
    jac_mode, _ = check_jac(jac)
    placement = batch_mesh(ydata, mesh)  # (mesh, axes): the batch is sharded over them
    on_device = placement is not None and sharded_datasets(ydata)
    if on_device:  # the datasets stay on their devices (nlsq._many_sharding)
        X, Y, W = device_datasets(xdata, ydata, sigma, *placement)
        lengths = np.full(Y.shape[0], Y.shape[1])
    else:
        X, Y, lengths = _host_rows(xdata, ydata)
    batch = lengths.size

    if p0 is None:
        p = _n_params(f)
    else:
        p0 = np.asarray(p0, dtype=float)
        p = p0.shape[-1] if p0.ndim else 1
    if np.any(lengths < p):
        bad = np.flatnonzero(lengths < p).tolist()
        raise TypeError(f"datasets {bad} have fewer data points than the {p} parameters.")
    lb_b, ub_b = (
        _per_fit(b, batch, p, name)
        for b, name in zip(prepare_bounds(bounds, p), ("bounds[0]", "bounds[1]"), strict=True)
    )
    if p0 is None:
        x0_b = np.stack([_initialize_feasible(lb_b[i], ub_b[i]) for i in range(batch)])
    else:
        x0_b = _per_fit(p0, batch, p, "p0")
    if method is None:  # curve_fit's rule
        bounded = bool(np.isfinite(lb_b).any() or np.isfinite(ub_b).any())
        method = "trf" if bounded or loss != "linear" else "lm"
    if method == "lm" and (np.isfinite(lb_b).any() or np.isfinite(ub_b).any()):
        raise ValueError("Method 'lm' only works for unconstrained problems. Use 'trf' instead.")

    model = code_keyed(f)
    if not on_device:
        X, Y, W = _host_padded(model, p, X, Y, sigma, lengths)
        if placement is not None:  # every leaf is split over the devices: one row per fit
            X, W = (np.broadcast_to(A, Y.shape) if A.ndim == 1 else A for A in (X, W))

    enable_persistent_cache()
    with enable_x64(True):
        # One problem checks the shared options; its traced leaves are then replaced
        # by per-dataset stacks (checked the same way, vectorized).
        template = make_problem(
            PaddedModelResidual(model, None, 1),
            (_first(X), Y[0], _first(W), np.float64(lengths[0])),
            x0_b[0],
            jac_mode=jac_mode,
            bounds=(lb_b[0], ub_b[0]),
            method=method,
            loss=loss,
            f_scale=f_scale,
            x_scale=x_scale,
            ftol=ftol,
            xtol=xtol,
            gtol=gtol,
            max_nfev=max_nfev,
            verbose=0,
            want_pcov=True,
        )
        if np.any(lb_b >= ub_b):
            raise ValueError("Each lower bound must be strictly less than each upper bound.")
        outside = np.flatnonzero(np.any((x0_b < lb_b) | (x0_b > ub_b), axis=1))
        if outside.size:
            raise ValueError(f"Initial guess is outside of the bounds for datasets {outside}.")
        if method == "trf":
            from ._common import make_strictly_feasible_np

            x0_b = make_strictly_feasible_np(x0_b, lb_b, ub_b)
        bounded = bool(np.isfinite(lb_b).any() or np.isfinite(ub_b).any())

        def stack(leaf):
            return np.broadcast_to(leaf, (batch,) + np.shape(leaf)).copy()

        problem = dataclasses.replace(
            template,
            x0=x0_b,
            lb=lb_b,
            ub=ub_b,
            x_scale=stack(template.x_scale),
            ftol=stack(template.ftol),
            xtol=stack(template.xtol),
            gtol=stack(template.gtol),
            max_nfev=stack(template.max_nfev),
            f_scale=stack(template.f_scale),
            diff_step=stack(template.diff_step),
            data=(X, Y, W, lengths.astype(np.float64)),
            bounded=bounded,
        )
        history_len = int(template.max_nfev) + 1 if verbose == 2 else 0
        if placement is None:
            solved = _solve_many(problem, history_len)
        else:  # every device fits its own fits; B padded by dummy fits to a multiple
            problem = pad_batch(problem, batch, shard_count(*placement))
            solved = solve_on_mesh(_run_batch, place_batch(problem, *placement), history_len,
                                   *placement)  # fmt: skip
        # Sharded results come back shard by shard (no gather in the program).
        out = jax.tree_util.tree_map(lambda a: a[:batch], jax.device_get(solved))
        out = _refit_by_qr(problem, out, history_len)

    status = np.asarray(out.status).astype(int)
    cost = np.asarray(out.cost)
    pcov = np.array(out.pcov, dtype=float)
    dof = lengths - p
    bad_cov = np.isnan(pcov).any(axis=(1, 2))
    if not absolute_sigma:
        bad_cov |= dof <= 0
        scale = np.where(dof > 0, 2 * cost / np.where(dof > 0, dof, 1), np.inf)
        pcov = pcov * scale[:, None, None]
    pcov[bad_cov] = np.inf
    if bad_cov.any():
        warnings.warn(
            f"Covariance of the parameters could not be estimated for datasets "
            f"{np.flatnonzero(bad_cov).tolist()}",
            category=OptimizeWarning,
            stacklevel=2,
        )
    messages = [
        "Residuals are not finite in the initial point."
        if s == BAD_START
        else TERMINATION_MESSAGES.get(int(s), str(s))
        for s in status
    ]
    nfev = np.asarray(out.nfev).astype(int)
    if verbose:
        write_many_tables(verbose, messages, out, np.asarray(out.iterations), out.history)
    return ManyFitResult(
        popt=np.asarray(out.x),
        pcov=pcov,
        status=status,
        success=status > 0,
        nfev=nfev,
        cost=cost,
        message=messages,
    )
