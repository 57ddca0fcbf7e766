"""Type stubs for the ``nlsq._ringlog`` extension module (Rust, PyO3).

Importing the module registers two process hooks: an ``atexit`` handler that
flushes and closes every live logger, and ``os.register_at_fork`` handlers that
pause every drain thread around ``fork()`` and restart it in parent and child.
"""

import logging
import os
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, TypedDict

import numpy as np
import numpy.typing as npt

MAX_VALUES: int
"""Most values one record (and so one template) can carry."""

class _TextStream(Protocol):
    def write(self, s: str, /) -> object: ...

class RingLoggerStats(TypedDict):
    pushed: int
    written: int
    dropped: int
    sink_errors: int
    high_water: int
    capacity: int
    latency_ns_p50: int
    latency_ns_p99: int

class RingLogger:
    """Lock-free ring logger.

    ``push`` copies numbers into a bounded ring and returns; a Rust thread
    formats each record with its registered template and writes batches to
    the sink.

    Parameters
    ----------
    sink
        ``None`` (where ``print`` writes: the current ``sys.stdout``,
        re-resolved by :meth:`flush` and :meth:`follow_stdout` when it is
        another object; written through its descriptor only when it is
        ``sys.__stdout__`` with a working ``fileno()``, else through its
        ``write``), an ``int`` file descriptor (not
        closed by the logger), a path (opened for appending), a text stream
        (anything with ``write``; one call per batch), or a
        ``logging.Logger`` (one INFO record per line).
    capacity
        Ring size in records (1 to 2**25).
    policy
        What ``push`` does when the ring is full: ``"drop_new"`` (count the
        drop, write ``[nlsq] N log records dropped (ring full)`` later),
        ``"block"`` (wait with the GIL released) or ``"overwrite_oldest"``.
    """

    def __init__(
        self,
        sink: None | int | str | os.PathLike[str] | _TextStream | logging.Logger = None,
        capacity: int = 65536,
        policy: str = "drop_new",
    ) -> None: ...
    def register(self, template: str) -> int:
        """Register a format template; identical texts share one id.

        Raises ``ValueError`` naming the position of a bad or unsupported spec.
        """
    def push(self, tid: int, /, *values: int | float) -> None:
        """Queue one record (values in the template's field order).

        Raises ``ValueError`` (unknown id, wrong count, closed logger) or
        ``TypeError`` (a non-numeric value).
        """
    def push_array(
        self, tid: int, values: npt.NDArray[np.float64] | npt.NDArray[np.int64], /
    ) -> None:
        """Queue one record from a 1-D float64 or int64 array."""
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record pushed before the call is written.

        Returns ``False`` if ``timeout`` seconds pass first. With
        ``sink=None`` it first follows ``sys.stdout`` (:meth:`follow_stdout`).
        """
    def follow_stdout(self) -> bool:
        """With ``sink=None``: if ``sys.stdout`` is another object than when the
        sink was last resolved, write what is queued to the old one and send
        later records to the new one. Returns whether the sink changed (always
        ``False`` for an explicit sink).
        """
    def close(self) -> None:
        """Write everything queued, stop the drain thread, close the sink (idempotent)."""
    def stats(self) -> RingLoggerStats:
        """Counters and push-to-write latency percentiles."""
    def arity(self, tid: int) -> int:
        """Number of values template ``tid`` takes."""
    def field_names(self, tid: int) -> list[str]:
        """Field names of template ``tid``, in order."""
    @property
    def id(self) -> int:
        """Process-unique id (used by the native FFI path)."""
    @property
    def closed(self) -> bool: ...
    @property
    def policy(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    def __enter__(self) -> RingLogger: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

def render(template: str, values: Sequence[float]) -> str:
    """Format ``values`` with ``template`` as the drain would (a test helper).

    Raises ``ValueError`` for a bad template or a wrong number of values.
    """

def _close_all() -> None: ...
def _before_fork() -> None: ...
def _after_fork_parent() -> None: ...
def _after_fork_child() -> None: ...

# -- native logging path (crate nlsq-xla-ffi; see nlsq.utils._native) --

class _FfiStats(TypedDict):
    orphaned: int
    unrouted: int
    push_failed: int
    unreportable: int
    staging_full: int
    staging_block_timeout: int
    enqueue_failed: int
    cuda_unavailable: int
    staging_setup_failed: int
    poller_failed: int

def ffi_targets() -> dict[str, object]:
    """``{"cpu": capsule, "CUDA": capsule}``: XLA FFI handlers for
    ``jax.ffi.register_ffi_target(..., api_version=1)``. The CUDA staging
    handler is measured on an H200 (``benches/results/gpu-h200-gpu_check.md``)."""

def ffi_api_version() -> tuple[int, int]:
    """``(major, minor)`` of the XLA FFI C API the handlers were built for."""

def ffi_max_values() -> int:
    """Most values one FFI logging call may carry."""

def ffi_cuda_unavailable_reason() -> str | None:
    """``None`` when ``libcuda.so.1`` loads with the symbols the CUDA handler
    needs, stream memory operations included; else why not."""

def ffi_cuda_wait_delivered(timeout: float | None = None) -> bool:
    """Wait (GIL released) until every record the CUDA route staged before the
    call reached the ring logger; ``False`` on timeout."""

def ffi_cuda_last_failure() -> str | None:
    """The reason of the latest CUDA-route failure, or ``None``."""

def ffi_set_route(logger_id: int, tids: list[int]) -> None:
    """Route template key ``k`` to ring id ``tids[k]`` of logger ``logger_id``
    (negative: not registered). ``ValueError`` if no live logger has that id."""

def ffi_clear_route() -> None:
    """Remove the route; routed records are then counted as orphaned."""

def ffi_stats() -> _FfiStats:
    """Records the FFI handlers could not deliver, by reason."""

def ffi_layout() -> dict[str, int]:
    """Sizes and offsets of the Rust mirror of the C API structs (ABI test)."""
