"""Chunked reduction (``chunk_size``): the one-shot QR's fit without the m x n Jacobian."""

from __future__ import annotations

import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nlsq import curve_fit
from nlsq._chunked import absorb, choose_chunk, default_chunk_rows
from nlsq.utils import async_logger

RNG = np.random.default_rng(20261127)
X = np.linspace(0.0, 5.0, 5003)  # not a multiple of the chunk sizes below
Y = 2.0 * np.exp(-0.7 * X) + 0.3 + 0.05 * RNG.standard_normal(X.size)
SIGMA = 0.05 * (1.0 + RNG.random(X.size))
Y_OUT = Y.copy()
Y_OUT[::97] += 3.0  # outliers for the robust losses


def exp_model(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def exp_jac(x, a, b, c):
    e = jnp.exp(-b * x)
    return jnp.stack([e, -a * x * e, jnp.ones_like(x)], axis=1)


def plane_model(x, a, b, c):
    return a * jnp.exp(-b * x[0]) + c * x[1]


CASES = {
    "plain": dict(),
    "sigma": dict(sigma=SIGMA),
    "scalar sigma absolute": dict(sigma=0.05, absolute_sigma=True),
    "soft_l1": dict(loss="soft_l1", f_scale=0.1, ydata=Y_OUT),
    "huber bounds jac-scale": dict(
        loss="huber", bounds=([0, 0, -1], [3, 3, 1]), x_scale="jac", ydata=Y_OUT
    ),
    "cauchy": dict(loss="cauchy", ydata=Y_OUT),
    "huber": dict(loss="huber", ydata=Y_OUT),
    "bounds active": dict(bounds=([0, 0.8, 0], [5, 5, 1])),
    "x_scale jac": dict(x_scale="jac"),
    "user jac": dict(jac=exp_jac),
    "user jac sigma": dict(jac=exp_jac, sigma=SIGMA),
}


# 1024: four full chunks and a remainder; 4999: one full chunk and a 4-row remainder.
PAIRS = [(name, 1024) for name in CASES] + [("plain", 4999), ("sigma", 4999)]


@pytest.mark.parametrize(("name", "chunk"), PAIRS)
def test_chunked_equals_unchunked(name, chunk):
    kw = dict(CASES[name])
    ydata = kw.pop("ydata", Y)
    ref = curve_fit(
        exp_model, X, ydata, p0=[1, 1, 0], full_output=True, chunk_size=0, method="trf", **kw
    )
    out = curve_fit(
        exp_model, X, ydata, p0=[1, 1, 0], full_output=True, chunk_size=chunk, method="trf", **kw
    )
    # Huber and Cauchy: an outlier row's loss weight is scipy's clamp sqrt(EPS) (its
    # exact value is 0 or negative), its rescaled residual ~1/sqrt(EPS) times the data,
    # so [J | f] has condition ~1e8 and any two orders of the QR (one-shot or chunked)
    # agree to ~1e-8, not 1e-10.
    rtol = 1e-7 if kw.get("loss") in ("huber", "cauchy") else 1e-10
    np.testing.assert_allclose(out[0], ref[0], rtol=rtol, atol=0)
    np.testing.assert_allclose(out[1], ref[1], rtol=1e-6 if rtol > 1e-10 else 1e-8, atol=0)
    assert out[2]["nfev"] == ref[2]["nfev"]
    assert (out[3], out[4]) == (ref[3], ref[4])
    np.testing.assert_allclose(out[2]["fvec"], ref[2]["fvec"], rtol=0, atol=1e3 * rtol)


LM_CASES = ("plain", "sigma", "scalar sigma absolute", "x_scale jac", "user jac sigma")


@pytest.mark.parametrize("name", LM_CASES)
@pytest.mark.parametrize("method", ["lm", None])  # None without bounds or loss: 'lm'
def test_chunked_lm_equals_unchunked_lm(name, method):
    """'lm' on chunked rows: the reduced problem of TRF, MINPACK's steps and statuses."""
    kw = dict(CASES[name])
    ref = curve_fit(
        exp_model, X, Y, p0=[1, 1, 0], full_output=True, chunk_size=0, method="lm", **kw
    )
    out = curve_fit(
        exp_model, X, Y, p0=[1, 1, 0], full_output=True, chunk_size=1024, method=method, **kw
    )
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-10, atol=0)
    np.testing.assert_allclose(out[1], ref[1], rtol=1e-8, atol=0)
    assert out[2]["nfev"] == ref[2]["nfev"]
    assert (out[3], out[4]) == (ref[3], ref[4])
    np.testing.assert_allclose(out[2]["fvec"], ref[2]["fvec"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["plain", "bounds active", "x_scale jac", "soft_l1"])
def test_chunked_dogbox_equals_unchunked_dogbox(name):
    kw = dict(CASES[name])
    ydata = kw.pop("ydata", Y)
    args = (exp_model, X, ydata)
    ref = curve_fit(*args, p0=[1, 1, 0], full_output=True, chunk_size=0, method="dogbox", **kw)
    out = curve_fit(*args, p0=[1, 1, 0], full_output=True, chunk_size=1024, method="dogbox", **kw)
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-10, atol=0)
    np.testing.assert_allclose(out[1], ref[1], rtol=1e-8, atol=0)
    assert out[2]["nfev"] == ref[2]["nfev"]
    assert (out[3], out[4]) == (ref[3], ref[4])


