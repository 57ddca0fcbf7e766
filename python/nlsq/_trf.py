"""Trust Region Reflective (Branch, Coleman & Li 1999): ``init`` / ``step`` for the driver.

The algorithm follows scipy's ``optimize/_lsq/trf.py`` step by step (same
names: ``Delta``, ``alpha``, ``theta``, ``select_step``, Coleman-Li ``v``/``dv``,
``check_termination``...), so results and status codes agree with scipy.

``step`` is ONE outer iteration of scipy's loop: the SVD of the scaled (and,
with bounds, augmented) reduced Jacobian, then an inner ``lax.while_loop`` of
trial steps (shrinking the radius until the cost decreases, as scipy's inner
``while actual_reduction <= 0``), then the new Jacobian under ``lax.cond``
only when a step is accepted.  The outer loop is ``_driver.run``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._buckets import true_m
from ._common import (
    BAD_START,
    RUNNING,
    CL_scaling_vector,
    build_quadratic_1d,
    check_termination,
    evaluate_quadratic,
    find_active_constraints,
    in_bounds,
    intersect_trust_region,
    make_strictly_feasible,
    minimize_quadratic_1d,
    norm,
    safe_div,
    solve_lsq_trust_region,
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
from ._tr_lsmr import solve_trust_region_2d, trf_subspace


class TRFState(NamedTuple):
    x: jax.Array
    lin: Linearization
    scale: jax.Array
    scale_inv: jax.Array
    Delta: jax.Array
    alpha: jax.Array
    nfev: jax.Array
    njev: jax.Array
    iteration: jax.Array
    status: jax.Array
    g_norm: jax.Array
    step_norm: jax.Array
    actual_reduction: jax.Array
    initial_cost: jax.Array


class Trial(NamedTuple):
    """Carry of the inner loop: the last trial point and the trust region after it."""

    Delta: jax.Array
    alpha: jax.Array
    nfev: jax.Array
    actual_reduction: jax.Array
    status: jax.Array
    x: jax.Array
    f: jax.Array
    cost: jax.Array
    step_norm: jax.Array


def optimality(problem: Problem, x, g):
    """scipy's first-order optimality: ``||v g||_inf`` with bounds, ``||g||_inf`` without."""
    if problem.bounded:
        v, _ = CL_scaling_vector(x, g, problem.lb, problem.ub)
        return jnp.max(jnp.abs(g * v))
    return jnp.max(jnp.abs(g))


def select_step(x, J_h, diag_h, g_h, p, p_h, d, Delta, lb, ub, theta):
    """Best of: TR step (stepped back by theta), its reflection, the anti-gradient.

    Also returns whether the full TR step ``p`` is feasible and its model value;
    the caller then takes ``p`` unchanged (scipy's early return).
    """
    p_inside = in_bounds(x + p, lb, ub)
    p_value_full = evaluate_quadratic(J_h, g_h, p_h, diag=diag_h)

    p_stride, hits = step_size_to_bound(x, p, lb, ub)
    r_h = jnp.where(hits != 0, -p_h, p_h)
    r = d * r_h
    p = p * p_stride
    p_h = p_h * p_stride
    x_on_bound = x + p

    # The reflected direction leaves either the feasible box or the trust region first.
    _, to_tr = intersect_trust_region(p_h, r_h, Delta)
    to_bound, _ = step_size_to_bound(x_on_bound, r, lb, ub)
    r_stride = jnp.minimum(to_bound, to_tr)
    pos = r_stride > 0
    r_stride_l = jnp.where(pos, (1 - theta) * p_stride / jnp.where(pos, r_stride, 1.0), 0.0)
    r_stride_u = jnp.where(pos, jnp.where(r_stride == to_bound, theta * to_bound, to_tr), -1.0)
    refl_ok = r_stride_l <= r_stride_u
    a, b, c = build_quadratic_1d(J_h, g_h, r_h, s0=p_h, diag=diag_h)
    t, r_value = minimize_quadratic_1d(
        a, b, jnp.where(refl_ok, r_stride_l, 0.0), jnp.where(refl_ok, r_stride_u, 0.0), c=c
    )
    r_h = r_h * t + p_h
    r = r_h * d
    r_value = jnp.where(refl_ok, r_value, jnp.inf)

    # Step back from the bound to stay strictly interior.
    p = p * theta
    p_h = p_h * theta
    p_value = evaluate_quadratic(J_h, g_h, p_h, diag=diag_h)

    ag_h = -g_h
    ag = d * ag_h
    to_tr = safe_div(Delta, norm(ag_h))
    to_bound, _ = step_size_to_bound(x, ag, lb, ub)
    ag_stride = jnp.where(to_bound < to_tr, theta * to_bound, to_tr)
    a, b, _ = build_quadratic_1d(J_h, g_h, ag_h, diag=diag_h)
    ag_stride, ag_value = minimize_quadratic_1d(a, b, 0.0, ag_stride)
    ag_h = ag_h * ag_stride
    ag = ag * ag_stride

    use_p = (p_value < r_value) & (p_value < ag_value)
    use_r = ~use_p & (r_value < p_value) & (r_value < ag_value)
    step = jnp.where(use_p, p, jnp.where(use_r, r, ag))
    step_h = jnp.where(use_p, p_h, jnp.where(use_r, r_h, ag_h))
    pred = -jnp.where(use_p, p_value, jnp.where(use_r, r_value, ag_value))
    return step, step_h, pred, p_inside, p_value_full


