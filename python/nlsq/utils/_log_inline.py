"""Effect-free staging of log rows, for computations whose caller waits on their results.

Why this exists
---------------
Any JAX effect in a jitted computation (the debug effect of a callback, the FFI
effect of ``ffi_call(has_side_effect=True)``) takes the call off JAX's C++ fast
dispatch path and adds runtime-token handling: measured on this project's CPU
machine, a jitted 10-iteration ``while_loop`` costs about 8 µs with no logging,
about 200 µs with one effectful FFI log call per iteration, and about 11 µs with
the primitive below. For ``curve_fit`` at small n that dispatch cost, not the
logging, was the whole verbose overhead.

The primitive ``nlsq_log_inline`` declares no effect, so the fast path stays.
It stays alive anyway:

* in the jaxpr, through a DCE rule that always keeps it (its only output is the
  side effect);
* in XLA, because it lowers to the routed FFI custom call with
  ``has_side_effect=True``, which XLA never removes, duplicates or hoists.

Gating is done by the handler, not by ``lax.cond``: a ``cond`` with no outputs and
no effects is dropped whole by JAX's DCE. Every call passes one row
``[keep, values...]`` and the Rust handler pushes the row only when ``keep`` is
non-zero; on CPU the operand is read in place, so a skipped row costs a function
call (~0.5 µs), no copy.

The price of having no effect: ``jax.effects_barrier()`` does not wait for these
rows. They are pushed while the computation runs, so they are all in the ring
once any of its results is ready. Use this route only where the caller blocks on
a result before flushing (the solvers do); user code gets the effectful routes of
:mod:`nlsq.utils.async_logger`. On CUDA (opt-in ``NLSQ_FFI_CUDA=1``) the rows are
staged by the GPU and pushed by a poller thread after the stream ran;
``async_logger.flush()`` waits for that poller too.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching, mlir

from nlsq.utils import _ffi_backend, _log_emit, _log_runtime

__all__ = ["available", "emit_row"]


@functools.cache
def _primitive() -> Any:
    from jax._src.interpreters import partial_eval as pe
    from jax.extend.core import Primitive

    prim = Primitive("nlsq_log_inline")
    prim.multiple_results = True

    def abstract_eval(packed: Any, **params: Any) -> list[Any]:
        return []

    def impl(packed: Any, **params: Any) -> list[Any]:
        # Eager use: stage the same custom call through a jitted wrapper.
        jax.jit(lambda r: prim.bind(r, **params))(packed)
        return []

    def keep_always(used_outputs: list[bool], eqn: Any) -> tuple[list[bool], Any]:
        return [True] * len(eqn.invars), eqn

    def batch(args: Any, dims: Any, **params: Any) -> tuple[list[Any], list[Any]]:
        (packed,), (dim,) = args, dims
        packed = jnp.moveaxis(packed, dim, 0)
        return prim.bind(packed.reshape(-1, packed.shape[-1]), **params), []

    def jvp(primals: Any, tangents: Any, **params: Any) -> tuple[list[Any], list[Any]]:
        # Logged values are observed, never differentiated.
        return prim.bind(*primals, **params), []

    prim.def_abstract_eval(abstract_eval)
    prim.def_impl(impl)
    pe.dce_rules[prim] = keep_always
    batching.primitive_batchers[prim] = batch
    ad.primitive_jvps[prim] = jvp
    lowering = jax.ffi.ffi_lowering(_ffi_backend.TARGET, has_side_effect=True)
    mlir.register_lowering(prim, lowering, platform="cpu")
    # The CUDA staging handler takes the same keep-flagged rows: the filter
    # runs in its poller, so verbose=1 reads no predicate on the host.
    mlir.register_lowering(prim, lowering, platform="cuda")
    return prim


def available() -> bool:
    """Whether rows can take this route: the FFI route is active and the device is a
    CPU, or a GPU with the CUDA staging handler registered (opt-in)."""
    if not _ffi_backend.available():
        return False
    backend = jax.default_backend()
    if backend != "cpu" and not (backend == "gpu" and _ffi_backend.cuda_registered()):
        return False
    return _log_emit.active_backend().name == "ffi"


def emit_row(key: int, keep: Any, values: list[Any]) -> None:
    """Stage the row ``values`` of template ``key``, pushed when ``keep`` is true.

    Parameters
    ----------
    key : int
        A template key from :func:`nlsq.utils._log_runtime.intern`.
    keep : bool or jax.Array
        Scalar predicate, evaluated on the device.
    values : list
        One real scalar per template field, in field order.
    """
    _log_runtime.ensure_registered(key)
    _ffi_backend.sync_route()
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    row = jnp.stack(
        [jnp.asarray(keep).astype(dtype)] + [jnp.asarray(v).astype(dtype) for v in values]
    )
    _primitive().bind(
        jax.lax.stop_gradient(row)[None, :], template_key=np.int64(key), rows=np.int64(1)
    )
