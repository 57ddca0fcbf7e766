"""``workers``: who evaluates the finite differences of a model that runs on the host.

scipy (>= 1.16) hands every finite-difference evaluation to ``workers(fun, iterable)``.
In nlsq only the host path (a NumPy model JAX cannot trace) evaluates finite
differences in Python; a JAX model's differences or ``jvp``s run inside the compiled
loop, where ``workers`` has nothing to do (accepted, no effect).

``workers`` is scipy's: a map-like callable (``multiprocessing.Pool.map``,
``concurrent.futures.Executor.map``...), used as given; or an int, the size of a
pool (``-1``: one per CPU; ``1``: plain ``map``).  Unlike scipy, whose int makes a
``multiprocessing.Pool`` (the function must then pickle), nlsq's int makes a
thread pool: the compiled loop calls back into this process, and NumPy releases
the GIL in its array work.

The callable travels host-side, under the fit's id (as ``callback`` does), so a new
pool never recompiles the loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_WORKERS: dict[int, Callable] = {}
_LOCK = threading.Lock()


def check_workers(workers) -> None:
    """scipy's accepted values: None, a map-like callable, or an int (-1 or >= 1)."""
    if workers is None or callable(workers):
        return
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise ValueError(
            f"`workers` must be None, an int (-1 or >= 1) or a map-like callable, got {workers!r}."
        )
    if workers == 0 or workers < -1:
        raise ValueError(f"`workers` must be -1 or a positive int, got {workers}.")


class WorkerPool:
    """``workers`` as a map-like callable for the length of one fit (``with`` block)."""

    def __init__(self, workers):
        check_workers(workers)
        self._executor = None
        if workers is None or workers == 1:
            self.map = map
        elif callable(workers):
            self.map = workers
        else:
            size = (os.cpu_count() or 1) if workers == -1 else workers
            self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="nlsq-fd")
            self.map = self._executor.map

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def register_workers(fit_id: int, map_: Callable) -> None:
    with _LOCK:
        _WORKERS[fit_id] = map_


def forget_workers(fit_id: int) -> None:
    with _LOCK:
        _WORKERS.pop(fit_id, None)


def workers_map(fit_id: int) -> Callable:
    """The fit's map-like callable (the builtin ``map`` when none was given)."""
    return _WORKERS.get(fit_id, map)
