"""``method='dogbox'`` against scipy's own dogbox: same inputs, scipy's result as the reference.

scipy gets the exact Jacobian (as nlsq computes it by autodiff), so both run the
same iteration; statuses, evaluation counts, ``active_mask`` and the solution
must agree.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
from nlsq import curve_fit, least_squares

T = np.linspace(0.0, 4.0, 60)
Y = 2.5 * np.exp(-1.3 * T) + 0.5 + 0.02 * np.sin(7 * T)
Y_OUT = Y.copy()
Y_OUT[::9] += 1.0


def resid(p, y):
    return p[0] * jnp.exp(-p[1] * T) + p[2] - y


def resid_np(p, y):
    return p[0] * np.exp(-p[1] * T) + p[2] - y


def jac_np(p, y):
    e = np.exp(-p[1] * T)
    return np.stack([e, -p[0] * T * e, np.ones_like(T)], axis=1)


LOSSES = ["linear", "soft_l1", "huber", "cauchy", "arctan"]
BOUNDS = {
    "unbounded": (-np.inf, np.inf),
    "inactive": ([0, 0, 0], [10, 10, 5]),
    "active-upper": ([0, 0, 0], [10, 10, 0.45]),
    "active-lower": ([0, 0, 0.55], [10, 10, 5]),
    "x0-on-bound": ([1.0, 0, 0], [10, 10, 5]),
}
X0 = {"active-lower": [1.0, 1.0, 0.6]}


def compare(res, ref, rtol=1e-7):
    assert res.status == ref.status and res.message == ref.message
    assert res.success == ref.success
    assert res.nfev == ref.nfev and res.njev == ref.njev
    np.testing.assert_array_equal(res.active_mask, ref.active_mask)
    np.testing.assert_allclose(res.x, ref.x, rtol=rtol, atol=1e-10)
    np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-9)
    # Residuals are compared against the scale of the whole vector, not only
    # elementwise: both solvers stop on ftol a little short of the minimizer,
    # so x is only reproducible to ~1e-9 (rounding in the lstsq steps -- even
    # scipy 1.17 vs 1.18, whose dogbox source is identical, land ~2e-9 apart
    # because numpy's bundled OpenBLAS changed). A change dx moves every
    # residual by about |J dx|, whatever its own size, so an element that
    # happens to be ~1e-4 would fail a purely relative check. The atol is
    # 1e-7 of the largest residual (the x tolerance above), floored at 1e-9.
    fun_atol = max(1e-9, 1e-7 * np.linalg.norm(ref.fun, np.inf))
    np.testing.assert_allclose(res.fun, ref.fun, rtol=1e-6, atol=fun_atol)
    np.testing.assert_allclose(res.grad, ref.grad, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(res.optimality, ref.optimality, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("bounds", list(BOUNDS))
@pytest.mark.parametrize("loss", LOSSES)
def test_dogbox_matches_scipy(bounds, loss):
    y = Y if loss == "linear" else Y_OUT
    kw = dict(bounds=BOUNDS[bounds], method="dogbox", loss=loss, f_scale=0.1, args=(y,))
    x0 = X0.get(bounds, [1.0, 1.0, 0.2])
    res = least_squares(resid, x0, **kw)
    ref = so.least_squares(resid_np, x0, jac=jac_np, **kw)
    compare(res, ref)


@pytest.mark.parametrize("x_scale", ["jac", [2.0, 0.5, 1.0]])
@pytest.mark.parametrize("bounds", ["unbounded", "active-upper"])
def test_dogbox_x_scale(bounds, x_scale):
    kw = dict(bounds=BOUNDS[bounds], method="dogbox", x_scale=x_scale, args=(Y,))
    res = least_squares(resid, [1.0, 1.0, 0.2], **kw)
    ref = so.least_squares(resid_np, [1.0, 1.0, 0.2], jac=jac_np, **kw)
    compare(res, ref)


def test_dogbox_max_nfev_status_zero():
    kw = dict(bounds=BOUNDS["active-upper"], method="dogbox", max_nfev=3, args=(Y,))
    res = least_squares(resid, [1.0, 1.0, 0.2], **kw)
    ref = so.least_squares(resid_np, [1.0, 1.0, 0.2], jac=jac_np, **kw)
    assert res.status == ref.status == 0 and not res.success
    compare(res, ref)


def test_dogbox_rosenbrock_bounded_like_scipy_docs():
    def rosen(x):
        return jnp.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])

    def rosen_np(x):
        return np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])

    def rosen_jac(x):
        return np.array([[-20 * x[0], 10], [-1, 0]])

    kw = dict(bounds=([-np.inf, 1.5], np.inf), method="dogbox")
    res = least_squares(rosen, [2.0, 2.0], **kw)
    ref = so.least_squares(rosen_np, [2.0, 2.0], jac=rosen_jac, **kw)
    compare(res, ref)
    np.testing.assert_array_equal(res.active_mask, [0, -1])


@pytest.mark.parametrize(
    "kw",
    [
        dict(p0=[1, 1, 1]),
        dict(p0=[1, 1, 0.1], bounds=([0, 0, -1], [10, 10, 0.4])),
        dict(p0=[1, 1, 1], loss="soft_l1", f_scale=0.1),
    ],
)
def test_curve_fit_dogbox_matches_scipy(kw):
    def model(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    def model_np(x, a, b, c):
        return a * np.exp(-b * x) + c

    def jac(x, a, b, c):
        e = np.exp(-b * x)
        return np.stack([e, -a * x * e, np.ones_like(x)], axis=1)

    popt, pcov = curve_fit(model, T, Y_OUT, method="dogbox", **kw)
    popt_s, pcov_s = so.curve_fit(model_np, T, Y_OUT, method="dogbox", jac=jac, **kw)
    np.testing.assert_allclose(popt, popt_s, rtol=1e-7)
    np.testing.assert_allclose(pcov, pcov_s, rtol=1e-5, atol=1e-14)
