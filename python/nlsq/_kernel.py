"""A small fit as ONE compiled kernel on CPU.

XLA:CPU runs a program as thunks: one per fusion, loop, copy or call, each
dispatched by its executor and many handed to its thread pool.  A small fit is
mostly that dispatch: at n = 1e3 rows the whole Levenberg-Marquardt loop computes
for tens of microseconds and spends a few hundred running its ~50 top-level and
~100 loop-body thunks.  XLA:CPU can instead compile a call as a single function
(the emitter its small-while-loop pass uses, :func:`nlsq._jax_compat.tag_single_kernel`),
which runs the same HLO with no dispatch between operations.  We ask for that
where it pays and can work:

* on the CPU backend, for problems of at most :data:`MAX_ROWS` rows (measured with
  ``benches/probe_single_kernel.py``: a kernel runs on one thread, and XLA refuses
  some larger ones);
* for programs with no custom call, sort, scatter, FFT or collective (the single
  function cannot call XLA's runtime for them): the callee's jaxpr is checked for
  the primitives in :data:`_NOT_IN_A_KERNEL` before the call is tagged.  The
  Levenberg-Marquardt Gram route (``nlsq._solve``) qualifies when it takes its
  small SVDs from the element-wise Jacobi routine (``nlsq._reduce``) instead of
  LAPACK.  A log record is a custom call, so a logged fit is not one kernel:
  its start and first steps are, keeping their table rows, which are logged
  right after it in one call (``nlsq._driver.run``); later steps, if any, run
  and log as in any fit.

A program XLA still refuses as one kernel (an operation its emitter does not
implement) is compiled again without it, by :class:`nlsq._cache.SolverJit`,
inside :func:`kernels_off`; a fit never fails for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ._jax_compat import primitive_names, tag_single_kernel

#: Largest number of rows fitted as one kernel: a bucket of the ladder
#: (``nlsq._buckets``).  At 2048 rows the kernel still ran in 0.70x the thunks'
#: time (``benches/probe_single_kernel.py``); at the next bucket, 4096, XLA:CPU's
#: emitter refused the exp model's kernel ("Fusion kind not implemented on CPU").
MAX_ROWS = 2048

#: Primitives a single kernel cannot hold: XLA lowers them to custom calls (LAPACK,
#: host callbacks, FFI, Pallas) or to the HLO operations XLA's small-loop pass
#: refuses (sort, scatter, FFT, collectives, infeed/outfeed).  Matched by name, and
#: by the prefixes in :data:`_NOT_IN_A_KERNEL_PREFIXES`.
_NOT_IN_A_KERNEL = frozenset(
    {
        "sort",
        "fft",
        "lu",
        "lu_pivots_to_permutation",
        "qr",
        "geqrf",
        "geqp3",
        "householder_product",
        "orgqr",
        "svd",
        "eig",
        "eigh",
        "cholesky",
        "triangular_solve",
        "schur",
        "hessenberg",
        "tridiagonal",
        "tridiagonal_solve",
        "top_k",
        "approx_top_k",
        "rng_bit_generator",
        "infeed",
        "outfeed",
        "axis_index",
        "pallas_call",
    }
)
_NOT_IN_A_KERNEL_PREFIXES = ("scatter", "ffi", "custom_call", "all_", "psum", "pmax", "pmin")
_NOT_IN_A_KERNEL_PARTS = ("callback", "collective", "ppermute", "reduce_scatter")

_OFF = contextvars.ContextVar("nlsq_single_kernel_off", default=False)

#: Calls tagged as one kernel so far, per thread (JAX traces on the calling thread):
#: ``SolverJit`` compares the count before and after a call to learn whether the
#: program that failed held a kernel.
_traced = threading.local()


def traced_kernels() -> int:
    """How many calls this thread has traced as one kernel."""
    return getattr(_traced, "count", 0)


@contextlib.contextmanager
def kernels_off() -> Iterator[None]:
    """Trace without single kernels inside the ``with`` block (this context only)."""
    token = _OFF.set(True)
    try:
        yield
    finally:
        _OFF.reset(token)


def fits_in_a_kernel(names: set[str]) -> bool:
    """Whether a callee with these primitives can run as one kernel."""
    for name in names:
        if name in _NOT_IN_A_KERNEL or name.startswith(_NOT_IN_A_KERNEL_PREFIXES):
            return False
        if any(part in name for part in _NOT_IN_A_KERNEL_PARTS):
            return False
    return True


def wanted(rows: int) -> bool:
    """Whether a program over ``rows`` rows should be one kernel here (see the module
    doc); ``NLSQ_SINGLE_KERNEL=0`` in the environment says never."""
    if _OFF.get() or rows > MAX_ROWS or os.environ.get("NLSQ_SINGLE_KERNEL") == "0":
        return False
    import jax

    return jax.default_backend() == "cpu"


_JITTED: dict[Callable, Any] = {}


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` traced inside a jitted program, as one kernel when it can be.

    ``fn`` is traced once (as a nested ``jax.jit``); its jaxpr decides: with a
    primitive of :data:`_NOT_IN_A_KERNEL` the call stays an ordinary one, which
    XLA inlines, so the program is exactly the one ``fn(*args)`` gives.
    """
    import jax

    jitted = _JITTED.get(fn)
    if jitted is None:
        jitted = _JITTED.setdefault(fn, jax.jit(fn))
    traced = jitted.trace(*args)
    outputs = jitted(*args)  # the trace above is reused, not repeated
    if not fits_in_a_kernel(primitive_names(traced.jaxpr)):
        return outputs
    _traced.count = traced_kernels() + 1
    return tag_single_kernel(outputs)
