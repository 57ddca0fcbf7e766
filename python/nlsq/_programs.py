"""Compiled solver programs kept on disk, keyed by what they compute.

Why: JAX's persistent compilation cache skips XLA, but its key is a hash of the
lowered program, so a fresh process still traces and lowers the solver before
it can look anything up: about 70 ms of the 100 ms a new shape bucket costs
with a warm cache (``benches/probe_compile_time.py``).  This store keys the
*compiled executable* by the inputs of the trace instead -- the model's code and
every value it reads, the solver's options and input shapes, nlsq's own source
and the versions and machine that compiled it -- so a warm process loads the
executable without tracing at all.

The key must name everything the program depends on, or a stale program would
return a wrong result.  So the rule is conservative: a value takes part only if
it has a stable description (:func:`describe`), and whenever something cannot
be described -- an object of a user class, a user module read through an
attribute, a ``functools.partial`` -- the key is None and the
fit takes JAX's normal path (trace, lower, persistent cache).  Functions are
described by their bytecode, constants, defaults, closure values
and the globals their code can read, recursively for user functions they call;
library functions and modules (jax, numpy, scipy, math, ...) by name, their
versions being part of :func:`_environment`; arrays (NumPy or JAX, captured as
constants) by their bytes, dtype and shape.

Storage: ``<cache dir>/programs/<sha256 of the key>.xla`` (the directory of the
persistent compilation cache in use, ``nlsq._cache``), each file a header
(magic, length, SHA-256 of the payload) and the serialized executable
(``jax.experimental.serialize_executable``).  A file is written under a
temporary name and renamed into place, so a reader sees a whole entry or none;
an entry that fails its checksum, its load or its first run is ignored (the fit
compiles) and replaced.  Only programs XLA compiled in this process are stored,
never one that JAX's persistent cache served (:func:`compile_program` says why).
The directory is kept under :data:`MAX_BYTES` by removing the entries least
recently used.  CPU programs only: on other backends nothing is stored
(the key would also need the accelerator's compute capability and driver, and
loading is unmeasured there).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import struct
import sys
import tempfile
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._cache_dir import resolve_cache_dir

__all__ = [
    "MAX_BYTES",
    "Unstable",
    "describe",
    "global_names",
    "load",
    "load_program",
    "program_key",
    "save",
    "compile_program",
    "discard",
    "store_program",
]

#: Bump when the file layout or the key's meaning changes.
FORMAT = 1
_MAGIC = b"NLSQPRG1"
_HEADER = struct.Struct("<8sQ32s")  # magic, payload length, SHA-256 of the payload
_SUFFIX = ".xla"

#: Upper bound on the directory's size; the least recently used entries go first.
MAX_BYTES = 256 << 20

#: Top-level packages whose modules and functions are described by name: what they
#: compute is fixed by their version, which :func:`_environment` records.
_LIBRARIES = frozenset(
    {"jax", "jaxlib", "numpy", "scipy", "math", "cmath", "operator", "functools", "builtins"}
)


#: What the store did in this process: ``loaded`` programs (no trace), ``stored``
#: programs (compiled here), ``missed`` look-ups that compiled, ``discarded``
#: loaded programs that failed their first run (``nlsq._cache.SolverJit``).  For tests and
#: ``python -m nlsq.info``; plain counters, updated under the GIL.
counts = {"loaded": 0, "stored": 0, "missed": 0, "discarded": 0}


class Unstable(Exception):
    """A value without a description that is stable across processes."""


def _library(module_name: str | None) -> bool:
    return bool(module_name) and module_name.partition(".")[0] in _LIBRARIES


def describe(value: Any, seen: frozenset[int] = frozenset()) -> Any:
    """A description of ``value`` made of str, bytes and tuples, equal in every process
    exactly when the value computes the same thing; raises :class:`Unstable`."""
    # Exact types only: a subclass (a NamedTuple, an IntEnum, a str subclass) may carry
    # methods the model calls, which no value describes.
    kind = type(value)
    if value is None or kind in (bool, int, float, complex, str, bytes):
        return (kind.__name__, repr(value))
    if kind in (tuple, list):
        return (kind.__name__, tuple(describe(v, seen) for v in value))
    if kind is frozenset:  # its iteration order varies between processes
        return ("frozenset", tuple(sorted((describe(v, seen) for v in value), key=repr)))
    if value is Ellipsis:
        return ("ellipsis",)
    if isinstance(value, types.CodeType):
        return _describe_code(value, seen)
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise Unstable("object array")
        digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        return ("array", array.dtype.str, array.shape, digest)
    if _is_device_array(value):
        # A captured constant: its value, dtype and weak type shape the program.
        if not value.is_fully_addressable:
            raise Unstable("an array spanning processes")
        return ("device array", value.weak_type, describe(np.asarray(value), seen))
    if isinstance(value, types.ModuleType):
        if _library(value.__name__):
            return ("module", value.__name__)
        raise Unstable(f"module {value.__name__}")
    if isinstance(value, types.FunctionType) and not _library(value.__module__):
        return _describe_function(value, seen)
    # Library callables and types (jnp.exp, np.float64, len): by name, when the name
    # leads back to this very object (an instance such as a functools.partial only
    # borrows its class's name, and its arguments would be lost).
    module = getattr(value, "__module__", None)
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if _library(module) and isinstance(name, str) and _named(module, name) is value:
        return ("library", module, name)
    raise Unstable(kind.__name__)


def _named(module: str, qualname: str) -> Any:
    """The object ``module.qualname`` names, or None."""
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def _is_device_array(value: Any) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.Array)


def _describe_function(fn: types.FunctionType, seen: frozenset[int]) -> Any:
    if id(fn) in seen:  # recursion: the function is being described already
        return ("recursive", fn.__qualname__)
    seen = seen | {id(fn)}
    code = fn.__code__
    try:
        cells = tuple(cell.cell_contents for cell in fn.__closure__ or ())
    except ValueError as err:  # an empty cell
        raise Unstable("empty closure cell") from err
    scope = fn.__globals__
    return (
        "function",
        _describe_code(code, seen),
        describe(cells, seen),
        describe(fn.__defaults__, seen),
        describe(tuple(sorted((fn.__kwdefaults__ or {}).items())), seen),
        tuple((name, describe(scope[name], seen)) for name in global_names(code) if name in scope),
    )


def _describe_code(code: types.CodeType, seen: frozenset[int]) -> tuple:
    """What ``code`` computes: its bytecode, constants (nested code included), names
    and signature -- not its file, name or line numbers, which change with where it
    was written (a notebook cell's file is new in every kernel) but not the result."""
    return (
        "code",
        code.co_code,
        describe(code.co_consts, seen),
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        getattr(code, "co_exceptiontable", b""),  # 3.11+: where exceptions go
    )


def global_names(code: types.CodeType) -> tuple[str, ...]:
    """The names ``code`` (and the code nested in it) may read as globals, sorted.

    Memoised per code object (a code object is immutable): a fit keys its model on
    every call (``nlsq._cache.code_keyed``), and walking the nested code each time
    cost more than the rest of the key.  The values are still read on every call.
    """
    names = _GLOBAL_NAMES.get(code)
    if names is None:
        names = tuple(sorted(_collect_names(code)))
        if len(_GLOBAL_NAMES) >= _GLOBAL_NAMES_MAX:
            _GLOBAL_NAMES.clear()
        _GLOBAL_NAMES[code] = names
    return names


_GLOBAL_NAMES: dict[types.CodeType, tuple[str, ...]] = {}
_GLOBAL_NAMES_MAX = 4096


def _collect_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _collect_names(const)
    return names


@functools.cache
def _source_digest() -> str:
    """SHA-256 of nlsq's own Python source: any change to the solver changes every key."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cpu_identity() -> str:
    """The CPU model and its instruction-set flags: XLA:CPU compiles for the host's
    features, so a program made on another machine (a shared home directory) must
    not be loaded here."""
    try:
        with open("/proc/cpuinfo") as info:
            text = info.read()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "cpu family", "model")
    first = text.split("\n\n", 1)[0]
    fields = [line for line in first.splitlines() if line.split(":")[0].strip() in wanted]
    return "\n".join(sorted(fields))


@functools.cache
def _environment() -> tuple:
    """Everything outside the call that shapes the program, fixed for the process."""
    import jax
    import jaxlib
    import scipy

    device = jax.devices()[0]
    return (
        FORMAT,
        _source_digest(),
        sys.version,
        jax.__version__,
        jaxlib.__version__,
        np.__version__,
        scipy.__version__,
        device.platform,
        device.device_kind,
        str(device.client.platform_version),
        os.environ.get("XLA_FLAGS", ""),
        _cpu_identity(),
    )


def _config() -> tuple:
    """JAX's settings at this call that tracing reads (scalars only), as a description."""
    import jax

    values = jax.config.values
    return tuple(
        (name, repr(value))
        for name, value in sorted(values.items())
        if isinstance(value, (bool, int, float, str, type(None)))
        and "cache" not in name  # where compiled programs are kept, not what they compute
    )


def program_key(solver: str, options: dict[str, Any], static: Any, leaves: list[Any]) -> str | None:
    """The store's key (hex SHA-256) for ``solver`` compiled with ``options`` on an input
    with static description ``static`` (see ``Problem.stored_description``) and ``leaves``;
    None when any part has no stable description, the backend is not the CPU, or the
    cache is off (``NLSQ_CACHE_DIR=off``)."""
    try:
        import jax

        if jax.default_backend() != "cpu" or program_dir() is None:
            return None
        parts = (
            _environment(),
            _config(),
            solver,
            describe(sorted(options.items())),
            describe(static),
            tuple(_leaf(leaf) for leaf in leaves),
        )
    except Unstable:
        return None
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _leaf(leaf: Any) -> tuple:
    if isinstance(leaf, (np.ndarray, np.generic)):
        return ("array", leaf.dtype.str, leaf.shape)
    if isinstance(leaf, (bool, int, float, complex)):  # weakly typed in JAX
        return ("python", type(leaf).__name__)
    raise Unstable(type(leaf).__name__)


def program_dir() -> Path | None:
    """``programs/`` inside the persistent compilation cache in use (nlsq's, or the
    user's own ``jax_compilation_cache_dir``); None when ``NLSQ_CACHE_DIR=off`` or
    no cache is in use."""
    import jax

    root = jax.config.jax_compilation_cache_dir
    if not root or resolve_cache_dir().path is None:
        return None
    return Path(root).absolute() / "programs"


def load(key: str) -> bytes | None:
    """The serialized executable stored under ``key``, or None (absent, partial, corrupt)."""
    directory = program_dir()
    if directory is None:
        return None
    path = directory / (key + _SUFFIX)
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    if len(blob) < _HEADER.size:
        return None
    magic, length, digest = _HEADER.unpack_from(blob)
    payload = blob[_HEADER.size :]
    if magic != _MAGIC or length != len(payload) or hashlib.sha256(payload).digest() != digest:
        return None
    try:
        os.utime(path)  # recently used: kept longest by _evict
    except OSError:
        pass
    return payload


def discard(key: str) -> None:
    """Remove the entry under ``key`` (it failed to run here)."""
    directory = program_dir()
    if directory is not None:
        _remove(directory / (key + _SUFFIX))
    counts["discarded"] += 1


def save(key: str, payload: bytes) -> bool:
    """Store ``payload`` under ``key`` (atomically); False if the directory is unusable."""
    directory = program_dir()
    if directory is None:
        return False
    header = _HEADER.pack(_MAGIC, len(payload), hashlib.sha256(payload).digest())
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(header)
                out.write(payload)
            os.replace(tmp, directory / (key + _SUFFIX))
        except BaseException:
            _remove(Path(tmp))
            raise
        _evict(directory, MAX_BYTES)
    except OSError:
        return False
    return True


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _evict(directory: Path, limit: int) -> None:
    """Remove the least recently used entries (and stale temporaries) past ``limit`` bytes."""
    entries = []
    for entry in os.scandir(directory):
        try:
            stat = entry.stat()
        except OSError:
            continue
        if entry.name.startswith(".tmp-"):
            # A writer that died mid-write; live writers rename within milliseconds.
            import time

            if time.time() - stat.st_mtime > 3600:
                _remove(Path(entry.path))
            continue
        if entry.name.endswith(_SUFFIX):
            entries.append((stat.st_mtime, stat.st_size, entry.path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        _remove(Path(path))
        total -= size


# --- Executables -------------------------------------------------------------


#: Custom calls a loaded program may make: :func:`load_program` prepares them
#: (``nlsq._jax_compat.prepare_lapack_kernels``).  Any other target is set up by
#: code that runs while JAX lowers (as LAPACK's is), so such programs are not stored.
_PREPARED_PREFIX = "lapack_"


def _custom_calls(hlo_text: str) -> set[str]:
    return set(re.findall(r'custom_call_target="([^"]+)"', hlo_text))


def _flat_outputs(count: int):
    import jax

    return jax.tree_util.tree_structure(tuple(range(count)))


def load_program(key: str, args: tuple, out_tree: Any = None):
    """The executable stored under ``key`` loaded for a call with ``args`` (the
    dynamic arguments), returning ``out_tree`` (default: a flat tuple), or None.

    Never raises: an entry that cannot be loaded (another jaxlib wrote it, a
    damaged file) is a miss, and the caller compiles (and replaces it).
    """
    payload = load(key)
    if payload is None:
        counts["missed"] += 1
        return None
    try:
        import jax
        from jax.experimental import serialize_executable

        from ._jax_compat import prepare_lapack_kernels

        prepare_lapack_kernels()  # see there: the program skipped JAX's lowering
        count, executable = struct.unpack_from("<I", payload)[0], payload[4:]
        out_tree = _flat_outputs(count) if out_tree is None else out_tree
        if out_tree.num_leaves != count:
            return None
        in_tree = jax.tree_util.tree_structure((args, {}))
        program = serialize_executable.deserialize_and_load(executable, in_tree, out_tree)
    except Exception:
        return None
    counts["loaded"] += 1
    return program


#: JAX's event for a program served by its persistent compilation cache.
_JAX_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_hits_by_thread: dict[int, int] = {}
_listening = threading.Lock()
_listener_registered = False


def _count_jax_cache_hit(name: str, **_: Any) -> None:
    if name == _JAX_CACHE_HIT:
        thread = threading.get_ident()
        _hits_by_thread[thread] = _hits_by_thread.get(thread, 0) + 1


def _jax_cache_hits_here() -> int:
    """JAX persistent-cache hits in this thread so far (the listener runs in the
    thread that compiles)."""
    global _listener_registered
    if not _listener_registered:
        with _listening:
            if not _listener_registered:
                import jax

                jax.monitoring.register_event_listener(_count_jax_cache_hit)
                _listener_registered = True
    return _hits_by_thread.get(threading.get_ident(), 0)


def compile_program(key: str, lower: Callable[[], Any], args: tuple, out_tree: Any = None) -> Any:
    """``lower().compile()``, stored under ``key`` when XLA compiled it here.

    A program that JAX's persistent cache served is not stored: an executable
    loaded that way serializes without some of its kernels (jaxlib 0.10: the next
    process fails with "Function ... not found"), so only fresh compilations
    enter the store.  The next cold compilation of that program stores it.
    """
    before = _jax_cache_hits_here()
    compiled = lower().compile()
    if _jax_cache_hits_here() == before:
        store_program(key, compiled, args, out_tree)
    return compiled


def store_program(key: str, compiled: Any, args: tuple, out_tree: Any = None) -> bool:
    """Store ``compiled`` (freshly compiled for a call with dynamic arguments ``args``)
    under ``key``; False when it is not storable (outputs other than ``out_tree``,
    which :func:`load_program` will be given, default a flat tuple; custom calls
    other than LAPACK's) or the write failed.  Never raises: storing is an
    optimisation of the next process."""
    try:
        import jax
        from jax.experimental import serialize_executable

        count = compiled.out_tree.num_leaves
        if compiled.out_tree != (_flat_outputs(count) if out_tree is None else out_tree):
            return False
        targets = _custom_calls(compiled.as_text())
        if not all(target.startswith(_PREPARED_PREFIX) for target in targets):
            return False  # a custom call whose run-time set-up a load would skip
        if compiled.in_tree != jax.tree_util.tree_structure((args, {})):
            return False
        executable, _, _ = serialize_executable.serialize(compiled)
        stored = save(key, struct.pack("<I", count) + executable)
    except Exception:
        return False
    counts["stored"] += stored
    return stored
