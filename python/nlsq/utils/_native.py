"""Native logging target: registration of the XLA FFI handlers of ``nlsq._ringlog``.

The handlers are Rust functions in the extension (crate ``nlsq-xla-ffi``).
:func:`register` hands them to ``jax.ffi.register_ffi_target`` once per
process, when a route first needs them (never on import). The custom call has a
side effect, so XLA never drops it, and no Python runs when it executes.

This module knows nothing of routes or of the process-wide logger: the route
table (:mod:`nlsq.utils._routes`) decides when the target is used, and tells
the Rust side which logger a template key goes to (:func:`set_route`).

Two call forms (attributes of the custom call):

* routed -- ``template_key`` (and ``rows=1`` for ``vmap`` rows): the
  process-stable template key of :mod:`nlsq.utils._log_runtime`; the Rust
  route table maps it to the active logger's ring id (:func:`set_route`), so
  programs compiled before a ``configure`` keep logging. Push failures are
  counted (:func:`stats`), never raised into XLA.
* direct -- ``logger_id`` and ``template_id`` of a given ``RingLogger``:
  :func:`emit`, for code that owns its logger.

Registration is refused (reported in :class:`Registration`) when the extension
lacks the handlers, when the XLA FFI API version of the installed jaxlib differs
from the one the handlers were built for, or when jax rejects the target.

The CUDA handler (the ``cuda_staging`` route of the route table: async copy
and stream write into pinned host-mapped memory, a Rust poller pushes;
``rust/xla_ffi/README.md``) is registered when a CUDA backend exists and the
driver loads with stream memory operations (else counted as ``cuda_fallback``
in :func:`stats`, and the route table warns once and falls back to
``"callback"``), unless ``NLSQ_FFI_CUDA=0`` turns it off. Measured on an H200
(``benches/results/gpu-h200-gpu_check.md``): same lines as the other routes, no
drops in 20 000 steps, ~9.4 µs per logged iteration over no logging.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from nlsq import _jax_compat as compat

TARGET = "nlsq_ringlog_push"
"""Name of the custom-call target in the lowered HLO."""

VMAP_METHOD = "sequential"
"""Under ``vmap`` the call runs once per batch element, each a whole record."""


@dataclass(frozen=True)
class Registration:
    """Outcome of :func:`register`.

    Attributes
    ----------
    ok : bool
        Whether the CPU target is registered and :func:`emit` may be used.
    platforms : tuple of str
        Platforms the target is registered for (``"cpu"``, ``"CUDA"``).
    reason : str or None
        Why the native path is unavailable, when ``ok`` is false.
    built_api : tuple of int or None
        ``(major, minor)`` XLA FFI API version the handlers were built for.
    runtime_api : tuple of int or None
        ``(major, minor)`` of the installed jaxlib's FFI header.
    cuda_note : str or None
        Why the CUDA handler was not registered, when it was not.
    """

    ok: bool
    platforms: tuple[str, ...] = ()
    reason: str | None = None
    built_api: tuple[int, int] | None = None
    runtime_api: tuple[int, int] | None = None
    cuda_note: str | None = None


_lock = threading.Lock()
_state: Registration | None = None


def runtime_api_version() -> tuple[int, int] | None:
    """XLA FFI API version of the installed jaxlib (see :mod:`nlsq._jax_compat`).

    Returns
    -------
    tuple of int or None
        ``(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR)``, or ``None`` when the
        header is missing or does not define them.
    """
    return compat.jaxlib_ffi_api_version()


def abi_mismatch(built: tuple[int, int], runtime: tuple[int, int] | None) -> str | None:
    """Why handlers built for ``built`` cannot run under ``runtime``, or None.

    XLA keeps accepting handlers built for an older minor version of the same
    major version; a different major, or a runtime older than the build, is a
    mismatch.
    """
    if runtime is None:
        return "the installed jaxlib ships no readable XLA FFI header (xla/ffi/api/c_api.h)"
    if runtime[0] != built[0] or runtime[1] < built[1]:
        return (
            f"XLA FFI API mismatch: handlers built for {built[0]}.{built[1]}, "
            f"installed jaxlib provides {runtime[0]}.{runtime[1]}"
        )
    return None


CUDA_OPT_IN = "NLSQ_FFI_CUDA"
"""Environment variable: ``0`` keeps the CUDA handler unregistered (the CUDA
staging route is the default on CUDA otherwise; the name dates from its opt-in
days, before it was measured on a GPU)."""


def cuda_opted_out() -> bool:
    """Whether ``NLSQ_FFI_CUDA=0`` turns the CUDA staging route off."""
    return os.environ.get(CUDA_OPT_IN) == "0"


def cuda_backend_present() -> bool:
    """Whether JAX has a CUDA backend in this process."""
    import jax

    try:
        return bool(jax.devices("cuda"))
    except (RuntimeError, ValueError):
        return False


def _register_locked() -> Registration:

    try:
        from nlsq import _ringlog

        targets = _ringlog.ffi_targets()
        built = tuple(_ringlog.ffi_api_version())
    except (ImportError, AttributeError) as exc:
        return Registration(ok=False, reason=f"the extension has no FFI handlers ({exc})")
    runtime = runtime_api_version()
    mismatch = abi_mismatch(built, runtime)  # type: ignore[arg-type]
    if mismatch is not None:
        return Registration(ok=False, reason=mismatch, built_api=built, runtime_api=runtime)
    try:
        compat.register_ffi_target(TARGET, targets["cpu"], platform="cpu")
    except Exception as exc:  # jax raises several types here; all mean "refused"
        return Registration(
            ok=False,
            reason=f"jax refused the FFI target: {type(exc).__name__}: {exc}",
            built_api=built,
            runtime_api=runtime,
        )
    platforms = ["cpu"]
    cuda_note: str | None = None
    if not cuda_backend_present():
        cuda_note = "no CUDA backend"
    elif cuda_opted_out():
        cuda_note = f"the CUDA handler is turned off ({CUDA_OPT_IN}=0)"
    else:
        cuda_note = _ringlog.ffi_cuda_unavailable_reason()
        if cuda_note is not None:
            _note_cuda_fallback(cuda_note)
        else:
            try:
                compat.register_ffi_target(TARGET, targets["CUDA"], platform="CUDA")
                platforms.append("CUDA")
            except Exception as exc:  # the CPU path stays usable
                cuda_note = f"jax refused the CUDA target: {exc}"
    return Registration(
        ok=True,
        platforms=tuple(platforms),
        built_api=built,  # type: ignore[arg-type]
        runtime_api=runtime,
        cuda_note=cuda_note,
    )


_cuda_fallbacks = 0


def _note_cuda_fallback(reason: str) -> None:
    """The CUDA staging route was asked for but cannot run here: count it.

    The reason is kept in ``Registration.cuda_note``; the route table turns it
    into its one warning when it falls back to the callback route.
    """
    global _cuda_fallbacks
    _cuda_fallbacks += 1


def cuda_registered() -> bool:
    """Whether the CUDA staging handler is registered (never registers)."""
    state = _state
    return state is not None and "CUDA" in state.platforms


CUDA_DELIVERY_PATIENCE = 60.0
"""Seconds :func:`wait_cuda_delivered` waits at most when given no timeout: a
record whose stream never ran (a failed program) must not hang a flush."""


def wait_cuda_delivered(timeout: float | None = None) -> bool:
    """Wait until the CUDA route's poller pushed every staged record.

    ``True`` at once when the CUDA handler is not registered; ``False`` after
    ``timeout`` (``None``: :data:`CUDA_DELIVERY_PATIENCE`) seconds.
    """
    if not cuda_registered():
        return True
    from nlsq import _ringlog

    limit = CUDA_DELIVERY_PATIENCE if timeout is None else timeout
    return bool(_ringlog.ffi_cuda_wait_delivered(limit))


def register() -> Registration:
    """Register the FFI target once per process and report the outcome.

    Nothing is raised or warned here: the route table (:mod:`nlsq.utils._routes`)
    reports a refusal once, with its reason, when it falls back.

    Returns
    -------
    Registration
        ``ok`` tells whether the target can be used.
    """
    global _state
    with _lock:
        if _state is None:
            try:
                _state = _register_locked()
            except Exception as exc:  # never let a registration bug escape into a fit
                _state = Registration(ok=False, reason=f"{type(exc).__name__}: {exc}")
        return _state


def available() -> bool:
    """Whether backend ``"ffi"`` is registered (registers on first use)."""
    return register().ok


def _reset_for_tests() -> None:
    """Forget the registration outcome so a test can simulate another one."""
    global _state
    with _lock:
        _state = None
    _ffi_call.cache_clear()


@lru_cache(maxsize=1)
def _ffi_call() -> Any:
    import jax.ffi

    return jax.ffi.ffi_call(TARGET, (), has_side_effect=True, vmap_method=VMAP_METHOD)


@lru_cache(maxsize=1)
def max_values() -> int:
    """The most values one record carries."""
    from nlsq import _ringlog

    return int(_ringlog.ffi_max_values())


def _checked(packed: Any, *, rows: bool) -> Any:
    """``packed`` as an array after the trace-time checks of the handler's contract."""
    import jax.numpy as jnp
    from jax import lax

    arr = packed if hasattr(packed, "dtype") and hasattr(packed, "ndim") else jnp.asarray(packed)
    if arr.dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise TypeError(
            f"nlsq FFI log record: packed values have dtype {arr.dtype}; "
            "expected float64 or float32"
        )
    want = 2 if rows else 1
    if arr.ndim != want:
        what = "a 2-D array of rows" if rows else "a 1-D array"
        raise ValueError(
            f"nlsq FFI log record: packed values must be {what}, got shape "
            f"{tuple(arr.shape)} (rank {arr.ndim})"
        )
    width = arr.shape[-1] - (1 if rows else 0)
    if width > max_values() or (rows and arr.shape[-1] == 0):
        raise ValueError(
            f"nlsq FFI log record: {width} values per record, a record holds at most {max_values()}"
        )
    # A log records primal values: with no tangent reaching the custom call,
    # JAX never asks for its (non-existent) derivative.
    return lax.stop_gradient(arr)