def test_chunked_lm_keeps_the_triangle_and_its_table():
    from nlsq._problem import make_problem
    from nlsq._residual import ModelResidual
    from nlsq._sharding import plan_rows, with_rows
    from nlsq._solve import solve, solve_by_qr, unpack

    with jax.enable_x64(True):
        x, y, t, kind, layout = plan_rows(X, Y, None, 0, 3, chunk_size=1000, mesh=None)
        problem = make_problem(ModelResidual(exp_model, None, kind), (x, y, t), [1.0, 1.0, 0.0],
                               jac_mode="auto", method="lm", want_pcov=True)  # fmt: skip
        out = unpack(*jax.device_get(solve(with_rows(problem, layout))), n=3)
        # The unchunked QR route (unchunked, this problem takes the Gram route, whose
        # jac is R as well: nlsq._solve._solve_by_gram).
        ref = unpack(*jax.device_get(solve_by_qr(problem)), n=3)
    # The state never holds the 5003 x 3 Jacobian: R (R^T R = J^T J) in its place.
    assert np.shape(out.jac) == (3, 3) and np.shape(ref.jac) == (X.size, 3)
    np.testing.assert_allclose(np.asarray(out.x), np.asarray(ref.x), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(out.grad), np.asarray(ref.grad), rtol=1e-6, atol=1e-10)
    # The verbose table is the unchunked 'lm' table.
    ref_tab, out_tab = _table(chunk_size=0, method="lm"), _table(chunk_size=512, method="lm")
    strip = re.compile(r"\d\.\d+e[-+]\d+")
    assert ref_tab.count("\n") > 5
    assert strip.sub("N", out_tab) == strip.sub("N", ref_tab)


def test_chunked_finite_differences_close():
    # Finite differences amplify the last-bit differences of the model evaluated on
    # chunks of another length (XLA vectorises them differently), so the Jacobians
    # agree to ~1e-8 and the fits to ~1e-9, not bit for bit.
    for mode in ("2-point", "3-point"):
        ref, _ = curve_fit(exp_model, X, Y, p0=[1, 1, 0], jac=mode, chunk_size=0, method="trf")
        out, _ = curve_fit(exp_model, X, Y, p0=[1, 1, 0], jac=mode, chunk_size=700, method="trf")
        np.testing.assert_allclose(out, ref, rtol=1e-8)


def test_two_predictors_scipy_layout():
    xdata = np.stack([X, np.cos(X)])  # (k, m): scipy's layout for several predictors
    y = plane_model(xdata, 1.5, 0.4, 0.7) + 0.01 * RNG.standard_normal(X.size)
    ref, pref = curve_fit(
        plane_model, xdata, np.asarray(y), p0=[1, 1, 1], chunk_size=0, method="trf"
    )
    out, pout = curve_fit(
        plane_model, xdata, np.asarray(y), p0=[1, 1, 1], chunk_size=333, method="trf"
    )
    np.testing.assert_allclose(out, ref, rtol=1e-10)
    np.testing.assert_allclose(pout, pref, rtol=1e-8)


def _table(method="trf", **kw):
    buf = io.StringIO()
    async_logger.configure(sink=buf)
    try:
        curve_fit(exp_model, X, Y, p0=[1, 1, 0], verbose=2, method=method, **kw)
        async_logger.flush()
    finally:
        async_logger.configure(sink=None)
    return buf.getvalue()


