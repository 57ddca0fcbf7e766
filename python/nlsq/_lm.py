"""Levenberg-Marquardt (More 1978, MINPACK ``lmder``): ``init`` / ``step`` for the driver.

The algorithmic rules are MINPACK's, which is what
``scipy.optimize.least_squares(method='lm')`` calls:

* variable scaling ``diag`` from the Jacobian column norms (``x_scale='jac'``,
  never decreasing) or ``1 / x_scale``; initial radius ``factor * ||diag x||``;
* trust-region radius and LM parameter ``par`` updated with MINPACK's rules
  (``ratio <= 0.25`` shrink by ``temp``, ``ratio >= 0.75`` expand to ``2 ||D p||``);
  a step is accepted when ``ratio >= 1e-4``;
* MINPACK's convergence tests (``info`` 1-8), reported with scipy's status codes.

The LM step itself comes from the SVD trust-region solver shared with TRF
(``solve_lsq_trust_region``, MINPACK's 10 % tolerance on the radius) on the
QR-reduced Jacobian; batched fits (``nlsq._many``), and single fits that
:func:`single_fit_by_gram` admits, reduce it through its Gram matrix instead
(``reduces_by_gram``, ``nlsq._reduce``).

Long or sharded rows (``problem.layout``, ``chunk_size`` / ``mesh``): ``R`` and
``Q^T f`` come from the chunked / per-device reduction that TRF uses
(:func:`nlsq._sharding.reduced_problem`), so the ``m x n`` Jacobian is never
formed; the state's ``J`` is then ``R`` itself (as TRF's ``Linearization``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._buckets import true_m
from ._common import BAD_START, EPS, RUNNING, norm, safe_div, solve_lsq_trust_region
from ._driver import IterationRow, Method, SolveResult
from ._problem import Problem
from ._reduce import (
    FUSED_MAX_N,
    gram_pivot_ratio,
    reduce_by_gram,
    reduce_jacobian,
    thin_svd,
    use_gram,
)
from ._sharding import reduced_problem

#: MINPACK ``info`` -> scipy status (6, 7, 8: tolerances below machine precision);
#: ``info == 0`` (still running) maps to RUNNING.
_INFO_TO_STATUS = np.array([RUNNING, 2, 3, 4, 1, 0, 2, 3, 1])
_FACTOR = 100.0


class LMState(NamedTuple):
    x: jax.Array
    f: jax.Array  # the residuals at x; none (empty) on the Gram route, see _kept
    fnorm: jax.Array
    J: jax.Array
    R: jax.Array
    qtf: jax.Array
    diag: jax.Array
    delta: jax.Array
    par: jax.Array
    nfev: jax.Array
    njev: jax.Array
    iteration: jax.Array
    accepted_any: jax.Array
    status: jax.Array  # scipy status; RUNNING while MINPACK's ``info`` is 0
    gnorm: jax.Array  # MINPACK's scaled gradient (cosine) norm, for the gtol test
    g_norm: jax.Array  # max |J^T f|, scipy's optimality (the logged one)
    step_norm: jax.Array
    actual_reduction: jax.Array
    initial_cost: jax.Array
    # The Gram route's smallest scaled pivot of R so far (nlsq._reduce.gram_pivot_ratio:
    # R's relative error is about EPS / ratio); 1 on the QR route.
    pivot_ratio: jax.Array


class Trial(NamedTuple):
    """Carry of MINPACK's inner loop (trial steps until one has ``ratio >= 1e-4``)."""

    delta: jax.Array
    par: jax.Array
    nfev: jax.Array
    x: jax.Array
    f: jax.Array
    fnorm: jax.Array
    xnorm: jax.Array
    accepted: jax.Array
    info: jax.Array
    step_norm: jax.Array
    actual_reduction: jax.Array  # of the cost 0.5 ||f||^2, for the table
    # The Gram route's (R, Q^T f) at x, formed with each trial (see step); else None.
    linearized: tuple[jax.Array, jax.Array] | None


# Speed: everything below works on the reduced ``R`` (n x n) and ``Q^T f``, never
# on the m x n Jacobian: the column norms of J are those of R (J = Q R, Q with
# orthonormal columns) and J^T f = R^T Q^T f.  At large m each pass over J that
# this saves costs as much as a function evaluation.


def _colnorms(R):
    """Column norms of the Jacobian, from its reduced factor."""
    return jnp.sqrt(jnp.sum(R * R, axis=0))


