"""The one module through which nlsq touches JAX internals.

Everything here is something JAX offers no stable public API for, or an API whose
name or signature differs across the JAX versions nlsq supports (see the support
matrix in the README).  Each function says why it is needed and what it adapts.
Nothing else in nlsq imports ``jax._src``, writes a primitive rule table, names a
JAX effect or an XLA FFI API version.

Failure contract
----------------
An internal that is missing or has changed raises :class:`JaxInternalsChanged`
(a ``RuntimeError``) with a message naming it, *when the route that needs it is
set up*: the logging route table (:mod:`nlsq.utils._routes`) catches it, warns
once and falls back to a route built on public APIs (``jax.ffi``,
``jax.debug.callback``).  Nothing here is imported lazily behind a user's fit:
the fitting code itself needs only :func:`enable_x64`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

__all__ = [
    "FFI_HANDLER_API_VERSION",
    "JaxInternalsChanged",
    "debug_effect",
    "emit_host_callback",
    "enable_x64",
    "ffi_lowering",
    "jaxlib_ffi_api_version",
    "jit_cache_size",
    "prepare_lapack_kernels",
    "new_primitive",
    "register_always_live",
    "register_batching_rule",
    "register_ffi_target",
    "register_jvp_rule",
    "register_lowering",
    "tag_single_kernel",
]


class JaxInternalsChanged(RuntimeError):
    """A JAX internal that a logging route relies on is missing or has changed."""


# -- compiled programs held by a jitted function ------------------------------------


def jit_cache_size(jitted: Any) -> int:
    """How many compiled programs the ``jax.jit`` function ``jitted`` holds (-1: unknown).

    Why here: no public API counts them; ``_cache_size`` is a private method of
    JAX's jitted functions (present in every supported version, ~30 ns).  nlsq
    compares it before and after a solver call to notice a new program
    (:mod:`nlsq._map_guard`) without a cost per fit.
    """
    size = getattr(jitted, "_cache_size", None)
    return size() if size is not None else -1


def prepare_lapack_kernels() -> None:
    """Make the CPU LAPACK kernels that compiled programs call ready in this process.

    Why here: JAX's CPU LAPACK custom calls (``lapack_*_ffi``) find their kernels
    through a table that ``jaxlib``'s ``_lapack.initialize()`` fills, and JAX calls
    it only from the lowering rules of its linear-algebra primitives.  A program
    loaded from ``nlsq._programs`` skips lowering, so without this its first LAPACK
    call jumps through an empty table (a segmentation fault).  The public
    alternative, lowering a tiny ``jnp.linalg.qr``, costs ~0.2 s in a fresh
    process: more than the load saves.  Raises :class:`JaxInternalsChanged` when
    the function is gone (the caller then does not load programs).
    """
    try:
        from jaxlib import lapack

        initialize = lapack._lapack.initialize
    except (ImportError, AttributeError) as err:
        raise JaxInternalsChanged(f"jaxlib.lapack._lapack.initialize: {err}") from err
    initialize()


# -- scoped x64 ---------------------------------------------------------------------


def tag_single_kernel(outputs: Any) -> Any:
    """``outputs`` of a nested ``jax.jit`` call, its call marked to run as ONE kernel on CPU.

    Why here: XLA:CPU runs a program as a sequence of thunks (one per fusion,
    loop, copy...), dispatched one by one; a small fit's loop pays that dispatch
    at every operation of every iteration, far more than its arithmetic.  XLA's
    own small-while-loop pass (``xla_cpu_small_while_loop_byte_threshold``, set
    only through ``XLA_FLAGS`` for the whole process) wraps a small loop in a call
    marked with the frontend attribute ``xla_cpu_small_call``, which its thunk
    emitter compiles as a single function; ``inlineable="false"`` keeps the call
    past XLA's call inliner until then.  These attribute names are XLA:CPU's, not a
    public contract, so they live here; they are attached with JAX's public
    ``jax.experimental.xla_metadata.set_xla_metadata`` (the form that tags the op
    producing a value).  Other backends ignore them.  The callee must contain no
    custom call, sort, scatter, FFT or collective (XLA's pass excludes them, and
    the kernel would not link): ``nlsq._kernel`` checks that before tagging, and
    :class:`nlsq._cache.SolverJit` compiles the program again without the kernel
    if XLA still refuses it.
    """
    from jax.experimental.xla_metadata import set_xla_metadata

    return set_xla_metadata(outputs, inlineable="false", xla_cpu_small_call="true")


def primitive_names(closed_jaxpr: Any) -> set[str]:
    """Names of every primitive in ``closed_jaxpr`` and the jaxprs nested in its equations.

    Why here: walks ``Jaxpr.eqns`` and the jaxprs held in equation parameters (the
    bodies of ``jit``, ``while``, ``cond``, ``scan``, custom derivatives); the
    jaxpr types are public (``jax.extend.core``) but where sub-jaxprs sit in the
    parameters is not.
    """
    names: set[str] = set()
    pending = [getattr(closed_jaxpr, "jaxpr", closed_jaxpr)]
    while pending:
        jaxpr = pending.pop()
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for value in eqn.params.values():
                for item in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(item, "jaxpr", item)
                    if hasattr(inner, "eqns"):
                        pending.append(inner)
    return names


def enable_x64(enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """``jax.enable_x64(enabled)``: a thread-local, scoped x64 setting.

    Why here: the public ``jax.enable_x64`` context manager only exists in newer
    JAX; older releases (e.g. jax 0.6 on CPython 3.10) have the same thing as
    ``jax.experimental.enable_x64``.  Both are public; only the name moved.
    """
    scoped = getattr(jax, "enable_x64", None)
    if scoped is None:
        from jax.experimental import enable_x64 as scoped
    return scoped(enabled)


# -- custom primitives ---------------------------------------------------------------


def new_primitive(name: str, *, multiple_results: bool = True) -> Any:
    """A new JAX primitive.

    Why: the logging routes need operations that JAX keeps alive although they
    have no outputs, and that lower to a custom call or host callback of our
    choosing; ``jax.ffi.ffi_call`` / ``jax.debug.callback`` cannot express "no
    effect but never dead" (the inline route) nor "debug effect, no per-call
    ``device_put``" (the callback route).  ``jax.extend.core.Primitive`` is the
    documented extension point, but the rule tables below are not.
    """
    try:
        from jax.extend.core import Primitive
    except ImportError as exc:  # jax.extend moved or was removed
        raise JaxInternalsChanged(f"jax.extend.core.Primitive is unavailable: {exc}") from None
    prim = Primitive(name)
    prim.multiple_results = multiple_results
    return prim


def _partial_eval_module() -> Any:
    try:
        from jax.interpreters import partial_eval as pe

        pe.dce_rules  # noqa: B018 - presence check
        return pe
    except (ImportError, AttributeError):
        pass
    try:
        from jax._src.interpreters import partial_eval as pe

        pe.dce_rules  # noqa: B018 - presence check
        return pe
    except (ImportError, AttributeError) as exc:
        raise JaxInternalsChanged(f"JAX's DCE rule table is unavailable: {exc}") from None


_ALWAYS_LIVE: set[Any] = set()


def register_always_live(prim: Any) -> None:
    """Make JAX's dead-code elimination keep every equation of ``prim``.

    Why: an effect-free primitive with no outputs is removed by DCE; no public API
    marks one as live.  The rule table's calling convention changed: JAX <= 0.11
    calls ``rule(used_outputs, eqn)``, JAX 0.12 ``rule(used_outputs, live_inputs,
    eqn)``.  The rule below takes the equation as its last argument, so it serves
    both; a future convention that breaks it is caught by the route's set-up probe
    (:mod:`nlsq.utils._routes`), not by a user's fit.

    A ``shard_map`` or ``cond`` around such an equation (the rows of a sharded
    fit, :func:`nlsq._sharding.log_row_on_mesh`; the closing record chosen by
    the fit's status, :func:`nlsq._verbose.make_log_row`) is kept as well: see
    :func:`_keep_containers_with_live_bodies`.
    """
    pe = _partial_eval_module()

    def keep_always(*args: Any) -> tuple[list[bool], Any]:
        eqn = args[-1]
        return [True] * len(eqn.invars), eqn

    pe.dce_rules[prim] = keep_always
    _ALWAYS_LIVE.add(prim)
    _keep_containers_with_live_bodies(pe)


def _has_always_live(jaxpr: Any) -> bool:
    """Whether ``jaxpr`` (or a jaxpr nested in its equations) has an always-live equation."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr's jaxpr
    return any(
        eqn.primitive in _ALWAYS_LIVE or _nests_always_live(eqn)
        for eqn in getattr(jaxpr, "eqns", ())
    )


def _nests_always_live(eqn: Any) -> bool:
    """Whether a jaxpr among ``eqn``'s parameters (a body, a branch) has an always-live equation."""
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if (hasattr(v, "eqns") or hasattr(v, "jaxpr")) and _has_always_live(v):
                return True
    return False


_CONTAINER_RULES_WRAPPED = False


def _keep_containers_with_live_bodies(pe: Any) -> None:
    """Wrap the DCE rules of ``shard_map`` and ``cond`` so that they keep an equation
    whose body or branches hold an always-live equation.

    Why: both rules drop an equation with no used outputs and no effects without
    looking inside, so an effect-free emitter in a ``shard_map`` or ``cond`` with
    no outputs is removed.  JAX <= 0.11 never ran DCE inside a ``while_loop`` body,
    so only a ``shard_map`` outside the solver's loop was affected (and given an
    effect there); JAX 0.12 added a ``while_loop`` DCE rule and every row after the
    first was lost.  ``shard_map_p`` is exported only from ``jax._src.shard_map``;
    ``cond_p`` is public (``jax.lax.cond_p``).
    """
    global _CONTAINER_RULES_WRAPPED
    if _CONTAINER_RULES_WRAPPED:
        return
    try:
        from jax._src.shard_map import shard_map_p
    except ImportError as exc:
        raise JaxInternalsChanged(f"jax._src.shard_map.shard_map_p is unavailable: {exc}") from None
    for prim in (shard_map_p, jax.lax.cond_p):
        original = pe.dce_rules.get(prim)
        if original is None:
            raise JaxInternalsChanged(f"{prim} has no DCE rule")
        pe.dce_rules[prim] = _keeping_live_bodies(original)
    _CONTAINER_RULES_WRAPPED = True


def _keeping_live_bodies(original: Callable[..., Any]) -> Callable[..., Any]:
    def keep_live_bodies(*args: Any) -> tuple[list[bool], Any]:
        eqn = args[-1]
        used_inputs, new_eqn = original(*args)
        if new_eqn is None and _nests_always_live(eqn):
            return [True] * len(eqn.invars), eqn
        return used_inputs, new_eqn

    return keep_live_bodies


def register_batching_rule(prim: Any, rule: Callable[..., Any]) -> None:
    """``vmap`` rule of ``prim`` (no public registration API exists)."""
    try:
        from jax.interpreters import batching

        batching.primitive_batchers[prim] = rule
    except (ImportError, AttributeError) as exc:
        raise JaxInternalsChanged(f"JAX's batching rule table is unavailable: {exc}") from None


def register_jvp_rule(prim: Any, rule: Callable[..., Any]) -> None:
    """Forward-mode rule of ``prim``: logging observes primal values, never tangents."""
    try:
        from jax.interpreters import ad

        ad.primitive_jvps[prim] = rule
    except (ImportError, AttributeError) as exc:
        raise JaxInternalsChanged(f"JAX's JVP rule table is unavailable: {exc}") from None


def register_lowering(prim: Any, rule: Callable[..., Any], platform: str | None = None) -> None:
    """MLIR lowering of ``prim`` (``jax.interpreters.mlir.register_lowering``).

    Why: a custom primitive needs one, and JAX's only registration point is this
    semi-internal module.
    """
    try:
        from jax.interpreters import mlir
    except ImportError as exc:
        raise JaxInternalsChanged(f"jax.interpreters.mlir is unavailable: {exc}") from None
    if platform is None:
        mlir.register_lowering(prim, rule)
    else:
        mlir.register_lowering(prim, rule, platform=platform)


def ffi_lowering(target: str, *, has_side_effect: bool) -> Callable[..., Any]:
    """Lowering rule of a custom call to the FFI ``target`` (public ``jax.ffi``)."""
    return jax.ffi.ffi_lowering(target, has_side_effect=has_side_effect)


# -- effects -------------------------------------------------------------------------


def debug_effect() -> Any:
    """JAX's (unordered) debug effect, the one ``jax.debug.callback`` carries.

    Why: it is the only effect JAX already allows inside ``while_loop``, ``cond``,
    ``scan`` and ``remat`` and never eliminates, which is exactly what a log
    record needs.  It is exported only from ``jax._src.debugging``.
    """
    try:
        from jax._src.debugging import debug_effect as effect
    except ImportError as exc:
        raise JaxInternalsChanged(
            f"jax._src.debugging.debug_effect is unavailable: {exc}"
        ) from None
    return effect


# -- host callbacks ------------------------------------------------------------------


def callback_logger() -> logging.Logger:
    """The logger JAX's ``pure_callback``/``io_callback`` report a failing callback to
    (with its traceback); nlsq filters out the failures it raises on purpose."""
    return logging.getLogger("jax._src.callback")


def _emit_python_callback() -> Callable[..., Any]:
    try:
        from jax.interpreters import mlir

        return mlir.emit_python_callback
    except (ImportError, AttributeError):
        pass
    try:
        from jax._src.callback import emit_python_callback
    except ImportError as exc:
        raise JaxInternalsChanged(f"emit_python_callback is unavailable: {exc}") from None
    return emit_python_callback


def emit_host_callback(ctx: Any, host: Callable[..., Any], operands: list[Any]) -> None:
    """Lower a side-effecting host callback with no results and no token.

    Why: ``jax.debug.callback`` lowers to the same custom call but adds a
    ``device_put`` of its arguments and several context managers per call
    (about 100 µs per record on a 2-core CPU against 3 µs here).  The function
    is semi-internal; its ``returns_token`` keyword appeared in JAX 0.7, older
    releases return no token for ``token=None`` anyway.
    """
    emit = _emit_python_callback()
    kwargs: dict[str, Any] = {"has_side_effect": True}
    if "returns_token" in _parameters(emit):
        kwargs["returns_token"] = False
    emit(ctx, host, None, operands, ctx.avals_in, [], **kwargs)


def _parameters(fn: Callable[..., Any]) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()


# -- XLA FFI ------------------------------------------------------------------------

FFI_HANDLER_API_VERSION = 1
"""``api_version`` for ``jax.ffi.register_ffi_target``: 1 = typed XLA FFI handlers
(0 would be the legacy untyped custom-call ABI)."""


def jaxlib_ffi_api_version() -> tuple[int, int] | None:
    """``(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR)`` of the installed jaxlib, or None.

    Why: no Python API reports the FFI ABI version of the running jaxlib; its C
    header (shipped for building handlers, at ``jax.ffi.include_dir()``) defines it.
    """
    try:
        text = (Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "c_api.h").read_text()
    except (OSError, AttributeError):
        return None
    found = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"#define\s+XLA_FFI_API_(MAJOR|MINOR)\s+(\d+)", text)
    }
    if "MAJOR" not in found or "MINOR" not in found:
        return None
    return found["MAJOR"], found["MINOR"]


def register_ffi_target(name: str, capsule: Any, platform: str) -> None:
    """``jax.ffi.register_ffi_target`` for a typed handler (public API)."""
    jax.ffi.register_ffi_target(
        name, capsule, platform=platform, api_version=FFI_HANDLER_API_VERSION
    )
