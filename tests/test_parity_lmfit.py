"""A real client: lmfit's ``Minimizer(method='least_squares')`` pointed at
``nlsq.least_squares`` behaves as it does with scipy's (fit, ``max_nfev`` abort,
iteration-callback abort), which needs user exceptions to surface as themselves."""

from __future__ import annotations

import warnings

import lmfit  # in the `test` extra: missing, the file fails rather than skips
import lmfit.minimizer as lmfit_minimizer
import numpy as np
import pytest
import scipy.optimize as so
from nlsq import HostFallbackWarning, least_squares

X = np.linspace(0.0, 10.0, 201)
DATA = (
    3.0 * np.exp(-X / 2.5) * np.sin(1.7 * X + 0.3)
    + 0.1
    + 0.02 * np.random.default_rng(0).standard_normal(X.size)
)


def residual(pars, x, data):
    v = pars.valuesdict()
    return v["amp"] * np.exp(-x / v["tau"]) * np.sin(v["om"] * x + v["ph"]) + v["c"] - data


def start_params():
    p = lmfit.Parameters()
    p.add("amp", 2.0)
    p.add("tau", 2.0, min=0.1, max=20.0)
    p.add("om", 1.6)
    p.add("ph", 0.0)
    p.add("c", 0.0)
    return p


def run_with(impl, monkeypatch, **kws):
    monkeypatch.setattr(lmfit_minimizer, "least_squares", impl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        return lmfit.minimize(
            residual, start_params(), args=(X, DATA), method="least_squares", **kws
        )


def test_fit_matches_scipy(monkeypatch):
    ref = run_with(so.least_squares, monkeypatch)
    got = run_with(least_squares, monkeypatch)
    assert got.success and not got.aborted
    for name in ref.params:
        np.testing.assert_allclose(got.params[name].value, ref.params[name].value, rtol=1e-6)
        np.testing.assert_allclose(got.params[name].stderr, ref.params[name].stderr, rtol=1e-4)
    assert got.nfev == ref.nfev


@pytest.mark.parametrize("max_nfev", [3, 7, 20])
def test_max_nfev_abort(monkeypatch, max_nfev):
    ref = run_with(so.least_squares, monkeypatch, max_nfev=max_nfev)
    got = run_with(least_squares, monkeypatch, max_nfev=max_nfev)
    assert ref.aborted and got.aborted
    assert not got.success
    assert got.nfev == ref.nfev
    assert got.message == ref.message


@pytest.mark.parametrize("stop_at", [1, 5, 12])
def test_iteration_callback_abort(monkeypatch, stop_at):
    def run(impl):
        seen = []

        def iter_cb(params, it, resid, *args, **kws):
            seen.append((it, float(np.sum(resid**2))))
            return it >= stop_at

        out = run_with(impl, monkeypatch, iter_cb=iter_cb)
        return out, seen

    ref, ref_seen = run(so.least_squares)
    got, got_seen = run(least_squares)
    assert ref.aborted and got.aborted
    assert [it for it, _ in got_seen] == [it for it, _ in ref_seen]
    np.testing.assert_allclose([c for _, c in got_seen], [c for _, c in ref_seen], rtol=1e-10)
    assert got.message == ref.message