def _gnorm(R, qtf, fnorm):
    """MINPACK's max cosine between ``f`` and a Jacobian column."""
    cn = _colnorms(R)
    g = R.T @ qtf
    cos = jnp.where(cn != 0, jnp.abs(g) / jnp.where(cn != 0, cn, 1.0), 0.0)
    return jnp.where(fnorm != 0, jnp.max(cos) / jnp.where(fnorm != 0, fnorm, 1.0), 0.0)


def _rows_reduced(problem: Problem) -> bool:
    """Whether the rows are chunked / sharded: ``R`` is accumulated, ``J`` never formed."""
    return problem.layout is not None and problem.jac_mode != "host"


def reduces_by_gram(problem: Problem, n: int) -> bool:
    """Whether ``R`` comes from the Gram matrix here (while traced under
    ``nlsq._reduce.gram_reduction``: batched fits, and single fits that
    :func:`single_fit_by_gram` admits)."""
    return problem.jac_mode == "auto" and not _rows_reduced(problem) and use_gram(n)


def single_fit_by_gram(problem: Problem) -> bool:
    """Whether one fit of ``problem`` is traced by the Gram route (``nlsq._solve``).

    Decided by the problem's static fields and ``x0``'s shape only, so the jit
    cache, keyed on them, never hands one route's program to the other's problem.
    Levenberg-Marquardt with JAX's derivatives and few parameters, rows not chunked
    or sharded, and no ``callback``: a fit whose Gram route loses digits is run
    again by the QR route, and a callback's calls could not be taken back (a
    verbose table can: the rerun writes a second table after a note, ``nlsq._solve``).
    """
    return (
        problem.method == "lm"
        and problem.jac_mode == "auto"
        and problem.layout is None
        and problem.mesh is None
        and not problem.has_callback
        and problem.x0.shape[-1] <= FUSED_MAX_N
    )


def _jacobian_is_R(problem: Problem, n: int) -> bool:
    """Whether the state's ``J`` is ``R`` itself (the ``m x n`` Jacobian is never formed)."""
    return _rows_reduced(problem) or reduces_by_gram(problem, n)


def _linearize(problem: Problem, x, f):
    """``(J, R, Q^T f)`` at ``x``; ``J`` is ``R`` itself when the rows are reduced piecewise."""
    if _rows_reduced(problem):
        R, qtf, _ = reduced_problem(problem, x, f)  # 'lm' has the linear loss: no rescaling
        return R, R, qtf
    J = problem.jac(x)
    R, qtf = reduce_jacobian(J, f)
    return J, R, qtf


def _n_rows(problem: Problem, f) -> int:
    """The number of true residuals (without a mesh's zero-weight padding rows);
    ``f`` is the state's (empty on the Gram route, see :func:`_kept`)."""
    if problem.layout is not None:
        return problem.layout.m_valid
    return f.shape[0] if f.shape[0] else problem.m


def _kept(problem: Problem, f):
    """The residuals as the state keeps them.  The Gram route needs them only in the
    trial that evaluates them (norm, sums), so none are kept: a batch of fits would
    otherwise select and carry an ``m``-long array per fit each iteration."""
    return f[:0] if reduces_by_gram(problem, problem.x0.shape[-1]) else f


def init(problem: Problem) -> LMState:
    x0 = problem.x0
    f0 = problem.fun(x0)
    by_gram = reduces_by_gram(problem, x0.shape[0])
    if by_gram:
        # The Gram route (nlsq._reduce): R from the Gram matrix, fused with the model's
        # derivatives, and the norm from the same sums as at every trial point
        # (see step); J is not formed, so the state keeps R in its place.
        R0, qtf0, f0_squared = reduce_by_gram(problem.fun, x0)
        J0, fnorm0 = R0, jnp.sqrt(f0_squared)
    else:
        fnorm0 = norm(f0)
        J0, R0, qtf0 = _linearize(problem, x0, f0)
    if problem.jac_scale:
        cn = _colnorms(R0)
        diag = jnp.where(cn == 0, 1.0, cn)
    else:
        diag = 1.0 / problem.x_scale
    xnorm = norm(diag * x0)
    gnorm = _gnorm(R0, qtf0, fnorm0)
    status = jnp.where(gnorm <= problem.gtol, 1, RUNNING)
    zero = jnp.zeros((), x0.dtype)
    return LMState(
        x=x0,
        f=_kept(problem, f0),
        fnorm=fnorm0,
        J=J0,
        R=R0,
        qtf=qtf0,
        diag=diag,
        delta=jnp.where(xnorm == 0, _FACTOR, _FACTOR * xnorm),
        par=zero,
        nfev=jnp.asarray(1),
        njev=jnp.asarray(1),
        iteration=jnp.asarray(0),
        accepted_any=jnp.asarray(False),
        status=jnp.where(jnp.all(jnp.isfinite(f0)), status, BAD_START),
        gnorm=gnorm,
        g_norm=jnp.max(jnp.abs(R0.T @ qtf0)),
        step_norm=zero,
        actual_reduction=zero,
        initial_cost=0.5 * fnorm0**2,
        pivot_ratio=gram_pivot_ratio(R0) if by_gram else jnp.ones((), x0.dtype),
    )


