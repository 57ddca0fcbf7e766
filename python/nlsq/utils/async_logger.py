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

import operator
import string
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

from nlsq.utils import _ffi_backend, _log_emit, _log_runtime

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

#: Most values one record can carry (``ringlog::MAX_VALUES``).  Under ``vmap``
#: the batch index takes one of them.
MAX_FIELDS = 12

_ALWAYS = "always"
_EVERY_10 = "every 10th"

_ITERATION_TEXT = "iter {iteration:>6d}  cost {cost:>13.6e}  |grad| {gradient_norm:>10.3e}"
_CONVERGENCE_TEXT = (
    "iterations {iterations:d}  final cost {final_cost:.6e}  "
    "|grad| {final_gradient_norm:.3e}  time {time_sec:.3f} s"
)
_ARRAY_TEXT = (
    "min {min:.6e}  max {max:.6e}  mean {mean:.6e}  norm {norm:.6e}  nonfinite {nonfinite:d}"
)
_BATCH_PREFIX = "[{batch_index:d}] "


def is_jax_array(x: Any) -> bool:
    """True for a ``jax.Array`` or a tracer, False for NumPy arrays, scalars and the rest.

    Logging code uses it to keep device values on the device: a JAX value is
    never converted to a Python number (that would wait for the device).

    Examples
    --------
    >>> import jax.numpy as jnp, numpy as np
    >>> is_jax_array(jnp.array([1, 2, 3]))
    True
    >>> is_jax_array(np.array([1, 2, 3]))
    False
    """
    return isinstance(x, jax.Array)


def _escape(text: str) -> str:
    """Make ``text`` a literal inside a template."""
    return text.replace("{", "{{").replace("}", "}}")


def _static_str(func: str, arg: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if is_jax_array(value) or isinstance(value, np.ndarray):
        raise TypeError(
            f"{func}: `{arg}` must be a static Python str; got an array "
            f"({type(value).__name__}). Messages are interned as templates when the call "
            "is traced, so they cannot depend on traced values; log the number as a field."
        )
    raise TypeError(f"{func}: `{arg}` must be a static Python str, got {type(value).__name__}")


def _level(verbose: Any, *, gated: bool) -> str | None:
    """Resolve ``verbose`` at trace time; ``None`` means trace nothing."""
    if is_jax_array(verbose):
        raise TypeError(
            "verbose must be a static Python int (0, 1 or 2); got a JAX value. "
            "Verbosity is resolved when the call is traced; pass it as a static argument."
        )
    try:
        v = operator.index(verbose)
    except TypeError:
        raise TypeError(f"verbose must be an int, got {type(verbose).__name__}") from None
    if v <= 0:
        return None
    if v == 1 and gated:
        return _EVERY_10
    return _ALWAYS


def _pack_dtype() -> Any:
    # float64 when x64 is on, else float32: the widest float the device makes.
    return jnp.result_type(float)


def _field_names(text: str) -> tuple[str, ...]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"invalid log template {text!r}: {exc}") from None
    names = tuple(name for _, name, _, _ in parsed if name is not None)
    for name in names:
        if not name.isidentifier():
            raise ValueError(
                f"invalid log template {text!r}: every field needs a name "
                f"(an identifier), got {{{name}}}"
            )
        if name == "verbose":
            raise ValueError(f"invalid log template {text!r}: `verbose` is reserved")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"invalid log template {text!r}: duplicate field(s) {duplicates}")
    if len(names) > MAX_FIELDS:
        raise ValueError(
            f"invalid log template {text!r}: {len(names)} fields, at most {MAX_FIELDS}"
        )
    return names


