"""``jac_sparsity``: the Jacobian from one ``jvp`` (or one finite difference) per group of columns.

Two columns may share a group when no row has a nonzero in both (Curtis, Powell &
Reid 1974): perturbing all columns of a group at once then gives every nonzero of
those columns, each from the one row where it lives.  :func:`group_columns` finds
the groups greedily (as scipy's ``group_columns``, in natural column order, which
is what banded patterns want); a Broyden-tridiagonal pattern needs 3 groups for
any number of parameters.

The Jacobian is kept as its values at the pattern's nonzeros (``nnz``, rows in
CSR order): memory O(nnz), never ``m x n``.  Products gather: each row's (column's)
nonzeros are listed in a padded ``(m, max per row)`` (``(n, max per column)``) table
of positions in the values (ELLPACK layout), so ``J v`` and ``J^T u`` are a gather
and a row sum -- XLA's scatter-add (``segment_sum``) is serial on CPU and several
times slower.  A pattern whose padded tables would exceed ``4 nnz`` entries (a
few dense rows or columns) uses segment sums instead.

The compressed ``(n_groups, m)`` block comes from

* JAX autodiff: one ``jvp`` per group (``vmap`` over one ``jax.linearize``);
* ``'2-point'`` / ``'3-point'``: scipy's steps (``_fd_steps``), one (two)
  residual evaluations per group;
* the host path (NumPy models): the same differences on the host, the
  evaluations handed to ``workers`` (:mod:`nlsq._workers`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._residual import _fd_steps, _host_call, _recall_evaluation, _to_np


@dataclasses.dataclass(frozen=True)
class Sparsity:
    """A Jacobian's nonzero pattern (traced indices) and its column groups."""

    rows: Any  # (nnz,) int32, CSR order
    cols: Any  # (nnz,) int32
    groups: Any  # (n,) int32: the group of each column
    # ELLPACK tables of positions into the values (nnz: an appended zero), or None.
    row_entries: Any  # (m, max nonzeros per row) int32
    col_entries: Any  # (n, max nonzeros per column) int32
    n_groups: int  # static: the compressed Jacobian's number of columns
    m: int  # static

    @property
    def nnz(self) -> int:
        return self.rows.shape[-1]


jax.tree_util.register_dataclass(
    Sparsity,
    data_fields=["rows", "cols", "groups", "row_entries", "col_entries"],
    meta_fields=["n_groups", "m"],
)


def _ell_table(keys: np.ndarray, size: int, nnz: int) -> np.ndarray:
    """``(size, max count)`` positions of the entries with each key, padded with ``nnz``."""
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=size)
    width = int(counts.max()) if counts.size else 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(nnz) - np.repeat(starts, counts)
    table = np.full((size, width), nnz, dtype=np.int32)
    table[keys[order], slot] = order
    return table


def group_columns(rows: np.ndarray, cols: np.ndarray, m: int, n: int) -> np.ndarray:
    """Greedy grouping: each column, in order, joins the first group it shares no row with."""
    order = np.argsort(cols, kind="stable")
    rows_by_col = np.split(rows[order], np.cumsum(np.bincount(cols, minlength=n))[:-1])
    groups = np.empty(n, dtype=np.int32)
    occupied = np.zeros((0, m), dtype=bool)  # rows already used, one line per group
    for j, col_rows in enumerate(rows_by_col):
        clash = occupied[:, col_rows].any(axis=1)
        free = np.flatnonzero(~clash)
        if free.size:
            g = int(free[0])
        else:
            g = occupied.shape[0]
            occupied = np.vstack([occupied, np.zeros((1, m), dtype=bool)])
        occupied[g, col_rows] = True
        groups[j] = g
    return groups


