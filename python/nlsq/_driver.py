"""One ``lax.while_loop`` driver shared by every method (state / step / driver).

A method (``_trf.TRF``, ``_dogbox.DOGBOX``, ``_lm.LM``) is a ``Method``: four
top-level functions over its own small named state (a NamedTuple pytree):

* ``init(problem) -> state`` -- evaluate ``x0`` and set up the trust region;
* ``step(problem, state) -> state`` -- ONE outer iteration of scipy's loop
  (trial steps until one is accepted or the fit ends, then relinearize);
* ``row(state) -> IterationRow`` -- the values of scipy's iteration table;
* ``result(problem, state) -> SolveResult``.

Every state has a ``status`` field: ``RUNNING`` while iterating, else scipy's
status.  The driver loops ``while state.status == RUNNING`` -- no Python control
flow on traced values, so a batch of problems runs under ``vmap`` as is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import _kernel
from ._common import RUNNING, STOPPED_BY_CALLBACK
from ._problem import Problem
from ._residual import iteration_callback
from ._verbose import ClosingRow, RowKind, make_log_row


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
    # Levenberg-Marquardt on the Gram route: the smallest scaled pivot of R over the
    # accepted linearizations (nlsq._reduce.gram_pivot_ratio); 1 elsewhere.
    pivot_ratio: Any = 1.0


class IterationRow(NamedTuple):
    """One row of scipy's verbose table (``print_iteration_nonlinear``).

    Field names are the ones the row emitter (``_verbose.make_log_row``) reads.
    """

    iteration: jax.Array
    nfev: jax.Array
    cost: jax.Array
    actual_reduction: jax.Array  # "Cost reduction"
    step_norm: jax.Array
    g_norm: jax.Array  # "Optimality"


class Method(NamedTuple):
    init: Callable[[Problem], Any]
    step: Callable[[Problem, Any], Any]
    row: Callable[[Any], IterationRow]
    result: Callable[[Problem, Any], SolveResult]
    #: ``(x, residuals)`` of the current iterate, for ``callback(intermediate_result)``.
    point: Callable[[Any], tuple[jax.Array, jax.Array]] | None = None


def run(method: Method, problem: Problem, *, rows_in_a_kernel: int = 0) -> SolveResult:
    """Iterate ``method.step`` from ``method.init`` until the status leaves RUNNING.

    ``rows_in_a_kernel`` (a logged fit that ``nlsq._kernel`` may compile as one
    kernel): the start and up to that many steps run as one kernel that keeps
    their rows in a table (a log record is a custom call, which no kernel holds);
    the rows are logged from the table right after it, and any further steps in
    the loop below, each logged as it ends.  The table is the same as when every
    row is logged from the loop.
    """
    log_row = make_log_row(problem.verbose)
    if problem.mesh is not None and log_row is not None:
        from ._sharding import log_row_on_mesh

        log_row = log_row_on_mesh(problem.verbose, problem.mesh)

    def emit(state, kind: RowKind) -> None:
        if log_row is not None:
            log_row(method.row(state), kind)

    if rows_in_a_kernel and log_row is not None:
        start = _start_keeping_rows(method, rows_in_a_kernel)
        state, table, count = _kernel.call(start, problem)
        _log_table(log_row, table, count)
    else:
        state = method.init(problem)
        emit(state, RowKind.FIRST)

    def body(state):
        state = method.step(problem, state)
        emit(state, RowKind.ITERATION)
        if problem.has_callback:
            state = _call_back(method, problem, state)
        return state

    state = lax.while_loop(lambda state: state.status == RUNNING, body, state)
    result = method.result(problem, state)
    if log_row is not None:
        closing = ClosingRow(
            result.status, result.nfev, result.initial_cost, result.cost, result.optimality
        )
        log_row(closing, RowKind.CLOSING)
    return result


@functools.cache
def _start_keeping_rows(method: Method, steps: int) -> Callable[[Problem], tuple]:
    """``start(problem) -> (state, table, count)``: ``init`` and at most ``steps`` steps,
    with the rows they would log (iteration 0's first) in ``table[:count]``."""

    def start(problem: Problem) -> tuple:
        state = method.init(problem)
        table = jnp.zeros((steps + 1, len(IterationRow._fields)), jnp.float64)
        table = _put_row(table, 0, method.row(state))

        def body(carry):
            state, table, count = carry
            state = method.step(problem, state)
            return state, _put_row(table, count, method.row(state)), count + 1

        def more(carry):
            state, _, count = carry
            return (state.status == RUNNING) & (count <= steps)

        return lax.while_loop(more, body, (state, table, jnp.asarray(1)))

    return start


def _put_row(table, index, row: IterationRow):
    """``table`` with ``row`` at ``index`` (an update slice: a scatter cannot be in a kernel)."""
    values = jnp.stack([jnp.asarray(value, jnp.float64) for value in row])
    return lax.dynamic_update_slice(table, values[None, :], (index, 0))


def _log_table(log_row, table, count) -> None:
    """Log ``table[:count]`` (kept by :func:`_start_keeping_rows`) as the loop would
    have: row 0 as the first, the others as iterations (one block: one call)."""
    log_row(IterationRow(*table[0]), RowKind.FIRST)
    valid = jnp.arange(1, table.shape[0]) < count
    log_row(IterationRow(*table[1:].T), RowKind.ITERATIONS, valid)


def _call_back(method: Method, problem: Problem, state):
    """scipy's ``callback(intermediate_result)`` after every iteration: one host call,
    whose answer (``StopIteration`` raised) flows back as status -2."""
    if method.point is None:
        raise NotImplementedError(f"`callback` is not supported by {problem.method!r} yet.")
    x, fun = method.point(state)
    row = method.row(state)
    halt = iteration_callback(problem.fit_id, x, fun, row.iteration, row.nfev, row.cost)
    return state._replace(status=jnp.where(halt, STOPPED_BY_CALLBACK, state.status))


def stop_at_max_nfev(problem: Problem, status, nfev):
    """Status 0 when the evaluation budget is spent and nothing else ended the fit."""
    return jnp.where((status == RUNNING) & (nfev >= problem.max_nfev), 0, status)
