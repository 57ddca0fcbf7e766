"""scipy's iteration table, written through the ring logger (``nlsq.utils.async_logger``).

The whole table is logged from inside the compiled solver (verbosity is
static: 0 traces nothing, 1 keeps rows whose iteration is a multiple of 10, 2
keeps all): the header goes with iteration 0's row (one record of two lines),
the termination message and summary line after the loop (one record, its
template chosen by the status the fit ended with: a ``switch``, whose index XLA
on a GPU reads on the host once per fit, never per iteration).  The host's
part of a verbose fit is then two calls around it -- point the sink at the
current ``sys.stdout``, and ``flush`` so the table is complete before
``curve_fit``/``least_squares`` return.  Why in the program: each host-side
push after the solve ran with cold caches and cost several microseconds
(``benches/probe_verbose_overhead.py``).  Writing the table in the program,
as the closing record's push (tried), saved only ~2 µs of the flush's
10-20 µs: formatting and writing it costs that on any thread right after a
solve.  The formats are scipy's
(``optimize/_lsq/common.py``: ``print_header_nonlinear`` /
``print_iteration_nonlinear`` and ``least_squares``' closing ``print``).
"""

from __future__ import annotations

import enum
import functools
import threading
from typing import NamedTuple

from ._common import TERMINATION_MESSAGES

HEADER = "{:^15}{:^15}{:^15}{:^15}{:^15}{:^15}".format(
    "Iteration", "Total nfev", "Cost", "Cost reduction", "Step norm", "Optimality"
)
# ``{:^15}`` of a Python int is ``{:^15d}``; the ring formats ``d`` fields as integers.
ROW = (
    "{iteration:^15d}{nfev:^15d}{cost:^15.4e}{reduction:^15.2e}{step_norm:^15.2e}"
    "{optimality:^15.2e}"
)
# Iteration 0 has no reduction or step yet: scipy prints 2 x 15 blanks there.
FIRST_ROW = "{iteration:^15d}{nfev:^15d}{cost:^15.4e}" + " " * 30 + "{optimality:^15.2e}"
CLOSING = (
    "Function evaluations {nfev:d}, initial cost {initial_cost:.4e}, "
    "final cost {cost:.4e}, first-order optimality {optimality:.2e}."
)


class RowKind(enum.Enum):
    """Which record of the table a solver emits."""

    FIRST = "first"  # the header and iteration 0 (before the loop)
    ITERATION = "iteration"  # one iteration (inside the loop)
    # A block of iterations at once (each field a vector; rows where ``valid``):
    # the rows a one-kernel start kept (nlsq._driver.run).  One record per row,
    # pushed by ONE custom call.
    ITERATIONS = "iterations"
    CLOSING = "closing"  # termination message and summary (after the loop)


class ClosingRow(NamedTuple):
    """The numbers of the closing lines (``least_squares``' final ``print``)."""

    status: object
    nfev: object
    initial_cost: object
    cost: object
    optimality: object


def _escape(text: str) -> str:
    # A constant line is a template without fields: braces must be doubled.
    return text.replace("{", "{{").replace("}", "}}")


#: Row 0 with the header above it: one record, so the header costs the fit no
#: host call of its own (a dropped record loses both; a table without its first
#: row would be no table either).
FIRST_ROW_WITH_HEADER = _escape(HEADER) + "\n" + FIRST_ROW

#: ``status -> template`` of the closing record: scipy's termination message,
#: then the summary line.
CLOSINGS = {
    status: _escape(message) + "\n" + CLOSING for status, message in TERMINATION_MESSAGES.items()
}


@functools.cache
def _template(text: str):
    from .utils import _emit

    return _emit.LogTemplate(text)


@functools.cache
def _row_emitter(text: str):
    from .utils import _emit

    return _emit.inline_row_emitter(text)


def _constant(text: str):
    return _template(_escape(text))


