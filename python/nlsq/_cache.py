"""Compile once: the persistent compilation cache and code-keyed model functions.

Persistent cache
----------------
The first fit of a process points JAX's persistent compilation cache at
:func:`cache_dir` (``${XDG_CACHE_HOME:-~/.cache}/nlsq``; ``NLSQ_CACHE_DIR=<dir>``
moves it, ``NLSQ_CACHE_DIR=off`` disables it), through JAX's public
configuration only, and never when the user already chose a cache directory.
A fresh process then loads the compiled solver instead of compiling it again.

Several processes may share the directory: JAX's file cache writes an entry
with a plain ``write_bytes`` (not atomic), and only locks its reads and writes
(``filelock``) when a size limit is set.  So we set one
(:data:`DEFAULT_MAX_BYTES`, unless the user set their own): every read and write
then holds the directory's lock file, no process reads a half-written entry,
and the directory cannot grow without bound (least recently used entries go).

Code-keyed functions
--------------------
The jitted solver is keyed (statically) by the model function.  A fresh
``lambda`` with the same code is a new object, so keying by identity would trace
and lower it again on every call.  :func:`code_keyed` wraps a function in an
object that compares equal to another wrapper when both functions have the same
code, closure values, defaults and referenced global values -- that is, when they
compute the same thing -- so the in-memory jit cache is hit as well.  Whenever
one of those parts cannot be hashed, the wrapper falls back to identity.
"""

from __future__ import annotations

import os
import threading
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import _programs
from ._cache_dir import resolve_cache_dir
from ._jax_compat import jit_cache_size
from ._kernel import kernels_off, traced_kernels
from ._map_guard import after_new_program, clearings
from ._programs import global_names

__all__ = ["DEFAULT_MAX_BYTES", "cache_dir", "code_keyed", "enable_persistent_cache"]

#: Size limit given to JAX's cache directory when the user has not set one (bytes).
DEFAULT_MAX_BYTES = 1 << 30
#: Compilations faster than this are not written (JAX's default is 1 s, which
#: would skip exactly the sub-second solver compilations we want to keep).
MIN_COMPILE_SECS = 0.05

_LOCK = threading.Lock()
_DONE = False


def cache_dir() -> str | None:
    """The persistent compilation cache directory nlsq uses, or None when disabled.

    ``NLSQ_CACHE_DIR=off`` disables it; any other non-empty value is the directory;
    otherwise ``${XDG_CACHE_HOME:-~/.cache}/nlsq``.  Resolved by
    ``nlsq._cache_dir.resolve_cache_dir``, the one resolver ``python -m nlsq.info``
    also prints.
    """
    path = resolve_cache_dir().path
    return None if path is None else os.path.abspath(path)


def enable_persistent_cache() -> str | None:
    """Switch JAX's persistent cache on at :func:`cache_dir` (once per process).

    Returns the directory in use (the user's own if they set one), or None.
    A directory that cannot be created leaves the cache off; fits still work.
    """
    global _DONE
    if _DONE:
        return _in_use()
    with _LOCK:
        if _DONE:
            return _in_use()
        _DONE = True
        import jax

        if jax.config.jax_compilation_cache_dir:
            return _in_use()  # the user's choice wins
        path = cache_dir()
        if path is None:
            return None
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            return None
        if jax.config.jax_compilation_cache_max_size == -1 and _have_filelock():
            jax.config.update("jax_compilation_cache_max_size", DEFAULT_MAX_BYTES)
        if jax.config.jax_persistent_cache_min_compile_time_secs > MIN_COMPILE_SECS:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
        jax.config.update("jax_compilation_cache_dir", path)
        return path


def _in_use() -> str | None:
    import jax

    return jax.config.jax_compilation_cache_dir or None


def _have_filelock() -> bool:
    try:
        import filelock  # noqa: F401
    except ImportError:
        return False
    return True


def _function_key(fn: Callable) -> tuple | None:
    """What a plain Python function computes with, hashable; None if it cannot be."""
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType) or not isinstance(fn, types.FunctionType):
        return None
    try:
        cells = tuple(cell.cell_contents for cell in fn.__closure__ or ())
        kwdefaults = tuple(sorted((fn.__kwdefaults__ or {}).items()))
        globals_ = fn.__globals__
        used = tuple((n, globals_[n]) for n in global_names(code) if n in globals_)
        key = (code, cells, fn.__defaults__, kwdefaults, used)
        hash(key)
    except (TypeError, ValueError):  # an unhashable value, or an empty cell
        return None
    return key


