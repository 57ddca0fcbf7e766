"""NumPy code works as in scipy: untraceable functions fall back to the host once,
Jacobians of every kind scipy accepts, ydata broadcasting, and user errors that
surface as themselves (type, message, attributes) at trace time and mid-fit.

Reference: scipy.optimize.least_squares / curve_fit on the same inputs.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import scipy.optimize as so
import scipy.sparse as sp
from nlsq import HostFallbackWarning, curve_fit, least_squares
from nlsq.utils import async_logger
from scipy.sparse.linalg import aslinearoperator

X = np.linspace(0.0, 4.0, 40)
Y = 2.0 * np.exp(-1.3 * X) + 0.5 + 0.01 * np.random.default_rng(1).standard_normal(X.size)
X0 = np.array([1.0, 1.0, 0.0])


# Residuals JAX cannot trace, one per way of failing.
def in_place_assignment(p):
    r = np.empty(X.size)
    r[:] = p[0] * np.exp(-p[1] * X) + p[2] - Y
    return r


def array_of_scalars(p):
    return np.array([p[0] * np.exp(-p[1] * x) + p[2] - y for x, y in zip(X, Y, strict=True)])


def control_flow_on_values(p):
    if p[1] < 0:  # Python `if` on a traced value
        return np.full(X.size, 1e3)
    return p[0] * np.exp(-p[1] * X) + p[2] - Y


def float_of_parameter(p):
    a, b, c = (float(v) for v in p)  # ConcretizationTypeError under tracing
    return a * np.exp(-b * X) + c - Y


def scipy_special_call(p):
    from scipy.special import expit  # a NumPy ufunc JAX cannot trace

    return p[0] * expit(-p[1] * X) + p[2] - Y


UNTRACEABLE = [
    in_place_assignment,
    array_of_scalars,
    control_flow_on_values,
    float_of_parameter,
    scipy_special_call,
]


def _host_warnings(caught):
    return [w for w in caught if issubclass(w.category, HostFallbackWarning)]


@pytest.mark.parametrize("fun", UNTRACEABLE, ids=lambda f: f.__name__)
@pytest.mark.parametrize("method", ["trf", "lm"])
def test_least_squares_untraceable_falls_back_once(fun, method):
    ref = so.least_squares(fun, X0, method=method, x_scale=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = least_squares(fun, X0, method=method, x_scale=1.0)
    assert len(_host_warnings(caught)) <= 1  # at most once per function (cached)
    assert got.status == ref.status
    np.testing.assert_allclose(got.x, ref.x, rtol=1e-6)
    np.testing.assert_allclose(got.cost, ref.cost, rtol=1e-8)


def test_fallback_warns_once_and_names_the_function():
    def fresh(p):  # a new function object: not yet known as host-only
        r = np.zeros(X.size)
        r[:] = p[0] * X + p[1] - Y
        return r

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        least_squares(fresh, [1.0, 1.0])
        least_squares(fresh, [2.0, 1.0])
    host = _host_warnings(caught)
    assert len(host) == 1
    assert "'fresh'" in str(host[0].message)


def test_untraceable_user_jac_falls_back():
    def fun(p):
        return p[0] * np.exp(-p[1] * X) + p[2] - Y

    def jac(p):
        J = np.empty((X.size, 3))  # in-place: untraceable
        e = np.exp(-p[1] * X)
        J[:, 0], J[:, 1], J[:, 2] = e, -p[0] * X * e, 1.0
        return J

    ref = so.least_squares(fun, X0, jac=jac)
    with pytest.warns(HostFallbackWarning):
        got = least_squares(fun, X0, jac=jac)
    np.testing.assert_allclose(got.x, ref.x, rtol=1e-8)
    assert (got.nfev, got.njev) == (ref.nfev, ref.njev)


def _line(p):
    return p[0] * X + p[1] - Y


def _line_dense(p):
    return np.stack([X, np.ones_like(X)], axis=1)


@pytest.mark.parametrize(
    "make_jac",
    [
        _line_dense,
        lambda p: sp.csr_matrix(_line_dense(p)),
        lambda p: sp.coo_array(_line_dense(p)),
        lambda p: aslinearoperator(_line_dense(p)),
        lambda p: _line_dense(p).tolist(),
    ],
    ids=["dense", "csr_matrix", "coo_array", "LinearOperator", "list"],
)
def test_jacobian_kinds_scipy_accepts(make_jac):
    ref = so.least_squares(_line, [1.0, 1.0], jac=make_jac)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        got = least_squares(_line, [1.0, 1.0], jac=make_jac)
    np.testing.assert_allclose(got.x, ref.x, rtol=1e-10)
    np.testing.assert_allclose(got.jac, _line_dense(got.x), rtol=1e-12)


def test_curve_fit_sparse_jac():
    """scipy's curve_fit fails on a sparse jac (its SVD of res.jac); we densify.

    scipy's message is its own and changed: up to 1.17 numpy's SVD rejects the
    matrix as an object array, 1.18 says sparse arrays are not supported."""

    def f(x, a, b):
        return a * x + b

    def jac(x, a, b):
        return sp.csr_matrix(np.stack([x, np.ones_like(x)], axis=1))

    with pytest.raises(ValueError, match="object arrays|Sparse arrays/matrices are not supported"):
        so.curve_fit(f, X, Y, jac=jac, method="trf")
    ref = so.curve_fit(f, X, Y, jac=lambda *a: jac(*a).toarray(), method="trf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        got = curve_fit(f, X, Y, jac=jac, method="trf")
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-10)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-8)


@pytest.mark.parametrize("method", ["trf", "lm"])
def test_scalar_ydata_broadcasts(method):
    # scipy's test_broadcast_y: the model subtracts its own target; ydata=0.
    target = 4.7 * X**2 + 3.5 * X + np.random.default_rng(123).random(X.size)

    def fit_func(x, a, b):
        return a * x**2 + b * x - target

    popt0, pcov0 = curve_fit(fit_func, X, np.zeros_like(X), method=method)
    popt1, pcov1 = curve_fit(fit_func, X, 0, method=method)
    ref_popt, ref_pcov = so.curve_fit(fit_func, X, 0, method=method)
    np.testing.assert_allclose(popt1, popt0, rtol=1e-12)
    np.testing.assert_allclose(pcov1, pcov0, rtol=1e-10)
    np.testing.assert_allclose(popt1, ref_popt, rtol=1e-7)
    np.testing.assert_allclose(pcov1, ref_pcov, rtol=1e-5)


def test_shape_mismatch_is_a_clear_error():
    def short(x, a, b):
        return a * x[:5] + b

    with pytest.raises(ValueError, match=r"shape \(5,\).*`ydata` of shape \(40,\)"):
        curve_fit(short, X, Y)


class FitStop(Exception):
    """A user's exception with attributes, like lmfit's AbortFitException."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def _zero_division_model(x, a, b):
    return a * x * (1 / (len(x) - len(x))) + b  # Python int division: ZeroDivisionError