def make_log_row(verbose: int, gate=None):
    """The ``log_row(row, kind)`` hook for the solvers' driver, or None at verbose 0.

    ``kind`` is a :class:`RowKind`; ``row`` is the driver's ``IterationRow``, or a
    :class:`ClosingRow` for ``RowKind.CLOSING``.  Records go through
    :func:`nlsq.utils._emit.inline_row_emitter`: on CPU with the FFI route they
    take the effect-free inline route (the fit keeps JAX's fast dispatch path,
    and the records are in the ring once the solver's results are ready, which
    ``log_closing`` waits for); elsewhere the route table's.

    ``gate``: a zero-argument function traced where a record is emitted,
    returning a device predicate; the record is written only where it is true
    (one device of a mesh, :func:`nlsq._sharding.log_row_on_mesh`).
    """
    if verbose == 0:
        return None

    def emit(text: str, keep, level: int, **fields) -> None:
        # ``level``: off the inline route, the template's own gate -- verbose=1
        # keeps a row whose first field (the iteration) is a multiple of 10, as
        # ``keep`` says; 2 keeps every record (the closing one).
        emitter = _row_emitter(text)
        if gate is None:
            emitter(keep, level, **fields)
            return
        from .utils import _emit

        if _emit.inline_rows_available():
            # The inline record has no effect: a cond around it would be dead code.
            emitter(gate() & keep, level, **fields)
        else:
            import jax

            jax.lax.cond(gate(), lambda: emitter(keep, level, **fields), lambda: None)

    def log_row(row, kind: RowKind, valid=None) -> None:
        if kind is RowKind.CLOSING:
            fields = dict(
                nfev=row.nfev,
                initial_cost=row.initial_cost,
                cost=row.cost,
                optimality=row.optimality,
            )
            # One branch per status the fit may end with, each logging its own
            # message (a fit that never started, BAD_START, takes the empty
            # last branch).  Not one keep-flagged record per status: each
            # side-effecting call after the loop costs XLA:CPU microseconds.
            import jax.numpy as jnp
            from jax import lax

            statuses = tuple(CLOSINGS)
            branches = [
                functools.partial(emit, CLOSINGS[status], True, 2, **fields) for status in statuses
            ]
            index = len(statuses)
            for i, status in enumerate(statuses):
                index = jnp.where(row.status == status, i, index)
            lax.switch(index, [*branches, lambda: None])
            return
        fields = dict(iteration=row.iteration, nfev=row.nfev, cost=row.cost, optimality=row.g_norm)
        if kind is RowKind.FIRST:
            emit(FIRST_ROW_WITH_HEADER, True, verbose, **fields)
            return
        keep = True if verbose >= 2 else row.iteration % 10 == 0
        if kind is RowKind.ITERATIONS:  # a block of rows: only its valid ones
            keep = valid & keep
        emit(ROW, keep, verbose, reduction=row.actual_reduction, step_norm=row.step_norm, **fields)

    return log_row


def rows_in_blocks() -> bool:
    """Whether a block of rows (``RowKind.ITERATIONS``) can be logged here: only the
    inline route (CPU, FFI) pushes a record per row of a block in one call."""
    from .utils import _emit

    return _emit.inline_rows_available()


def log_header(verbose: int) -> None:
    """Before a verbose fit: point the sink at the current ``sys.stdout`` (the
    header itself goes with the first row, from inside the solver)."""
    if verbose > 0:
        _runtime().follow_stdout()


def log_closing(verbose: int) -> None:
    """After a verbose fit whose results are on the host: flush, so the table is
    complete on return (the solver logged its closing lines itself)."""
    if verbose == 0:
        return
    import jax

    from .utils import _native, _routes

    # Records of the native routes were pushed while the program ran (it has
    # finished: its results were fetched); on the CUDA route its poller pushes
    # them once the stream ran; host callbacks may still be on their way.
    if _routes.host_callback_records_traced():
        jax.effects_barrier()
    _native.wait_cuda_delivered()
    # The ring's own flush writes the table here (``async_logger.flush()`` would
    # pay a barrier for programs still running, and there are none of ours).
    _runtime().get_logger().flush()


@functools.cache
def _runtime():
    # Imported on first use: ``import nlsq`` does not start the logging layer.
    from .utils import _log_runtime

    return _log_runtime


# One table at a time: the rows of a fit reach the ring while it runs, so two
# verbose fits on different threads would interleave their rows in one table.
# Verbose fits hold this lock from the header to the closing lines; silent fits
# never take it.  (Held with a plain ``with``: a context-manager generator around
# it cost a verbose fit microseconds.)
TABLE_LOCK = threading.RLock()


# curve_fit_many: scipy's table with a fit-index column, and a one-line summary.
MANY_HEADER = "{:^6}".format("Fit") + HEADER
MANY_ROW = "{fit:^6d}" + ROW
MANY_FIRST_ROW = "{fit:^6d}" + FIRST_ROW
MANY_SUMMARY = "fit {fit:d} finished: nfev {nfev:d}, cost {cost:.4e}, status {status:d}"


def write_many_tables(verbose: int, messages, out, iterations, history) -> None:
    """Write ``curve_fit_many``'s log after the batch: per fit a whole table (verbose 2)
    or one summary line (verbose 1, in the order the fits finished)."""
    from .utils import async_logger

    nfev, cost = out.nfev, out.cost
    with TABLE_LOCK:
        if verbose == 1:
            for i in sorted(range(len(messages)), key=lambda i: (int(iterations[i]), i)):
                _template(MANY_SUMMARY)(
                    fit=i, nfev=int(nfev[i]), cost=float(cost[i]), status=int(out.status[i])
                )
        else:
            for i, message in enumerate(messages):
                _constant(MANY_HEADER)(verbose=2)
                rows = history[i, : min(int(iterations[i]) + 1, history.shape[1])]
                for k, row in enumerate(rows):
                    it, fe, c, red, step, opt = (float(v) for v in row)
                    fields = dict(fit=i, iteration=int(it), nfev=int(fe), cost=c, optimality=opt)
                    if k == 0:
                        _template(MANY_FIRST_ROW)(verbose=2, **fields)
                    else:
                        _template(MANY_ROW)(verbose=2, reduction=red, step_norm=step, **fields)
                _constant(message)(verbose=2)
                _template(CLOSING)(
                    nfev=int(nfev[i]),
                    initial_cost=float(out.initial_cost[i]),
                    cost=float(cost[i]),
                    optimality=float(out.optimality[i]),
                    verbose=2,
                )
        async_logger.flush()