def _where_tuple(pred, new: tuple, old: tuple) -> tuple:
    return tuple(jnp.where(pred, a, b) for a, b in zip(new, old, strict=True))


def step(problem: Problem, state: LMState) -> LMState:
    """One outer iteration of MINPACK's ``lmder`` (one Jacobian, trial steps)."""
    ftol, xtol, max_nfev = problem.ftol, problem.xtol, problem.max_nfev
    n = state.x.shape[0]
    m = _n_rows(problem, state.f)
    by_gram = reduces_by_gram(problem, n)
    diag = state.diag
    if problem.jac_scale:
        diag = jnp.maximum(diag, _colnorms(state.R))
    J_h = state.R / diag
    U, s, Vt = thin_svd(J_h)
    V = Vt.T
    uf = U.T @ state.qtf
    fn2 = state.fnorm**2
    # MINPACK's lmpar takes the Gauss-Newton step with negligible singular values
    # dropped whenever it fits the radius, also for a rank-deficient J; the shared
    # solver (scipy's TRF rule) never does then, and stretches the step to the
    # radius along a direction that does not reduce the cost: LM diverged on a
    # parameter with no effect.  Full-rank J: unchanged.
    m_true = true_m(problem)  # None when the data are not padded
    keep = s > EPS * jnp.maximum(m if m_true is None else m_true, n) * s[0]
    rank_deficient = ~jnp.all(keep)
    p_gn_h = -V @ jnp.where(keep, uf / jnp.where(keep, s, 1.0), 0.0)

    def trial(t: Trial) -> Trial:
        p_h, par = solve_lsq_trust_region(
            n, m, uf, s, V, t.delta, t.par, rtol=0.1, m_true=true_m(problem)
        )
        gn_fits = rank_deficient & (norm(p_gn_h) <= 1.1 * t.delta)
        p_h = jnp.where(gn_fits, p_gn_h, p_h)
        par = jnp.where(gn_fits, 0.0, par)
        p = p_h / diag
        pnorm = norm(p_h)
        # MINPACK: on the first iteration, shrink the initial radius to the first step.
        delta = jnp.where(state.accepted_any | t.accepted, t.delta, jnp.minimum(t.delta, pnorm))
        x_try = state.x + p
        if by_gram:
            # The Gram route linearizes at x_try here, kept if the step is accepted:
            # the model, its derivatives, the norm and the sums are one pass (and
            # the batched loop would relinearize every fit anyway; see below).
            R_try, qtf_try, fnorm1_sq = reduce_by_gram(problem.fun, x_try)
            at_try, f_try, fnorm1 = (R_try, qtf_try), t.f, jnp.sqrt(fnorm1_sq)
        else:
            at_try, f_try = None, problem.fun(x_try)
            fnorm1 = norm(f_try)
        blown = ~jnp.isfinite(fnorm1) | (0.1 * fnorm1 >= state.fnorm)
        actred = jnp.where(blown, -1.0, 1 - (fnorm1 / state.fnorm) ** 2)
        Jp = state.R @ p
        prered = -(2 * jnp.dot(state.qtf, Jp) + jnp.dot(Jp, Jp)) / fn2
        dirder = jnp.dot(state.qtf, Jp) / fn2
        ratio = safe_div(actred, prered)
        temp = jnp.where(actred >= 0, 0.5, 0.5 * safe_div(dirder, dirder + 0.5 * actred))
        temp = jnp.where(blown | (temp < 0.1), 0.1, temp)
        shrink = ratio <= 0.25
        grow = ~shrink & ((par == 0) | (ratio >= 0.75))
        delta = jnp.where(
            shrink, temp * jnp.minimum(delta, pnorm / 0.1), jnp.where(grow, pnorm / 0.5, delta)
        )
        par = jnp.where(shrink, par / temp, jnp.where(grow, 0.5 * par, par))
        ok = ratio >= 1e-4
        xnorm = jnp.where(ok, norm(diag * x_try), t.xnorm)
        nfev = t.nfev + 1
        # MINPACK's tests, in its order of precedence.
        c1 = (jnp.abs(actred) <= ftol) & (prered <= ftol) & (0.5 * ratio <= 1)
        c2 = delta <= xtol * xnorm
        info = jnp.where(c1 & c2, 3, jnp.where(c1, 1, jnp.where(c2, 2, 0)))
        info = jnp.where(info == 0, jnp.where(nfev >= max_nfev, 5, 0), info)
        c6 = (jnp.abs(actred) <= EPS) & (prered <= EPS) & (0.5 * ratio <= 1)
        info = jnp.where(info == 0, jnp.where(c6, 6, 0), info)
        info = jnp.where(info == 0, jnp.where(delta <= EPS * xnorm, 7, 0), info)
        info = jnp.where(info == 0, jnp.where(state.gnorm <= EPS, 8, 0), info)
        return Trial(
            delta=delta,
            par=par,
            nfev=nfev,
            x=jnp.where(ok, x_try, t.x),
            f=jnp.where(ok, _kept(problem, f_try), t.f),
            fnorm=jnp.where(ok, fnorm1, t.fnorm),
            xnorm=xnorm,
            accepted=t.accepted | ok,
            info=info,
            step_norm=jnp.where(ok, norm(p), t.step_norm),
            actual_reduction=jnp.where(ok, 0.5 * (fn2 - fnorm1**2), t.actual_reduction),
            linearized=None if at_try is None else _where_tuple(ok, at_try, t.linearized),
        )

    zero = jnp.zeros((), state.x.dtype)
    first = Trial(
        delta=state.delta,
        par=state.par,
        nfev=state.nfev,
        x=state.x,
        f=state.f,
        fnorm=state.fnorm,
        xnorm=norm(diag * state.x),
        accepted=jnp.asarray(False),
        info=jnp.asarray(0),
        step_norm=zero,
        actual_reduction=zero,
        linearized=(state.R, state.qtf) if by_gram else None,
    )
    t = lax.while_loop(lambda t: (t.info == 0) & ~t.accepted, trial, first)
    # Unlike MINPACK, also re-linearize after the accepted step that ends the
    # fit, so the logged optimality and the returned jac/grad belong to x.

    def relinearize(_):
        return _linearize(problem, t.x, t.f)

    if by_gram:  # linearized at the accepted trial point already
        J, R, qtf = t.linearized[0], *t.linearized
    else:
        keep = (state.J, state.R, state.qtf)
        J, R, qtf = lax.cond(t.accepted, relinearize, lambda _: keep, None)
    gnorm = jnp.where(t.accepted, _gnorm(R, qtf, t.fnorm), state.gnorm)
    info = jnp.where(t.accepted & (t.info == 0) & (gnorm <= problem.gtol), 4, t.info)
    return LMState(
        x=t.x,
        f=t.f,
        fnorm=t.fnorm,
        J=J,
        R=R,
        qtf=qtf,
        diag=diag,
        delta=t.delta,
        par=t.par,
        nfev=t.nfev,
        njev=state.njev + t.accepted.astype(state.njev.dtype),
        iteration=state.iteration + 1,
        accepted_any=state.accepted_any | t.accepted,
        status=jnp.asarray(_INFO_TO_STATUS, state.status.dtype)[info],
        gnorm=gnorm,
        g_norm=jnp.max(jnp.abs(R.T @ qtf)),
        step_norm=t.step_norm,
        actual_reduction=t.actual_reduction,
        initial_cost=state.initial_cost,
        # R changes only when a step is accepted; a rejected one keeps its ratio.
        pivot_ratio=jnp.minimum(state.pivot_ratio, gram_pivot_ratio(R))
        if by_gram
        else state.pivot_ratio,
    )


def row(state: LMState) -> IterationRow:
    return IterationRow(
        iteration=state.iteration,
        nfev=state.nfev,
        cost=0.5 * state.fnorm**2,
        actual_reduction=state.actual_reduction,
        step_norm=state.step_norm,
        g_norm=state.g_norm,
    )


def result(problem: Problem, state: LMState) -> SolveResult:
    return SolveResult(
        x=state.x,
        cost=0.5 * state.fnorm**2,
        fun=state.f,
        jac=state.J,
        grad=state.R.T @ state.qtf
        if _jacobian_is_R(problem, state.x.shape[0])
        else state.J.T @ state.f,
        optimality=state.g_norm,
        active_mask=jnp.zeros(state.x.shape[0], dtype=jnp.int32),
        nfev=state.nfev,
        njev=state.njev,
        status=state.status,
        initial_cost=state.initial_cost,
        R=state.R,
        pivot_ratio=state.pivot_ratio,
    )


LM = Method(init=init, step=step, row=row, result=result)
