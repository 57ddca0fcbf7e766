"""tr_solver='lsmr', jac_sparsity and workers against scipy itself (issue 11, item 6).

scipy is the reference: same problem, same options, scipy's result.  The problem is
the sparse Broyden tridiagonal system (scipy's own example for ``jac_sparsity``); one
size is used throughout so the compiled solvers are shared between tests.

Tolerances: the fits converge to the same root (cost ~1e-23); ``x`` agrees to 1e-9
absolute (entries are O(1)), a margin over LSMR's rounding: its Krylov recurrences
amplify last-bit differences of the products (scipy's NumPy vs XLA) but the outer
Newton iteration removes them.  Status codes, and the number of evaluations within
one, must agree wherever scipy's trajectory is the same.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
import scipy.sparse as sp
from nlsq import curve_fit, least_squares
from nlsq._jax_compat import enable_x64
from nlsq._lsmr import lsmr
from nlsq._sparsity import group_columns, prepare_sparsity
from nlsq._tr_lsmr import solve_trust_region_2d
from nlsq.utils import async_logger
from scipy.optimize._lsq.common import solve_trust_region_2d as scipy_tr_2d
from scipy.sparse.linalg import LinearOperator
from scipy.sparse.linalg import lsmr as scipy_lsmr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
from _broyden import broyden, broyden_jac, broyden_np, broyden_sparsity  # noqa: E402

N = 40
X0 = -np.ones(N)


def _agree(ref, res, x_atol=1e-9, nfev_slack=1):
    assert res.status == ref.status, (res.message, ref.message)
    np.testing.assert_allclose(res.x, ref.x, rtol=0, atol=x_atol)
    assert res.cost == pytest.approx(ref.cost, rel=1e-6, abs=1e-20)
    assert abs(res.nfev - ref.nfev) <= nfev_slack
    np.testing.assert_array_equal(res.active_mask, ref.active_mask)


CASES = [
    dict(method="trf"),
    dict(method="trf", bounds=(-2.0, -0.45), loss="soft_l1"),
    dict(method="dogbox"),
    dict(method="dogbox", bounds=(-1.5, -0.5), loss="huber", x_scale=2.0),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(map(str, kw.values())))
def test_matrix_free_lsmr_matches_scipy(kw):
    ref = so.least_squares(broyden_np, X0, jac=broyden_jac, tr_solver="lsmr", **kw)
    res = least_squares(broyden, X0, tr_solver="lsmr", **kw)
    _agree(ref, res)
    # Matrix-free: res.jac is an operator (scipy returns one for LinearOperator Jacobians);
    # its products are J's, row-scaled for the loss like scipy's dense J.
    assert isinstance(res.jac, LinearOperator)
    v = np.linspace(-1, 1, N)
    np.testing.assert_allclose(res.jac @ v, ref.jac @ v, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(res.jac.T @ v, ref.jac.T @ v, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        # With bounds, a loss, column-norm scaling (from the nonzeros) and LSMR options.
        dict(
            bounds=(-2.0, -0.45),
            loss="soft_l1",
            x_scale="jac",
            tr_options={"regularize": False, "atol": 1e-10, "btol": 1e-10, "maxiter": 30},
        ),
    ],
    ids=["trf", "trf-bounds-soft_l1-jac_scale-options"],
)
def test_jac_sparsity_matches_scipy(kw):
    ref = so.least_squares(broyden_np, X0, jac_sparsity=broyden_sparsity(N), **kw)
    res = least_squares(broyden, X0, jac_sparsity=broyden_sparsity(N), **kw)
    # scipy's Jacobian is '2-point' (1e-8 accurate), nlsq's one jvp per group (exact).
    _agree(ref, res, x_atol=1e-7)
    assert isinstance(res.jac, sp.csr_array) and res.jac.shape == (N, N)
    assert res.jac.nnz == 3 * N - 2
    np.testing.assert_allclose(res.jac.toarray(), ref.jac.toarray(), atol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [dict(jac="2-point", method="dogbox"), dict(jac="3-point", method="trf", bounds=(-1.5, -0.5))],
    ids=["2-point-dogbox", "3-point-trf-bounds"],
)
def test_jac_sparsity_finite_differences_match_scipy_grouped_differences(kw):
    kw = dict(kw, jac_sparsity=broyden_sparsity(N))
    ref = so.least_squares(broyden_np, X0, **kw)
    res = least_squares(broyden, X0, **kw)
    _agree(ref, res, x_atol=1e-9)
    np.testing.assert_allclose(res.jac.toarray(), ref.jac.toarray(), rtol=1e-6, atol=1e-9)


def test_jac_sparsity_host_model_and_workers():
    calls = []

    def counting_map(fn, points):
        points = list(points)
        calls.append(len(points))
        return map(fn, points)

    kw = dict(jac_sparsity=broyden_sparsity(N), workers=counting_map)
    ref = so.least_squares(broyden_np, X0, **kw)
    scipy_calls = list(calls)
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HostFallbackWarning: broyden_np is NumPy only
        res = least_squares(broyden_np, X0, **kw)
    _agree(ref, res, x_atol=1e-9)
    # One map call per Jacobian, as scipy; with 3 groups (scipy's randomly ordered
    # greedy grouping finds more, the natural order is optimal for a band).
    assert len(calls) == len(scipy_calls) == res.njev
    assert set(calls) == {3} and min(scipy_calls) >= 3


def test_workers_with_dense_host_differences():
    calls = []

    def counting_map(fn, points):
        calls.append(1)
        return map(fn, points)

    def fun(p):
        out = np.empty(2)
        out[:] = [10 * (p[1] - p[0] ** 2), 1 - p[0]]
        return out

    ref = so.least_squares(fun, [-1.2, 1.0], jac="2-point", workers=counting_map)
    n_scipy = len(calls)
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = least_squares(fun, [-1.2, 1.0], jac="2-point", workers=counting_map)
        pooled = least_squares(fun, [-1.2, 1.0], jac="2-point", workers=2)
    assert len(calls) == n_scipy == res.njev
    np.testing.assert_allclose(res.x, ref.x, atol=1e-9)
    np.testing.assert_array_equal(pooled.x, res.x)
    # The host path with 'lsmr': LSMR on the dense finite-difference Jacobian, as scipy.
    ref = so.least_squares(fun, [-1.2, 1.0], tr_solver="lsmr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = least_squares(fun, [-1.2, 1.0], jac="2-point", tr_solver="lsmr")
    _agree(ref, res, x_atol=1e-9)
    assert isinstance(res.jac, np.ndarray) and res.jac.shape == (2, 2)


@pytest.mark.parametrize("workers", [0, -2, 1.5, "two", True])
def test_bad_workers(workers):
    with pytest.raises(ValueError, match="workers"):
        least_squares(broyden, X0, workers=workers)


def test_workers_accepted_with_autodiff_without_effect():
    res = least_squares(broyden, X0, tr_solver="lsmr", method="dogbox", workers=4)
    ref = least_squares(broyden, X0, tr_solver="lsmr", method="dogbox")
    np.testing.assert_array_equal(res.x, ref.x)


def test_lm_follows_scipy():
    # scipy's MINPACK ignores tr_solver='lsmr' (same result as without it) ...
    ref = so.least_squares(broyden_np, X0, jac=broyden_jac, method="lm", tr_solver="lsmr")
    res = least_squares(broyden, X0, method="lm", tr_solver="lsmr")
    assert res.status == ref.status
    np.testing.assert_allclose(res.x, ref.x, atol=1e-9)
    # ... and refuses jac_sparsity, with this message.
    with pytest.raises(ValueError) as scipy_err:
        so.least_squares(broyden_np, X0, method="lm", jac_sparsity=broyden_sparsity(N))
    with pytest.raises(ValueError) as err:
        least_squares(broyden, X0, method="lm", jac_sparsity=broyden_sparsity(N))
    assert str(err.value) == str(scipy_err.value)


def test_argument_errors():
    with pytest.raises(ValueError, match=r"`jac_sparsity` has wrong shape: expected \(m, 40\)"):
        least_squares(broyden, X0, jac_sparsity=np.ones((N, N + 1)))
    with pytest.raises(ValueError, match=r"`jac_sparsity` has wrong shape: expected \(40, 40\)"):
        least_squares(broyden, X0, jac_sparsity=sp.eye(N + 1, N))
    with pytest.raises(ValueError, match="incompatible with `jac_sparsity`"):
        least_squares(broyden, X0, tr_solver="exact", jac_sparsity=broyden_sparsity(N))
    with pytest.raises(ValueError, match="`tr_solver` must be None, 'exact' or 'lsmr'"):
        least_squares(broyden, X0, tr_solver="cg")
    with pytest.raises(TypeError, match="unexpected keyword"):
        least_squares(broyden, X0, tr_solver="lsmr", tr_options={"tol": 1})
    with pytest.raises(ValueError, match="x_scale='jac'.*matrix-free"):
        least_squares(broyden, X0, tr_solver="lsmr", x_scale="jac")
    with pytest.warns(UserWarning, match="'regularize' .* not relevant for 'dogbox'"):
        least_squares(broyden, X0, method="dogbox", tr_solver="lsmr", tr_options={"regularize": 1})


def test_group_columns_is_valid_and_minimal_for_tridiagonal():
    sparsity = prepare_sparsity(broyden_sparsity(1000), 1000, 1000)
    assert sparsity.n_groups == 3
    rng = np.random.default_rng(0)
    dense = rng.random((60, 45)) < 0.08
    rows, cols = np.nonzero(dense)
    groups = group_columns(rows.astype(np.int32), cols.astype(np.int32), 60, 45)
    for g in range(groups.max() + 1):
        # No row has a nonzero in two columns of one group.
        assert dense[:, groups == g].sum(axis=1).max() <= 1


def test_lsmr_matches_scipy_lsmr():
    rng = np.random.default_rng(3)
    for m, n, damp, maxiter in [(12, 30, 0.5, None), (60, 20, 0.0, 7)]:
        A = rng.normal(size=(m, n)) * np.logspace(0, 1, n)
        b = rng.normal(size=m)
        x, istop, itn = scipy_lsmr(A, b, damp=damp, maxiter=maxiter)[:3]
        with enable_x64(True):
            solve = jax.jit(
                lambda A, b, n=n, damp=damp, maxiter=maxiter: lsmr(
                    lambda v: A @ v, lambda u: A.T @ u, b, n, damp=damp, maxiter=maxiter
                )
            )
            out = solve(A, b)
        assert (int(out.istop), int(out.itn)) == (istop, itn)
        np.testing.assert_allclose(out.x, x, rtol=1e-4, atol=1e-8 * np.abs(x).max())


def test_trust_region_2d_matches_scipy():
    rng = np.random.default_rng(5)
    with enable_x64(True):
        for _ in range(40):
            M = rng.normal(size=(2, 2))
            B = M @ M.T if rng.random() < 0.5 else M + M.T  # definite or indefinite
            g = rng.normal(size=2)
            Delta = 10 ** rng.uniform(-2, 1)
            p_ref, newton_ref = scipy_tr_2d(B, g, Delta)
            p, newton = jax.jit(solve_trust_region_2d)(B, g, Delta)
            assert bool(newton) == newton_ref
            q = lambda p, B=B, g=g: 0.5 * p @ B @ p + g @ p  # noqa: E731
            # Same minimum value (the minimizer itself is not unique when tied).
            assert q(np.asarray(p)) == pytest.approx(q(p_ref), rel=1e-9, abs=1e-12)


def test_curve_fit_lsmr_pcov_matches_scipy():
    x = np.linspace(0, 4, 60)
    y = 2.5 * np.exp(-1.3 * x) + 0.5 + 0.02 * np.sin(7 * x)

    def model(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    def model_np(x, a, b, c):
        return a * np.exp(-b * x) + c

    def jac(x, a, b, c):
        e = np.exp(-b * x)
        return np.stack([e, -a * x * e, np.ones_like(x)], axis=1)

    p_ref, c_ref = so.curve_fit(model_np, x, y, p0=[1, 1, 1], jac=jac, method="trf",
                                tr_solver="lsmr")  # fmt: skip
    p, c = curve_fit(model, x, y, p0=[1, 1, 1], tr_solver="lsmr")
    np.testing.assert_allclose(p, p_ref, rtol=1e-8)
    np.testing.assert_allclose(c, c_ref, rtol=1e-6)
    with pytest.raises(TypeError, match="does not take `tr_solver`"):
        curve_fit(model, x, y, p0=[1, 1, 1], method="lm", tr_solver="lsmr")


def test_verbose_table_with_lsmr_is_scipys(tmp_path):
    path = tmp_path / "fit.log"
    async_logger.configure(sink=str(path))
    try:
        res = least_squares(broyden, X0, tr_solver="lsmr", verbose=2)
    finally:
        async_logger.configure()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        so.least_squares(broyden_np, X0, jac=broyden_jac, tr_solver="lsmr", verbose=2)
    ours, ref = path.read_text().splitlines(), buf.getvalue().splitlines()
    assert len(ours) == len(ref) and ours[0] == ref[0] and ours[-2] == ref[-2] == res.message
    # Iteration and nfev columns identical, costs to the printed precision.
    assert [r[:30] for r in ours[1:-2]] == [r[:30] for r in ref[1:-2]]
    assert ours[-1].split(",")[0] == ref[-1].split(",")[0]
