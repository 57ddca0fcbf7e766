"""A warm ``curve_fit``: the same model and options again, new data of the same shape.

``curve_fit`` checks its arguments, chooses a route (method, shape bucket, Gram or
QR) and builds a ``Problem`` on every call: at n = 1e3 that host code took as long
as the compiled fit's own host side (``benches/bench_fit_overhead.py``).  For a
call that repeats an earlier one's choices, all of that comes out the same again;
only the data and the start are new.  Such a call is recognised by a
:class:`WarmKey`, made of what decides those choices: the model's code and the
values it captures (as the program cache compares them), the options, the data's
types, bucket and dtype, and which arguments are given.  It then runs from the
``Problem`` the earlier call built (:class:`WarmPlan`): its data padded into the
bucket and its ``x0`` replaced, nothing else.

Only the plainest calls have a key: NumPy float64 vectors of at most
:data:`MAX_ROWS` rows padded to a bucket, no bounds, ``jac``, ``full_output``,
``nan_policy`` or other keywords than the tolerances, ``sigma`` absent or a vector
(``verbose`` is part of the key: a logged fit's table is written by the same
``run_fit`` either way).  Anything unusual in a keyed call's values (non-finite data, a
zero ``sigma``, fewer rows than parameters, a start of another shape) sends it back
to the full path, which raises the error that names it; so the results and errors
are the full path's, which ``tests/test_warm.py`` checks call by call.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, NamedTuple

import numpy as np

from ._buckets import bucket_size, padded_block, padded_data
from ._cache import code_keyed
from ._problem import Problem, check_x0

#: Largest data (rows) a warm call takes: above it the host code is a small part of
#: a fit's time, and a plan should not keep shapes of large fits alive.
MAX_ROWS = 16384

#: Plans held, least recently made dropped first (each holds its model).
_HELD_PLANS = 64

#: The keywords a warm call may carry: traced leaves of the ``Problem`` (new values
#: of them never change a program), compared by value in the key.
_TOLERANCES = frozenset({"ftol", "xtol", "gtol", "max_nfev", "maxfev"})

_INF = float("inf")


class WarmKey(NamedTuple):
    """What decides a ``curve_fit`` call's route, for calls that may be warm."""

    model: Any  # nlsq._cache.CodeKeyed: the same code and captured values
    method: str | None
    rows_bucket: int
    n_p0: int | None  # None: no p0 (scipy's default start)
    weighted: bool  # a sigma vector
    absolute_sigma: bool
    check_finite: bool | None
    buckets: bool | None
    buckets_env: str | None
    tolerances: tuple
    verbose: int


class WarmPlan(NamedTuple):
    """The ``Problem`` of a full-path call (no data), ready for another call's data."""

    template: Problem

    def problem(self, p0, data) -> Problem | None:
        """The template with this call's data and start, or None (the full path decides)."""
        if p0 is None:
            x0 = self.template.x0
        else:
            x0 = np.atleast_1d(np.asarray(p0, dtype=float))  # as the full path converts it
            if x0.ndim > 1 or x0.shape != self.template.x0.shape:
                return None
            x0 = check_x0(x0)
        return self.template.with_start(x0, data)


_PLANS: dict[WarmKey, WarmPlan] = {}
_LOCK = threading.Lock()


def _plain_vector(a: Any) -> bool:
    return type(a) is np.ndarray and a.ndim == 1 and a.dtype == np.float64


def _unbounded(bounds: Any) -> bool:
    if type(bounds) is not tuple or len(bounds) != 2:
        return False
    low, high = bounds
    plain = type(low) in (float, int) and type(high) in (float, int)
    return plain and low == -_INF and high == _INF


def key_of(
    f, jac, method, xdata, ydata, p0, sigma, absolute_sigma, check_finite, bounds,
    full_output, nan_policy, verbose, buckets, kwargs,
) -> WarmKey | None:  # fmt: skip
    """The call's :class:`WarmKey`, or None when it can never be warm."""
    if jac is not None or full_output or nan_policy is not None or verbose not in (0, 1, 2):
        return None
    if not (_plain_vector(xdata) and _plain_vector(ydata)) or xdata.shape != ydata.shape:
        return None
    rows = ydata.shape[0]
    if rows > MAX_ROWS or not _unbounded(bounds):
        return None
    if sigma is not None and not (_plain_vector(sigma) and sigma.shape == ydata.shape):
        return None
    if p0 is None:
        n_p0 = None
    elif type(p0) in (list, tuple, np.ndarray):
        n_p0 = len(p0)
    else:
        return None
    tolerances: tuple = ()
    if kwargs:
        if not kwargs.keys() <= _TOLERANCES:
            return None
        tolerances = tuple(sorted(kwargs.items()))
    key = WarmKey(
        code_keyed(f), method, bucket_size(rows), n_p0, sigma is not None, bool(absolute_sigma),
        check_finite, buckets, os.environ.get("NLSQ_BUCKETS"), tolerances, verbose,
    )  # fmt: skip
    try:
        hash(key)
    except TypeError:  # an unhashable model or tolerance
        return None
    return key


def find(key: WarmKey | None) -> WarmPlan | None:
    return None if key is None else _PLANS.get(key)


def remember(key: WarmKey, problem: Problem) -> None:
    """Keep ``problem`` (without its data) for later calls with ``key``."""
    plan = WarmPlan(dataclasses.replace(problem, data=None))
    with _LOCK:
        _PLANS[key] = plan
        while len(_PLANS) > _HELD_PLANS:
            del _PLANS[next(iter(_PLANS))]


def forget_all() -> None:
    """Drop every plan (tests; a model whose globals changed is another key anyway)."""
    with _LOCK:
        _PLANS.clear()


def warm_data(xdata, ydata, sigma, n: int, check_finite: bool):
    """The padded data of a keyed call, or None where the full path must decide."""
    rows = ydata.shape[0]
    if rows < n or rows == 1:
        return None  # the full path's error (or scipy's broadcast of one row)
    if sigma is None:
        block = padded_block(xdata, ydata, None, 0)
    elif sigma.all():
        block = padded_block(xdata, ydata, 1.0 / sigma, 1)
    else:
        return None  # a zero sigma
    # Padded rows copy the last real one: the block's x and y rows are finite
    # exactly when the data are.
    if check_finite and not np.isfinite(block[:2]).all():
        return None
    return padded_data(block, rows)