def _require_registered() -> None:
    if not available():
        raise RuntimeError(f"nlsq FFI target is not registered: {register().reason}")


def emit(packed: Any, template_id: int, logger_id: int) -> None:
    """Push one record into a given logger through the FFI target (direct form).

    Works inside traced code (``jit``, ``while_loop``, ``scan``, ``cond``,
    ``vmap``: one record per batch element) and eagerly.

    Parameters
    ----------
    packed : array_like
        The record's values, a 1-D ``float64`` or ``float32`` array of at most
        :func:`max_values` elements, in template field order.
    template_id : int
        Ring id of a template registered with that logger.
    logger_id : int
        ``RingLogger.id`` of the logger to push into.

    Raises
    ------
    TypeError
        At trace time, when ``packed`` is not float64 or float32.
    ValueError
        At trace time, when ``packed`` is not 1-D or has too many values.
    RuntimeError
        When the target is not registered (see :func:`register`).
    """
    _require_registered()
    arr = _checked(packed, rows=False)
    _ffi_call()(arr, template_id=np.int64(template_id), logger_id=np.int64(logger_id))


def emit_routed(key: int, packed: Any) -> None:
    """Stage one routed record (1-D) or one batch of keep-flagged rows (2-D).

    Parameters
    ----------
    key : int
        Template key of :mod:`nlsq.utils._log_runtime`.
    packed : array_like
        1-D values, or 2-D rows ``[keep, values...]`` (``vmap``): every row
        whose keep flag is non-zero is pushed without the flag.
    """
    _require_registered()
    rows = getattr(packed, "ndim", 1) == 2
    arr = _checked(packed, rows=rows)
    if rows:
        _ffi_call()(arr, template_key=np.int64(key), rows=np.int64(1))
    else:
        _ffi_call()(arr, template_key=np.int64(key))


def set_route(logger_id: int, ring_ids: list[int]) -> None:
    """Send routed records to ``logger_id``: template key ``k`` becomes ring id ``ring_ids[k]``."""
    from nlsq import _ringlog

    _ringlog.ffi_set_route(int(logger_id), list(ring_ids))


def stats() -> dict[str, int]:
    """Records the FFI handlers could not deliver, by reason.

    ``orphaned`` (no live logger / no route), ``unrouted`` (template key
    without a ring id), ``push_failed`` (the ring refused the values),
    ``unreportable``; for the CUDA staging route ``staging_full``,
    ``staging_block_timeout``, ``enqueue_failed``, ``cuda_unavailable`` (records
    lost, summed in ``cuda_lost``), ``staging_setup_failed``, ``poller_failed``,
    and ``cuda_fallback`` (the route was asked for but could not be used).
    """
    try:
        from nlsq import _ringlog

        counts = dict(_ringlog.ffi_stats())
    except (ImportError, AttributeError):
        return {}
    counts["cuda_lost"] = sum(
        counts.get(k, 0)
        for k in ("staging_full", "staging_block_timeout", "enqueue_failed", "cuda_unavailable")
    )
    counts["cuda_fallback"] = _cuda_fallbacks
    return counts