def prepare_sparsity(jac_sparsity, m: int | None, n: int) -> Sparsity:
    """scipy's ``check_jac_sparsity``: an array or ``scipy.sparse`` matrix of shape (m, n).

    ``m=None``: taken from the pattern, and checked against the residuals when the solver
    is traced (:func:`check_rows`): finding m here would trace the function on every call.
    """
    import scipy.sparse

    if scipy.sparse.issparse(jac_sparsity):
        shape = jac_sparsity.shape
        coo = scipy.sparse.coo_array(jac_sparsity)
        keep = coo.data != 0
        rows, cols = coo.row[keep], coo.col[keep]
    else:
        try:
            pattern = np.atleast_2d(np.asarray(jac_sparsity))
        except (TypeError, ValueError) as err:
            raise ValueError(
                "`jac_sparsity` must be an array_like or a scipy.sparse matrix."
            ) from err
        shape = pattern.shape
        rows, cols = np.nonzero(pattern) if pattern.ndim == 2 else (None, None)
    if len(shape) != 2 or shape[1] != n or (m is not None and shape[0] != m):
        expected = f"({'m' if m is None else m}, {n})"
        raise ValueError(
            f"`jac_sparsity` has wrong shape: expected {expected} (residuals, parameters), "
            f"got {shape}."
        )
    m = shape[0]
    # CSR order, duplicates merged: the order of the values nlsq returns as res.jac.
    flat = np.unique(np.asarray(rows, dtype=np.int64) * n + np.asarray(cols, dtype=np.int64))
    key = (m, n, hashlib.blake2b(flat.tobytes(), digest_size=16).digest())
    cached = _PREPARED.get(key)
    if cached is None:
        cached = _prepare(flat, m, n)
        if len(_PREPARED) >= _PREPARED_MAX:
            _PREPARED.pop(next(iter(_PREPARED)))
        _PREPARED[key] = cached
    return cached


# Grouping is a Python loop over the columns (~20 us each): a pattern used again (the
# same problem refitted) takes its prepared Sparsity from here, keyed by content.
_PREPARED: dict[tuple, Sparsity] = {}
_PREPARED_MAX = 16


