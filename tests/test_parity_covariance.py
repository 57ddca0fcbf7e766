"""Covariance honesty: where the parameters are not identifiable, pcov is ``inf``.

Reference: ``scipy.optimize.curve_fit`` on the same inputs.  scipy's own rule
depends on the method: its default ``'lm'`` gives an all-``inf`` pcov and an
``OptimizeWarning`` when the pivoted QR of J has an exact zero pivot (a parameter
with no effect), while its ``'trf'``/``'dogbox'`` pseudo-inverse reports variance 0
for that parameter, silently.  nlsq gives scipy-lm's answer for every method
whenever J is rank deficient by scipy's own singular-value threshold (README,
"Where nlsq differs from scipy").
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
from nlsq import curve_fit
from scipy.optimize import OptimizeWarning

COV_MSG = "Covariance of the parameters could not be estimated"
METHODS = ["trf", "lm", None]

X = np.linspace(0.0, 5.0, 20)
Y = 2.0 * X + 1.0 + 0.1 * np.random.default_rng(0).standard_normal(20)


def _fit_recording(fit, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        popt, pcov = fit(*args, **kwargs)
    cov_warnings = [w for w in caught if issubclass(w.category, OptimizeWarning)]
    return popt, pcov, cov_warnings


def zero_column(x, a, b):
    return a * x


def duplicated_columns(x, a, b):
    return (a + b) * x


def duplicated_in_exponent(x, a, b, c):
    return a * jnp.exp(-(b + c) * x / 10)


@pytest.mark.parametrize("method", METHODS)
def test_zero_column_is_inf_with_warning_like_scipy_default(method):
    _, ref, ref_warn = _fit_recording(so.curve_fit, zero_column, X, Y, p0=[1.0, 1.0])
    popt, pcov, got_warn = _fit_recording(
        curve_fit, zero_column, X, Y, p0=[1.0, 1.0], method=method
    )
    assert np.all(np.isinf(ref)) and len(ref_warn) == 1  # scipy's default, 'lm'
    assert pcov.shape == (2, 2)
    assert np.all(np.isposinf(pcov))
    assert len(got_warn) == 1 and COV_MSG in str(got_warn[0].message)
    # The fit itself is still right: a is identifiable (linear least squares).
    np.testing.assert_allclose(popt[0], X @ Y / (X @ X), rtol=1e-6)


def test_scipy_trf_reports_zero_variance_we_do_not():
    """The deliberate difference, pinned so a scipy change is noticed."""
    _, ref, ref_warn = _fit_recording(so.curve_fit, zero_column, X, Y, p0=[1.0, 1.0], method="trf")
    assert ref[1, 1] == 0.0 and not ref_warn
    _, pcov, got_warn = _fit_recording(curve_fit, zero_column, X, Y, p0=[1.0, 1.0], method="trf")
    assert np.all(np.isinf(pcov)) and len(got_warn) == 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("model", "p0"), [(duplicated_columns, [1.0, 1.0]), (duplicated_in_exponent, [1.0, 1.0, 1.0])]
)
def test_duplicated_columns_are_inf(method, model, p0):
    y = np.exp(-X / 5)
    _, pcov, got_warn = _fit_recording(curve_fit, model, X, y, p0=p0, method=method)
    assert np.all(np.isposinf(pcov))
    assert len(got_warn) == 1


def test_scipy_duplicated_columns_are_meaningless():
    """What scipy says for ``(a + b) * x``: its finite differences make the two
    columns equal up to rounding noise, so whatever it reports is that noise --
    the case where we are deliberately stricter. Its 'lm' variances are 1e13..1e17.
    Its dogbox gives either a small finite variance (the columns are identical
    at its final x and the pseudo-inverse drops the ~1e-15 singular value) or
    ~1e13 (they differ by ~1e-8 and it is kept). Which one is decided by
    rounding: at p0 the columns are identical and ``numpy.linalg.lstsq(J,
    rcond=-1)`` calls J rank 1 or rank 2 depending on the LAPACK build, so the
    path changes -- with the same dogbox source, scipy 1.17 + numpy 2.4
    (OpenBLAS 0.3.31) ends at a = b after 3 evaluations with variances 5e-4,
    scipy 1.18 + numpy 2.5 (OpenBLAS 0.3.34) elsewhere after 17 with 2e13.
    Neither is ``inf`` nor warns; nlsq's autodiff Jacobian is exactly rank
    deficient, so it says ``inf`` and warns."""
    _, ref, _ = _fit_recording(so.curve_fit, duplicated_columns, X, Y, p0=[1.0, 1.0])
    assert np.max(np.abs(ref)) > 1e10
    _, ref_dogbox, dogbox_warn = _fit_recording(
        so.curve_fit, duplicated_columns, X, Y, p0=[1.0, 1.0], method="dogbox"
    )
    assert np.all(np.isfinite(ref_dogbox)) and not dogbox_warn
    scale = np.max(np.abs(ref_dogbox))
    assert scale < 1.0 or scale > 1e10, ref_dogbox
    _, pcov, got_warn = _fit_recording(
        curve_fit, duplicated_columns, X, Y, p0=[1.0, 1.0], method="dogbox"
    )
    assert np.all(np.isposinf(pcov)) and len(got_warn) == 1
    assert COV_MSG in str(got_warn[0].message)


@pytest.mark.parametrize("method", METHODS)
def test_as_many_points_as_parameters(method):
    def line(x, a, b):
        return a * x + b

    for absolute_sigma in (False, True):
        _, ref, ref_warn = _fit_recording(
            so.curve_fit, line, X[:2], Y[:2], p0=[1.0, 1.0], absolute_sigma=absolute_sigma
        )
        _, pcov, got_warn = _fit_recording(
            curve_fit,
            line,
            X[:2],
            Y[:2],
            p0=[1.0, 1.0],
            absolute_sigma=absolute_sigma,
            method=method,
        )
        assert len(got_warn) == len(ref_warn)
        if absolute_sigma:
            assert not got_warn
            np.testing.assert_allclose(pcov, ref, rtol=1e-6)
        else:
            assert np.all(np.isposinf(ref)) and np.all(np.isposinf(pcov))


def _poly5(xp):
    def poly5(x, a, b, c, d, e, f):
        return a + x * (b + x * (c + x * (d + x * (e + x * f))))

    return poly5


def _exp_decay(xp):
    def exp_decay(x, a, b, c):
        return a * xp.exp(-b * x) + c

    return exp_decay


def _two_gauss(xp):
    def two_gauss(x, a1, m1, a2, m2, s):
        return a1 * xp.exp(-((x - m1) ** 2) / (2 * s**2)) + a2 * xp.exp(
            -((x - m2) ** 2) / (2 * s**2)
        )

    return two_gauss


WELL_CONDITIONED = [
    # (model factory, x, true params, p0, sigma)
    (_exp_decay, np.linspace(0, 4, 50), [2.5, 1.3, 0.5], [1.0, 1.0, 0.0], None),
    (_poly5, np.linspace(0, 10, 60), [1, -2, 0.5, 0.1, -0.02, 1e-3], [0.0] * 6, None),
    (_two_gauss, np.linspace(-5, 5, 80), [1.0, -1.0, 0.7, 1.5, 0.8], [1, -0.5, 1, 1, 1], None),
    (_exp_decay, np.linspace(0, 4, 50), [2.5, 1.3, 0.5], [1.0, 1.0, 0.0], "sigma"),
]


@pytest.mark.parametrize("method", ["trf", "lm"])
@pytest.mark.parametrize("case", range(len(WELL_CONDITIONED)))
def test_well_conditioned_matches_scipy_without_warning(method, case):
    factory, x, truth, p0, sigma = WELL_CONDITIONED[case]
    rng = np.random.default_rng(case)
    y = factory(np)(x, *truth) + 0.02 * rng.standard_normal(x.size)
    sig = 0.02 * (1 + rng.random(x.size)) if sigma else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", OptimizeWarning)
        ref_popt, ref = so.curve_fit(factory(np), x, y, p0=p0, sigma=sig, method=method)
        popt, pcov = curve_fit(factory(jnp), x, y, p0=p0, sigma=sig, method=method)
    np.testing.assert_allclose(popt, ref_popt, rtol=1e-5, atol=1e-9)
    assert np.all(np.isfinite(pcov))
    np.testing.assert_allclose(pcov, ref, rtol=1e-4, atol=1e-12 * np.max(np.abs(ref)))


def test_scipy_pcov_test_cases():
    """scipy's own ``test_pcov`` numbers (test_minpack.py) for the methods we have."""
    xdata = np.array([0, 1, 2, 3, 4, 5])
    ydata = np.array([1, 1, 5, 7, 8, 12])
    sigma = np.array([1, 2, 1, 2, 1, 2])

    def f(x, a, b):
        return a * x + b

    def f_flat(x, a, b):
        return a * x

    for method in ["lm", "trf"]:
        for s, absolute, expected in [
            (sigma, False, [0.20659803, 0.57204404]),
            (3 * sigma, False, [0.20659803, 0.57204404]),
            (sigma, True, [0.30714756, 0.85045308]),
            (3 * sigma, True, [3 * 0.30714756, 3 * 0.85045308]),
        ]:
            _, pcov = curve_fit(
                f, xdata, ydata, p0=[2, 0], sigma=s, absolute_sigma=absolute, method=method
            )
            np.testing.assert_allclose(np.sqrt(np.diag(pcov)), expected, rtol=1e-3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", COV_MSG, OptimizeWarning)
        _, pcov = curve_fit(f_flat, xdata, ydata, p0=[2, 0], sigma=sigma)
        _, pcov1 = curve_fit(f, xdata[:2], ydata[:2], p0=[2, 0])
    np.testing.assert_array_equal(pcov, np.full((2, 2), np.inf))
    np.testing.assert_array_equal(pcov1, np.full((2, 2), np.inf))
