"""Native logging path: an XLA FFI custom call that pushes one record per call.

The handlers are Rust functions in the ``nlsq._ringlog`` extension (crate
``nlsq-xla-ffi``). :func:`register` hands them to
``jax.ffi.register_ffi_target`` once per process. The custom call has a side
effect, so XLA never drops it, and no Python runs when it executes.

Two call forms (attributes of the custom call):

* routed -- ``template_key`` (and ``rows=1`` for ``vmap`` rows): what
  :mod:`nlsq.utils.async_logger` uses through :class:`FfiBackend`. Compiled
  programs carry the process-stable template key of
  :mod:`nlsq.utils._log_runtime`; the Rust route table maps it to the active
  logger's ring id. The table is re-installed whenever the active logger
  changes (``configure``), so programs compiled earlier keep logging, as with
  the callback path. Push failures are counted (:func:`stats`), never raised
  into XLA.
* direct -- ``logger_id`` and ``template_id`` of a given ``RingLogger``:
  :func:`emit`, for code that owns its logger.

Registration is refused, with one :class:`RuntimeWarning`, and the callback
path is used instead when the extension lacks the handlers, when the XLA FFI
API version of the installed jaxlib differs from the one the handlers were
built for, or when jax rejects the target.

The CUDA handler (the staging route: async copy and stream write into pinned
host-mapped memory, a Rust poller pushes; ``rust/xla_ffi/README.md``) is
registered only when a CUDA backend exists, ``NLSQ_FFI_CUDA=1`` is set, and the
driver loads with stream memory operations (else one warning, counted as
``cuda_fallback``). It is not yet measured on a GPU, so on a GPU the default
backend stays ``"callback"`` until it is.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

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
    """XLA FFI API version of the installed jaxlib, read from its C header.

    Returns
    -------
    tuple of int or None
        ``(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR)``, or ``None`` when the
        header is missing or does not define them.
    """
    import jax.ffi

    try:
        text = (Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "c_api.h").read_text()
    except OSError:
        return None
    found = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"#define\s+XLA_FFI_API_(MAJOR|MINOR)\s+(\d+)", text)
    }
    if "MAJOR" not in found or "MINOR" not in found:
        return None
    return found["MAJOR"], found["MINOR"]


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
"""Environment variable that must be ``1`` to register the (unverified) CUDA handler."""


def _cuda_backend_present() -> bool:
    import jax

    try:
        return bool(jax.devices("cuda"))
    except (RuntimeError, ValueError):
        return False


def _register_locked() -> Registration:
    import jax.ffi

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
        jax.ffi.register_ffi_target(TARGET, targets["cpu"], platform="cpu", api_version=1)
    except Exception as exc:  # jax raises several types here; all mean "refused"
        return Registration(
            ok=False,
            reason=f"jax refused the FFI target: {type(exc).__name__}: {exc}",
            built_api=built,
            runtime_api=runtime,
        )
    platforms = ["cpu"]
    cuda_note: str | None = None
    if not _cuda_backend_present():
        cuda_note = "no CUDA backend"
    elif os.environ.get(CUDA_OPT_IN) != "1":
        cuda_note = (
            f"the CUDA handler is not verified on a device yet; set {CUDA_OPT_IN}=1 to use it"
        )
    else:
        cuda_note = _ringlog.ffi_cuda_unavailable_reason()
        if cuda_note is not None:
            _note_cuda_fallback(cuda_note)
        else:
            try:
                jax.ffi.register_ffi_target(TARGET, targets["CUDA"], platform="CUDA", api_version=1)
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
    """The CUDA staging route was asked for but cannot run: warn once, count."""
    global _cuda_fallbacks
    _cuda_fallbacks += 1
    if _cuda_fallbacks == 1:
        warnings.warn(
            f"nlsq: the CUDA staging log route is unavailable, GPU records take the "
            f"callback route: {reason}",
            RuntimeWarning,
            stacklevel=4,
        )


def cuda_registered() -> bool:
    """Whether the CUDA staging handler is registered (never registers)."""
    state = _state
    return state is not None and "CUDA" in state.platforms


def wait_cuda_delivered(timeout: float | None = None) -> bool:
    """Wait until the CUDA route's poller pushed every staged record.

    ``True`` at once when the CUDA handler is not registered.
    """
    if not cuda_registered():
        return True
    from nlsq import _ringlog

    return bool(_ringlog.ffi_cuda_wait_delivered(timeout))


def register() -> Registration:
    """Register the FFI target once per process and report the outcome.

    On failure a single :class:`RuntimeWarning` names the reason; later calls
    return the same :class:`Registration` without warning again.

    Returns
    -------
    Registration
        ``ok`` tells whether backend ``"ffi"`` can be used.
    """
    global _state
    with _lock:
        if _state is None:
            _state = _register_locked()
            if not _state.ok:
                warnings.warn(
                    f"nlsq: native FFI logging unavailable, using the callback path: "
                    f"{_state.reason}",
                    RuntimeWarning,
                    stacklevel=3,
                )
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


_route_lock = threading.Lock()
_route_seen: tuple[int, tuple[int, ...]] | None = None


def sync_route(*, force: bool = False) -> None:
    """Install the active logger and its ring ids in the Rust route table.

    Cheap when nothing changed since the last call. Called when a routed
    record is traced and whenever :mod:`nlsq.utils._log_runtime` installs a
    logger.
    """
    global _route_seen
    from nlsq import _ringlog
    from nlsq.utils import _log_runtime

    active = _log_runtime._ACTIVE
    if active is None:
        return
    logger, tids = active
    seen = (int(logger.id), tuple(tids))
    with _route_lock:
        if seen == _route_seen and not force:
            return
        _ringlog.ffi_set_route(seen[0], list(seen[1]))
        _route_seen = seen


def stats() -> dict[str, int]:
    """Records the FFI handlers could not deliver, by reason.

    ``orphaned`` (no live logger / no route), ``unrouted`` (template key
    without a ring id), ``push_failed`` (the ring refused the values),
    ``unreportable``, and for CUDA ``staging_full``, ``staging_block_timeout``,
    ``enqueue_failed``, ``cuda_unavailable``, ``staging_setup_failed``, ``poller_failed``.
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


class FfiBackend:
    """The ``"ffi"`` route of :mod:`nlsq.utils._log_emit`.

    Constructing it registers the target; it raises when the target is
    unavailable, so ``configure(backend=None)`` falls back to the callback
    route (after the single warning of :func:`register`).
    """

    name = "ffi"

    def __init__(self) -> None:
        reg = register()
        if not reg.ok:
            raise RuntimeError(f"nlsq FFI target is not registered: {reg.reason}")
        if "CUDA" not in reg.platforms and _cuda_backend_present():
            # A program lowered for the GPU would find no CUDA target.
            raise RuntimeError(f"nlsq FFI target has no CUDA handler here: {reg.cuda_note}")

    def emit(self, key: int, packed: Any) -> None:
        """Stage the transfer of ``packed`` for template ``key`` (trace time)."""
        sync_route()
        emit_routed(key, packed)


def _install_listener() -> None:
    if _state is None or not _state.ok:
        return
    try:
        sync_route(force=True)
    except Exception as exc:  # never break configure(); say what was lost
        warnings.warn(
            f"nlsq: could not route FFI log records to the new logger: {exc}",
            RuntimeWarning,
            stacklevel=2,
        )


def _hook_into_async_logger() -> None:
    from nlsq.utils import _log_emit, _log_runtime

    _log_emit.register_backend("ffi", FfiBackend)
    _log_runtime.add_install_listener(_install_listener)


_hook_into_async_logger()
