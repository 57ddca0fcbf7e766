"""The route table: the one place that picks how a packed log record leaves the device.

Layering (imports point one way)::

    _jax_compat, _native (FFI target registration), _log_runtime (logger, sinks)
        <- _routes (this module: the routes and the choice among them)
        <- _emit (templates, emitters, the solvers' inline row emitter)
        <- async_logger (public API)

Invariants
----------
* :func:`emit` is called at trace time with a static template key and a packed
  float array: 1-D = one record; 2-D = rows from ``vmap`` whose column 0 is a
  keep flag and whose remaining columns are the record.  It stages exactly one
  transfer of that array to the host and nothing else.
* Every route keeps the staged operation alive under ``jit``: it carries an
  effect (or a side-effecting custom call), so JAX's dead-code elimination and
  XLA keep it although it has no outputs.
* A route is chosen when a record is *traced*; programs compiled earlier keep
  the route they were compiled with.
* Logging never fails a fit: a route that cannot be set up, or whose staging
  raises at trace time, is replaced by the next one in :data:`FALLBACK` with one
  ``RuntimeWarning``; the last resort drops the records, counted in
  :func:`describe` (``route_failures``).

Routes
------
``"ffi"``
    The native XLA FFI target of :mod:`nlsq.utils._native`: no Python per
    record.  The default on CPU.
``"cuda_staging"``
    The CUDA route of the native target.  The default on CUDA (measured on an
    H200: ``benches/results/gpu-h200-gpu_check.md``); ``NLSQ_FFI_CUDA=0`` turns
    it off, ``configure(backend="callback")`` picks another route.
``"callback"``
    A small primitive lowered straight to XLA's host-callback custom call,
    carrying JAX's debug effect.  ``jax.debug.callback`` goes through the same
    custom call but adds a ``device_put`` and context managers per call (about
    100 µs per record on a 2-core CPU against about 3 µs here,
    ``benches/bench_callback.py``).  The default on every backend but CPU and CUDA.
``"debug_callback"``
    The public ``jax.debug.callback``: the fallback when the JAX internals of
    ``"callback"`` are missing.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from nlsq import _jax_compat as compat
from nlsq.utils import _log_runtime as runtime
from nlsq.utils import _native as native

__all__ = [
    "FALLBACK",
    "Route",
    "active_route",
    "backend_platform",
    "default_route_for",
    "describe",
    "emit",
    "host_callback",
    "make_route",
    "register_route",
    "select",
    "set_route",
]


class Route(Protocol):
    """A route for packed records.  ``emit`` is called at trace time."""

    name: str

    def emit(self, key: int, packed: jax.Array) -> None:
        """Stage the transfer of ``packed`` (see the module invariants)."""
        ...


# -- host-callback routes -------------------------------------------------------------


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


class _HostCallbacks:
    """Whether a record was traced through a host-callback route in this process.

    Records of the native routes are in the ring (or, on CUDA, staged for its
    poller) once the computation's results are ready; a host callback may still
    be on its way then, so a flush that must see every record first runs
    ``jax.effects_barrier`` -- a few microseconds per verbose fit, paid only
    once such a record exists (:func:`host_callback_records_traced`).
    """

    traced = False


def host_callback_records_traced() -> bool:
    """Whether any record so far was traced through a host-callback route."""
    return _HostCallbacks.traced


class DebugCallbackRoute:
    """Route through the public ``jax.debug.callback``."""

    name = "debug_callback"

    def emit(self, key: int, packed: jax.Array) -> None:
        _HostCallbacks.traced = True
        jax.debug.callback(_debug_push(key, packed.ndim == 2), packed)


@functools.cache
def _callback_primitive() -> Any:
    """The ``nlsq_log_emit`` primitive; raises ``JaxInternalsChanged`` when JAX lacks the hooks."""
    effect = compat.debug_effect()
    prim = compat.new_primitive("nlsq_log_emit")

    def abstract_eval(packed: Any, *, callback: Callable[[np.ndarray], None]) -> Any:
        # The debug effect keeps the equation alive through DCE, and JAX already
        # allows it inside while_loop / cond / scan / remat.
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
    compat.register_lowering(prim, lowering)
    compat.register_jvp_rule(prim, jvp)
    return prim


def host_callback(callback: Callable[[np.ndarray], None], packed: jax.Array) -> None:
    """Stage ``callback(numpy_view_of_packed)`` on the host, kept alive by an effect.

    ``callback`` must be hashable and should keep its identity across calls
    (JAX's caches key on it); the view is only valid during the call.

    Raises
    ------
    nlsq._jax_compat.JaxInternalsChanged
        This JAX lacks the internals of the ``"callback"`` route.
    """
    _callback_primitive().bind(packed, callback=callback)


class CallbackRoute:
    """Route through the ``nlsq_log_emit`` primitive (XLA host callback)."""

    name = "callback"

    def __init__(self) -> None:
        _callback_primitive()  # raises here, at set-up, when JAX lacks the hooks

    def emit(self, key: int, packed: jax.Array) -> None:
        _HostCallbacks.traced = True
        host_callback(_host_push(key, packed.ndim == 2), packed)


# -- native routes ---------------------------------------------------------------------

_sync_lock = threading.Lock()
_synced: tuple[int, tuple[int, ...]] | None = None


def _sync_native_route(*, force: bool = False) -> None:
    """Point the Rust route table at the active logger (cheap when nothing changed)."""
    global _synced
    current = runtime.current()
    if current is None:
        return
    logger, ring_ids = current
    seen = (int(logger.id), tuple(ring_ids))
    with _sync_lock:
        if seen == _synced and not force:
            return
        native.set_route(seen[0], list(seen[1]))
        _synced = seen


def _on_logger_installed() -> None:
    # Programs compiled earlier carry template keys; a new logger needs the
    # Rust table re-pointed, whatever installed it.
    try:
        _sync_native_route(force=True)
    except Exception as exc:  # never break configure(); say what was lost
        _warn_once("sync", f"nlsq: could not route native log records to the new logger: {exc}")


class FfiRoute:
    """The native FFI target (CPU): no Python runs per record.

    Constructing it registers the target; it raises when the target is
    unavailable, so the table falls back to ``"callback"``.
    """

    name = "ffi"

    def __init__(self) -> None:
        reg = native.register()
        if not reg.ok:
            raise RuntimeError(f"nlsq FFI target is not registered: {reg.reason}")
        platform = backend_platform()
        if platform != "cpu" and platform.upper() not in reg.platforms:
            # A program lowered for this device would find no handler.
            raise RuntimeError(
                f"nlsq FFI target has no handler for the {platform} backend here"
                + (f": {reg.cuda_note}" if reg.cuda_note else "")
            )
        runtime.add_install_listener(_on_logger_installed)

    def emit(self, key: int, packed: jax.Array) -> None:
        _sync_native_route()
        native.emit_routed(key, packed)


class CudaStagingRoute(FfiRoute):
    """The CUDA handler of the native target (the default on CUDA)."""

    name = "cuda_staging"

    def __init__(self) -> None:
        reg = native.register()
        if not reg.ok or "CUDA" not in reg.platforms:
            note = reg.reason if not reg.ok else reg.cuda_note
            raise RuntimeError(f"the CUDA staging route is unavailable: {note}")
        super().__init__()

    # Rows (vmap, and the solvers' keep-flagged rows) go through the handler
    # too: it stages one slot per row and its poller drops keep-0 rows.


# -- the table ----------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[[], Route]] = {
    "ffi": FfiRoute,
    "cuda_staging": CudaStagingRoute,
    "callback": CallbackRoute,
    "debug_callback": DebugCallbackRoute,
}

FALLBACK: dict[str, str | None] = {
    "ffi": "callback",
    "cuda_staging": "callback",
    "callback": "debug_callback",
    "debug_callback": None,
}
"""Where a failing route's records go instead (``None``: they are dropped)."""


def register_route(name: str, factory: Callable[[], Route]) -> None:
    """Make a route available under ``name`` (benches add a blocking-print route).

    ``factory`` may raise to say the route is unavailable on this machine.
    """
    _FACTORIES[name] = factory
    FALLBACK.setdefault(name, "callback")


def backend_platform() -> str:
    """``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"`` or another name: JAX's default backend."""
    try:
        backend = jax.default_backend()
    except Exception:  # no backend at all: nothing will run, the choice does not matter
        return "unknown"
    if backend != "gpu":
        return backend
    try:
        version = str(jax.devices()[0].client.platform_version).lower()
    except Exception:
        return "gpu"
    if "rocm" in version or "hip" in version:
        return "rocm"
    return "cuda"


def default_route_for(platform: str) -> tuple[str, str]:
    """The route chosen for ``platform`` with no ``configure(backend=...)``, and why."""
    if platform == "cpu":
        return "ffi", "CPU: the native FFI target (no Python per record)"
    if platform == "cuda":
        if native.cuda_opted_out():
            return "callback", f"CUDA with {native.CUDA_OPT_IN}=0 (the native route turned off)"
        return "cuda_staging", "CUDA: the native CUDA staging route (no host wait per record)"
    return "callback", f"{platform}: no native target for this backend"


_PROBE_TEXT = "nlsq route probe {value:g}"


def _probe(route: Route) -> None:
    """Trace and lower one record through ``route``, so its JAX rules run now.

    A DCE rule, lowering or effect that this JAX rejects raises here, when the
    route is set up, instead of while a user's fit is being compiled.
    """
    key = runtime.intern(_PROBE_TEXT)

    def probe(x: jax.Array) -> jax.Array:
        route.emit(key, jnp.stack([x]))
        return x + 1

    jax.jit(probe).lower(jnp.zeros((), jnp.float32))


class _Choice:
    lock = threading.RLock()
    route: Route | None = None
    reason: str = ""
    platform: str = ""
    failures: int = 0
    warned: set[str] = set()  # noqa: RUF012 - process-wide, guarded by lock
    probed: set[str] = set()  # noqa: RUF012 - routes whose probe passed once


def _warn_once(topic: str, message: str) -> None:
    with _Choice.lock:
        if topic in _Choice.warned:
            return
        _Choice.warned.add(topic)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _build(name: str) -> Route:
    route = _FACTORIES[name]()
    if name not in _Choice.probed:
        _probe(route)
        _Choice.probed.add(name)
    return route


def _build_with_fallback(name: str, why: str) -> tuple[Route | None, str]:
    """``name``'s route, else the first of its fallbacks that sets up (one warning)."""
    tried: list[str] = []
    current: str | None = name
    while current is not None:
        factory = _FACTORIES.get(current)
        if factory is not None:
            try:
                route = _build(current)
            except Exception as exc:
                tried.append(f"{current!r}: {type(exc).__name__}: {exc}")
            else:
                if tried:
                    _Choice.failures += 1
                    _warn_once(
                        f"setup:{name}",
                        f"nlsq: logging route {name!r} is unavailable, using {current!r}: "
                        + "; ".join(tried),
                    )
                    return route, f"fallback from {name!r} ({'; '.join(tried)})"
                return route, why
        current = FALLBACK.get(current)
    _Choice.failures += 1
    _warn_once(
        f"setup:{name}",
        "nlsq: no logging route could be set up, log records are dropped: " + "; ".join(tried),
    )
    return None, "no route could be set up: " + "; ".join(tried)


def make_route(name: str | None) -> Route:
    """Build the route ``name``, or the default one for this backend for ``None``.

    An explicit ``name`` that cannot be set up raises (it is a user's request,
    made outside any fit); ``None`` falls back with one warning.

    Raises
    ------
    TypeError
        ``name`` is neither a str nor None.
    ValueError
        No route is known under ``name``.
    RuntimeError
        The route ``name`` cannot be set up on this machine.
    """
    if name is None:
        platform = backend_platform()
        chosen, why = default_route_for(platform)
        route, _ = _build_with_fallback(chosen, why)
        if route is None:
            raise RuntimeError("no logging route is available")
        return route
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str or None, got {type(name).__name__}")
    if name not in _FACTORIES:
        known = ", ".join(repr(n) for n in sorted(_FACTORIES))
        raise ValueError(f"unknown logging backend {name!r}; available: {known}")
    return _build(name)


def select(name: str | None) -> tuple[Route | None, str]:
    """The route for ``configure(backend=name)`` and why: ``name`` overrides the table.

    The route is ``None`` only for ``name=None`` when no route at all can be set
    up.  Nothing changes until :func:`set_route` is called with the result.
    """
    if name is not None:
        return make_route(name), f"configure(backend={name!r})"
    chosen, why = default_route_for(backend_platform())
    return _build_with_fallback(chosen, why)


def set_route(route: Route | None, reason: str | None = None) -> None:
    """Use ``route`` for every record traced from now on (``None``: drop them)."""
    with _Choice.lock:
        _Choice.route = route
        _Choice.reason = reason if reason is not None else f"set_route({route and route.name!r})"
        _Choice.platform = backend_platform()


def active_route() -> Route | None:
    """The route used for records traced from now on (chosen on first use)."""
    route = _Choice.route
    if route is not None:
        return route
    with _Choice.lock:
        if _Choice.route is None and not _Choice.reason:
            set_route(*select(None))
        return _Choice.route


def emit(key: int, packed: jax.Array) -> None:
    """Stage one packed record (1-D) or one batch of rows (2-D) for template ``key``.

    A route that raises while staging is replaced by its fallback for this and
    every later record (one warning); the fit being traced goes on.
    """
    route = active_route()
    while route is not None:
        try:
            route.emit(key, packed)
            return
        except Exception as exc:
            route = _degrade(route, exc)


def _degrade(failed: Route, exc: BaseException) -> Route | None:
    """Replace the failing ``failed`` route by its fallback; warn once."""
    with _Choice.lock:
        _Choice.failures += 1
        next_name = FALLBACK.get(failed.name)
        replacement: Route | None = None
        reason = f"fallback from {failed.name!r} ({type(exc).__name__}: {exc})"
        if next_name is not None:
            replacement, _ = _build_with_fallback(next_name, reason)
        if _Choice.route is failed:
            _Choice.route = replacement
            _Choice.reason = reason
    _warn_once(
        f"emit:{failed.name}",
        f"nlsq: logging route {failed.name!r} failed while tracing "
        f"({type(exc).__name__}: {exc}); "
        + (f"using {replacement.name!r}" if replacement else "log records are dropped"),
    )
    return replacement


def _reset_for_tests() -> None:
    """Forget the chosen route and the warnings given, as in a fresh process."""
    with _Choice.lock:
        _Choice.route = None
        _Choice.reason = ""
        _Choice.platform = ""
        _Choice.warned.clear()
        _Choice.probed.clear()


def describe() -> dict[str, Any]:
    """The route in use and why: ``route``, ``route_reason``, ``route_platform``,
    ``route_failures`` (set-up or staging failures that made the table fall back)."""
    route = active_route()
    with _Choice.lock:
        return {
            "route": route.name if route is not None else None,
            "route_reason": _Choice.reason,
            "route_platform": _Choice.platform,
            "route_failures": _Choice.failures,
        }
