"""Templates and emitters: how a log call becomes one packed record at trace time.

:class:`LogTemplate` (what :func:`nlsq.utils.async_logger.template` returns)
checks and packs a call's values and stages them through the route table
(:mod:`nlsq.utils._routes`); eager calls with host numbers push directly.
:func:`inline_row_emitter` is the solvers' row emitter: on CPU with the FFI
route it stages rows through the effect-free ``nlsq_log_inline`` primitive
(below), elsewhere through a template.

Why an effect-free primitive for solver rows
--------------------------------------------
Any JAX effect in a jitted computation (the debug effect of a callback, the FFI
effect of ``ffi_call(has_side_effect=True)``) takes the call off JAX's C++ fast
dispatch path and adds runtime-token handling: measured on this project's CPU
machine, a jitted 10-iteration ``while_loop`` costs about 8 µs with no logging,
about 200 µs with one effectful FFI log call per iteration, and about 11 µs with
``nlsq_log_inline``.  That primitive declares no effect, so the fast path stays.
It stays alive anyway: in the jaxpr through a DCE rule that always keeps it, in
XLA because it lowers to the routed FFI custom call with ``has_side_effect=True``.
Gating is done by the handler, not by ``lax.cond`` (a ``cond`` with no outputs
and no effects is dropped whole by JAX's DCE): each row is ``[keep, values...]``.
The price: ``jax.effects_barrier()`` does not wait for these rows; they are in
the ring once any result of the computation is ready, so only callers that block
on a result before flushing (the solvers) may use it.
"""

from __future__ import annotations

import functools
import operator
import string
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

from nlsq import _jax_compat as compat
from nlsq.utils import _log_runtime, _native, _routes

__all__ = ["MAX_FIELDS", "LogTemplate", "inline_row_emitter", "is_jax_array"]

#: Most values one record can carry (``ringlog::MAX_VALUES``).  Under ``vmap``
#: the batch index takes one of them.
MAX_FIELDS = 12

_ALWAYS = "always"
_EVERY_10 = "every 10th"

_BATCH_PREFIX = "[{batch_index:d}] "

# Why emitters are cached per route
# ---------------------------------
# An emitter (a ``custom_vmap`` function, or the ``jit`` of eager device values)
# calls ``_routes.emit`` while it is traced, so its trace contains the route
# active then.  JAX caches such traces by function identity (``jit`` always;
# ``custom_vmap`` from JAX 0.11 on, through ``pe.trace_to_jaxpr``), so reusing
# one emitter after ``configure(backend=...)`` would keep staging the old
# route in functions traced afterwards.  The caches below are therefore
# dropped whenever the active route object changes (each ``configure`` makes
# a new one); the next trace builds fresh emitters, and the dropped ones leave
# JAX's weakly keyed caches with them.
_NO_ROUTE_YET = object()


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
        # Both caches hold functions whose traces bake in the route: they are
        # only valid for ``self._route`` (see :func:`_route_changed`).
        self._route: object = _NO_ROUTE_YET
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

    def _forget_stale_route(self) -> None:
        route = _routes.active_route()
        if route is not self._route:
            self._emitters = {}
            self._jitted = {}
            self._route = route

    def _jit_for(self, level: str) -> Callable[..., None]:
        self._forget_stale_route()
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
        self._forget_stale_route()
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
            lax.cond(pred, lambda p: _routes.emit(key, p), lambda p: None, packed)
        else:
            _routes.emit(key, packed)

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


class _Rows:
    route: object = None
    emitters: dict[int, Callable[[jax.Array], None]] = {}  # noqa: RUF012 - for ``route`` only


def _rows_emitter(key: int) -> Callable[[jax.Array], None]:
    """Transfer rows ``[keep, index, values...]``; nested vmap flattens the index."""
    route = _routes.active_route()
    if route is not _Rows.route:
        _Rows.emitters = {}
        _Rows.route = route
    emitter = _Rows.emitters.get(key)
    if emitter is not None:
        return emitter

    @custom_vmap
    def emit_rows(rows: jax.Array) -> None:
        _routes.emit(key, rows)

    @emit_rows.def_vmap
    def emit_nested(
        axis_size: int, in_batched: Sequence[bool], rows: jax.Array
    ) -> tuple[None, None]:
        n = rows.shape[1]
        outer = jnp.arange(axis_size, dtype=rows.dtype)[:, None] * n
        rows = rows.at[:, :, 1].add(outer)
        emit_rows(rows.reshape(axis_size * n, rows.shape[2]))
        return None, None

    _Rows.emitters[key] = emit_rows
    return emit_rows


