"""How a packed log record leaves the device: the only place that picks the route.

Invariants
----------
* :func:`emit` is called at trace time with a static template key and a packed
  float array: 1-D = one record; 2-D = rows from ``vmap`` whose column 0 is a
  keep flag and whose remaining columns are the record.  It stages exactly one
  transfer of that array to the host and nothing else.
* Every route keeps the staged operation alive under ``jit``: it carries an
  effect, so JAX's dead-code elimination and XLA keep it although it has no
  outputs.
* A backend is chosen when a record is *traced*; programs compiled earlier keep
  the route they were compiled with.

Routes
------
``"callback"``
    A small primitive lowered straight to XLA's host-callback custom call
    (``jax.interpreters.mlir.emit_python_callback``), carrying JAX's debug
    effect.  XLA hands the callback a NumPy view of the packed buffer; the
    callback pushes it into the ring.  ``jax.debug.callback`` goes through the
    same custom call but adds, per call, a ``device_put`` of the arguments and
    several context managers; on a 2-core CPU a no-op ``jax.debug.callback``
    (or ``io_callback``, ordered or not) costs about 100 µs per record and this
    route about 3 µs (``benches/bench_callback.py``).
``"debug_callback"``
    Portable fallback through the public ``jax.debug.callback``; used when the
    JAX internals the first route relies on are missing.
``"ffi"``
    Added by :mod:`nlsq.utils._ffi_backend` when the native extension provides an
    XLA FFI target (no Python per record).  Registered through
    :func:`register_backend`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from nlsq import _jax_compat as compat
from nlsq.utils import _log_runtime as runtime

__all__ = [
    "Backend",
    "host_callback",
    "active_backend",
    "emit",
    "make_backend",
    "register_backend",
    "set_backend",
]


class Backend(Protocol):
    """A route for packed records.  ``emit`` is called at trace time."""

    name: str

    def emit(self, key: int, packed: jax.Array) -> None:
        """Stage the transfer of ``packed`` (see the module invariants)."""
        ...


@functools.cache
def _host_push(key: int, rows: bool) -> Callable[[np.ndarray], None]:
    # One callable per (key, rows): a stable identity keeps JAX's tracing and
    # lowering caches effective across calls.
    if rows:
        return functools.partial(runtime.push_rows, key)
    return functools.partial(runtime.push_record, key)


@functools.cache
def _debug_push(key: int, rows: bool) -> Callable[[Any], None]:
    push = _host_push(key, rows)

    def callback(buf: Any) -> None:
        # jax.debug.callback hands over jax.Arrays (already on the host CPU).
        push(np.asarray(buf))

    return callback


class DebugCallbackBackend:
    """Route through the public ``jax.debug.callback``."""

    name = "debug_callback"

    def emit(self, key: int, packed: jax.Array) -> None:
        jax.debug.callback(_debug_push(key, packed.ndim == 2), packed)


def _make_primitive() -> Any:
    """The ``nlsq_log_emit`` primitive, or ``None`` when JAX lacks the hooks."""
    try:
        effect = compat.debug_effect()
        prim = compat.new_primitive("nlsq_log_emit")
    except compat.JaxInternalsChanged:
        return None

    def abstract_eval(packed: Any, *, callback: Callable[[np.ndarray], None]) -> Any:
        # The debug effect is what keeps the equation alive through DCE and
        # what JAX already allows inside while_loop / cond / scan / remat.
        return [], {effect}

    def impl(packed: Any, *, callback: Callable[[np.ndarray], None]) -> list[Any]:
        callback(np.asarray(packed))
        return []

    def lowering(ctx: Any, packed: Any, *, callback: Callable[[np.ndarray], None]) -> list[Any]:
        def host(buf: np.ndarray) -> tuple[()]:
            callback(buf)
            return ()

        compat.emit_host_callback(ctx, host, [packed])
        return []

    def jvp(primals: Any, tangents: Any, *, callback: Callable[[np.ndarray], None]) -> Any:
        # Logging inside a differentiated function logs the primal values.
        return prim.bind(*primals, callback=callback), []

    prim.def_effectful_abstract_eval(abstract_eval)
    prim.def_impl(impl)
    try:
        compat.register_lowering(prim, lowering)
        compat.register_jvp_rule(prim, jvp)
    except compat.JaxInternalsChanged:
        return None
    return prim


_EMIT_P = _make_primitive()


def host_callback(callback: Callable[[np.ndarray], None], packed: jax.Array) -> None:
    """Stage ``callback(numpy_view_of_packed)`` on the host, kept alive by an effect.

    ``callback`` must be hashable and should keep its identity across calls
    (JAX's caches key on it); the view is only valid during the call.
    """
    if _EMIT_P is None:
        raise RuntimeError("this JAX version lacks the hooks of the 'callback' route")
    _EMIT_P.bind(packed, callback=callback)


class HostCallbackBackend:
    """Route through the ``nlsq_log_emit`` primitive (XLA host callback)."""

    name = "callback"

    def emit(self, key: int, packed: jax.Array) -> None:
        host_callback(_host_push(key, packed.ndim == 2), packed)


_FACTORIES: dict[str, Callable[[], Backend]] = {"debug_callback": DebugCallbackBackend}
if _EMIT_P is not None:
    _FACTORIES["callback"] = HostCallbackBackend

# Tried in this order when ``configure(backend=None)``.
_PREFERENCE = ["ffi", "callback", "debug_callback"]
_ACTIVE: list[Backend] = []


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make a route available under ``name`` (the FFI module calls this).

    ``factory`` may raise to say the route is unavailable on this machine;
    :func:`make_backend` then reports that error for an explicit request and
    skips the route for ``backend=None``.
    """
    _FACTORIES[name] = factory


def _load_optional_routes() -> None:
    # The FFI route lives in its own module that registers itself on import;
    # it is absent until the native target is built.
    if "ffi" not in _FACTORIES:
        try:
            importlib.import_module("nlsq.utils._ffi_backend")
        except ImportError:
            pass


def make_backend(name: str | None) -> Backend:
    """Build the route ``name``, or the best available one for ``None``.

    Raises
    ------
    TypeError
        ``name`` is neither a str nor None.
    ValueError
        No route is known under ``name``.
    """
    _load_optional_routes()
    if name is None:
        for candidate in _PREFERENCE:
            factory = _FACTORIES.get(candidate)
            if factory is None:
                continue
            try:
                return factory()
            except Exception:  # noqa: S112 - an unavailable route; try the next
                continue
        raise RuntimeError("no logging backend is available")
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str or None, got {type(name).__name__}")
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(repr(n) for n in sorted(_FACTORIES))
        hint = " (the native FFI target is not built into nlsq._ringlog)" if name == "ffi" else ""
        raise ValueError(
            f"unknown or unavailable logging backend {name!r}{hint}; available: {known}"
        )
    return factory()


def set_backend(backend: Backend) -> None:
    """Use ``backend`` for every record traced from now on."""
    _ACTIVE[:] = [backend]


def active_backend() -> Backend:
    """The route used for records traced from now on."""
    if not _ACTIVE:
        set_backend(make_backend(None))
    return _ACTIVE[0]


def emit(key: int, packed: jax.Array) -> None:
    """Stage one packed record (1-D) or one batch of rows (2-D) for template ``key``."""
    active_backend().emit(key, packed)
