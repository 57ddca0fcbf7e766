"""nlsq._map_guard: past a share of vm.max_map_count, a new solver program clears
JAX's caches (once warned) instead of letting XLA:CPU crash at the limit."""

import sys
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from nlsq import _map_guard, curve_fit
from nlsq._solve import solve

X = np.linspace(0, 4, 64)


def _fresh_fit(scale: float):
    # A captured value keys nlsq's compiled-program cache: each scale is a new program.
    def model(x, a, b):
        return scale * a * jnp.exp(-b * x)

    y = scale * 2.0 * np.exp(-0.7 * X)
    popt, _ = curve_fit(model, X, y, p0=[1.0, 1.0])
    np.testing.assert_allclose(popt, [2.0, 0.7], rtol=1e-8)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_mappings_and_limit_are_read_on_linux():
    count, limit = _map_guard.mapping_count(), _map_guard.mapping_limit()
    assert count is not None and count > 0
    assert limit is not None and limit > count


def test_a_new_program_past_the_share_clears_the_caches_and_warns_once(monkeypatch):
    monkeypatch.setattr(_map_guard, "mapping_count", lambda: 900)
    monkeypatch.setattr(_map_guard, "mapping_limit", lambda: 1000)
    monkeypatch.setattr(_map_guard, "_warned", False)
    with pytest.warns(RuntimeWarning, match=r"vm\.max_map_count.*jax\.clear_caches"):
        _fresh_fit(1.5)
    assert solve._cache_size() == 0  # the program just made was dropped again
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second clearing is silent
        _fresh_fit(1.75)
    assert solve._cache_size() == 0


def test_below_the_share_programs_are_kept(monkeypatch):
    monkeypatch.setattr(_map_guard, "mapping_count", lambda: 799)
    monkeypatch.setattr(_map_guard, "mapping_limit", lambda: 1000)
    before = solve._cache_size()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fresh_fit(2.5)
    assert solve._cache_size() == before + 1


def test_a_failing_guard_never_fails_a_fit(monkeypatch):
    def broken():
        raise RuntimeError("cannot count")

    monkeypatch.setattr(_map_guard, "mapping_count", broken)
    _fresh_fit(3.5)
    assert _map_guard.after_new_program() is False


def test_no_proc_means_no_action(monkeypatch):
    monkeypatch.setattr(_map_guard, "mapping_limit", lambda: None)
    assert _map_guard.after_new_program() is False