class CodeKeyed:
    """A callable that compares by what its function computes (see the module doc)."""

    __slots__ = ("fn", "_key", "_hash")

    def __init__(self, fn: Callable):
        self.fn = fn
        self._key = _function_key(fn)
        self._hash = hash(self._key) if self._key is not None else id(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CodeKeyed):
            return NotImplemented
        if self._key is not None and other._key is not None:
            # Keys are taken when the wrapper is made: the same function after a
            # global it reads has changed is a different computation.
            return self._key == other._key
        return self.fn is other.fn

    @property
    def __name__(self) -> str:  # noqa: PLW3201 - the name messages show
        return getattr(self.fn, "__name__", repr(self.fn))

    def __repr__(self) -> str:
        return f"CodeKeyed({self.fn!r})"


def code_keyed(fn: Callable | None) -> Callable | None:
    """``fn`` wrapped so that equal code (and captured values) gives equal keys."""
    if fn is None or isinstance(fn, CodeKeyed):
        return fn
    return CodeKeyed(fn)


def _codegen_parts() -> int:
    """How many LLVM modules XLA's CPU backend splits a program's kernels into.

    XLA's default is 32 modules, compiled in parallel.  Each module has a fixed
    cost (an LLVM pipeline and target set-up), so beyond the cores this process
    may run on, more modules only add work: one per core, at most XLA's 32.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(32, cores))


#: XLA options for every solver program (measured with
#: ``benches/probe_compile_time.py`` and ``benches/bench_many_fits.py``):
#:
#: * ``xla_cpu_use_fusion_emitters=False``: the CPU backend's newer fusion
#:   emitters take about twice as long to compile this solver (many small fusions
#:   inside while loops) with no measurable gain at run time, so the solver uses
#:   the classic emitters.  XLA removed this option (jaxlib 0.11 and later have
#:   only the fusion emitters and refuse the name).
#: * ``xla_cpu_parallel_codegen_split_count``: one LLVM module per core
#:   (:func:`_codegen_parts`) instead of 32: less compile CPU time (about 10 % for
#:   a single fit's program, 28 % for ``curve_fit_many``'s on 2 cores), the same
#:   run time, and fewer memory mappings per loaded program (91 instead of 181 on
#:   2 cores; see ``nlsq._map_guard``).
#:
#: :func:`solver_options` applies only the options the running XLA accepts.
SOLVER_OPTIONS = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_parallel_codegen_split_count": _codegen_parts(),
}

#: Extra options for the single-fit solver (``nlsq._solve.solve``):
#: ``xla_backend_optimization_level=1`` (LLVM ``-O1`` instead of ``-O3``) cuts its
#: compile time by about 10 % with the same run time at n = 1e3 and n = 1e5 (its
#: time is in LAPACK calls and short fused loops).  Not for ``curve_fit_many``:
#: its batched program runs about 5 % slower at ``-O1`` (loops across the batch
#: that ``-O3`` vectorizes better).  Level 0 makes fits about 2.5x slower.
SINGLE_FIT_OPTIONS = {"xla_backend_optimization_level": 1}

_ACCEPTED: dict[tuple[str, Any], bool] = {}

#: Options whose presence the jaxlib version settles, so that no compilation is
#: spent asking XLA (tens of milliseconds in a fresh process, a tenth of a first
#: fit).  ``_PRESENT_BELOW``: ``name`` exists below ``(major, minor)`` and not from
#: it on.  ``_PRESENT_THROUGH``: ``name`` is known to exist up to and including
#: ``(major, minor)`` (the supported oldest jaxlib has it); a newer jaxlib is asked.
_PRESENT_BELOW = {"xla_cpu_use_fusion_emitters": (0, 11)}
_PRESENT_THROUGH = {
    "xla_backend_optimization_level": (0, 10),
    "xla_cpu_parallel_codegen_split_count": (0, 10),
}


def _jaxlib_version() -> tuple[int, ...]:
    import jaxlib

    parts = []
    for part in jaxlib.__version__.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _accepts(name: str, value: Any) -> bool:
    """Whether XLA accepts the compile option ``name=value`` (settled once per process).

    XLA checks option names when it builds the compile options, before compiling,
    and refuses an unknown name with "No such compile option"; there is no API
    listing the names.  Options in :data:`_PRESENT_BELOW` and (up to its version)
    :data:`_PRESENT_THROUGH` are settled by the jaxlib version; any other is tried
    once on a trivial program.
    """
    key = (name, value)
    found = _ACCEPTED.get(key)
    if found is None and name in _PRESENT_BELOW:
        found = _ACCEPTED[key] = _jaxlib_version() < _PRESENT_BELOW[name]
    if found is None and name in _PRESENT_THROUGH and _jaxlib_version() <= _PRESENT_THROUGH[name]:
        found = _ACCEPTED[key] = True
    if found is None:
        import jax
        import numpy as np

        try:
            jax.jit(lambda x: x, compiler_options={name: value}).lower(np.float32(0)).compile()
        except Exception as err:
            if "compile option" not in str(err):
                raise
            found = False
        else:
            found = True
        _ACCEPTED[key] = found
    return found


def solver_options(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """:data:`SOLVER_OPTIONS` and ``extra``, less those the running XLA does not know."""
    options = {**SOLVER_OPTIONS, **(extra or {})}
    return {name: value for name, value in options.items() if _accepts(name, value)}


class SolverJit:
    """``jax.jit(fn, compiler_options=solver_options(extra_options))``, made on first use.

    Each option is checked once per process (:func:`_accepts`: by the jaxlib
    version, or a trivial compilation), so every route to the program -- calling
    it, ``lower``, ``trace`` -- gets the same options, and an option this XLA does
    not know is left out instead of failing the solver's compilation.  ``options``
    are the ones in use; ``trace``/``lower`` are the jitted function's.

    ``describe``, when given, opens the second route of :mod:`nlsq._programs`: it
    returns a stable description of the call's static part (or None: not
    storable); ``outputs`` (given the same arguments) returns the treedef of what
    the program returns, when that is not a flat tuple of arrays.  A storable
    call runs a compiled program held here, keyed by its signature; a new
    signature loads the executable from the program store (no trace, no
    lowering) or lowers and compiles it and stores it.  Every other call
    goes through ``jax.jit`` as before.

    A program holding a single kernel (:mod:`nlsq._kernel`) that XLA refuses to
    compile is compiled again with none (``fn`` traced inside
    ``nlsq._kernel.kernels_off``, a second ``SolverJit``), and calls with that
    signature go there from then on: a kernel never fails a fit.
    """

    def __init__(
        self,
        fn: Callable,
        extra_options: dict[str, Any] | None = None,
        *,
        describe: Callable[..., Any] | None = None,
        outputs: Callable[..., Any] | None = None,
        **jit_kwargs,
    ):
        self._fn = fn
        self._extra_options = extra_options
        self._jit_kwargs = jit_kwargs
        self._jitted = None
        self.options: dict[str, Any] | None = None
        self._describe = describe
        self._outputs = outputs
        static = jit_kwargs.get("static_argnums", ())
        self._static = frozenset((static,) if isinstance(static, int) else static)
        # signature -> Compiled, or None: use jit (least recently used first out)
        self._programs: OrderedDict[tuple, Any] = OrderedDict()
        # program key -> (Compiled, the dynamic arguments' treedef it was made for)
        self._by_key: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._clearings = clearings()
        self._kernel_refused: set[tuple] = set()  # signatures XLA refused as one kernel
        self._without_kernels: SolverJit | None = None

    def _get(self):
        if self._jitted is None:
            import jax

            self.options = solver_options(self._extra_options)
            self._jitted = jax.jit(self._fn, compiler_options=self.options, **self._jit_kwargs)
        return self._jitted

    def __call__(self, *args: Any):
        if self._kernel_refused and self._signature(args) in self._kernel_refused:
            return self._in_thunks()(*args)
        if self._describe is not None:
            out = self._call_stored(args)
            if out is not None:
                return out
        import jax

        jitted = self._jitted or self._get()
        before = jit_cache_size(jitted)
        kernels = traced_kernels()
        try:
            out = jitted(*args)
        except jax.errors.JaxRuntimeError:
            if traced_kernels() == kernels:
                raise  # not a kernel XLA refused: the program's own error
            return self._refused(args)
        if jit_cache_size(jitted) > before:
            # A new program (compiled or loaded): its mappings count against
            # the process's limit (see nlsq._map_guard).
            after_new_program()
        return out

    def _call_stored(self, args: tuple):
        """``args`` run by the store route's program, or None (not storable: use jit)."""
        import jax

        self._drop_if_cleared()
        dynamic, leaves, signature = self._split(args)
        program = self._programs.get(signature, _UNSEEN)
        if program is not _UNSEEN:
            try:
                self._programs.move_to_end(signature)
            except KeyError:  # another thread's call just let it go; it runs all the same
                pass
            return None if program is None else program(*dynamic)
        key = self._key(args, leaves)
        if key is None:
            self._remember(signature, None)
            return None
        held = self._by_key.get(key)
        if held is not None:
            # The same program for another signature: a fresh closure over arrays
            # (compared by identity in the signature, by value in the key).
            program = _Rebound(*held)
            self._remember(signature, program)
            return program(*dynamic)
        out_tree = None if self._outputs is None else self._outputs(*args)
        loaded = self._load_checked(key, dynamic, out_tree)
        if loaded is None:
            lower = lambda: self._get().lower(*args)  # noqa: E731
            kernels = traced_kernels()
            try:
                program, out = _programs.compile_program(key, lower, dynamic, out_tree), None
            except jax.errors.JaxRuntimeError:
                if traced_kernels() == kernels:
                    raise
                return self._refused(args)
        else:
            program, out = loaded
        self._remember(signature, program)
        self._by_key[key] = (program, jax.tree_util.tree_structure(dynamic))
        while len(self._by_key) > _HELD_KEYS:
            self._by_key.popitem(last=False)
        after_new_program()
        return program(*dynamic) if out is None else out

    def _remember(self, signature: tuple, program: Any) -> None:
        """Hold ``program`` for ``signature``; at most :data:`_HELD_SIGNATURES` (a fresh
        closure over arrays is a new signature at every call: holding them all would
        keep every call's data alive)."""
        self._programs[signature] = program
        while len(self._programs) > _HELD_SIGNATURES:
            self._programs.popitem(last=False)

    def _split(self, args: tuple) -> tuple[tuple, list, tuple]:
        """``(dynamic arguments, their leaves, the call's signature)``."""
        import jax

        # A compiled program takes the dynamic arguments only (jit's static ones are
        # part of it, so of the signature).
        dynamic = tuple(a for i, a in enumerate(args) if i not in self._static)
        static = tuple(args[i] for i in sorted(self._static))
        leaves, treedef = jax.tree_util.tree_flatten(dynamic)
        signature = (treedef, static, jax.config.jax_enable_x64, *map(_leaf_signature, leaves))
        return dynamic, leaves, signature

    def _signature(self, args: tuple) -> tuple:
        return self._split(args)[2]

    def _refused(self, args: tuple) -> Any:
        """Run ``args`` without single kernels, as every later call of this signature."""
        self._kernel_refused.add(self._signature(args))
        return self._in_thunks()(*args)

    def _in_thunks(self) -> SolverJit:
        """This function's programs with no single kernel (see the class doc)."""
        if self._without_kernels is None:
            self._without_kernels = SolverJit(
                _without_kernels(self._fn),
                self._extra_options,
                describe=self._describe,
                outputs=self._outputs,
                **self._jit_kwargs,
            )
        return self._without_kernels

    def _key(self, args: tuple, leaves: list) -> str | None:
        description = self._describe(*args)
        if description is None:
            return None
        self._get()  # settles self.options
        name = f"{self._fn.__module__}.{self._fn.__qualname__}"
        return _programs.program_key(name, self.options or {}, description, leaves)

    @staticmethod
    def _load_checked(key: str, args: tuple, out_tree: Any):
        """``(program, its output for args)`` from the store, or None.

        The first run of a loaded program is waited for here: one that does not run
        in this process (an XLA error such as a missing kernel) is dropped from the
        store and the caller compiles instead, so a stored program can never fail
        a fit.  (A store-route program has no host callbacks: any run-time error of
        its own is the executable's.)
        """
        import jax

        program = _programs.load_program(key, args, out_tree)
        if program is None:
            return None
        try:
            return program, jax.block_until_ready(program(*args))
        except jax.errors.JaxRuntimeError:
            _programs.discard(key)
            return None

    def _drop_if_cleared(self) -> None:
        if self._clearings != clearings():  # nlsq._map_guard dropped every program
            self._programs.clear()
            self._by_key.clear()
            self._clearings = clearings()

    def _cache_size(self) -> int:
        """Programs held: jax.jit's cache and the store route's."""
        self._drop_if_cleared()
        held = len({id(getattr(p, "program", p)) for p in self._programs.values() if p is not None})
        return jit_cache_size(self._get()) + held

    def __getattr__(self, name: str):
        return getattr(self._get(), name)


