"""scipy's iteration table, written through the ring logger (``nlsq.utils.async_logger``).

Rows are pushed from inside the jitted ``lax.while_loop`` by the template
callbacks (verbosity is static: 0 traces nothing, 1 keeps rows whose iteration
is a multiple of 10, 2 keeps all).  The header is pushed eagerly before the fit,
the two closing lines eagerly after it, and ``flush`` makes the table complete
before ``curve_fit``/``least_squares`` return.  The formats are scipy's
(``optimize/_lsq/common.py``: ``print_header_nonlinear`` /
``print_iteration_nonlinear`` and ``least_squares``' closing ``print``).
"""

from __future__ import annotations

import contextlib
import functools
import threading

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
    """The ``log_row(state, first)`` hook for the solvers, or None at verbose 0.

    Rows go through :func:`nlsq.utils._emit.inline_row_emitter`: on CPU with
    the FFI route they take the effect-free inline route (the fit keeps JAX's
    fast dispatch path, and the rows are in the ring once the solver's results
    are ready, which ``log_closing`` waits for); elsewhere the route table's.

    ``gate``: a zero-argument function traced where the row is emitted, returning
    a device predicate; the row is written only where it is true (one device of a
    mesh, :func:`nlsq._sharding.log_row_on_mesh`).
    """
    if verbose == 0:
        return None

    def log_row(st, first: bool) -> None:
        if first:
            text = FIRST_ROW
            fields = dict(iteration=st.iteration, nfev=st.nfev, cost=st.cost, optimality=st.g_norm)
        else:
            text = ROW
            fields = dict(
                iteration=st.iteration,
                nfev=st.nfev,
                cost=st.cost,
                reduction=st.actual_reduction,
                step_norm=st.step_norm,
                optimality=st.g_norm,
            )
        keep = True if verbose >= 2 else st.iteration % 10 == 0
        if gate is None:
            _row_emitter(text)(keep, verbose, **fields)
            return
        from .utils import _emit

        if _emit.inline_rows_available():
            # The inline row has no effect: a cond around it would be dead code.
            _row_emitter(text)(gate() & keep, verbose, **fields)
        else:
            import jax

            jax.lax.cond(gate(), lambda: _row_emitter(text)(keep, verbose, **fields), lambda: None)

    return log_row


def _escape(text: str) -> str:
    # A constant line is a template without fields: braces must be doubled.
    return text.replace("{", "{{").replace("}", "}}")


@functools.cache
def _line_key(text: str) -> int:
    """The template key of the constant line ``text`` (the header, a termination
    message): escaped and interned once, not on every fit."""
    return _template(_escape(text))._key


@functools.cache
def _closing_fields() -> tuple[int, tuple[str, ...]]:
    tpl = _template(CLOSING)
    return tpl._key, tpl.fields


def log_header(verbose: int) -> None:
    if verbose > 0:
        from .utils import _log_runtime

        _log_runtime.push_lines(((_line_key(HEADER), ()),))


def log_closing(verbose: int, message: str, nfev, initial_cost, cost, optimality) -> None:
    """Termination message and summary line, then flush (the table is complete on return)."""
    if verbose == 0:
        return
    import jax

    from .utils import _log_runtime, _native

    # Rows come from callbacks inside the computation (on the CUDA route, from
    # its poller once the stream has run): all of them are pushed before the
    # closing lines, so the order in the ring is the table's.
    jax.effects_barrier()
    _native.wait_cuda_delivered()
    # Two records, one line each: a record is the unit the ring drops and counts
    # (`stats()["dropped"]`), so one record must not hide two lines.
    closing_key, fields = _closing_fields()
    values = dict(
        nfev=int(nfev),
        initial_cost=float(initial_cost),
        cost=float(cost),
        optimality=float(optimality),
    )
    _log_runtime.push_lines(
        ((_line_key(message), ()), (closing_key, tuple(values[name] for name in fields)))
    )
    # The ring's own flush completes the table: nothing has run on the device
    # since the barrier above, so `async_logger.flush()` would only pay a
    # second barrier (and CUDA wait) for nothing, on every verbose fit.
    _log_runtime.get_logger().flush()


# One table at a time: the rows of a fit reach the ring while it runs, so two
# verbose fits on different threads would interleave their rows in one table.
# Verbose fits hold this lock from the header to the closing lines; silent fits
# never take it.
_TABLE_LOCK = threading.RLock()


@contextlib.contextmanager
def table_lock(verbose: int):
    """Hold the table lock for the duration of a fit with ``verbose > 0``."""
    if not verbose:
        yield
        return
    with _TABLE_LOCK:
        yield


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
    with _TABLE_LOCK:
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