def test_verbose_table_same():
    ref, out = _table(chunk_size=0), _table(chunk_size=512)
    assert ref.count("\n") > 5
    # Identical rows up to the last printed digit of values that are rounding noise.
    strip = re.compile(r"\d\.\d+e[-+]\d+")
    assert strip.sub("N", out) == strip.sub("N", ref)
    assert out.splitlines()[0] == ref.splitlines()[0]


def test_chunked_solver_keeps_the_triangle_not_the_jacobian():
    from nlsq import least_squares
    from nlsq._problem import make_problem
    from nlsq._residual import ModelResidual
    from nlsq._sharding import plan_rows, with_rows
    from nlsq._solve import solve, unpack

    with jax.enable_x64(True):
        x, y, t, kind, layout = plan_rows(X, Y, None, 0, 3, chunk_size=1000, mesh=None)
        problem = make_problem(ModelResidual(exp_model, None, kind), (x, y, t), [1.0, 1.0, 0.0],
                               jac_mode="auto", want_pcov=True)  # fmt: skip
        out = unpack(*jax.device_get(solve(with_rows(problem, layout))), n=3)
        ref = least_squares(lambda p: exp_model(X, *p) - Y, np.asarray(out.x))
    R = np.asarray(out.jac)
    assert R.shape == (3, 3)
    # ref starts at the optimum, so its Jacobian is taken at (almost) the same point.
    np.testing.assert_allclose(R.T @ R, ref.jac.T @ ref.jac, rtol=1e-8)
    # least_squares has no row layout: its result keeps the full Jacobian.
    assert ref.jac.shape == (X.size, 3)


def test_absorb_matches_one_shot_qr():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((1000, 5))
    with jax.enable_x64(True):
        R = jnp.zeros((5, 5))
        g = jnp.zeros(4)
        for start in range(0, 1000, 128):
            block = jnp.asarray(A[start : start + 128])
            R, g = absorb(R, g, block[:, :4], block[:, 4])
        R_ref = np.linalg.qr(A, mode="r")
    # Equal up to the sign of each row.
    signs = np.sign(np.diag(R_ref)) * np.sign(np.diag(np.asarray(R)))
    np.testing.assert_allclose(np.asarray(R) * signs[:, None], R_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(g), A[:, :4].T @ A[:, 4], rtol=1e-10)


def test_chunk_choice():
    assert choose_chunk(1000, 3, None) is None  # small: one-shot as before
    rows = default_chunk_rows(3)
    assert choose_chunk(10 * rows, 3, None) == rows
    assert choose_chunk(10 * rows, 3, 0) is None
    assert choose_chunk(100, 3, 7) == 7
    assert default_chunk_rows(50) < default_chunk_rows(3)
    with pytest.raises(ValueError, match="chunk_size"):
        choose_chunk(100, 3, -1)
    with pytest.raises(ValueError, match="chunk_size"):
        curve_fit(exp_model, X, Y, p0=[1, 1, 0], chunk_size=2.5)


def test_covariance_sigma_cannot_be_chunked():
    cov = np.diag(SIGMA[:50] ** 2)
    with pytest.raises(ValueError, match="chunk_size"):
        curve_fit(exp_model, X[:50], Y[:50], p0=[1, 1, 0], sigma=cov, chunk_size=10)


def test_device_arrays_checked_on_the_device():
    with jax.enable_x64(True):
        x, y, s = jnp.asarray(X[::100]), jnp.asarray(Y[::100]), jnp.asarray(SIGMA[::100])
        bad_y = y.at[3].set(jnp.nan)
        zero_s = s.at[7].set(0.0)
    with pytest.raises(ValueError, match="ydata` must not contain infs or NaNs"):
        curve_fit(exp_model, x, bad_y, p0=[1, 1, 0])
    with pytest.raises(ValueError, match="sigma` must not contain zeros"):
        curve_fit(exp_model, x, y, p0=[1, 1, 0], sigma=zero_s)
    # A device sigma gives the host sigma's fit.
    ref, _ = curve_fit(exp_model, X[::100], Y[::100], p0=[1, 1, 0], sigma=SIGMA[::100])
    out, _ = curve_fit(exp_model, x, y, p0=[1, 1, 0], sigma=s)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
