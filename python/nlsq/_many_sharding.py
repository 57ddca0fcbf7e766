"""``curve_fit_many`` over a mesh: the batch axis sharded, every device fits its own fits.

The B fits are independent, so no fit needs another's rows: the stacked
``Problem`` (every traced leaf has a leading batch axis of length B) is split
over the devices of a mesh, and inside ``shard_map`` each device runs the
vmapped driver of :mod:`nlsq._many` over its own fits.  Each device's
``lax.while_loop`` ends when its own fits have stopped; the compiled program has
no collective at all (partitioned by GSPMD instead, the vmapped loop's condition
-- "is any fit still running?" -- would be reduced over the whole batch at every
iteration).

* **Where the mesh comes from**: ``ydata`` given as a ``(B, n)`` ``jax.Array``
  whose first axis is sharded over a mesh (its datasets then stay on their
  devices: weights and checks are computed there, and only B flags per check
  come to the host), or host data with ``mesh=`` (as ``curve_fit``'s ``mesh``:
  the batch is sharded over all the mesh's axes).
* **Uneven B** is padded with dummy fits, copies of the last fit: they stop when
  it stops (no extra iteration on their device) and are cut from the results.
* **Logging**: the verbose=2 rows of each fit (``_many``'s on-device history)
  stay on the device that ran the fit and come back as a batch-sharded array;
  reading it copies each device's shard to the host (no all-gather in the
  program), and the host writes one table per fit with its fit index.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._cache import SolverJit
from ._jax_compat import enable_x64
from ._sharding import _mesh_axes


def batch_mesh(ydata, mesh) -> tuple[Mesh, tuple[str, ...]] | None:
    """The mesh and axes the batch is sharded over: ``ydata``'s, else ``mesh``'s, else None."""
    found = _mesh_axes(ydata)
    if found is not None and not ydata.is_fully_addressable:
        raise ValueError(
            "curve_fit_many does not run across processes (jax.distributed); give each "
            "process its own datasets, or call curve_fit per dataset."
        )
    if mesh is None:
        return found
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    if found is not None and found[0] != mesh:
        raise ValueError("`mesh` differs from the mesh over which `ydata` is sharded.")
    return found or (mesh, tuple(mesh.axis_names))


def shard_count(mesh: Mesh, axes: tuple[str, ...]) -> int:
    return int(np.prod([mesh.shape[a] for a in axes]))


def _spec(axes: tuple[str, ...]) -> P:
    return P(axes if len(axes) > 1 else axes[0])


def _all_finite_per_dataset(a):
    return jnp.all(jnp.isfinite(a), axis=1)


def device_datasets(xdata, ydata, sigma, mesh: Mesh, axes: tuple[str, ...]):
    """``(X, Y, W)`` (B, n) float64 on the mesh for datasets given as a sharded ``ydata``.

    ``xdata``: a (B, n) array, or one (n,) array shared by every dataset; ``sigma``:
    None, a scalar, (n,) shared, or (B, n).  Raises naming the first bad dataset.
    """
    if ydata.ndim != 2:
        raise ValueError(f"sharded `ydata` must be a 2-D array (batch, n); got {ydata.shape}.")
    with enable_x64(True):  # float64 on the devices, as the host path's arrays
        return _device_datasets(xdata, ydata, sigma, mesh, axes)


def _device_datasets(xdata, ydata, sigma, mesh: Mesh, axes: tuple[str, ...]):
    batch, n = ydata.shape
    rows = NamedSharding(mesh, _spec(axes))

    def on_mesh(fn, *args):
        return jax.jit(fn, out_shardings=rows)(*args)

    Y = on_mesh(lambda y: y.astype(jnp.float64), ydata)
    if np.shape(xdata) == (batch, n):
        X = on_mesh(lambda x: jnp.asarray(x, jnp.float64), xdata)
    elif np.shape(xdata) == (n,):
        X = on_mesh(lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float64), (batch, n)), xdata)
    else:
        raise ValueError(
            f"`xdata` must have shape ({batch}, {n}) or ({n},) for `ydata` of shape "
            f"({batch}, {n}); got {np.shape(xdata)}."
        )
    if sigma is None:
        W = on_mesh(lambda: jnp.ones((batch, n)))
    elif np.ndim(sigma) <= 1 or np.shape(sigma) == (batch, n):
        if np.ndim(sigma) == 1 and np.shape(sigma) != (n,):
            raise ValueError(f"`sigma` must have shape ({n},) or ({batch}, {n}).")
        W = on_mesh(
            lambda s: jnp.broadcast_to(1.0 / jnp.asarray(s, jnp.float64), (batch, n)), sigma
        )
    else:
        raise ValueError(
            f"with sharded datasets `sigma` must be None, a scalar, ({n},) or ({batch}, {n}); "
            f"got shape {np.shape(sigma)}."
        )
    for what, arrays in (("`xdata`/`ydata` must not contain infs or NaNs", (X, Y)),
                         ("`sigma` must not contain zeros", (W,))):  # fmt: skip
        ok = np.ones(batch, bool)
        for a in arrays:
            ok &= np.asarray(jax.jit(_all_finite_per_dataset)(a))  # B flags to the host
        if not ok.all():
            raise ValueError(f"dataset {int(np.flatnonzero(~ok)[0])}: {what}.")
    return X, Y, W


def pad_batch(problem, batch: int, shards: int):
    """``problem`` with B padded to a multiple of ``shards`` by copies of the last fit."""
    extra = -batch % shards
    if not extra:
        return problem

    def pad(leaf):
        xp = jnp if isinstance(leaf, jax.Array) else np
        last = xp.repeat(leaf[-1:], extra, axis=0)
        return xp.concatenate([leaf, last], axis=0)

    return jax.tree_util.tree_map(pad, problem)


def place_batch(problem, mesh: Mesh, axes: tuple[str, ...]):
    """Every traced leaf on the mesh with its batch axis sharded (no copy when already there)."""
    sharding = NamedSharding(mesh, _spec(axes))

    def put(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        return jax.device_put(leaf, sharding)

    return jax.tree_util.tree_map(put, problem)


def _fits_on_mesh(fits: Callable, problem, history_len: int, mesh: Mesh, axes):
    spec = _spec(axes)
    return jax.shard_map(
        lambda local: fits(local, history_len),
        mesh=mesh,
        in_specs=(spec,),
        out_specs=spec,
        check_vma=False,
    )(problem)


#: ``(fits, problem, history_len, mesh, axes)``: ``fits(problem, history_len)`` (the
#: vmapped driver of ``_many``) run by every device on its own fits.
solve_on_mesh = SolverJit(_fits_on_mesh, static_argnums=(0, 2, 3, 4))


def sharded_datasets(ydata) -> bool:
    """Whether ``ydata`` is a ``jax.Array`` whose first (batch) axis is sharded over a mesh."""
    return _mesh_axes(ydata) is not None
