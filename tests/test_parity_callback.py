"""``least_squares(callback=...)`` with scipy >= 1.16 semantics, against scipy itself:
``callback(intermediate_result)`` with x, fun, nit, nfev, cost; ``callback(x)``;
``StopIteration`` -> status -2 and scipy's message; 'lm' warns and ignores it;
other exceptions surface as themselves; ``curve_fit`` forwards it."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
from nlsq import curve_fit, least_squares

X = np.linspace(0.0, 4.0, 60)
Y = 2.5 * np.exp(-1.3 * X) + 0.5 + 0.01 * np.random.default_rng(2).standard_normal(X.size)
X0 = np.array([1.0, 1.0, 0.0])


def res_np(p):
    return p[0] * np.exp(-p[1] * X) + p[2] - Y


def res_jnp(p):
    return p[0] * jnp.exp(-p[1] * X) + p[2] - Y


def jac_np(p):
    e = np.exp(-p[1] * X)
    return np.stack([e, -p[0] * X * e, np.ones_like(X)], axis=1)


def jac_jnp(p):
    e = jnp.exp(-p[1] * X)
    return jnp.stack([e, -p[0] * X * e, jnp.ones_like(X)], axis=1)


def _recorder():
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result)

    return seen, callback


@pytest.mark.parametrize(
    "bounds", [(-np.inf, np.inf), ([0.0, 0.0, -1.0], [10.0, 10.0, 1.0])], ids=["free", "bounded"]
)
def test_intermediate_result_sequence_matches_scipy(bounds):
    ref_seen, ref_cb = _recorder()
    ref = so.least_squares(res_np, X0, jac=jac_np, bounds=bounds, callback=ref_cb)
    seen, cb = _recorder()
    got = least_squares(res_jnp, X0, jac=jac_jnp, bounds=bounds, callback=cb)
    assert got.status == ref.status and got.nfev == ref.nfev
    assert [r.nit for r in seen] == [r.nit for r in ref_seen]
    assert [r.nfev for r in seen] == [r.nfev for r in ref_seen]
    for ours, theirs in zip(seen, ref_seen, strict=True):
        assert isinstance(ours, so.OptimizeResult)
        assert set(ours) == set(theirs) == {"x", "fun", "nit", "nfev", "cost"}
        np.testing.assert_allclose(ours.x, theirs.x, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(ours.fun, theirs.fun, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(ours.cost, theirs.cost, rtol=1e-7)


def test_callback_x_form_gets_a_copy_of_x():
    ref_xs, xs = [], []
    so.least_squares(res_np, X0, jac=jac_np, callback=lambda x: ref_xs.append(x))
    least_squares(res_jnp, X0, jac=jac_jnp, callback=lambda x: xs.append(x))
    assert len(xs) == len(ref_xs) > 0
    assert all(isinstance(x, np.ndarray) and x.shape == (3,) for x in xs)
    np.testing.assert_allclose(xs, ref_xs, rtol=1e-7)


@pytest.mark.parametrize("stop_at", [1, 3])
def test_stop_iteration_ends_with_status_minus_2(stop_at):
    def stopper(intermediate_result):
        if intermediate_result.nit >= stop_at:
            raise StopIteration

    ref = so.least_squares(res_np, X0, jac=jac_np, callback=stopper)
    got = least_squares(res_jnp, X0, jac=jac_jnp, callback=stopper)
    assert ref.status == got.status == -2
    assert got.message == ref.message
    assert got.success is False
    assert got.nfev == ref.nfev
    np.testing.assert_allclose(got.x, ref.x, rtol=1e-7)


def test_returning_true_does_not_stop_as_in_scipy():
    ref = so.least_squares(res_np, X0, jac=jac_np, callback=lambda r: True)
    got = least_squares(res_jnp, X0, jac=jac_jnp, callback=lambda r: True)
    assert ref.status == got.status > 0


def test_lm_warns_and_ignores_the_callback():
    calls = []
    with pytest.warns(UserWarning, match="not supported with `lm` method") as ref_w:
        ref = so.least_squares(res_np, X0, method="lm", callback=calls.append)
    with pytest.warns(UserWarning, match="not supported with `lm` method") as got_w:
        got = least_squares(res_jnp, X0, method="lm", callback=calls.append)
    assert str(ref_w[0].message) == str(got_w[0].message)
    assert not calls
    assert got.status == ref.status


class Halt(Exception):
    def __init__(self, message, nit):
        super().__init__(message)
        self.nit = nit


@pytest.mark.parametrize("fun", [res_jnp, res_np], ids=["jax", "numpy-host"])
def test_other_exceptions_surface_as_themselves(fun):
    def angry(intermediate_result):
        if intermediate_result.nit == 2:
            raise Halt("callback says no", intermediate_result.nit)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Halt, match="callback says no") as err:
            least_squares(fun, X0, callback=angry)
    assert err.value.nit == 2


def test_no_callback_means_no_host_call_in_the_compiled_loop():
    """Without a callback the jitted program has no callback at all (verbose=0)."""
    import jax
    from nlsq._problem import make_problem
    from nlsq._residual import FunResidual, split_args
    from nlsq._solve import solve

    with jax.enable_x64(True):
        treedef, static, idx, _ = split_args((), {})
        problem = make_problem(FunResidual(res_jnp, None, treedef, static, idx), (), X0,
                               jac_mode="auto")  # fmt: skip
        text = solve.lower(problem).as_text()
        assert "callback" not in text.lower()
        with_cb = solve.lower(problem.with_callback(1)).as_text()
        assert with_cb.lower().count("callback") >= 1


def test_curve_fit_forwards_the_callback():
    def model(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    def model_np(x, a, b, c):
        return a * np.exp(-b * x) + c

    ref_seen, ref_cb = _recorder()
    seen, cb = _recorder()
    ref = so.curve_fit(model_np, X, Y, p0=X0, method="trf", callback=ref_cb, jac="2-point")
    got = curve_fit(model, X, Y, p0=X0, method="trf", callback=cb)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    assert [r.nit for r in seen] == list(range(1, len(seen) + 1))
    assert abs(len(seen) - len(ref_seen)) <= 1