def init(problem: Problem) -> TRFState:
    x0 = problem.x0
    f0 = problem.fun(x0)
    cost0 = loss_cost(problem.loss, f0, problem.f_scale)
    lin = linearize_at(problem, x0, f0, cost0)
    scale, scale_inv = initial_scale(problem, lin)
    if problem.bounded:
        v, dv = CL_scaling_vector(x0, lin.g, problem.lb, problem.ub)
        v = jnp.where(dv != 0, v * scale_inv, v)
        Delta = norm(x0 * scale_inv / jnp.sqrt(v))
    else:
        Delta = norm(x0 * scale_inv)
    Delta = jnp.where(Delta == 0, 1.0, Delta)
    g_norm = optimality(problem, x0, lin.g)
    status = jnp.where(g_norm < problem.gtol, 1, RUNNING)
    status = jnp.where(jnp.all(jnp.isfinite(f0)), status, BAD_START)
    nfev = jnp.asarray(1)
    zero = jnp.zeros((), x0.dtype)
    return TRFState(
        x=x0,
        lin=lin,
        scale=scale,
        scale_inv=scale_inv,
        Delta=Delta,
        alpha=zero,
        nfev=nfev,
        njev=jnp.asarray(1),
        iteration=jnp.asarray(0),
        status=stop_at_max_nfev(problem, status, nfev),
        g_norm=g_norm,
        step_norm=zero,
        actual_reduction=zero,
        initial_cost=cost0,
    )


