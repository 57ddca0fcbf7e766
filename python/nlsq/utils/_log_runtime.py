"""Process-wide state behind :mod:`nlsq.utils.async_logger`.

Invariants
----------
* A *template key* is a small int, stable for the life of the process: the index
  of the template text in the intern table.  Compiled XLA programs carry keys,
  never ring template ids, because a ring id belongs to one ``RingLogger`` and
  :func:`configure` may replace the logger after a program was compiled.
* ``_ACTIVE`` is one tuple ``(logger, tids)`` where ``tids[key]`` is the ring id
  of ``key`` in ``logger`` (``-1``: not registered there yet).  It is replaced as
  a whole, so a callback running on an XLA thread reads a consistent pair with
  one attribute load and never takes a lock.
* The ``push_*`` functions run on XLA's callback threads.  They push and return:
  no formatting, no I/O, and no exception ever leaves them (a failure is counted
  and reported once on stderr, the computation goes on).
"""

from __future__ import annotations

import atexit
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nlsq._ringlog import RingLogger

__all__ = [
    "add_install_listener",
    "callback_errors",
    "configure_logger",
    "current",
    "ensure_registered",
    "follow_stdout",
    "get_logger",
    "intern",
    "push_record",
    "push_rows",
    "push_values",
    "template_text",
]

_LOCK = threading.RLock()
_TEXTS: list[str] = []
_KEYS: dict[str, int] = {}
_OPTIONS: dict[str, Any] = {"sink": None, "capacity": 65536, "policy": "drop_new"}
_ACTIVE: tuple[RingLogger, list[int]] | None = None


class _Failures:
    """Count of callback failures; the first one is reported on stderr."""

    count = 0
    reported = False


def intern(text: str) -> int:
    """Return the stable key of ``text``, adding it to the table on first sight.

    Registration with the ring is deferred to :func:`ensure_registered` so that
    importing the module or building a template never starts the drain thread.
    """
    key = _KEYS.get(text)
    if key is not None:
        return key
    with _LOCK:
        key = _KEYS.get(text)
        if key is None:
            key = len(_TEXTS)
            _TEXTS.append(text)
            _KEYS[text] = key
        return key


def template_text(key: int) -> str:
    """The template text interned under ``key``."""
    return _TEXTS[key]


def _new_logger() -> RingLogger:
    from nlsq._ringlog import RingLogger

    return RingLogger(
        sink=_OPTIONS["sink"], capacity=_OPTIONS["capacity"], policy=_OPTIONS["policy"]
    )


def _active() -> tuple[RingLogger, list[int]]:
    active = _ACTIVE
    if active is not None:
        return active
    with _LOCK:
        if _ACTIVE is None:
            _install(_new_logger())
        assert _ACTIVE is not None
        return _ACTIVE


def _install(logger: RingLogger) -> None:
    """Make ``logger`` the active one, registering every template already used.

    Re-registering here (not lazily in the callback) keeps registration errors
    out of XLA's threads and keeps programs compiled earlier working.
    """
    global _ACTIVE
    previous = _ACTIVE
    if previous is None:
        # Registered after the first RingLogger exists, so that (atexit being
        # LIFO) this runs before the ring's own exit hook: records still queued
        # inside XLA reach the ring before it drains for the last time.
        atexit.register(_flush_at_exit)
    tids = [-1] * len(_TEXTS)
    if previous is not None:
        for key, tid in enumerate(previous[1]):
            if tid >= 0:
                tids[key] = logger.register(_TEXTS[key])
    _ACTIVE = (logger, tids)
    for listener in _INSTALL_LISTENERS:
        listener()


# Called (no arguments) after every _install; the native route re-reads current().
_INSTALL_LISTENERS: list[Callable[[], None]] = []


def add_install_listener(listener: Callable[[], None]) -> None:
    """Call ``listener()`` each time a logger becomes the active one."""
    if listener not in _INSTALL_LISTENERS:
        _INSTALL_LISTENERS.append(listener)


def current() -> tuple[RingLogger, list[int]] | None:
    """The active ``(logger, ring_ids)`` pair, or None before the first logger exists.

    ``ring_ids[key]`` is the ring id of template ``key`` (``-1``: not registered).
    """
    return _ACTIVE


def get_logger() -> RingLogger:
    """The process-wide ``RingLogger``, created on first use."""
    return _active()[0]


