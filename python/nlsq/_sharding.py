"""Where the rows of a ``curve_fit`` problem live, and the reduced problem built where they are.

A :class:`RowLayout` is static metadata of the ``Problem``.  It says how the
residual rows are laid out: cut into chunks (:mod:`nlsq._chunked`), sharded over
the devices of a mesh, or both.  :func:`reduced_problem` builds the reduced
problem (``R``, ``Q^T f``, ``g``) from it, in place of the one-shot QR
(:func:`nlsq._linearization.linearize_at` wraps it in a ``Linearization``):

* one host, no mesh: chunked TSQR over all rows;
* a mesh: inside ``shard_map`` every device runs the chunked TSQR over its own
  rows; only the ``(n+1) x (n+1)`` triangles (``all_gather``) and the gradient
  (``psum``) cross devices; every device then factors the stacked triangles and
  so holds the same ``R`` and takes the same trust-region step (redundantly).

Trial residuals ``f(x)`` outside it are elementwise in the data, so XLA's
SPMD partitioner keeps them sharded where the data are; the cost is a ``psum``
of per-device sums.  No device holds the full residual vector or any part of the
Jacobian but its own rows.

Uneven lengths: a mesh given with host data is filled with rows of weight zero
(``1/sigma = 0``: zero residual, zero Jacobian row) up to a multiple of the
device count; results are cut back to the true rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _chunked
from ._chunked import RowData


@dataclass(frozen=True)
class RowLayout:
    """Static description of the rows: chunking and sharding (hashable, part of the spec).

    ``m``: rows the solver sees (true rows plus zero-weight padding); ``m_valid``:
    the true rows (``fun`` is cut back to them); ``chunk``: rows per chunk on each
    device, None for one block per device; ``mesh``/``axes``: the mesh and the mesh
    axes the rows are sharded over (None/() on one device).
    """

    m: int
    m_valid: int
    chunk: int | None
    rows: RowData
    mesh: Mesh | None = None
    axes: tuple[str, ...] = ()

    @property
    def n_shards(self) -> int:
        if self.mesh is None:
            return 1
        return int(np.prod([self.mesh.shape[a] for a in self.axes]))

    def specs(self, transform_present: bool):
        """PartitionSpecs of ``(xdata, ydata[, transform])`` for this layout."""
        ax = self.axes if len(self.axes) > 1 else self.axes[0]
        xspec = P(ax) if self.rows.x_axis == 0 else P(None, ax)
        specs = [xspec, P(ax)]
        if transform_present:
            specs.append(P(ax) if self.rows.t_rows else P())
        return tuple(specs)


def _row_axis(xdata, m: int) -> int | None:
    shape = np.shape(xdata)
    if len(shape) == 1 and shape[0] == m:
        return 0
    if len(shape) == 2:
        if shape[1] == m:
            return 1
        if shape[0] == m:
            return 0
    return None


def _mesh_axes(a) -> tuple[Mesh, tuple[str, ...]] | None:
    """The mesh and mesh axes over which the first axis of ``a`` is sharded, if any."""
    if not isinstance(a, jax.Array):
        return None
    sharding = a.sharding
    if not isinstance(sharding, NamedSharding) or len(sharding.spec) == 0:
        return None
    first = sharding.spec[0]
    if first is None:
        return None
    axes = tuple(first) if isinstance(first, tuple) else (first,)
    if int(np.prod([sharding.mesh.shape[ax] for ax in axes])) == 1:
        return None
    return sharding.mesh, axes


def plan_rows(
    xdata,
    ydata,
    transform,
    transform_kind: int,
    n_params: int,
    *,
    chunk_size: int | None,
    mesh: Mesh | None,
):
    """``(xdata, ydata, transform, transform_kind, layout)`` for a curve_fit problem.

    ``layout`` is None when the problem runs as before (small, unsharded, or a
    shape that has no row axis).  A mesh comes from ``ydata``'s sharding or from
    the ``mesh`` argument (then the data are padded and sharded here).
    """
    m = int(np.size(ydata))
    found = _mesh_axes(ydata)
    if found is None and mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
        found = (mesh, tuple(mesh.axis_names))
    elif found is not None and mesh is not None and found[0] != mesh:
        raise ValueError("`mesh` differs from the mesh over which `ydata` is sharded.")
    row_axis = _row_axis(xdata, m) if np.ndim(ydata) == 1 else None
    if row_axis is None or transform_kind == 2:
        if found is not None:
            raise ValueError(
                "Sharded fits need 1-D `ydata`, `xdata` of shape (m,), (m, k) or (k, m), "
                "and `sigma` given as a 1-D array or scalar (not a covariance matrix)."
            )
        if chunk_size:
            raise ValueError(
                "`chunk_size` needs 1-D `ydata`, `xdata` of shape (m,), (m, k) or (k, m), and "
                "`sigma` as a 1-D array or scalar (not a covariance matrix)."
            )
        return xdata, ydata, transform, transform_kind, None
    if found is None:
        chunk = _chunked.choose_chunk(m, n_params, chunk_size)
        if chunk is None:
            return xdata, ydata, transform, transform_kind, None
        t_rows = transform is not None and np.size(transform) == m and m > 1
        layout = RowLayout(m, m, chunk, RowData(row_axis, t_rows))
        return xdata, ydata, transform, transform_kind, layout

    mesh, axes = found
    shards = int(np.prod([mesh.shape[a] for a in axes]))
    m_pad = -(-m // shards) * shards
    if m_pad != m:
        if isinstance(ydata, jax.Array) and _mesh_axes(ydata) is not None:
            raise ValueError(f"sharded `ydata` of length {m} is not a multiple of {shards}.")
        xdata, ydata, transform = _pad_rows(xdata, ydata, transform, row_axis, m, m_pad)
        transform_kind = 1
    local = m_pad // shards
    chunk = _chunked.choose_chunk(local, n_params, chunk_size)
    t_rows = transform is not None and np.size(transform) == m_pad and m_pad > 1
    layout = RowLayout(m_pad, m, chunk, RowData(row_axis, t_rows), mesh, axes)
    xdata, ydata, transform = place(layout, xdata, ydata, transform)
    return xdata, ydata, transform, transform_kind, layout


def _pad_rows(xdata, ydata, transform, row_axis: int, m: int, m_pad: int):
    """Append ``m_pad - m`` rows of weight zero (xdata repeats its last row: finite model)."""
    extra = m_pad - m
    xdata = np.asarray(xdata, dtype=float)
    last = np.take(xdata, [m - 1], axis=row_axis)
    xdata = np.concatenate([xdata, np.repeat(last, extra, axis=row_axis)], axis=row_axis)
    ydata = np.concatenate([np.asarray(ydata, dtype=float), np.zeros(extra)])
    w = np.ones(m) if transform is None else np.broadcast_to(np.asarray(transform), (m,))
    transform = np.concatenate([w, np.zeros(extra)])
    return xdata, ydata, transform


def place(layout: RowLayout, xdata, ydata, transform):
    """Put each array on the mesh with its row axis sharded (no copy when already there)."""
    specs = layout.specs(transform is not None)
    arrays = [xdata, ydata] + ([transform] if transform is not None else [])
    placed = []
    for a, spec in zip(arrays, specs, strict=True):
        sharding = NamedSharding(layout.mesh, spec)
        if isinstance(a, jax.Array) and a.sharding == sharding:
            placed.append(a)
        elif isinstance(a, jax.Array) and not a.is_fully_addressable:
            raise ValueError(
                "All data arrays of a multi-process fit must be sharded alike over the mesh "
                f"(expected {sharding.spec}, got {a.sharding})."
            )
        else:
            placed.append(jax.device_put(a, sharding))
    if transform is None:
        placed.append(None)
    return tuple(placed)


def with_rows(problem, layout: RowLayout | None):
    """``problem`` with its row layout, and the mesh its data span (for the verbose rows)."""
    mesh = (
        layout.mesh if layout is not None and layout.mesh is not None else data_mesh(problem.data)
    )
    return dataclasses.replace(problem, layout=layout, mesh=mesh)


def reduced_problem(problem, x, f_true):
    """``(R, Q^T f, g)`` at ``x`` built from ``problem.layout``'s rows.

    ``R`` is the ``n x n`` triangle of the (robust-loss scaled) Jacobian (same
    ``J^T J``, column norms and singular values as the full Jacobian), ``Q^T f``
    its companion and ``g = J^T f`` the gradient: the ``m x n`` Jacobian is never
    formed.
    """
    layout = problem.layout
    jac_chunk = _chunked.chunk_jacobian(
        problem.residual, problem.jac_mode, problem.lb, problem.ub, problem.diff_step
    )

    def local_reduce(x, f_true, local_data):
        m_local = local_data[1].shape[0]
        chunk = min(layout.chunk or m_local, m_local)
        return _chunked.reduce_rows(
            x,
            f_true,
            local_data,
            layout.rows,
            m_local,
            chunk,
            problem.residual,
            jac_chunk,
            problem.loss,
            problem.f_scale,
        )

    if layout.mesh is None:
        R_aug, g = local_reduce(x, f_true, problem.data)
    else:
        xdata, ydata, transform = problem.data
        present = (xdata, ydata) + ((transform,) if transform is not None else ())
        axes = layout.axes

        def per_device(x, f_local, *local):
            local = tuple(local) + ((None,) if transform is None else ())
            R_aug, g = local_reduce(x, f_local, local)
            # TSQR's second level: stack every device's triangle and factor again.
            stacked = lax.all_gather(R_aug, axes, tiled=True)
            R_aug = jnp.linalg.qr(stacked, mode="r")[: R_aug.shape[0]]
            return R_aug, lax.psum(g, axes)

        R_aug, g = jax.shard_map(
            per_device,
            mesh=layout.mesh,
            in_specs=(P(), layout.specs(False)[1]) + layout.specs(transform is not None),
            out_specs=(P(), P()),
            check_vma=False,
        )(x, f_true, *present)
    n = x.shape[0]
    return R_aug[:n, :n], R_aug[:n, n], g


def data_mesh(data) -> Mesh | None:
    """The mesh over which some array of ``data`` is sharded (None when none is)."""
    for leaf in jax.tree_util.tree_leaves(data):
        found = _sharded_mesh(leaf)
        if found is not None:
            return found
    return None


def _sharded_mesh(a) -> Mesh | None:
    if not isinstance(a, jax.Array) or not isinstance(a.sharding, NamedSharding):
        return None
    if a.sharding.is_fully_replicated and a.is_fully_addressable:
        return None
    return a.sharding.mesh


def _keep_alive() -> None:
    pass


def log_row_on_mesh(verbose: int, mesh: Mesh):
    """``log_row`` for a fit whose data span ``mesh``: one row per iteration, by device 0.

    The row's scalars are replicated on every device; the log call runs inside a
    ``shard_map`` (each device emits with its own copy, nothing is gathered) and is
    gated to the first device of the mesh, which belongs to process 0.
    """
    from ._verbose import RowKind, make_log_row

    axes = tuple(mesh.axis_names)

    def first_device():
        return lax.axis_index(axes) == 0

    inner = make_log_row(verbose, gate=first_device)

    def log_row(row, kind: RowKind) -> None:
        # ``row`` holds replicated scalars only (an IterationRow or ClosingRow):
        # nothing per-row enters the shard_map.
        def body(row):
            inner(row, kind)
            if kind is RowKind.FIRST:
                # Outside the solver's while_loop an effect-free shard_map with no
                # outputs would be removed as dead code; a no-op callback (once per
                # fit) gives it an effect.
                jax.debug.callback(_keep_alive)
            return ()

        jax.shard_map(body, mesh=mesh, in_specs=P(), out_specs=(), check_vma=False)(row)

    return log_row
