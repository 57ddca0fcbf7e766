"""Keep the process below Linux's cap on memory mappings (``vm.max_map_count``).

Why: XLA:CPU keeps about three memory mappings per compiled kernel for as long
as the executable lives, and JAX's jit caches keep every executable.  One
solver program (a new model, bucket or option set) holds ~190 mappings with
jax 0.10 and ~270 with jax 0.11.  Past ``vm.max_map_count`` (65530 by default,
so about 240 programs) the next compilation or persistent-cache load fails
inside LLVM, and the C++ exception that should carry the error to Python
crashes the process (SIGSEGV in the unwinder) instead.  That is a JAX/XLA bug,
reproduced without nlsq (``benches/repro_many_programs.py``), but a notebook
that fits many models or data shapes reaches it through nlsq.

So after each new solver program (:func:`after_new_program`, called by
``nlsq._cache.SolverJit``) the process's mappings are counted; past
:data:`CLEAR_AT` of the limit, :func:`clear_programs` (``jax.clear_caches()``
and the programs ``nlsq._cache.SolverJit`` holds itself) drops every compiled
program and its mappings (each is loaded again from the persistent cache, or
compiled, on its next use), with one warning per process.  A fit never fails
for it, and nothing happens where ``/proc`` is missing.
"""

from __future__ import annotations

import threading
import warnings

__all__ = [
    "CLEAR_AT",
    "after_new_program",
    "clear_programs",
    "clearings",
    "mapping_count",
    "mapping_limit",
]

#: Share of ``vm.max_map_count`` past which JAX's caches are cleared.  High
#: enough that a test suite's own guard (``tests/conftest.py``, half the limit,
#: between test files) acts first; low enough to leave room for ~50 more
#: programs, since the count is only taken after each new one.
CLEAR_AT = 0.8

_LOCK = threading.Lock()
_warned = False
_clearings = 0


def clearings() -> int:
    """How many times :func:`clear_programs` ran: holders of compiled programs outside
    JAX's caches (``nlsq._cache.SolverJit``) drop theirs when it changes."""
    return _clearings


def clear_programs() -> None:
    """Drop every compiled program: JAX's caches and those nlsq holds itself."""
    global _clearings
    import jax

    with _LOCK:
        jax.clear_caches()
        _clearings += 1


def mapping_count() -> int | None:
    """How many memory mappings this process has (None where /proc is missing)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return maps.read().count(b"\n")
    except OSError:
        return None


def mapping_limit() -> int | None:
    """Linux's per-process limit on memory mappings (None where unknown)."""
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return None


def after_new_program() -> bool:
    """Clear JAX's compilation caches if the mappings passed :data:`CLEAR_AT`
    of the limit; returns whether it did.  Never raises."""
    global _warned
    try:
        limit = mapping_limit()
        count = mapping_count()
        if limit is None or count is None or count < CLEAR_AT * limit:
            return False
        clear_programs()
        with _LOCK:
            first, _warned = not _warned, True
        if first:
            warnings.warn(
                f"nlsq: this process holds {count} memory mappings of the {limit} Linux allows "
                "(vm.max_map_count). XLA:CPU keeps ~3 per compiled kernel and crashes past the "
                "limit, so nlsq cleared JAX's compilation caches (jax.clear_caches()); programs "
                "are loaded again from the persistent cache or recompiled when next used. "
                "`sysctl vm.max_map_count=262144` avoids this.",
                RuntimeWarning,
                stacklevel=4,
            )
        return True
    except Exception:  # a guard must never fail the fit that triggered it
        return False