def ensure_registered(key: int) -> int:
    """Register template ``key`` with the active logger (once) and return its ring id.

    Raises
    ------
    ValueError
        The template text is not a valid ring template (the message names the
        position).
    """
    logger, tids = _active()
    if key < len(tids) and tids[key] >= 0:
        return tids[key]
    with _LOCK:
        logger, tids = _active()
        if key >= len(tids):
            tids.extend([-1] * (len(_TEXTS) - len(tids)))
        if tids[key] < 0:
            tids[key] = logger.register(_TEXTS[key])
        return tids[key]


def configure_logger(sink: Any, capacity: int, policy: str) -> RingLogger:
    """Replace the process-wide logger; the old one is flushed and closed.

    The new logger is built first so that a bad argument leaves the current
    logger in place.
    """
    global _OPTIONS
    with _LOCK:
        options = {"sink": sink, "capacity": capacity, "policy": policy}
        from nlsq._ringlog import RingLogger

        logger = RingLogger(sink=sink, capacity=capacity, policy=policy)
        previous = _ACTIVE
        _OPTIONS = options
        if previous is None:
            _install(logger)
            return logger
        _install(logger)
        try:
            previous[0].flush()
            previous[0].close()
        except Exception as exc:  # a closed or broken logger must not block the switch
            _failed(exc)
        return logger


def callback_errors() -> int:
    """How many pushes failed (raised) since the process started."""
    return _Failures.count


def _failed(exc: BaseException) -> None:
    _Failures.count += 1
    if _Failures.reported:
        return
    _Failures.reported = True
    try:
        sys.stderr.write(
            "nlsq.utils.async_logger: a log record could not be pushed "
            f"({type(exc).__name__}: {exc}); the computation continues and further "
            "failures are only counted in async_logger.stats()['callback_errors']\n"
        )
    except Exception:  # noqa: S110 - stderr itself may be gone; the count remains
        pass


def _as_f64(buf: np.ndarray) -> np.ndarray:
    # The ring takes float64 or int64; float32 records (x64 off) are widened
    # here, on the host, because the device cannot make a float64 array then.
    if buf.dtype == np.float64 or buf.dtype == np.int64:
        return buf
    return buf.astype(np.float64)


def push_record(key: int, buf: np.ndarray) -> None:
    """Host side of one logged record: one ``push_array``, never raises."""
    try:
        logger, tids = _ACTIVE  # type: ignore[misc]
        logger.push_array(tids[key], _as_f64(buf))
    except Exception as exc:
        _failed(exc)


def push_rows(key: int, rows: np.ndarray) -> None:
    """Host side of a batch of records (vmap): column 0 is a keep flag.

    Each kept row pushes ``row[1:]`` (the batch index, then the values).
    """
    try:
        logger, tids = _ACTIVE  # type: ignore[misc]
        tid = tids[key]
        rows = _as_f64(rows)
        for row in rows:
            if row[0] != 0.0:
                logger.push_array(tid, row[1:])
    except Exception as exc:
        _failed(exc)


def follow_stdout() -> None:
    """With ``sink=None``, point the sink at the current ``sys.stdout`` (if that
    changed), so records pushed next land where ``print`` would put them now --
    also those pushed from inside a computation, whose thread cannot tell;
    never raises."""
    try:
        logger, _ = _active()
        logger.follow_stdout()
    except Exception as exc:  # the records still go to the previous target
        _failed(exc)


def push_values(key: int, values: list[int | float]) -> None:
    """Eager push of one record of Python numbers (no device involved);
    registers its template if needed; never raises.

    With ``sink=None`` the sink is first pointed at the current ``sys.stdout``
    (if that changed), so the line lands where ``print`` would put it now (a
    notebook cell, ``redirect_stdout``).
    """
    try:
        ensure_registered(key)
        logger, tids = _active()
        tid = tids[key]
    except Exception as exc:
        _failed(exc)
        return
    follow_stdout()
    try:
        logger.push(tid, *values)
    except Exception as exc:
        _failed(exc)


def _flush_at_exit() -> None:
    if _ACTIVE is None:
        return
    try:
        import jax

        jax.effects_barrier()
        _ACTIVE[0].flush()
    except Exception:  # noqa: S110 - best effort during interpreter teardown
        pass