def _host_number(name: str, value: Any) -> int | float | None:
    """``value`` as a Python number if it lives on the host, else ``None``."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, np.generic | np.ndarray) and not isinstance(value, str):
        arr = np.asarray(value)
        if arr.shape != ():
            raise TypeError(f"log field `{name}` must be a scalar, got shape {arr.shape}")
        if arr.dtype.kind in "biu":
            return int(arr)
        if arr.dtype.kind == "f":
            return float(arr)
        raise TypeError(f"log field `{name}` must be a real number, got dtype {arr.dtype}")
    if is_jax_array(value):
        return None
    raise TypeError(
        f"log field `{name}` must be a real number or a JAX scalar, got {type(value).__name__}"
    )


def _check_device_scalar(name: str, value: Any) -> None:
    shape = jnp.shape(value)
    if shape != ():
        raise TypeError(f"log field `{name}` must be a scalar, got shape {shape}")
    if jnp.issubdtype(value.dtype, jnp.complexfloating):
        raise TypeError(f"log field `{name}` must be a real number, got dtype {value.dtype}")


def _is_tracer(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


class LogTemplate:
    """A line template whose fields are filled from device or host numbers.

    Build one with :func:`template`.  Calling it logs one line::

        fmt = template("step {step:>6d} loss {loss:.6e}")
        fmt(step=i, loss=l, verbose=2)

    The text uses a subset of Python's format mini-language (fill, align,
    width, precision, types ``d e E f F g G %``); every field is named, and
    literal braces are written ``{{`` and ``}}``.  The template is registered
    with the process-wide logger on first use; a text the ring rejects raises
    ``ValueError`` then, naming the position.
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"template text must be a str, got {type(text).__name__}")
        self.text = text
        self.fields = _field_names(text)
        self._key = _log_runtime.intern(text)
        self._batched_key: int | None = None
        self._emitters: dict[bool, Callable[[jax.Array, jax.Array], None]] = {}
        self._jitted: dict[Any, Callable[..., None]] = {}

    def __repr__(self) -> str:
        return f"LogTemplate({self.text!r})"

    def __call__(self, *, verbose: int = 2, **fields: Any) -> None:
        """Log one line.

        Parameters
        ----------
        verbose : int, default 2
            Static.  0: nothing is traced; 1: log only when the first field is
            a multiple of 10 (a template without fields logs every call); 2: log
            every call.
        **fields
            One real scalar per field of the template: Python or NumPy
            numbers, or JAX scalars (concrete or traced).

        Raises
        ------
        TypeError
            A field is missing, unknown, not a real scalar, or ``verbose`` is
            not a static int.
        """
        level = _level(verbose, gated=True)
        if set(fields) != set(self.fields):
            missing = [n for n in self.fields if n not in fields]
            unknown = sorted(set(fields) - set(self.fields))
            raise TypeError(
                f"{self!r} takes fields {list(self.fields)}; missing {missing}, unknown {unknown}"
            )
        if level is None:
            return
        self._log([fields[n] for n in self.fields], level)

    # -- routing -----------------------------------------------------------

    def _log(self, values: Sequence[Any], level: str) -> None:
        host = [_host_number(n, v) for n, v in zip(self.fields, values, strict=True)]
        if all(h is not None for h in host):
            if level == _EVERY_10 and host and host[0] % 10 != 0:
                return
            _log_runtime.ensure_registered(self._key)
            _log_runtime.push_values(self._key, host)  # type: ignore[arg-type]
            return
        for name, value, h in zip(self.fields, values, host, strict=True):
            if h is None:
                _check_device_scalar(name, value)
        if any(_is_tracer(v) for v in values):
            self._stage(values, level)
        else:
            # Concrete device values: a jitted emitter dispatches asynchronously,
            # so the host does not wait for the device to produce them.
            self._jit_for(level)(*values)

    def _jit_for(self, level: str) -> Callable[..., None]:
        fn = self._jitted.get(level)
        if fn is None:
            fn = jax.jit(lambda *values: self._stage(values, level))
            self._jitted[level] = fn
        return fn

    def _stage(self, values: Sequence[Any], level: str) -> None:
        """Trace the transfer of ``values`` (at least one of them traced)."""
        gated = level == _EVERY_10 and len(values) > 0
        if gated:
            first = values[0]
            if not is_jax_array(first):
                # A host number: decide now, stage no cond.
                if first % 10 != 0:
                    return
                gated = False
        _log_runtime.ensure_registered(self._key)
        dtype = _pack_dtype()
        if values:
            packed = jnp.stack([jnp.asarray(v).astype(dtype) for v in values])
        else:
            packed = jnp.zeros((0,), dtype)
        if gated:
            first = jnp.asarray(values[0])
            # lax.rem, not %: no sign fix-up ops in the loop body.
            pred = lax.rem(first, jnp.asarray(10, first.dtype)) == 0
        else:
            pred = jnp.asarray(True)
        # Logged values are observed, never differentiated: without this, grad
        # would try to transpose the custom_vmap call.
        self._emitter(gated)(lax.stop_gradient(pred), lax.stop_gradient(packed))

    def _batched(self) -> int:
        if self._batched_key is None:
            if len(self.fields) >= MAX_FIELDS:
                raise ValueError(
                    f"{self!r} has {len(self.fields)} fields; under vmap the batch index "
                    f"needs one more, at most {MAX_FIELDS} in all"
                )
            self._batched_key = _log_runtime.intern(_BATCH_PREFIX + self.text)
        _log_runtime.ensure_registered(self._batched_key)
        return self._batched_key

    def _emitter(self, gated: bool) -> Callable[[jax.Array, jax.Array], None]:
        emitter = self._emitters.get(gated)
        if emitter is None:
            emitter = _make_emitter(self._key, self._batched, gated)
            self._emitters[gated] = emitter
        return emitter