# -- the solvers' inline row emitter ------------------------------------------------------


@functools.cache
def _inline_primitive() -> Any:
    prim = compat.new_primitive("nlsq_log_inline")

    def abstract_eval(packed: Any, **params: Any) -> list[Any]:
        return []

    def impl(packed: Any, **params: Any) -> list[Any]:
        # Eager use: stage the same custom call through a jitted wrapper.
        jax.jit(lambda r: prim.bind(r, **params))(packed)
        return []

    def batch(args: Any, dims: Any, **params: Any) -> tuple[list[Any], list[Any]]:
        (packed,), (dim,) = args, dims
        packed = jnp.moveaxis(packed, dim, 0)
        return prim.bind(packed.reshape(-1, packed.shape[-1]), **params), []

    def jvp(primals: Any, tangents: Any, **params: Any) -> tuple[list[Any], list[Any]]:
        # Logged values are observed, never differentiated.
        return prim.bind(*primals, **params), []

    prim.def_abstract_eval(abstract_eval)
    prim.def_impl(impl)
    compat.register_always_live(prim)
    compat.register_batching_rule(prim, batch)
    compat.register_jvp_rule(prim, jvp)
    lowering = compat.ffi_lowering(_native.TARGET, has_side_effect=True)
    compat.register_lowering(prim, lowering, platform="cpu")
    # The CUDA staging handler takes the same keep-flagged rows; its poller
    # drops keep-0 rows, so verbose=1 reads no predicate on the host.
    compat.register_lowering(prim, lowering, platform="cuda")
    return prim


def _stage_inline_row(key: int, keep: Any, values: Sequence[Any]) -> None:
    _log_runtime.ensure_registered(key)
    _routes._sync_native_route()
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    # Scalars give one row; vectors (a block of rows, nlsq._verbose's ITERATIONS) one
    # row per element.
    row = jnp.stack(
        [jnp.asarray(keep).astype(dtype)] + [jnp.asarray(v).astype(dtype) for v in values],
        axis=-1,
    )
    # ``rows=1``: the operand is rows ``[keep, values...]`` (any number of them).
    _inline_primitive().bind(
        lax.stop_gradient(row.reshape(-1, row.shape[-1])),
        template_key=np.int64(key),
        rows=np.int64(1),
    )


class _Inline:
    failed = False


@functools.cache
def _inline_probe() -> None:
    # Run the primitive's DCE, batching-free lowering path once inside a loop,
    # so a JAX whose rules changed fails here instead of in a fit.
    key = _log_runtime.intern("nlsq inline probe {value:g}")

    def probe(x: jax.Array) -> jax.Array:
        def body(c: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            _stage_inline_row(key, c[0] == 0, [c[1]])
            return c[0] + 1, c[1]

        return lax.while_loop(lambda c: c[0] < 2, body, (0, x))[0]

    jax.jit(probe).lower(jnp.zeros((), jnp.float32))


def inline_rows_available() -> bool:
    """Whether solver rows can take the inline route: CPU with the FFI route, or
    CUDA with the CUDA staging route; JAX rules accepted."""
    if _Inline.failed:
        return False
    route = _routes.active_route()
    native_route = {"cpu": "ffi", "cuda": "cuda_staging"}.get(_routes.backend_platform())
    if route is None or native_route is None or route.name != native_route:
        return False
    try:
        _inline_probe()
    except Exception as exc:
        _inline_failed(exc)
        return False
    return True


def _inline_failed(exc: BaseException) -> None:
    if _Inline.failed:
        return
    _Inline.failed = True
    warnings.warn(
        "nlsq: the solvers' inline log route is unavailable with this JAX "
        f"({type(exc).__name__}: {exc}); rows take the {_routes.describe()['route']!r} route",
        RuntimeWarning,
        stacklevel=3,
    )


def inline_row_emitter(text: str) -> Callable[..., None]:
    """``emit(keep, verbose, **fields)`` for a solver row of template ``text``.

    On CPU with the FFI route the row is staged through ``nlsq_log_inline``
    (``keep`` travels with the row; the handler drops rows whose flag is 0).
    Elsewhere the template's own route is used, gated as ``verbose`` says.
    A failure of the inline route while tracing falls back to the template
    route with one warning.
    """
    tpl = LogTemplate(text)

    def emit(keep: Any, verbose: int, **fields: Any) -> None:
        if inline_rows_available():
            try:
                _stage_inline_row(tpl._key, keep, [fields[name] for name in tpl.fields])
                return
            except Exception as exc:
                _inline_failed(exc)
        tpl(verbose=verbose, **fields)

    return emit
