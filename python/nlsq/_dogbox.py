"""Dogleg with rectangular trust regions (Voglis & Lagaris 2004): ``init`` / ``step``.

The algorithm follows scipy's ``optimize/_lsq/dogbox.py`` (same names:
``Delta``, ``on_bound``, ``active_set``, ``find_intersection``,
``dogleg_step``, ``tr_bounds``...), dense ``'exact'`` path.

Shapes stay static: where scipy slices out the free variables (``x[free_set]``,
``J[:, free_set]``), the active ones are kept and pinned instead -- their
Jacobian columns are zeroed for the Gauss-Newton step, their gradient entries
are zero, and their box in ``find_intersection`` is ``[0, 0]`` -- which gives
the same step, with zeros in the active components.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._common import (
    BAD_START,
    EPS,
    RUNNING,
    build_quadratic_1d,
    check_termination,
    evaluate_quadratic,
    minimize_quadratic_1d,
    norm,
    step_size_to_bound,
    update_tr_radius,
)
from ._driver import Method, SolveResult, stop_at_max_nfev
from ._linearization import (
    Linearization,
    evaluate_trial,
    initial_scale,
    linearize_at,
    rescaled,
    result_jacobian,
    row,
)
from ._loss import loss_cost
from ._operator import jacobian_map
from ._problem import Problem
from ._reduce import thin_svd
from ._tr_lsmr import dogbox_newton_step


class DogboxState(NamedTuple):
    x: jax.Array
    lin: Linearization
    on_bound: jax.Array  # -1 at a lower bound, 1 at an upper bound, 0 elsewhere (int)
    active: jax.Array  # on_bound * g < 0: pinned for this iteration
    g: jax.Array  # scipy's g: the gradient with the active components zeroed
    g_full: jax.Array  # the gradient before zeroing (scipy's ``grad``)
    scale: jax.Array
    scale_inv: jax.Array
    Delta: jax.Array
    nfev: jax.Array
    njev: jax.Array
    iteration: jax.Array
    status: jax.Array
    g_norm: jax.Array
    step_norm: jax.Array
    actual_reduction: jax.Array
    initial_cost: jax.Array


class Trial(NamedTuple):
    Delta: jax.Array
    nfev: jax.Array
    actual_reduction: jax.Array
    status: jax.Array
    x: jax.Array
    f: jax.Array
    cost: jax.Array
    on_bound: jax.Array  # on_bound of the free variables after the trial step
    step_norm: jax.Array


def find_intersection(x, tr_bounds, lb, ub):
    """The box ``[lb, ub] - x`` intersected with ``[-tr_bounds, tr_bounds]``, and
    which bound (original or trust region) is the binding one on each side."""
    lb_centered = lb - x
    ub_centered = ub - x
    lb_total = jnp.maximum(lb_centered, -tr_bounds)
    ub_total = jnp.minimum(ub_centered, tr_bounds)
    orig_l = lb_total == lb_centered
    orig_u = ub_total == ub_centered
    tr_l = lb_total == -tr_bounds
    tr_u = ub_total == tr_bounds
    return lb_total, ub_total, orig_l, orig_u, tr_l, tr_u


def dogleg_step(x, newton_step, g, a, b, tr_bounds, lb, ub, free):
    """Dogleg step in the rectangle; ``(step, bound_hits, tr_hit)`` as in scipy.

    Variables outside ``free`` get the box ``[0, 0]`` (their step is zero and
    they hit nothing); ``g`` and ``newton_step`` are zero there already.
    """
    lb_total, ub_total, orig_l, orig_u, tr_l, tr_u = find_intersection(x, tr_bounds, lb, ub)
    lb_total = jnp.where(free, lb_total, 0.0)
    ub_total = jnp.where(free, ub_total, 0.0)
    orig_l, orig_u = orig_l & free, orig_u & free
    tr_l, tr_u = tr_l & free, tr_u & free
    newton_inside = jnp.all((newton_step >= lb_total) & (newton_step <= ub_total))

    zeros = jnp.zeros_like(x)
    to_bounds, _ = step_size_to_bound(zeros, -g, lb_total, ub_total)
    cauchy_step = -minimize_quadratic_1d(a, b, 0.0, to_bounds)[0] * g
    step_diff = newton_step - cauchy_step
    step_size, hits = step_size_to_bound(cauchy_step, step_diff, lb_total, ub_total)
    bound_hits = jnp.where((hits < 0) & orig_l, -1, jnp.where((hits > 0) & orig_u, 1, 0))
    tr_hit = jnp.any(((hits < 0) & tr_l) | ((hits > 0) & tr_u))
    dogleg = cauchy_step + step_size * step_diff

    step = jnp.where(newton_inside, newton_step, dogleg)
    bound_hits = jnp.where(newton_inside, 0, bound_hits)
    return step, bound_hits, tr_hit & ~newton_inside


def gauss_newton_step(R, qtf, free):
    """``lstsq(J_free, -f)`` (LAPACK's cutoff ``rcond = eps``) with zeros at pinned variables.

    ``J_free = Q R_free``, so the minimum-norm solution comes from ``R`` and ``Q^T f``.
    """
    U, s, Vt = thin_svd(R * free)
    keep = s > EPS * s[0]
    w = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    # Exactly zero (not rounding-small) where the column was zeroed.
    return jnp.where(free, -(Vt.T @ (w * (U.T @ qtf))), 0.0)


def _top_of_loop(problem: Problem, on_bound, g):
    """scipy's loop head: the active set, the masked gradient and its norm, the gtol test."""
    active = on_bound * g < 0
    g_masked = jnp.where(active, 0.0, g)
    g_norm = jnp.max(jnp.abs(g_masked))
    return active, g_masked, g_norm


def init(problem: Problem) -> DogboxState:
    x0, lb, ub = problem.x0, problem.lb, problem.ub
    f0 = problem.fun(x0)
    cost0 = loss_cost(problem.loss, f0, problem.f_scale)
    lin = linearize_at(problem, x0, f0, cost0)
    scale, scale_inv = initial_scale(problem, lin)
    Delta = jnp.max(jnp.abs(x0 * scale_inv))
    Delta = jnp.where(Delta == 0, 1.0, Delta)
    on_bound = jnp.where(x0 == lb, -1, jnp.where(x0 == ub, 1, 0))
    active, g, g_norm = _top_of_loop(problem, on_bound, lin.g)
    status = jnp.where(g_norm < problem.gtol, 1, RUNNING)
    status = jnp.where(jnp.all(jnp.isfinite(f0)), status, BAD_START)
    nfev = jnp.asarray(1)
    zero = jnp.zeros((), x0.dtype)
    return DogboxState(
        x=x0,
        lin=lin,
        on_bound=on_bound,
        active=active,
        g=g,
        g_full=lin.g,
        scale=scale,
        scale_inv=scale_inv,
        Delta=Delta,
        nfev=nfev,
        njev=jnp.asarray(1),
        iteration=jnp.asarray(0),
        status=stop_at_max_nfev(problem, status, nfev),
        g_norm=g_norm,
        step_norm=zero,
        actual_reduction=zero,
        initial_cost=cost0,
    )


def step(problem: Problem, state: DogboxState) -> DogboxState:
    """One iteration of scipy's ``dogbox`` loop."""
    lb, ub = problem.lb, problem.ub
    lin = state.lin
    free = ~state.active
    g = state.g
    if problem.tr_solver == "lsmr":
        # scipy's 'lsmr' branch: g and the step are zero at active variables, so the
        # full J gives the free part's quadratic model.
        J_free = jacobian_map(problem, state.x, lin.J)
        newton_step = dogbox_newton_step(problem, J_free, lin.f, state.scale, state.active)
    else:
        newton_step = gauss_newton_step(lin.R, lin.qtf, free)
        J_free = lin.R * free
    a, b, _ = build_quadratic_1d(J_free, g, -g)
    x_norm = norm(state.x)

    def trial_cond(t: Trial):
        return (t.actual_reduction <= 0) & (t.nfev < problem.max_nfev) & (t.status == RUNNING)

    def trial(t: Trial) -> Trial:
        tr_bounds = t.Delta * state.scale
        stp, on_bound_free, tr_hit = dogleg_step(
            state.x, newton_step, g, a, b, tr_bounds, lb, ub, free
        )
        predicted_reduction = -evaluate_quadratic(J_free, g, stp)
        # gh-11403: the new point lies fully within the bounds.
        x_try = jnp.clip(state.x + stp, lb, ub)
        f_try, cost_try, ared, finite = evaluate_trial(problem, lin, x_try)
        step_h_norm = jnp.max(jnp.abs(stp * state.scale_inv))
        Delta_new, ratio = update_tr_radius(t.Delta, ared, predicted_reduction, step_h_norm, tr_hit)
        step_norm = norm(stp)
        status = check_termination(
            ared, lin.cost, step_norm, x_norm, ratio, problem.ftol, problem.xtol
        )
        # Non-finite residuals: shrink and retry, nothing else changes (scipy).
        return Trial(
            Delta=jnp.where(finite, Delta_new, 0.25 * step_h_norm),
            nfev=t.nfev + 1,
            actual_reduction=jnp.where(finite, ared, t.actual_reduction),
            status=jnp.where(finite, status, t.status),
            x=x_try,
            f=f_try,
            cost=cost_try,
            on_bound=on_bound_free,
            step_norm=jnp.where(finite, step_norm, t.step_norm),
        )

    first = Trial(
        Delta=state.Delta,
        nfev=state.nfev,
        actual_reduction=jnp.asarray(-1.0, state.x.dtype),
        status=state.status,
        x=state.x,
        f=lin.f_true,
        cost=lin.cost,
        on_bound=state.on_bound,
        step_norm=state.step_norm,
    )
    t = lax.while_loop(trial_cond, trial, first)
    accept = t.actual_reduction > 0

    def on_accept(_):
        on_bound = jnp.where(free, t.on_bound, state.on_bound)
        # Variables that hit a bound are set exactly on it.
        x = jnp.where(on_bound == -1, lb, jnp.where(on_bound == 1, ub, t.x))
        new = linearize_at(problem, x, t.f, t.cost)
        scale, scale_inv = rescaled(problem, new, state.scale, state.scale_inv)
        return x, new, on_bound, new.g, scale, scale_inv

    def on_reject(_):
        # scipy keeps its zeroed g: the next active set is computed from it.
        return state.x, lin, state.on_bound, g, state.scale, state.scale_inv

    x, lin, on_bound, g_next, scale, scale_inv = lax.cond(accept, on_accept, on_reject, None)
    active, g_masked, g_norm = _top_of_loop(problem, on_bound, g_next)
    status = jnp.where(g_norm < problem.gtol, 1, t.status)
    return DogboxState(
        x=x,
        lin=lin,
        on_bound=on_bound,
        active=active,
        g=g_masked,
        g_full=g_next,
        scale=scale,
        scale_inv=scale_inv,
        Delta=t.Delta,
        nfev=t.nfev,
        njev=state.njev + accept.astype(state.njev.dtype),
        iteration=state.iteration + 1,
        status=stop_at_max_nfev(problem, status, t.nfev),
        g_norm=g_norm,
        step_norm=jnp.where(accept, t.step_norm, 0.0),
        actual_reduction=jnp.where(accept, t.actual_reduction, 0.0),
        initial_cost=state.initial_cost,
    )


def result(problem: Problem, state: DogboxState) -> SolveResult:
    lin = state.lin
    jac, R = result_jacobian(problem, state.x, lin)
    return SolveResult(
        x=state.x,
        cost=lin.cost,
        fun=lin.f_true,
        jac=jac,
        grad=state.g_full,
        optimality=state.g_norm,
        active_mask=state.on_bound.astype(jnp.int32),
        nfev=state.nfev,
        njev=state.njev,
        status=state.status,
        initial_cost=state.initial_cost,
        R=R,
    )


DOGBOX = Method(init=init, step=step, row=row, result=result, point=lambda s: (s.x, s.lin.f_true))