def test_zero_division_at_trace_time_surfaces_as_itself():
    with pytest.raises(ZeroDivisionError) as ours:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            curve_fit(_zero_division_model, X, Y)
    with pytest.raises(ZeroDivisionError) as theirs:
        so.curve_fit(_zero_division_model, X, Y)
    assert str(ours.value) == str(theirs.value)
    assert not _host_warnings(caught)  # a genuine error is not a fallback


def test_user_exception_at_trace_time_keeps_attributes():
    def fun(p):
        raise FitStop("no fit today", code=7)

    with pytest.raises(FitStop) as err:
        least_squares(fun, [1.0])
    assert err.value.code == 7 and str(err.value) == "no fit today"


@pytest.mark.parametrize("method", ["trf", "lm"])
@pytest.mark.parametrize("fail_at", [1, 4, 9])
def test_user_exception_mid_fit_stops_at_once(method, fail_at):
    """The exception raised on the host path while the compiled loop runs is the
    caller's own object; the function is not called again after it raised."""
    calls = []

    def fun(p):
        if isinstance(p, np.ndarray):  # count host calls, not the failed trace
            calls.append(p.copy())
            if len(calls) == fail_at:
                raise FitStop(f"stop at call {fail_at}", code=fail_at)
        r = np.empty(X.size)
        r[:] = p[0] * np.exp(-p[1] * X) + p[2] - Y
        return r

    ref_calls = []

    def ref_fun(p):
        ref_calls.append(p.copy())
        if len(ref_calls) == fail_at:
            raise FitStop(f"stop at call {fail_at}", code=fail_at)
        return p[0] * np.exp(-p[1] * X) + p[2] - Y

    with pytest.raises(FitStop) as theirs:
        so.least_squares(ref_fun, X0, method=method, x_scale=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        with pytest.raises(FitStop) as ours:
            least_squares(fun, X0, method=method, x_scale=1.0)
    assert type(ours.value) is FitStop
    assert (str(ours.value), ours.value.code) == (str(theirs.value), theirs.value.code)
    assert len(calls) == len(ref_calls) == fail_at  # no call after the one that raised
    assert "CpuCallback" not in str(ours.value)


def test_user_exception_mid_fit_flushes_the_log():
    calls = []

    def fun(p):
        calls.append(1)
        if len(calls) > 12:
            raise FitStop("enough", code=0)
        return np.asarray(p[0] * np.exp(-p[1] * X) + p[2] - Y)

    sink = io.StringIO()
    async_logger.configure(sink=sink)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HostFallbackWarning)
            with pytest.raises(FitStop):
                least_squares(fun, X0, verbose=2)
        text = sink.getvalue()
    finally:
        async_logger.configure()
    rows = [line.split() for line in text.splitlines()[1:]]
    assert rows and rows[0][:2] == ["0", "1"]  # header, then row 0 at least
    # The fit stopped: no termination message was written.
    assert "Function evaluations" not in text


def test_user_error_in_jacobian_mid_fit():
    def jac(p):
        if p[0] > 1.5:
            raise FitStop("jac refuses", code=3)
        e = np.exp(-p[1] * X)
        return np.stack([e, -p[0] * X * e, np.ones_like(X)], axis=1)

    def fun(p):
        return np.asarray(p[0] * np.exp(-p[1] * X) + p[2] - Y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        with pytest.raises(FitStop, match="jac refuses") as err:
            least_squares(fun, X0, jac=jac)
    assert err.value.code == 3


def test_a_fit_after_an_aborted_one_works():
    state = {"raise": True}

    def fun(p):
        if state["raise"]:
            raise FitStop("first fit aborted", code=1)
        return np.asarray(p[0] * X + p[1] - Y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        with pytest.raises(FitStop):
            least_squares(fun, [1.0, 1.0])
        state["raise"] = False
        got = least_squares(fun, [1.0, 1.0])
    ref = so.least_squares(fun, [1.0, 1.0])
    np.testing.assert_allclose(got.x, ref.x, rtol=1e-8)