def step(problem: Problem, state: TRFState) -> TRFState:
    """One iteration of scipy's ``trf_bounds`` / ``trf_no_bounds`` loop."""
    lb, ub = problem.lb, problem.ub
    lin = state.lin
    n = state.x.shape[0]
    m = lin.f.shape[0]
    dtype = state.x.dtype
    if problem.bounded:
        v, dv = CL_scaling_vector(state.x, lin.g, lb, ub)
        v = jnp.where(dv != 0, v * state.scale_inv, v)
        d = jnp.sqrt(v) * state.scale
        diag_h = lin.g * dv * state.scale
    else:
        d = state.scale
        diag_h = None
    g_h = d * lin.g
    if problem.tr_solver == "lsmr":
        # scipy's 'lsmr' branch: the trust-region problem in span(g_h, LSMR's step).
        J = jacobian_map(problem, state.x, lin.J)
        J_h, S, B_S, g_S = trf_subspace(problem, J, lin.f, d, g_h, diag_h, state.Delta)

        def trust_region_step(Delta, alpha):
            return S @ solve_trust_region_2d(B_S, g_S, Delta)[0], alpha

    else:
        J_h = lin.R * d
        if problem.bounded:
            A = jnp.concatenate([J_h, jnp.diag(jnp.sqrt(diag_h))])
            f_aug = jnp.concatenate([lin.qtf, jnp.zeros(n, dtype)])
        else:
            A, f_aug = J_h, lin.qtf
        U, s, Vt = thin_svd(A)
        V = Vt.T
        uf = U.T @ f_aug

        def trust_region_step(Delta, alpha):
            return solve_lsq_trust_region(n, m, uf, s, V, Delta, alpha, m_true=true_m(problem))

    theta = jnp.maximum(0.995, 1 - state.g_norm)
    x_norm = norm(state.x)

    def trial_cond(t: Trial):
        return (t.actual_reduction <= 0) & (t.nfev < problem.max_nfev) & (t.status == RUNNING)

    def trial(t: Trial) -> Trial:
        p_h, alpha_new = trust_region_step(t.Delta, t.alpha)
        if problem.bounded:
            p = d * p_h
            stp, stp_h, pred, inside, p_value = select_step(
                state.x, J_h, diag_h, g_h, p, p_h, d, t.Delta, lb, ub, theta
            )
            stp = jnp.where(inside, p, stp)
            stp_h = jnp.where(inside, p_h, stp_h)
            pred = jnp.where(inside, -p_value, pred)
            x_try = make_strictly_feasible(state.x + stp, lb, ub)
        else:
            stp_h = p_h
            stp = d * p_h
            pred = -evaluate_quadratic(J_h, g_h, p_h)
            x_try = state.x + stp
        f_try, cost_try, ared, finite = evaluate_trial(problem, lin, x_try)
        step_h_norm = norm(stp_h)
        Delta_new, ratio = update_tr_radius(
            t.Delta, ared, pred, step_h_norm, step_h_norm > 0.95 * t.Delta
        )
        step_norm = norm(stp)
        status = check_termination(
            ared, lin.cost, step_norm, x_norm, ratio, problem.ftol, problem.xtol
        )
        go_on = finite & (status == RUNNING)
        # Non-finite residuals: shrink and retry, nothing else changes (scipy).
        Delta_out = jnp.where(finite, jnp.where(go_on, Delta_new, t.Delta), 0.25 * step_h_norm)
        alpha_out = jnp.where(
            go_on & (Delta_new != 0), alpha_new * safe_div(t.Delta, Delta_new), alpha_new
        )
        return Trial(
            Delta=Delta_out,
            alpha=alpha_out,
            nfev=t.nfev + 1,
            actual_reduction=jnp.where(finite, ared, t.actual_reduction),
            status=jnp.where(finite, status, t.status),
            x=x_try,
            f=f_try,
            cost=cost_try,
            step_norm=jnp.where(finite, step_norm, t.step_norm),
        )

    first = Trial(
        Delta=state.Delta,
        alpha=state.alpha,
        nfev=state.nfev,
        actual_reduction=jnp.asarray(-1.0, dtype),
        status=state.status,
        x=state.x,
        f=lin.f_true,
        cost=lin.cost,
        step_norm=state.step_norm,
    )
    t = lax.while_loop(trial_cond, trial, first)
    accept = t.actual_reduction > 0

    def on_accept(_):
        new = linearize_at(problem, t.x, t.f, t.cost)
        scale, scale_inv = rescaled(problem, new, state.scale, state.scale_inv)
        return t.x, new, scale, scale_inv

    def on_reject(_):
        return state.x, lin, state.scale, state.scale_inv

    x, lin, scale, scale_inv = lax.cond(accept, on_accept, on_reject, None)
    g_norm = optimality(problem, x, lin.g)
    status = jnp.where(g_norm < problem.gtol, 1, t.status)
    return TRFState(
        x=x,
        lin=lin,
        scale=scale,
        scale_inv=scale_inv,
        Delta=t.Delta,
        alpha=t.alpha,
        nfev=t.nfev,
        njev=state.njev + accept.astype(state.njev.dtype),
        iteration=state.iteration + 1,
        status=stop_at_max_nfev(problem, status, t.nfev),
        g_norm=g_norm,
        step_norm=jnp.where(accept, t.step_norm, 0.0),
        actual_reduction=jnp.where(accept, t.actual_reduction, 0.0),
        initial_cost=state.initial_cost,
    )


def result(problem: Problem, state: TRFState) -> SolveResult:
    if problem.bounded:
        active = find_active_constraints(state.x, problem.lb, problem.ub, rtol=problem.xtol)
    else:
        active = jnp.zeros(state.x.shape[0], dtype=jnp.int32)
    lin = state.lin
    jac, R = result_jacobian(problem, state.x, lin)
    return SolveResult(
        x=state.x,
        cost=lin.cost,
        fun=lin.f_true,
        jac=jac,
        grad=lin.g,
        optimality=state.g_norm,
        active_mask=active,
        nfev=state.nfev,
        njev=state.njev,
        status=state.status,
        initial_cost=state.initial_cost,
        R=R,
    )


TRF = Method(init=init, step=step, row=row, result=result, point=lambda s: (s.x, s.lin.f_true))