def _make_emitter(
    key: int, batched_key: Callable[[], int], gated: bool
) -> Callable[[jax.Array, jax.Array], None]:
    """The staged part of one log call: gate, then one transfer.

    Under ``vmap`` the rule turns the batch into rows ``[keep, index, values...]``
    and transfers them in one go, so each element keeps its index and the gate
    stays per element (a batched ``lax.cond`` would run both branches).
    """

    @custom_vmap
    def emit_one(pred: jax.Array, packed: jax.Array) -> None:
        if gated:
            lax.cond(pred, lambda p: _log_emit.emit(key, p), lambda p: None, packed)
        else:
            _log_emit.emit(key, packed)

    @emit_one.def_vmap
    def emit_batch(
        axis_size: int, in_batched: Sequence[bool], pred: jax.Array, packed: jax.Array
    ) -> tuple[None, None]:
        if not in_batched[0]:
            pred = jnp.broadcast_to(pred, (axis_size,))
        if not in_batched[1]:
            packed = jnp.broadcast_to(packed, (axis_size, *packed.shape))
        index = jnp.arange(axis_size, dtype=packed.dtype)
        rows = jnp.concatenate([pred.astype(packed.dtype)[:, None], index[:, None], packed], axis=1)
        emit_rows = _rows_emitter(batched_key())
        if gated:
            lax.cond(jnp.any(pred), emit_rows, lambda r: None, rows)
        else:
            emit_rows(rows)
        return None, None

    return emit_one


_ROWS_EMITTERS: dict[int, Callable[[jax.Array], None]] = {}


def _rows_emitter(key: int) -> Callable[[jax.Array], None]:
    """Transfer rows ``[keep, index, values...]``; nested vmap flattens the index."""
    emitter = _ROWS_EMITTERS.get(key)
    if emitter is not None:
        return emitter

    @custom_vmap
    def emit_rows(rows: jax.Array) -> None:
        _log_emit.emit(key, rows)

    @emit_rows.def_vmap
    def emit_nested(
        axis_size: int, in_batched: Sequence[bool], rows: jax.Array
    ) -> tuple[None, None]:
        n = rows.shape[1]
        outer = jnp.arange(axis_size, dtype=rows.dtype)[:, None] * n
        rows = rows.at[:, :, 1].add(outer)
        emit_rows(rows.reshape(axis_size * n, rows.shape[2]))
        return None, None

    _ROWS_EMITTERS[key] = emit_rows
    return emit_rows


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
        Where lines go (``None``: ``sys.stdout`` as it is at this call).
    capacity : int
        Ring capacity in records.
    policy : {"drop_new", "block", ...}
        What a push does when the ring is full (see ``RingLogger``).
    backend : {"callback", "debug_callback", "ffi"} or None
        The route for records traced from now on; ``None`` picks the best
        available (``"ffi"`` when the native target is built, else
        ``"callback"``).  Already compiled functions keep their route.

    Raises
    ------
    ValueError
        An unknown or unavailable backend, or an argument the ring rejects.
    """
    route = _log_emit.make_backend(backend)
    jax.effects_barrier()
    # Records already staged on the CUDA route go to the sink they were
    # logged for (bounded wait: a staged record whose stream never runs is
    # not waited for forever).
    _ffi_backend.wait_cuda_delivered(timeout=10.0)
    _log_runtime.configure_logger(sink, capacity, policy)
    _log_emit.set_backend(route)


def flush(timeout: float | None = None) -> bool:
    """Wait until every record logged so far is written.

    ``jax.effects_barrier()`` first (records still inside running XLA
    programs reach the ring), then the ring's own flush.  Returns False if
    ``timeout`` seconds passed first.
    """
    jax.effects_barrier()
    # Records the CUDA route staged are pushed by its poller thread after the
    # stream ran: wait for it (GIL released) before the ring's own flush.
    if not _ffi_backend.wait_cuda_delivered(timeout):
        return False
    return bool(get_logger().flush(timeout=timeout))


def stats() -> dict[str, Any]:
    """The ring's statistics plus ``callback_errors`` (pushes that raised),
    ``route`` (the active backend) and ``ffi`` (records the native handlers
    could not deliver, by reason; ``ffi["cuda_lost"]`` sums the CUDA route's
    losses)."""
    result = dict(get_logger().stats())
    result["callback_errors"] = _log_runtime.callback_errors()
    result["route"] = _log_emit.active_backend().name
    result["ffi"] = _ffi_backend.stats()
    return result


def get_logger() -> Any:
    """The process-wide :class:`nlsq._ringlog.RingLogger` (created on first use)."""
    return _log_runtime.get_logger()