_UNSEEN = object()

#: Signatures (and program keys) a ``SolverJit`` holds programs for, most recent kept.
_HELD_SIGNATURES = 256
_HELD_KEYS = 64


class _Rebound:
    """A compiled program called with the arguments of another signature of its key.

    The signatures differ only in static parts that describe the same computation
    (the program key says so), so the new call's leaves are put into the treedef
    the program was made for, which its call checks.
    """

    __slots__ = ("program", "treedef")

    def __init__(self, program: Any, treedef: Any):
        self.program = program
        self.treedef = treedef

    def __call__(self, *dynamic: Any) -> Any:
        import jax

        leaves = jax.tree_util.tree_leaves(dynamic)
        return self.program(*jax.tree_util.tree_unflatten(self.treedef, leaves))


def _without_kernels(fn: Callable) -> Callable:
    """``fn`` traced inside :func:`nlsq._kernel.kernels_off`; stored under its own name."""

    def traced_in_thunks(*args: Any) -> Any:
        with kernels_off():
            return fn(*args)

    traced_in_thunks.__module__ = fn.__module__
    traced_in_thunks.__qualname__ = f"{fn.__qualname__}.in_thunks"
    return traced_in_thunks


def _leaf_signature(leaf: Any) -> tuple:
    """What jit's cache keys a leaf on, for the leaves a storable call has."""
    return (type(leaf), getattr(leaf, "shape", None), getattr(leaf, "dtype", None))
