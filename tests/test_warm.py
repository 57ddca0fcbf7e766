"""Warm ``curve_fit`` calls (nlsq._warm): the full path's results and errors, less host code."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from nlsq import _curve_fit, _warm, curve_fit
from scipy.optimize import OptimizeWarning


def exp_model(x, a, b, c):
    # Code of its own: other files' models of the same code share their programs
    # (nlsq._cache.CodeKeyed), and some count the programs they make.
    return c + a * jnp.exp(-x * b)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 4, n)
    return x, 2.5 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.standard_normal(n)


@pytest.fixture
def full_path_calls(monkeypatch):
    """How many calls built their ``Problem`` on the full path (make_problem)."""
    _warm.forget_all()
    calls = []
    real = _curve_fit.make_problem

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_curve_fit, "make_problem", counted)
    yield calls
    _warm.forget_all()


def _full_path(*args, **kwargs):
    """``curve_fit`` with no plan to start from."""
    _warm.forget_all()
    out = curve_fit(*args, **kwargs)
    _warm.forget_all()
    return out


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("method", [None, "trf", "dogbox"])
def test_a_warm_call_equals_the_full_path(full_path_calls, method):
    x, y = _data(1000)
    curve_fit(exp_model, x, y, p0=[1.0, 1.0, 1.0], method=method)
    assert len(full_path_calls) == 1
    x2, y2 = _data(990, seed=1)  # same bucket, other data, other start
    got = curve_fit(exp_model, x2, y2, p0=[2.0, 1.5, 0.0], method=method)
    assert len(full_path_calls) == 1, "the second call took the full path"
    want = _full_path(exp_model, x2, y2, p0=[2.0, 1.5, 0.0], method=method)
    assert len(full_path_calls) == 2
    _assert_same(got, want)


def test_sigma_tolerances_and_default_start_are_warm(full_path_calls):
    x, y = _data(500)
    sigma = np.linspace(0.5, 1.5, 500)
    options = dict(sigma=sigma, absolute_sigma=True, ftol=1e-10, max_nfev=50)
    curve_fit(exp_model, x, y, **options)
    got = curve_fit(exp_model, x, y * 1.01, **options)
    assert len(full_path_calls) == 1
    _assert_same(got, _full_path(exp_model, x, y * 1.01, **options))
    # Other option values are another key: the full path, with its own result.
    curve_fit(exp_model, x, y, sigma=sigma, absolute_sigma=False, ftol=1e-10, max_nfev=50)
    assert len(full_path_calls) == 3


@pytest.mark.parametrize("verbose", [1, 2])
def test_a_warm_logged_fit_writes_the_full_paths_table(full_path_calls, log_file, verbose):
    from nlsq.utils import async_logger

    x, y = _data(600)
    curve_fit(exp_model, x, y, p0=[1.0, 1.0, 1.0], verbose=verbose)
    async_logger.flush()
    log_file.write_text("")
    got = curve_fit(exp_model, x, y * 1.05, p0=[1.0, 1.0, 1.0], verbose=verbose)
    async_logger.flush()
    warm_table = log_file.read_text()
    log_file.write_text("")
    assert len(full_path_calls) == 1
    want = _full_path(exp_model, x, y * 1.05, p0=[1.0, 1.0, 1.0], verbose=verbose)
    async_logger.flush()
    assert len(full_path_calls) == 2
    _assert_same(got, want)
    assert "Function evaluations" in warm_table
    assert warm_table == log_file.read_text()


def test_a_changed_global_is_another_model(full_path_calls):
    x, y = _data(300)
    global _OFFSET
    _OFFSET = 0.0
    first = curve_fit(_shifted_model, x, y, p0=[1.0, 1.0, 1.0])[0]
    _OFFSET = 10.0
    second = curve_fit(_shifted_model, x, y, p0=[1.0, 1.0, 1.0])[0]
    assert len(full_path_calls) == 2
    np.testing.assert_allclose(second[2], first[2] - 10.0, rtol=1e-6)


_OFFSET = 0.0


def _shifted_model(x, a, b, c):
    return a * jnp.exp(-b * x) + c + _OFFSET


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda x, y, s: (x, np.where(np.arange(y.size) == 3, np.nan, y), s), ValueError),
        (lambda x, y, s: (np.where(np.arange(x.size) == 3, np.inf, x), y, s), ValueError),
        (lambda x, y, s: (x, y, np.where(np.arange(s.size) == 0, 0.0, s)), ValueError),
    ],
)
def test_bad_values_in_a_warm_call_raise_the_full_paths_error(full_path_calls, change, error):
    x, y = _data(400)
    sigma = np.ones(400)
    curve_fit(exp_model, x, y, p0=[1.0, 1.0, 1.0], sigma=sigma)
    bad = change(x, y, sigma)
    with pytest.raises(error) as warm_error:
        curve_fit(exp_model, bad[0], bad[1], p0=[1.0, 1.0, 1.0], sigma=bad[2])
    with pytest.raises(error) as full_error:
        _full_path(exp_model, bad[0], bad[1], p0=[1.0, 1.0, 1.0], sigma=bad[2])
    assert str(warm_error.value) == str(full_error.value)


def test_a_start_of_another_shape_takes_the_full_path(full_path_calls):
    x, y = _data(400)
    curve_fit(exp_model, x, y, p0=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="at most 1 dimension"):
        curve_fit(exp_model, x, y, p0=[[1.0, 1.0, 1.0]])
    with pytest.raises(TypeError):  # four parameters for a three-parameter model
        curve_fit(exp_model, x, y, p0=[1.0, 1.0, 1.0, 1.0])


def test_the_covariance_warning_points_at_the_caller(full_path_calls):
    def collinear(x, a, b):
        return a * x + b * x  # J's columns are equal: no covariance

    x = np.linspace(0, 1, 50)
    y = 3 * x
    for _ in range(2):  # the full path, then the warm one
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            popt, pcov = curve_fit(collinear, x, y, p0=[1.0, 1.0])
        assert [w.category for w in caught] == [OptimizeWarning]
        assert caught[0].filename == __file__
        assert np.isinf(pcov).all()
    assert len(full_path_calls) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(bounds=([0, 0, 0], [10, 10, 10])),
        dict(full_output=True),
        dict(jac="2-point"),
        dict(nan_policy="omit", check_finite=False),
        dict(loss="soft_l1"),
    ],
)
def test_calls_that_are_never_warm(full_path_calls, kwargs):
    x, y = _data(300)
    for _ in range(2):
        curve_fit(exp_model, x, y, p0=[1.0, 1.0, 1.0], **kwargs)
    assert len(full_path_calls) == 2
    assert not _warm._PLANS


def test_lists_and_large_data_are_never_warm(full_path_calls):
    x, y = _data(300)
    for _ in range(2):
        curve_fit(exp_model, list(x), list(y), p0=[1.0, 1.0, 1.0])
    x, y = _data(_warm.MAX_ROWS + 1)
    for _ in range(2):
        curve_fit(exp_model, x, y, p0=[1.0, 1.0, 1.0])
    assert len(full_path_calls) == 4
    assert not _warm._PLANS


def test_plans_are_bounded(full_path_calls):
    x, y = _data(64)
    for k in range(_warm._HELD_PLANS + 5):
        curve_fit(exp_model, x, y, p0=[1.0, 1.0, 1.0], ftol=1e-8 * (1 + k))
    assert len(_warm._PLANS) == _warm._HELD_PLANS


def test_a_numpy_model_on_the_host_is_never_warm(full_path_calls):
    # Not padded (its rows cannot be traced), so no plan: each call decides again.
    def numpy_model(x, a, b, c):
        return a * np.exp(-b * np.asarray(x)) + c

    x, y = _data(200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HostFallbackWarning, once per model
        curve_fit(numpy_model, x, y, p0=[1.0, 1.0, 1.0])
        got = curve_fit(numpy_model, x, y * 1.1, p0=[1.0, 1.0, 1.0])
        assert len(full_path_calls) == 2
        assert not _warm._PLANS
        _assert_same(got, _full_path(numpy_model, x, y * 1.1, p0=[1.0, 1.0, 1.0]))
