"""JAX-aware asynchronous logging: log lines leave the device, the device never waits.

A log call packs its numbers into one small array.  Under ``jit`` (and inside
``lax.while_loop``, ``scan``, ``cond``, ``vmap``) that array is handed to the
host by one host callback whose Python side only pushes it into the lock-free
ring of :class:`nlsq._ringlog.RingLogger` and returns; a Rust thread formats
and writes the line later.  Eager calls with plain numbers push directly,
without JAX.

Verbosity (``verbose``, a static Python int, resolved when the call is traced)

* ``0`` -- nothing is traced: no callback in the jaxpr, no cost at all.
* ``1`` -- :func:`log_iteration_async` and :class:`LogTemplate` calls log only
  when their *first* field is a multiple of 10 (iterations 0, 10, 20, ...).
  Under ``jit`` the transfer sits in ``lax.cond(first % 10 == 0, ...)``, so
  skipped iterations cost neither a transfer nor any Python; with plain numbers
  the check is made on the host.  :func:`log_convergence_async` and
  :func:`log_array_async` have no iteration to thin out and log every call.
* ``2`` -- every call logs.

Line formats (fixed-width numeric columns, so successive lines align)::

    iter {iteration:>6d}  cost {cost:>13.6e}  |grad| {gradient_norm:>10.3e}[  <message>]
    <reason>  iterations {iterations:d}  final cost {final_cost:.6e}
        |grad| {final_gradient_norm:.3e}  time {time_sec:.3f} s          (one line)
    array <name>  shape <shape>  dtype <dtype>  min {min:.6e}  max {max:.6e}
        mean {mean:.6e}  norm {norm:.6e}  nonfinite {nonfinite:d}       (one line)

for example ``iter     10  cost  1.234560e+02  |grad|  3.210e-04  step accepted``.
Strings never travel through the ring: a message, a reason, an array's name,
shape and dtype are static text, interned at trace time as part of a template
of their own (one template per distinct string).

``vmap``
    Each batch element is logged as its own line, prefixed with its index in
    the batch: ``[3] iter     10  cost ...``.  Nested ``vmap`` numbers elements
    by their row-major flat index over all batch axes.  Values that do not
    depend on the batch are logged once, unprefixed.  (Under ``vmap`` a
    ``while_loop`` runs until every element has stopped, so an element that
    stopped early is logged again on the extra iterations, with its final
    values.)

Failures
    Nothing raised while pushing a record reaches XLA: it is counted
    (``stats()["callback_errors"]``), reported once on stderr, and the
    computation goes on.  A failing sink is counted by the ring
    (``stats()["sink_errors"]``).  Mistakes in the call itself (unknown fields,
    a traced message, a non-scalar value, a bad template) raise at trace time.

Precision
    Values are packed in JAX's default float type: float64 with
    ``jax_enable_x64``, else float32 (7 significant digits; integer fields are
    exact up to 2**24).

Examples
--------
>>> import jax.numpy as jnp, numpy as np
>>> from nlsq.utils.async_logger import is_jax_array
>>> is_jax_array(jnp.array([1, 2, 3])), is_jax_array(np.array([1, 2, 3]))
(True, False)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nlsq.utils import _log_runtime, _native, _routes
from nlsq.utils._emit import (
    _ALWAYS,
    LogTemplate,
    _escape,
    _is_tracer,
    _level,
    _pack_dtype,
    _static_str,
    is_jax_array,
)
from nlsq.utils._emit import MAX_FIELDS as MAX_FIELDS  # noqa: F401 - public constant

__all__ = [
    "LogTemplate",
    "configure",
    "flush",
    "get_logger",
    "is_jax_array",
    "log_array_async",
    "log_convergence_async",
    "log_iteration_async",
    "stats",
    "template",
]

_ITERATION_TEXT = "iter {iteration:>6d}  cost {cost:>13.6e}  |grad| {gradient_norm:>10.3e}"
_CONVERGENCE_TEXT = (
    "iterations {iterations:d}  final cost {final_cost:.6e}  "
    "|grad| {final_gradient_norm:.3e}  time {time_sec:.3f} s"
)
_ARRAY_TEXT = (
    "min {min:.6e}  max {max:.6e}  mean {mean:.6e}  norm {norm:.6e}  nonfinite {nonfinite:d}"
)


def template(text: str) -> LogTemplate:
    """A general log line for any loop: ``template("step {step:>6d} loss {loss:.6e}")``.

    Returns a :class:`LogTemplate`; call it with one keyword per field and a
    static ``verbose``.  Works eagerly and inside ``jit``, ``while_loop``,
    ``scan``, ``cond`` and ``vmap``.  A template without fields is a constant
    line: ``template("restart")(verbose=2)``.

    Raises
    ------
    ValueError
        Unbalanced braces, an unnamed or duplicated field, more than
        ``MAX_FIELDS`` fields, or a field named ``verbose``.
    """
    return LogTemplate(text)


_ITERATION_TEMPLATES: dict[str, LogTemplate] = {}
_CONVERGENCE_TEMPLATES: dict[str, LogTemplate] = {}
_ARRAY_TEMPLATES: dict[tuple[str, tuple[int, ...], str], LogTemplate] = {}


def log_iteration_async(
    iteration: Any, cost: Any, gradient_norm: Any, message: str = "", verbose: int = 0
) -> None:
    """Log one optimizer iteration without waiting for the device.

    The line is ``iter {iteration:>6d}  cost {cost:>13.6e}  |grad|
    {gradient_norm:>10.3e}``, followed by two spaces and ``message`` when one
    is given, e.g.::

        iter     10  cost  1.234560e+02  |grad|  3.210e-04  step accepted

    Parameters
    ----------
    iteration, cost, gradient_norm : scalar
        Python/NumPy numbers or JAX scalars (concrete or traced).
    message : str, default ""
        Static text, interned when the call is traced (one template per
        distinct message); it never travels through the ring.
    verbose : int, default 0
        Static.  0: nothing is traced; 1: iterations 0, 10, 20, ...;
        2: every iteration.

    Raises
    ------
    TypeError
        ``message`` is not a static str (for example a traced value), or a
        value is not a real scalar.
    """
    message = _static_str("log_iteration_async", "message", message)
    level = _level(verbose, gated=True)
    if level is None:
        return
    tpl = _ITERATION_TEMPLATES.get(message)
    if tpl is None:
        text = _ITERATION_TEXT + ("  " + _escape(message) if message else "")
        tpl = _ITERATION_TEMPLATES.setdefault(message, LogTemplate(text))
    tpl._log([iteration, cost, gradient_norm], level)


def log_convergence_async(
    reason: str,
    iterations: Any,
    final_cost: Any,
    time_sec: Any,
    final_gradient_norm: Any,
    verbose: int = 1,
) -> None:
    """Log the one-line summary of a finished optimization.

    The line is ``<reason>  iterations {iterations:d}  final cost
    {final_cost:.6e}  |grad| {final_gradient_norm:.3e}  time {time_sec:.3f} s``.

    Parameters
    ----------
    reason : str
        Static text (interned like ``message`` in :func:`log_iteration_async`).
    iterations, final_cost, time_sec, final_gradient_norm : scalar
        Python/NumPy numbers or JAX scalars.
    verbose : int, default 1
        Static.  0: nothing; 1 or more: the line is logged.
    """
    reason = _static_str("log_convergence_async", "reason", reason)
    level = _level(verbose, gated=False)
    if level is None:
        return
    tpl = _CONVERGENCE_TEMPLATES.get(reason)
    if tpl is None:
        text = (_escape(reason) + "  " if reason else "") + _CONVERGENCE_TEXT
        tpl = _CONVERGENCE_TEMPLATES.setdefault(reason, LogTemplate(text))
    tpl._log([iterations, final_cost, final_gradient_norm, time_sec], level)


def _summary_device(x: jax.Array) -> list[jax.Array]:
    """min, max, mean, norm over the finite entries, and the non-finite count."""
    dtype = _pack_dtype()
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.abs(x)
    x = x.astype(dtype)
    finite = jnp.isfinite(x)
    n_finite = jnp.sum(finite)
    n_bad = x.size - n_finite
    nan = jnp.asarray(jnp.nan, dtype)
    some = n_finite > 0
    lo = jnp.where(some, jnp.min(jnp.where(finite, x, jnp.inf), initial=jnp.inf), nan)
    hi = jnp.where(some, jnp.max(jnp.where(finite, x, -jnp.inf), initial=-jnp.inf), nan)
    zeroed = jnp.where(finite, x, 0)
    mean = jnp.where(some, jnp.sum(zeroed) / jnp.maximum(n_finite, 1), nan)
    norm = jnp.sqrt(jnp.sum(zeroed * zeroed))
    return [lo, hi, mean, norm, n_bad]


def _summary_host(x: np.ndarray) -> list[int | float]:
    if np.iscomplexobj(x):
        x = np.abs(x)
    x = x.astype(np.float64)
    finite = np.isfinite(x)
    vals = x[finite]
    n_bad = int(x.size - vals.size)
    if vals.size == 0:
        return [float("nan")] * 3 + [0.0, n_bad]
    return [
        float(vals.min()),
        float(vals.max()),
        float(vals.mean()),
        float(np.sqrt(np.sum(vals * vals))),
        n_bad,
    ]


def log_array_async(name: str, array: Any, verbose: int = 2) -> None:
    """Log a summary of an array; the array itself never leaves the device.

    The line is ``array <name>  shape <shape>  dtype <dtype>  min ...  max ...
    mean ...  norm ...  nonfinite N``.  Name, shape and dtype are static text
    in the template; min, max, mean and the 2-norm (over the finite entries;
    ``nan`` when there are none) and the count of non-finite entries are
    computed on the device and travel as one 5-element record.  Complex arrays
    are summarised by modulus.  NumPy arrays are summarised on the host.

    Parameters
    ----------
    name : str
        Static label.
    array : array_like
        A JAX array (concrete or traced) or anything NumPy accepts.
    verbose : int, default 2
        Static.  0: nothing; 1 or more: the summary is logged on every call.
    """
    name = _static_str("log_array_async", "name", name)
    level = _level(verbose, gated=False)
    if level is None:
        return
    on_device = is_jax_array(array)
    x = array if on_device else np.asarray(array)
    if not (jnp.issubdtype(x.dtype, jnp.number) or jnp.issubdtype(x.dtype, jnp.bool_)):
        raise TypeError(f"log_array_async: `array` must be numeric, got dtype {x.dtype}")
    shape = tuple(int(d) for d in x.shape)
    dtype = str(x.dtype)
    tpl = _ARRAY_TEMPLATES.get((name, shape, dtype))
    if tpl is None:
        head = f"array {_escape(name)}  shape {shape}  dtype {dtype}  "
        tpl = _ARRAY_TEMPLATES.setdefault((name, shape, dtype), LogTemplate(head + _ARRAY_TEXT))
    if not on_device:
        tpl._log(_summary_host(x), level)
    elif _is_tracer(x):
        tpl._stage(_summary_device(x), level)
    else:
        tpl._forget_stale_route()  # the jit's trace holds the route (see _emit)
        fn = tpl._jitted.get("array")
        if fn is None:
            fn = jax.jit(lambda a: tpl._stage(_summary_device(a), _ALWAYS))
            tpl._jitted["array"] = fn
        fn(x)


def configure(
    sink: Any = None,
    capacity: int = 65536,
    policy: str = "drop_new",
    backend: str | None = None,
) -> None:
    """Replace the process-wide logger and choose the route records take.

    Everything logged so far is written to the old sink first.  Templates in
    use are registered with the new logger, so functions compiled before the
    call keep logging (to the new sink).

    Parameters
    ----------
    sink : None, int, str, path, text stream or logging.Logger
        Where lines go.  ``None`` follows ``sys.stdout`` as ``print`` does: each
        eager log call (so each fit's header) and each :func:`flush` re-resolve
        it when it is another object, so a notebook cell, ``redirect_stdout``
        or pytest's capture gets the lines; the process's own stdout is written
        from Rust through its descriptor.
    capacity : int
        Ring capacity in records.
    policy : {"drop_new", "block", ...}
        What a push does when the ring is full (see ``RingLogger``).
    backend : {"ffi", "callback", "debug_callback", "cuda_staging"} or None
        The route for records traced from now on; ``None`` picks the route of
        the table for this backend (CPU: ``"ffi"``; CUDA: ``"cuda_staging"``,
        ``"callback"`` with ``NLSQ_FFI_CUDA=0``; ROCm, TPU and others: ``"callback"``),
        falling back with one warning when it cannot be set up.  Already
        compiled functions keep their route.  ``stats()["route"]`` says which
        route is in use and ``stats()["route_reason"]`` why.

    Raises
    ------
    ValueError
        An unknown backend, or an argument the ring rejects.
    RuntimeError
        The requested backend cannot be set up on this machine.
    """
    route, reason = _routes.select(backend)
    jax.effects_barrier()
    # Records already staged on the CUDA route go to the sink they were
    # logged for (bounded wait: a staged record whose stream never runs is
    # not waited for forever).
    _native.wait_cuda_delivered(timeout=10.0)
    _log_runtime.configure_logger(sink, capacity, policy)
    _routes.set_route(route, reason)


def flush(timeout: float | None = None) -> bool:
    """Wait until every record logged so far is written.

    ``jax.effects_barrier()`` first (records still inside running XLA
    programs reach the ring), then the ring's own flush.  Returns False if
    ``timeout`` seconds passed first.
    """
    jax.effects_barrier()
    # Records the CUDA route staged are pushed by its poller thread after the
    # stream ran: wait for it (GIL released) before the ring's own flush.
    if not _native.wait_cuda_delivered(timeout):
        return False
    return bool(get_logger().flush(timeout=timeout))


def stats() -> dict[str, Any]:
    """The ring's statistics, ``callback_errors`` (pushes that raised), the route,
    and ``ffi``: records the native handlers could not deliver, by reason
    (``ffi["cuda_lost"]`` sums the CUDA staging route's losses,
    ``ffi["cuda_fallback"]`` counts when that route could not be used).

    ``route`` (the route records traced from now on take), ``route_reason`` (why
    it was chosen), ``route_platform`` and ``route_failures`` (route set-ups or
    stagings that failed and made the table fall back).
    """
    result = dict(get_logger().stats())
    result["callback_errors"] = _log_runtime.callback_errors()
    result.update(_routes.describe())
    result["ffi"] = _native.stats()
    return result


def get_logger() -> Any:
    """The process-wide :class:`nlsq._ringlog.RingLogger` (created on first use)."""
    return _log_runtime.get_logger()
