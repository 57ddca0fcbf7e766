"""Trust Region Reflective (Branch, Coleman & Li 1999) as one ``lax.while_loop``.

The algorithm follows scipy's ``optimize/_lsq/trf.py`` step by step (same
names: ``Delta``, ``alpha``, ``theta``, ``select_step``, Coleman-Li ``v``/``dv``,
``check_termination``...), so results and status codes agree with scipy.

How it maps onto JAX:

* ``TRFState`` is the whole solver state (a NamedTuple, i.e. a pytree).
* ``step`` is ONE outer iteration of scipy's loop: the SVD of the scaled (and,
  with bounds, augmented) Jacobian, then an inner ``lax.while_loop`` of trial
  steps (shrinking the radius until the cost decreases, as scipy's inner
  ``while actual_reduction <= 0``), then the new Jacobian under ``lax.cond``
  only when a step is accepted.
* The driver is a single ``lax.while_loop`` over ``step``: no host round trip
  per iteration.  The iteration-table row is emitted at the end of every step
  through ``log_row`` (a ring-logger template), exactly where scipy prints it.

Speed: the Jacobian is reduced once per evaluation by a QR factorisation of
``[J | f]`` (``R``, ``Q^T f``), so every trust-region solve, quadratic model and
reflective-step search works with an ``n x n`` matrix instead of ``m x n``.
``||J s|| = ||R s||`` and ``U^T f = U_R^T Q^T f`` make this exact algebra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._common import (
    BAD_START,
    RUNNING,
    CL_scaling_vector,
    build_quadratic_1d,
    check_termination,
    compute_jac_scale,
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
from ._loss import loss_cost, loss_rho, scale_for_robust_loss_function


class SolveResult(NamedTuple):
    """Arrays returned by the jitted solvers (``least_squares`` builds the OptimizeResult)."""

    x: jax.Array
    cost: jax.Array
    fun: jax.Array
    jac: jax.Array
    grad: jax.Array
    optimality: jax.Array
    active_mask: jax.Array
    nfev: jax.Array
    njev: jax.Array
    status: jax.Array
    initial_cost: jax.Array
    R: jax.Array  # reduced Jacobian (same singular values/vectors as ``jac``)


class Linearization(NamedTuple):
    """Everything that changes when a step is accepted."""

    f_true: jax.Array  # residuals
    J: jax.Array  # Jacobian, scaled for the robust loss
    f: jax.Array  # residuals, scaled for the robust loss
    R: jax.Array  # reduced J (QR) or J itself when m <= n
    qtf: jax.Array  # Q^T f (or f)
    g: jax.Array  # gradient J^T f
    cost: jax.Array


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

    @property
    def cost(self):
        return self.lin.cost


LogRow = Callable[..., None]


def reduce_jacobian(J, f):
    """``(R, Q^T f)`` from one QR of ``[J | f]``; identity when QR would not shrink J."""
    m, n = J.shape
    if m <= n + 1:
        return J, f
    R_aug = jnp.linalg.qr(jnp.concatenate([J, f[:, None]], axis=1), mode="r")
    return R_aug[:n, :n], R_aug[:n, n]


def linearize(f_true, J_true, loss, f_scale, cost) -> Linearization:
    rho = loss_rho(loss, f_true, f_scale)
    if rho is None:
        J, f = J_true, f_true
    else:
        J, f = scale_for_robust_loss_function(J_true, f_true, rho)
    R, qtf = reduce_jacobian(J, f)
    return Linearization(f_true, J, f, R, qtf, J.T @ f, cost)


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


def _optimality(x, g, lb, ub, bounded):
    if bounded:
        v, _ = CL_scaling_vector(x, g, lb, ub)
        return jnp.max(jnp.abs(g * v))
    return jnp.max(jnp.abs(g))


def trf(
    fun: Callable,
    jac: Callable,
    x0,
    lb,
    ub,
    ftol,
    xtol,
    gtol,
    max_nfev,
    x_scale,
    f_scale,
    *,
    loss,
    bounded: bool,
    jac_scale: bool,
    log_row: LogRow | None = None,
    linearize_at: Callable | None = None,
) -> SolveResult:
    """Run TRF from ``x0``; all array arguments may be traced, keywords are static.

    ``linearize_at(x, f, cost) -> Linearization`` replaces the one-shot
    ``jac`` + QR when given (chunked or sharded rows, :mod:`nlsq._sharding`).
    """
    n = x0.shape[0]
    f0 = fun(x0)
    m = f0.shape[0]
    ok0 = jnp.all(jnp.isfinite(f0))
    if linearize_at is None:

        def linearize_at(x, f, cost):
            return linearize(f, jac(x), loss, f_scale, cost)

    cost0 = loss_cost(loss, f0, f_scale)
    lin = linearize_at(x0, f0, cost0)

    if jac_scale:
        scale, scale_inv = compute_jac_scale(lin.J)
    else:
        scale, scale_inv = x_scale, 1.0 / x_scale

    if bounded:
        v, dv = CL_scaling_vector(x0, lin.g, lb, ub)
        v = jnp.where(dv != 0, v * scale_inv, v)
        Delta = norm(x0 * scale_inv / jnp.sqrt(v))
    else:
        Delta = norm(x0 * scale_inv)
    Delta = jnp.where(Delta == 0, 1.0, Delta)

    g_norm = _optimality(x0, lin.g, lb, ub, bounded)
    status = jnp.where(ok0, jnp.where(g_norm < gtol, 1, RUNNING), BAD_START)
    dtype = x0.dtype
    zero = jnp.zeros((), dtype)
    state = TRFState(
        x=x0,
        lin=lin,
        scale=scale,
        scale_inv=scale_inv,
        Delta=Delta,
        alpha=zero,
        nfev=jnp.asarray(1),
        njev=jnp.asarray(1),
        iteration=jnp.asarray(0),
        status=status,
        g_norm=g_norm,
        step_norm=zero,
        actual_reduction=zero,
    )
    if log_row is not None:
        log_row(state, first=True)

    def step(st: TRFState) -> TRFState:
        lin = st.lin
        if bounded:
            v, dv = CL_scaling_vector(st.x, lin.g, lb, ub)
            v = jnp.where(dv != 0, v * st.scale_inv, v)
            d = jnp.sqrt(v) * st.scale
            diag_h = lin.g * dv * st.scale
            J_h = lin.R * d
            A = jnp.concatenate([J_h, jnp.diag(jnp.sqrt(diag_h))])
            f_aug = jnp.concatenate([lin.qtf, jnp.zeros(n, dtype)])
        else:
            d = st.scale
            diag_h = None
            J_h = lin.R * d
            A = J_h
            f_aug = lin.qtf
        g_h = d * lin.g
        U, s, Vt = jnp.linalg.svd(A, full_matrices=False)
        V = Vt.T
        uf = U.T @ f_aug
        theta = jnp.maximum(0.995, 1 - st.g_norm)
        x_norm = norm(st.x)

        def trial_cond(c):
            _, _, nfev, ared, status, *_ = c
            return (ared <= 0) & (nfev < max_nfev) & (status == RUNNING)

        def trial(c):
            Delta, alpha, nfev, ared, status, x_new, f_new, cost_new, step_norm = c
            p_h, alpha_new = solve_lsq_trust_region(n, m, uf, s, V, Delta, alpha)
            if bounded:
                p = d * p_h
                stp, stp_h, pred, inside, p_value = select_step(
                    st.x, J_h, diag_h, g_h, p, p_h, d, Delta, lb, ub, theta
                )
                stp = jnp.where(inside, p, stp)
                stp_h = jnp.where(inside, p_h, stp_h)
                pred = jnp.where(inside, -p_value, pred)
                x_try = make_strictly_feasible(st.x + stp, lb, ub)
            else:
                stp_h = p_h
                stp = d * p_h
                pred = -evaluate_quadratic(J_h, g_h, p_h)
                x_try = st.x + stp
            f_try = fun(x_try)
            step_h_norm = norm(stp_h)
            finite = jnp.all(jnp.isfinite(f_try))
            cost_try = loss_cost(loss, f_try, f_scale)
            if loss is None or loss == "linear":
                # ||f||^2 - ||f_new||^2 without cancellation: near convergence the
                # reduction is ~1e-15 of the cost and the difference of two rounded
                # sums would be rounding noise of either sign.
                ared_try = 0.5 * jnp.dot(lin.f_true - f_try, lin.f_true + f_try)
            else:
                ared_try = lin.cost - cost_try
            Delta_new, ratio = update_tr_radius(
                Delta, ared_try, pred, step_h_norm, step_h_norm > 0.95 * Delta
            )
            step_norm_try = norm(stp)
            status_try = check_termination(
                ared_try, lin.cost, step_norm_try, x_norm, ratio, ftol, xtol
            )
            go_on = finite & (status_try == RUNNING)
            # Non-finite residuals: shrink and retry, nothing else changes (scipy).
            Delta_out = jnp.where(finite, jnp.where(go_on, Delta_new, Delta), 0.25 * step_h_norm)
            alpha_out = jnp.where(
                go_on & (Delta_new != 0), alpha_new * safe_div(Delta, Delta_new), alpha_new
            )
            return (
                Delta_out,
                alpha_out,
                nfev + 1,
                jnp.where(finite, ared_try, ared),
                jnp.where(finite, status_try, status),
                x_try,
                f_try,
                cost_try,
                jnp.where(finite, step_norm_try, step_norm),
            )

        init = (
            st.Delta,
            st.alpha,
            st.nfev,
            jnp.asarray(-1.0, dtype),
            st.status,
            st.x,
            lin.f_true,
            lin.cost,
            st.step_norm,
        )
        Delta, alpha, nfev, ared, status, x_new, f_new, cost_new, step_norm = lax.while_loop(
            trial_cond, trial, init
        )
        accept = ared > 0

        def on_accept(_):
            new = linearize_at(x_new, f_new, cost_new)
            if jac_scale:
                sc, sc_inv = compute_jac_scale(new.J, st.scale_inv)
            else:
                sc, sc_inv = st.scale, st.scale_inv
            return x_new, new, sc, sc_inv

        def on_reject(_):
            return st.x, lin, st.scale, st.scale_inv

        x, lin, scale, scale_inv = lax.cond(accept, on_accept, on_reject, None)
        g_norm = _optimality(x, lin.g, lb, ub, bounded)
        new = TRFState(
            x=x,
            lin=lin,
            scale=scale,
            scale_inv=scale_inv,
            Delta=Delta,
            alpha=alpha,
            nfev=nfev,
            njev=st.njev + accept.astype(st.njev.dtype),
            iteration=st.iteration + 1,
            status=jnp.where(g_norm < gtol, 1, status),
            g_norm=g_norm,
            step_norm=jnp.where(accept, step_norm, 0.0),
            actual_reduction=jnp.where(accept, ared, 0.0),
        )
        if log_row is not None:
            log_row(new, first=False)
        return new

    def running(st: TRFState):
        return (st.status == RUNNING) & (st.nfev < max_nfev)

    st = lax.while_loop(running, step, state)
    status = jnp.where(st.status == RUNNING, 0, st.status)
    if bounded:
        active = find_active_constraints(st.x, lb, ub, rtol=xtol)
    else:
        active = jnp.zeros(n, dtype=jnp.int32)
    return SolveResult(
        x=st.x,
        cost=st.lin.cost,
        fun=st.lin.f_true,
        jac=st.lin.J,
        grad=st.lin.g,
        optimality=st.g_norm,
        active_mask=active,
        nfev=st.nfev,
        njev=st.njev,
        status=status,
        initial_cost=cost0,
        R=st.lin.R,
    )