def _prepare(flat: np.ndarray, m: int, n: int) -> Sparsity:
    rows, cols = (flat // n).astype(np.int32), (flat % n).astype(np.int32)
    groups = group_columns(rows, cols, m, n)
    n_groups = int(groups.max()) + 1 if n else 0
    nnz = rows.size
    row_counts, col_counts = np.bincount(rows, minlength=m), np.bincount(cols, minlength=n)
    padded = m * row_counts.max(initial=0) + n * col_counts.max(initial=0)
    row_entries = col_entries = None
    if padded <= 4 * nnz:
        row_entries = _ell_table(rows, m, nnz)
        col_entries = _ell_table(cols, n, nnz)
    return Sparsity(
        rows=rows,
        cols=cols,
        groups=groups,
        row_entries=row_entries,
        col_entries=col_entries,
        n_groups=n_groups,
        m=m,
    )


def check_rows(sparsity: Sparsity, m: int, n: int) -> None:
    """The pattern's rows against the residuals' count (at trace time)."""
    if sparsity.m != m:
        raise ValueError(
            f"`jac_sparsity` has wrong shape: expected {(m, n)} (residuals, parameters), "
            f"got {(sparsity.m, n)}."
        )


def group_seeds(sparsity: Sparsity, dtype):
    """``(n_groups, n)`` 0/1 rows: the columns of each group."""
    ids = jnp.arange(sparsity.n_groups, dtype=sparsity.groups.dtype)
    return (sparsity.groups[None, :] == ids[:, None]).astype(dtype)


def _gather(sparsity: Sparsity, compressed):
    """Each nonzero from its group's compressed column, ``compressed`` being (n_groups, m)."""
    return compressed[sparsity.groups[sparsity.cols], sparsity.rows]


def jacobian_values(problem, x):
    """The Jacobian's values at the pattern's nonzeros, as ``problem.jac_mode`` says."""
    sparsity = problem.sparsity
    seeds = group_seeds(sparsity, x.dtype)
    if problem.jac_mode == "host":
        return _host_values(problem, x)
    if problem.jac_mode in ("2-point", "3-point"):
        h, one_sided = _fd_steps(
            x, problem.lb, problem.ub, problem.jac_mode, problem.diff_step, jnp
        )
        f0 = problem.fun(x)
        f1 = jax.vmap(problem.fun)(x + seeds * h)
        rows, cols = sparsity.rows, sparsity.cols
        h_nz = h[cols]
        d1 = _gather(sparsity, f1) - f0[rows]
        if problem.jac_mode == "2-point":
            return d1 / h_nz
        f2 = jax.vmap(problem.fun)(x + seeds * jnp.where(one_sided, 2 * h, -h))
        d2 = _gather(sparsity, f2) - f0[rows]
        return jnp.where(one_sided[cols], (4 * d1 - d2) / (2 * h_nz), (d1 - d2) / (2 * h_nz))
    _, jvp = jax.linearize(problem.fun, x)
    return _gather(sparsity, jax.vmap(jvp)(seeds))


def _host_values(problem, x):
    """Grouped '2-point' differences of a NumPy residual, evaluated on the host."""
    residual = problem.residual
    fit_id, user_data = problem.data
    sparsity = problem.sparsity

    def cb(fid, x, data, lb, ub, diff_step, rows, cols, groups):
        from ._workers import workers_map

        x = np.asarray(x)
        d = _to_np(data)

        def fun(p):
            return np.asarray(residual.inner(p, d, xp=np), dtype=np.float64)

        h, _ = _fd_steps(x, np.asarray(lb), np.asarray(ub), "2-point", float(diff_step), np)
        f0 = _recall_evaluation(fid, x)
        if f0 is None:
            f0 = fun(x)
        groups = np.asarray(groups)
        points = [x + h * (groups == g) for g in range(sparsity.n_groups)]
        f1 = np.stack(list(workers_map(fid)(fun, points)))
        rows, cols = np.asarray(rows), np.asarray(cols)
        return (f1[groups[cols], rows] - f0[rows]) / h[cols]

    return _host_call(
        cb,
        (sparsity.nnz,),
        fit_id,
        x,
        user_data,
        problem.lb,
        problem.ub,
        problem.diff_step,
        sparsity.rows,
        sparsity.cols,
        sparsity.groups,
    )


def _padded(values, index):
    return jnp.concatenate([values, jnp.zeros((1,), values.dtype)]), jnp.concatenate(
        [index, jnp.zeros((1,), index.dtype)]
    )


def matvec(sparsity: Sparsity, values, v):
    """``J v`` from the values at the pattern."""
    if sparsity.row_entries is not None:
        vals, cols = _padded(values, sparsity.cols)
        entries = sparsity.row_entries
        return jnp.sum(vals[entries] * v[cols[entries]], axis=1)
    return jax.ops.segment_sum(
        values * v[sparsity.cols], sparsity.rows, num_segments=sparsity.m, indices_are_sorted=True
    )


def rmatvec(sparsity: Sparsity, values, u):
    """``J^T u`` from the values at the pattern."""
    if sparsity.col_entries is not None:
        vals, rows = _padded(values, sparsity.rows)
        entries = sparsity.col_entries
        return jnp.sum(vals[entries] * u[rows[entries]], axis=1)
    n = sparsity.groups.shape[-1]
    return jax.ops.segment_sum(values * u[sparsity.rows], sparsity.cols, num_segments=n)


def column_norms(sparsity: Sparsity, values):
    n = sparsity.groups.shape[-1]
    return jnp.sqrt(jax.ops.segment_sum(values * values, sparsity.cols, num_segments=n))


def to_scipy(sparsity: Sparsity, values, n: int):
    """The Jacobian as the ``scipy.sparse.csr_array`` scipy returns with ``jac_sparsity``."""
    import scipy.sparse

    rows, cols = np.asarray(sparsity.rows), np.asarray(sparsity.cols)
    # The nonzeros are in CSR order already: build it directly (no COO sort).
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=sparsity.m))])
    return scipy.sparse.csr_array(
        (np.asarray(values, dtype=np.float64), cols, indptr), shape=(sparsity.m, n)
    )
