"""The linearization of the residuals at an accepted point, shared by TRF and dogbox.

With a robust loss, ``J`` and ``f`` are rescaled (scipy's
``scale_for_robust_loss_function``) so the Gauss-Newton model matches the
robust cost; the reduced factor ``R``, ``Q^T f`` and the gradient follow.
The other steps the two loops take alike stand here too: the variables' scale
at the start and after an accepted step, a trial point's evaluation, and the
verbose row of a state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _operator
from ._common import compute_jac_scale
from ._driver import IterationRow
from ._loss import loss_cost, loss_rho, scale_for_robust_loss_function
from ._problem import Problem
from ._reduce import reduce_jacobian
from ._sharding import reduced_problem


class Linearization(NamedTuple):
    """Everything that changes when a step is accepted."""

    f_true: jax.Array  # residuals
    # Jacobian, scaled for the robust loss; with tr_solver='lsmr' what nlsq._operator
    # keeps of it (Dense, Compressed or MatrixFree), and R, qtf are empty.
    J: Any
    f: jax.Array  # residuals, scaled for the robust loss
    R: jax.Array  # reduced J (QR) or J itself when m <= n + 1
    qtf: jax.Array  # Q^T f (or f)
    g: jax.Array  # gradient J^T f
    cost: jax.Array


def linearize(problem: Problem, f_true, J_true, cost) -> Linearization:
    rho = loss_rho(problem.loss, f_true, problem.f_scale)
    if rho is None:
        J, f = J_true, f_true
    else:
        J, f = scale_for_robust_loss_function(J_true, f_true, rho)
    R, qtf = reduce_jacobian(J, f)
    return Linearization(f_true, J, f, R, qtf, J.T @ f, cost)


def _linearize_operator(problem: Problem, x, f_true, cost) -> Linearization:
    data, f, g = _operator.linearize(problem, x, f_true)
    empty = jnp.zeros((0, x.shape[0]), x.dtype)
    return Linearization(f_true, data, f, empty, empty[:, 0], g, cost)


def linearize_at(problem: Problem, x, f_true, cost) -> Linearization:
    """The linearization at ``x`` (residuals ``f_true``): one-shot, or chunked/sharded rows.

    From chunked/sharded rows, ``J`` is the ``n x n`` triangle ``R`` and ``f`` is
    ``Q^T f`` (see :func:`nlsq._sharding.reduced_problem`).  With
    ``tr_solver='lsmr'`` nothing is reduced (:func:`nlsq._operator.linearize`).
    """
    if problem.tr_solver == "lsmr":
        return _linearize_operator(problem, x, f_true, cost)
    if problem.layout is not None and problem.jac_mode != "host":
        R, qtf, g = reduced_problem(problem, x, f_true)
        return Linearization(f_true, R, qtf, R, qtf, g, cost)
    return linearize(problem, f_true, problem.jac(x), cost)


def result_jacobian(problem: Problem, x, lin: Linearization):
    """``(jac, R)`` of a ``SolveResult`` (see :func:`nlsq._operator.result_arrays`)."""
    if problem.tr_solver == "lsmr":
        return _operator.result_arrays(problem, x, lin.J, lin.f)
    return lin.J, lin.R


def jac_scale(problem: Problem, lin: Linearization, scale_inv_old=None):
    """``x_scale='jac'``: scipy's ``compute_jac_scale`` on the linearization's Jacobian."""
    if problem.tr_solver == "lsmr":
        return _operator.compute_jac_scale(problem, lin.J, scale_inv_old)
    return compute_jac_scale(lin.J, scale_inv_old)


def initial_scale(problem: Problem, lin: Linearization):
    """``(scale, scale_inv)`` at the start: from the Jacobian (``x_scale='jac'``) or ``x_scale``."""
    if problem.jac_scale:
        return jac_scale(problem, lin)
    return problem.x_scale, 1.0 / problem.x_scale


def rescaled(problem: Problem, lin: Linearization, scale, scale_inv):
    """``(scale, scale_inv)`` after a step is accepted at ``lin``: only ``x_scale='jac'`` moves."""
    if problem.jac_scale:
        return jac_scale(problem, lin, scale_inv)
    return scale, scale_inv


def actual_reduction(problem: Problem, lin: Linearization, f_new, cost_new):
    """``cost - cost_new``; for the linear loss written without cancellation.

    ``0.5 (f - f_new) . (f + f_new)``: near convergence the reduction is ~1e-15
    of the cost and the difference of two rounded sums would be rounding noise
    of either sign.
    """
    if problem.loss is None or problem.loss == "linear":
        return 0.5 * jnp.dot(lin.f_true - f_new, lin.f_true + f_new)
    return lin.cost - cost_new


def evaluate_trial(problem: Problem, lin: Linearization, x_try):
    """``(f, cost, actual reduction from lin, all f finite)`` at a trial point.

    Non-finite residuals make the loops retry a smaller step (scipy).
    """
    f_try = problem.fun(x_try)
    cost_try = loss_cost(problem.loss, f_try, problem.f_scale)
    ared = actual_reduction(problem, lin, f_try, cost_try)
    return f_try, cost_try, ared, jnp.all(jnp.isfinite(f_try))


def row(state) -> IterationRow:
    """The verbose row of a state that keeps its ``Linearization`` as ``lin`` (TRF, dogbox)."""
    return IterationRow(
        iteration=state.iteration,
        nfev=state.nfev,
        cost=state.lin.cost,
        actual_reduction=state.actual_reduction,
        step_norm=state.step_norm,
        g_norm=state.g_norm,
    )
