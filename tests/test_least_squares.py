"""least_squares against scipy.optimize.least_squares: results, status codes, errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
from nlsq import HostFallbackWarning, least_squares

T = np.linspace(0.0, 3.0, 60)
Y = 1.7 * np.exp(-0.9 * T) + 0.3 + 0.01 * np.sin(7 * T)
Y_OUT = Y.copy()
Y_OUT[::10] += 0.8

FIELDS = {
    "x",
    "cost",
    "fun",
    "jac",
    "grad",
    "optimality",
    "active_mask",
    "nfev",
    "njev",
    "status",
    "message",
    "success",
}


def resid(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def resid_np(p, t, y):
    return p[0] * np.exp(-p[1] * t) + p[2] - y


def jac_np(p, t, y):
    e = np.exp(-p[1] * t)
    return np.stack([e, -p[0] * t * e, np.ones_like(t)], axis=1)


def rosen(x):
    return jnp.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def rosen_np(x):
    return np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])


CASES = {
    "unbounded": dict(x0=[1.0, 1.0, 1.0]),
    "bounded-inactive": dict(x0=[1.0, 1.0, 0.1], bounds=([0, 0, 0], [5, 5, 5])),
    "bounded-active": dict(x0=[1.0, 1.0, 0.1], bounds=([0, 0, 0], [5, 5, 0.2])),
    "soft_l1": dict(x0=[1.0, 1.0, 1.0], loss="soft_l1", f_scale=0.1, outliers=True),
    "cauchy-bounded": dict(
        x0=[1.0, 1.0, 0.1], loss="cauchy", f_scale=0.1, bounds=(0, 3), outliers=True
    ),
    "x_scale-jac": dict(x0=[1.0, 1.0, 1.0], x_scale="jac"),
    "x_scale-array": dict(x0=[1.0, 1.0, 1.0], x_scale=[1.0, 0.5, 0.1]),
    "lm": dict(x0=[1.0, 1.0, 1.0], method="lm"),
    # MINPACK's radius/parameter rules from a far start: same solution and status;
    # the step count may differ by one (nlsq's LM step comes from the SVD solver).
    "lm-far": dict(x0=[10.0, 5.0, -3.0], method="lm", same_path=False),
    "lm-x_scale": dict(x0=[10.0, 5.0, -3.0], method="lm", x_scale=[1.0, 0.5, 0.1]),
    # At 1e-12 the last steps change the cost by ~1e-15 relative: whether they count
    # as a reduction depends on the rounding of exp() (XLA's vs NumPy's), so the
    # stopping test may differ; the solution may not.
    "tight-tol": dict(x0=[1.0, 1.0, 1.0], ftol=1e-12, xtol=1e-12, gtol=1e-12, same_path=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_agrees_with_scipy(case):
    kw = dict(CASES[case])
    x0 = kw.pop("x0")
    y = Y_OUT if kw.pop("outliers", False) else Y
    same_path = kw.pop("same_path", True)
    r = least_squares(resid, x0, args=(T, y), **kw)
    # scipy gets the exact Jacobian too (nlsq's default is autodiff, scipy's '2-point').
    s = so.least_squares(resid_np, x0, jac=jac_np, args=(T, y), **kw)
    assert set(r) >= FIELDS
    assert r.success
    if same_path:
        assert r.status == s.status and r.message == s.message
    np.testing.assert_allclose(r.x, s.x, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(r.cost, s.cost, rtol=1e-8)
    np.testing.assert_allclose(r.fun, s.fun, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(r.jac, s.jac, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(r.active_mask, s.active_mask)
    if same_path:
        # Same algorithm, same decisions: the evaluation counts match scipy's exactly.
        assert r.nfev == s.nfev


def test_rosenbrock_square_system_gtol():
    r = least_squares(rosen, [2.0, 2.0])
    s = so.least_squares(rosen_np, [2.0, 2.0])
    np.testing.assert_allclose(r.x, [1, 1], rtol=1e-8)
    assert r.status == s.status == 1
    assert r.message == "`gtol` termination condition is satisfied."


def test_rosenbrock_bounded_like_scipy_docs():
    r = least_squares(rosen, [2.0, 2.0], bounds=([-np.inf, 1.5], np.inf))
    s = so.least_squares(rosen_np, [2.0, 2.0], bounds=([-np.inf, 1.5], np.inf))
    np.testing.assert_allclose(r.x, s.x, rtol=1e-6)
    np.testing.assert_array_equal(r.active_mask, s.active_mask)
    assert r.active_mask[1] == -1


def test_underdetermined_trf():
    def fun(x):
        return jnp.array([x[0] + x[1] ** 2 - 1.0])

    r = least_squares(fun, [0.3, 0.2])
    assert r.success and abs(r.fun[0]) < 1e-8
    assert r.jac.shape == (1, 2)


def test_max_nfev_status_zero():
    r = least_squares(resid, [1.0, 1.0, 1.0], args=(T, Y), max_nfev=3)
    s = so.least_squares(resid_np, [1.0, 1.0, 1.0], args=(T, Y), max_nfev=3)
    assert r.status == s.status == 0 and not r.success
    assert r.message == "The maximum number of function evaluations is exceeded."
    assert r.nfev == s.nfev == 3


def test_kwargs_and_static_args():
    def fun(p, t, y, *, power, scale):
        return scale * (p[0] * t**power + p[1] - y)

    y = 2.0 * T**2 + 1.0
    r = least_squares(fun, [1.0, 0.0], args=(T, y), kwargs={"power": 2, "scale": 3.0})
    np.testing.assert_allclose(r.x, [2.0, 1.0], rtol=1e-8)


def test_user_jacobian_and_fd_options():
    def jac(p, t, y):
        e = jnp.exp(-p[1] * t)
        return jnp.stack([e, -p[0] * t * e, jnp.ones_like(t)], axis=1)

    s = so.least_squares(resid_np, [1.0, 1.0, 1.0], args=(T, Y))
    for j in (jac, "2-point", "3-point"):
        r = least_squares(resid, [1.0, 1.0, 1.0], jac=j, args=(T, Y))
        np.testing.assert_allclose(r.x, s.x, rtol=1e-6)


def test_numpy_function_falls_back():
    def np_fun(p, t, y):
        return p[0] * np.exp(-p[1] * t) + p[2] - y

    with pytest.warns(HostFallbackWarning, match="np_fun"):
        r = least_squares(np_fun, [1.0, 1.0, 1.0], args=(T, Y))
    s = so.least_squares(np_fun, [1.0, 1.0, 1.0], args=(T, Y))
    np.testing.assert_allclose(r.x, s.x, rtol=1e-6)
    assert r.status == s.status and r.nfev == s.nfev


def test_callable_loss():
    def my_soft_l1(z):
        t = 1 + z
        return jnp.stack([2 * (t**0.5 - 1), t**-0.5, -0.5 * t**-1.5])

    r = least_squares(resid, [1.0, 1.0, 1.0], loss=my_soft_l1, f_scale=0.1, args=(T, Y_OUT))
    s = so.least_squares(resid_np, [1.0, 1.0, 1.0], loss="soft_l1", f_scale=0.1, args=(T, Y_OUT))
    np.testing.assert_allclose(r.x, s.x, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="simplex"), "`method` must be"),
        (dict(loss="l4"), "`loss` must be one of"),
        (dict(method="lm", loss="huber"), "only 'linear' loss"),
        (dict(method="lm", bounds=(0, 5)), "doesn't support bounds"),
        (dict(bounds=([0, 0], [5, 5])), "Inconsistent shapes between bounds"),
        (dict(bounds=([0, 0, 0], [5, 0, 5])), "strictly less"),
        (dict(bounds=(2, 5)), "outside of provided bounds"),
        (dict(bounds=(0, 5, 6)), "2 elements"),
        (dict(x_scale=[1.0, 2.0]), "Inconsistent shapes between `x_scale`"),
        (dict(x_scale="auto"), "x_scale"),
        (dict(max_nfev=-1), "max_nfev"),
        (dict(verbose=5), "verbose"),
        (dict(tr_solver="cg"), "`tr_solver` must be None, .exact. or .lsmr."),
        (dict(jac="5-point"), "`jac` must be"),
        (dict(callback=1), "`callback` must be callable"),
        (dict(jac=lambda p, t, y: jnp.ones((3, 3))), "`jac` has wrong shape"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        least_squares(resid, [1.0, 1.0, 1.0], args=(T, Y), **kwargs)


def test_bad_x0_and_fun_output():
    with pytest.raises(ValueError, match="at most 1 dimension"):
        least_squares(rosen, [[1.0, 2.0]])
    with pytest.raises(ValueError, match="must be real"):
        least_squares(rosen, [1.0 + 1j, 2.0])
    with pytest.raises(ValueError, match="at most 1-d"):
        least_squares(lambda x: jnp.ones((2, 2)) * x[0], [1.0])
    with pytest.raises(ValueError, match="not finite in the initial point"):
        least_squares(lambda x: jnp.log(x - 2.0), [1.0])
    with pytest.raises(ValueError, match="number of residuals is less"):
        least_squares(lambda x: x[:1] ** 2, [1.0, 2.0], method="lm")
