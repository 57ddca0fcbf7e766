"""curve_fit against scipy.optimize.curve_fit(method='trf'), plus its API surface."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import nlsq
import numpy as np
import pytest
import scipy.optimize as so
from nlsq import CurveFit, HostFallbackWarning, _kernel, curve_fit
from nlsq._verbose import RowKind

RNG = np.random.default_rng(20261125)
X = np.linspace(0.0, 4.0, 120)


def _models(xp):
    """The battery's models written once for a namespace (jax.numpy or numpy)."""

    def exp_model(x, a, b, c):
        return a * xp.exp(-b * x) + c

    def gauss_model(x, a, mu, s):
        return a * xp.exp(-((x - mu) ** 2) / (2 * s**2))

    def rational_model(x, a, b, c):
        return (a + b * x) / (1 + c * x)

    def plane_model(x, a, b, c):
        # Two predictors: xdata has shape (n, 2).
        return a * xp.exp(-b * x[:, 0]) + c * x[:, 1]

    return exp_model, gauss_model, rational_model, plane_model


JAX_MODELS = _models(jnp)
exp_model, gauss_model, rational_model, plane_model = JAX_MODELS
NUMPY_TWIN = dict(zip(JAX_MODELS, _models(np), strict=True))
exp_model_np = NUMPY_TWIN[exp_model]


def _noisy(y, scale=0.02):
    return y + scale * RNG.standard_normal(y.shape)


Y_EXP = _noisy(2.5 * np.exp(-1.3 * X) + 0.5)
Y_GAUSS = _noisy(3.0 * np.exp(-((X - 2.1) ** 2) / (2 * 0.6**2)))
Y_RAT = _noisy((1.0 + 2.0 * X) / (1 + 0.7 * X))
X2 = np.column_stack([X, RNG.uniform(0, 1, X.size)])
Y_PLANE = _noisy(2.0 * np.exp(-0.8 * X2[:, 0]) + 1.5 * X2[:, 1])
SIGMA = 0.01 + 0.03 * RNG.random(X.size)
COV = np.diag(SIGMA**2) + 2e-5 * np.exp(-np.abs(X[:, None] - X[None, :]))
Y_OUTLIERS = Y_EXP.copy()
Y_OUTLIERS[::15] += 1.0


def assert_matches_scipy(popt, pcov, popt_s, pcov_s):
    np.testing.assert_allclose(popt, popt_s, rtol=1e-6, atol=1e-12)
    # pcov to 1e-4 relative, measured on the scale of each entry's variances.
    scale = np.sqrt(np.outer(np.diag(pcov_s), np.diag(pcov_s)))
    np.testing.assert_array_less(np.abs(pcov - pcov_s), 1e-4 * scale + 1e-300)


BATTERY = {
    "exp": (exp_model, X, Y_EXP, dict(p0=[1, 1, 1])),
    "exp-p0-inferred": (exp_model, X, Y_EXP, {}),
    "exp-bounds": (exp_model, X, Y_EXP, dict(p0=[1, 1, 0.1], bounds=([0, 0, 0], [10, 10, 5]))),
    "exp-active-bound": (
        exp_model,
        X,
        Y_EXP,
        dict(p0=[1, 1, 0.1], bounds=([0, 0, -1], [10, 10, 0.4])),
    ),
    "exp-Bounds-object": (
        exp_model,
        X,
        Y_EXP,
        dict(p0=[1, 2, 0.1], bounds=so.Bounds([0, 1.35, 0], [10, 10, 5])),
    ),
    "exp-sigma-1d": (exp_model, X, Y_EXP, dict(p0=[1, 1, 1], sigma=SIGMA)),
    "exp-sigma-1d-absolute": (
        exp_model,
        X,
        Y_EXP,
        dict(p0=[1, 1, 1], sigma=SIGMA, absolute_sigma=True),
    ),
    "exp-sigma-2d": (exp_model, X, Y_EXP, dict(p0=[1, 1, 1], sigma=COV)),
    "exp-sigma-2d-absolute": (
        exp_model,
        X,
        Y_EXP,
        dict(p0=[1, 1, 1], sigma=COV, absolute_sigma=True),
    ),
    "exp-soft_l1": (exp_model, X, Y_OUTLIERS, dict(p0=[1, 1, 1], loss="soft_l1", f_scale=0.1)),
    "exp-huber": (exp_model, X, Y_OUTLIERS, dict(p0=[1, 1, 1], loss="huber", f_scale=0.1)),
    "exp-cauchy": (exp_model, X, Y_OUTLIERS, dict(p0=[1, 1, 1], loss="cauchy", f_scale=0.1)),
    "exp-arctan": (exp_model, X, Y_OUTLIERS, dict(p0=[1, 1, 1], loss="arctan", f_scale=0.1)),
    "exp-huber-bounds": (
        exp_model,
        X,
        Y_OUTLIERS,
        dict(p0=[1, 1, 0.1], loss="huber", f_scale=0.1, bounds=(0, [10, 10, 0.45])),
    ),
    "exp-x_scale-jac": (exp_model, X, Y_EXP, dict(p0=[1, 1, 1], x_scale="jac")),
    "gauss": (gauss_model, X, Y_GAUSS, dict(p0=[1, 2, 1])),
    "gauss-bounds": (gauss_model, X, Y_GAUSS, dict(p0=[1, 2, 1], bounds=(0, [10, 4, 3]))),
    "rational": (rational_model, X, Y_RAT, dict(p0=[1, 1, 1])),
    "two-predictors": (plane_model, X2, Y_PLANE, dict(p0=[1, 1, 1])),
}


@pytest.mark.parametrize("case", list(BATTERY))
def test_agrees_with_scipy_trf(case):
    model, x, y, kw = BATTERY[case]
    popt, pcov = curve_fit(model, x, y, method="trf", **kw)
    popt_s, pcov_s = so.curve_fit(NUMPY_TWIN[model], x, y, method="trf", **kw)
    assert isinstance(popt, np.ndarray) and popt.dtype == np.float64
    assert pcov.shape == (popt.size, popt.size)
    assert_matches_scipy(popt, pcov, popt_s, pcov_s)


def test_active_bound_is_reached():
    _, x, y, kw = BATTERY["exp-active-bound"]
    popt, _ = curve_fit(exp_model, x, y, **kw)
    assert popt[2] == pytest.approx(0.4, abs=1e-8)


def test_full_output_matches_scipy_fields():
    popt, pcov, info, mesg, ier = curve_fit(
        exp_model, X, Y_EXP, p0=[1, 1, 1], method="trf", full_output=True
    )
    _, _, info_s, mesg_s, ier_s = so.curve_fit(
        exp_model_np, X, Y_EXP, p0=[1, 1, 1], method="trf", full_output=True
    )
    assert set(info) == set(info_s)
    assert (ier, mesg) == (ier_s, mesg_s)
    assert info["nfev"] == info_s["nfev"]
    np.testing.assert_allclose(info["fvec"], info_s["fvec"], rtol=1e-6, atol=1e-10)


def test_lm_method_agrees_with_scipy_lm():
    popt, pcov = curve_fit(exp_model, X, Y_EXP, p0=[1, 1, 1], method="lm")
    popt_s, pcov_s = so.curve_fit(exp_model_np, X, Y_EXP, p0=[1, 1, 1], method="lm")
    assert_matches_scipy(popt, pcov, popt_s, pcov_s)


@pytest.mark.parametrize("case", ["exp", "exp-p0-inferred", "gauss", "rational", "exp-sigma-1d"])
def test_default_method_without_bounds_is_lm_as_in_scipy(case):
    model, x, y, kw = BATTERY[case]
    popt, pcov = curve_fit(model, x, y, **kw)
    popt_lm, pcov_lm = curve_fit(model, x, y, method="lm", **kw)
    np.testing.assert_array_equal(popt, popt_lm)
    np.testing.assert_array_equal(pcov, pcov_lm)
    popt_s, pcov_s = so.curve_fit(NUMPY_TWIN[model], x, y, **kw)  # scipy's default: 'lm'
    assert_matches_scipy(popt, pcov, popt_s, pcov_s)


@pytest.mark.parametrize("case", ["exp-bounds", "exp-active-bound", "gauss-bounds"])
def test_default_method_with_bounds_is_trf_as_in_scipy(case):
    model, x, y, kw = BATTERY[case]
    popt, pcov = curve_fit(model, x, y, **kw)
    popt_trf, pcov_trf = curve_fit(model, x, y, method="trf", **kw)
    np.testing.assert_array_equal(popt, popt_trf)
    np.testing.assert_array_equal(pcov, pcov_trf)
    popt_s, pcov_s = so.curve_fit(NUMPY_TWIN[model], x, y, **kw)  # scipy's default: 'trf'
    assert_matches_scipy(popt, pcov, popt_s, pcov_s)


def test_default_method_with_robust_loss_is_trf():
    # scipy's default would be 'lm' (leastsq), which rejects `loss` with a TypeError;
    # nlsq takes 'trf', the method scipy's own `least_squares` defaults to.
    kw = dict(p0=[1, 1, 1], loss="soft_l1", f_scale=0.1)
    popt, _ = curve_fit(exp_model, X, Y_OUTLIERS, **kw)
    popt_trf, _ = curve_fit(exp_model, X, Y_OUTLIERS, method="trf", **kw)
    np.testing.assert_array_equal(popt, popt_trf)
    with pytest.raises(TypeError):
        so.curve_fit(exp_model_np, X, Y_OUTLIERS, **kw)


def test_user_jacobian_and_finite_differences():
    def jac(x, a, b, c):
        e = jnp.exp(-b * x)
        return jnp.stack([e, -a * x * e, jnp.ones_like(x)], axis=1)

    popt_s, pcov_s = so.curve_fit(exp_model_np, X, Y_EXP, p0=[1, 1, 1], method="trf")
    for j in (jac, "2-point", "3-point", "cs"):
        popt, pcov = curve_fit(exp_model, X, Y_EXP, p0=[1, 1, 1], jac=j)
        np.testing.assert_allclose(popt, popt_s, rtol=1e-6)


def test_second_fit_of_same_shape_does_not_retrace():
    traces = []

    def model(x, a, b):
        traces.append(1)  # runs only while JAX traces the model
        return a * jnp.exp(-b * x)

    y1 = _noisy(2.0 * np.exp(-0.7 * X))
    y2 = _noisy(1.5 * np.exp(-0.4 * X))
    p1, _ = curve_fit(model, X, y1, p0=[1, 1])
    n_traces = len(traces)
    assert n_traces > 0
    p2, _ = curve_fit(model, X, y2, p0=[0.5, 0.5])
    p3, _ = CurveFit(model).fit(X + 0.01, y1, p0=[1.0, 1.0], ftol=1e-9)
    assert len(traces) == n_traces, "a refit with new data of the same shape retraced"
    np.testing.assert_allclose(p2, [1.5, 0.4], rtol=0.1)
    assert not np.allclose(p1, p2)
    # A new shape compiles again (and only then).
    curve_fit(model, X[:50], y1[:50], p0=[1, 1])
    assert len(traces) > n_traces


def test_float64_without_flipping_global_x64_flag():
    before = jax.config.jax_enable_x64
    popt, pcov = curve_fit(exp_model, X, Y_EXP, p0=[1, 1, 1])
    assert popt.dtype == np.float64 and pcov.dtype == np.float64
    assert jax.config.jax_enable_x64 == before


def test_jax_array_inputs():
    popt, _ = curve_fit(exp_model, jnp.asarray(X), jnp.asarray(Y_EXP), p0=[1, 1, 1])
    popt_s, _ = so.curve_fit(exp_model_np, X, Y_EXP, p0=[1, 1, 1], method="trf")
    np.testing.assert_allclose(popt, popt_s, rtol=1e-5)


def test_numpy_model_falls_back_to_host_with_one_warning():
    def np_only(x, a, b, c):
        return a * np.exp(-b * x) + c

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        popt, pcov = curve_fit(np_only, X, Y_EXP, p0=[1, 1, 1])
        popt2, _ = curve_fit(np_only, X, Y_EXP + 0.1, p0=[1, 1, 1])
    host = [w for w in caught if issubclass(w.category, HostFallbackWarning)]
    assert len(host) == 1
    assert "np_only" in str(host[0].message) and "host" in str(host[0].message)
    popt_s, pcov_s = so.curve_fit(np_only, X, Y_EXP, p0=[1, 1, 1], method="trf")
    assert_matches_scipy(popt, pcov, popt_s, pcov_s)
    np.testing.assert_allclose(popt2[2], popt_s[2] + 0.1, rtol=1e-6)


def test_numpy_model_with_bounds_falls_back():
    def np_bounded(x, a, b, c):
        return a * np.exp(-b * x) + c

    kw = dict(p0=[1, 1, 0.1], bounds=([0, 0, -1], [10, 10, 0.4]))
    with pytest.warns(HostFallbackWarning):
        popt, _ = curve_fit(np_bounded, X, Y_EXP, **kw)
    popt_s, _ = so.curve_fit(np_bounded, X, Y_EXP, method="trf", **kw)
    np.testing.assert_allclose(popt, popt_s, rtol=1e-6)


def test_covariance_not_estimable_warns_and_is_inf():
    # Parameters a and b enter only as a*b: J is rank deficient -> pcov stays finite in
    # scipy (pseudo-inverse), but with as many points as parameters it is inf.
    x = np.array([0.0, 1.0, 2.0])
    y = np.array([1.0, 0.5, 0.3])
    with pytest.warns(so.OptimizeWarning, match="Covariance of the parameters"):
        _, pcov = curve_fit(exp_model, x, y, p0=[1, 1, 0])
    assert np.all(np.isinf(pcov))


def test_nan_policy_omit_and_raise():
    y = Y_EXP.copy()
    y[[3, 40]] = np.nan
    popt, _ = curve_fit(exp_model, X, y, p0=[1, 1, 1], nan_policy="omit")
    popt_s, _ = so.curve_fit(exp_model_np, X, y, p0=[1, 1, 1], method="trf", nan_policy="omit")
    np.testing.assert_allclose(popt, popt_s, rtol=1e-6)
    with pytest.raises(ValueError, match="nan"):
        curve_fit(exp_model, X, y, p0=[1, 1, 1], nan_policy="raise")
    with pytest.raises(ValueError, match="propagate"):
        curve_fit(exp_model, X, y, p0=[1, 1, 1], nan_policy="propagate")


def test_max_nfev_exhausted_raises_runtime_error():
    with pytest.raises(RuntimeError, match="Optimal parameters not found: The maximum"):
        curve_fit(exp_model, X, Y_EXP, p0=[1, 1, 1], max_nfev=2)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(p0=[1, 1, 1], check_finite=True, ydata_nan=True), ValueError, "infs or NaNs"),
        (dict(p0=[1, 1, 1], bounds=([0, 0, 0], [1, 1])), ValueError, "Inconsistent shapes"),
        (dict(p0=[1, 1, 1], bounds=([0, 2, 0], [5, 1, 5])), ValueError, "strictly less"),
        (dict(p0=[1, 1, 9], bounds=(0, 5)), ValueError, "outside of provided bounds"),
        (dict(p0=[1, 1, 1], method="lm", bounds=(0, 5)), ValueError, "unconstrained"),
        (dict(p0=[1, 1, 1], method="newton"), ValueError, "`method` must be"),
        (dict(p0=[1, 1, 1], loss="l3"), ValueError, "`loss` must be one of"),
        (dict(p0=[1, 1, 1], sigma=np.ones(7)), ValueError, "`sigma` has incorrect shape"),
        (dict(p0=[1, 1, 1], sigma=-np.eye(120)), ValueError, "positive definite"),
        (dict(p0=[1, 1, 1], x_scale=-1.0), ValueError, "x_scale"),
        (dict(p0=[1, 1, 1], max_nfev=0), ValueError, "max_nfev"),
        (dict(p0=[1, 1, 1], ftol=0, xtol=0, gtol=0), ValueError, "tolerances"),
        (dict(p0=[1, 1, 1], verbose=3), ValueError, "verbose"),
        (dict(p0=[1, 1, 1], args=(1,)), ValueError, "'args'"),
        (dict(p0=[1, 1, 1], bogus=1), TypeError, "bogus"),
        (dict(p0=[[1, 1, 1]]), ValueError, "at most 1 dimension"),
    ],
)
def test_bad_input_errors(kwargs, exc, match):
    kwargs = dict(kwargs)
    y = Y_EXP.copy()
    if kwargs.pop("ydata_nan", False):
        y[5] = np.nan
    with warnings.catch_warnings():
        # Tolerances below machine epsilon warn (as in scipy) before the error.
        warnings.filterwarnings("ignore", "Setting `[fxg]tol` below", UserWarning)
        with pytest.raises(exc, match=match):
            curve_fit(exp_model, X, y, **kwargs)


def test_fewer_data_than_parameters():
    with pytest.raises(TypeError, match="must not exceed the number of data points"):
        curve_fit(exp_model, X[:2], Y_EXP[:2], p0=[1, 1, 1])


def test_empty_ydata_and_model_shape_mismatch():
    with pytest.raises(ValueError, match="must not be empty"):
        curve_fit(exp_model, X[:0], Y_EXP[:0], p0=[1, 1, 1])
    with pytest.raises(ValueError, match="shape"):
        curve_fit(lambda x, a, b: a * jnp.ones((3,)) + b, X, Y_EXP, p0=[1, 1])


def test_non_finite_initial_residuals():
    with pytest.raises(ValueError, match="Residuals are not finite in the initial point"):
        curve_fit(lambda x, a, b: a * jnp.log(b * x - 10.0), X, Y_EXP, p0=[1, 1])


def test_cannot_infer_parameters():
    with pytest.raises(ValueError, match="Unable to determine number of fit parameters"):
        curve_fit(lambda *args: args[0], X, Y_EXP)


def test_exports():
    assert nlsq.__version__
    assert nlsq.OptimizeWarning is so.OptimizeWarning
    assert callable(nlsq.least_squares) and callable(nlsq.curve_fit)


def _captured_solver_call(monkeypatch, **fit_kwargs):
    """Run a fit while recording the jaxpr of the jitted solver it called."""
    import nlsq._solve as solve_module

    calls = []
    original = solve_module.solve

    def recording(problem):
        calls.append(problem)
        return original(problem)

    monkeypatch.setattr(solve_module, "solve", recording)
    curve_fit(exp_model, X, Y_EXP, p0=[1, 1, 1], **fit_kwargs)
    problem, *_ = calls
    with jax.enable_x64(True):
        return original.trace(problem).jaxpr.jaxpr


def _primitives(jaxpr, depth=0, out=None):
    """(depth, primitive name) of every equation, descending into sub-jaxprs."""
    out = [] if out is None else out
    for eqn in jaxpr.eqns:
        out.append((depth, eqn.primitive.name))
        for param in eqn.params.values():
            subs = param if isinstance(param, (list, tuple)) else [param]
            for sj in subs:
                inner = getattr(sj, "jaxpr", sj)
                if hasattr(inner, "eqns"):
                    _primitives(inner, depth + 1, out)
    return out


def test_a_small_lm_fit_logs_the_rows_its_start_kernel_kept(monkeypatch):
    """A small logged 'lm' fit: the start and first steps are one kernel keeping their
    rows; row 0 and then the block of kept rows are logged after it, and any later
    steps from the loop (nlsq._driver.run)."""
    kinds = []

    def fake_make_log_row(verbose):
        def log_row(row, kind, valid=None):
            kinds.append(kind)

        return log_row if verbose else None

    monkeypatch.setattr("nlsq._driver.make_log_row", fake_make_log_row)
    monkeypatch.setattr("nlsq._solve.log_header", lambda verbose: None)
    monkeypatch.setattr("nlsq._solve.log_closing", lambda *a: None)
    before = _kernel.traced_kernels()
    _captured_solver_call(monkeypatch, verbose=2)
    assert _kernel.traced_kernels() > before
    first, block, rest, closing = (
        RowKind.FIRST,
        RowKind.ITERATIONS,
        RowKind.ITERATION,
        RowKind.CLOSING,
    )
    assert kinds[:4] == [first, block, rest, closing]


def test_iteration_loop_is_one_compiled_while_loop(monkeypatch):
    prims = _primitives(_captured_solver_call(monkeypatch))
    # verbose=0: no host callback anywhere, so no host round trip per iteration.
    assert not [p for _, p in prims if "callback" in p]
    # One top-level while (the iteration loop); the trial loop and the
    # trust-region secular-equation loop are nested inside it.  A small 'lm' fit's
    # program is one kernel (nlsq._kernel): a single nested jit holds the loop.
    top = [p for d, p in prims if d == 0]
    if "while" not in top:
        assert sum(p in ("jit", "pjit") for p in top) == 1
        top = [p for d, p in prims if d == 1]
    assert top.count("while") == 1
    assert sum(p == "while" for _, p in prims) >= 3


def test_verbose_rows_are_pushed_from_inside_the_loop(monkeypatch):
    pushes = []

    def fake_make_log_row(verbose):
        # Stand-in for the ring template: a host callback per row, traced in the loop.
        def log_row(row, kind):
            if kind is RowKind.CLOSING:  # the closing lines, after the loop
                return
            jax.debug.callback(lambda it: pushes.append(int(it)), row.iteration)

        return log_row if verbose else None

    monkeypatch.setattr("nlsq._driver.make_log_row", fake_make_log_row)
    monkeypatch.setattr("nlsq._solve.log_header", lambda verbose: None)
    monkeypatch.setattr("nlsq._solve.log_closing", lambda *a: None)
    # Every fit but a small 'lm' one (whose first steps are one kernel keeping
    # their rows: test_a_small_lm_fit_logs_the_rows_its_start_kernel_kept) logs
    # its rows from inside the loop.
    prims = _primitives(_captured_solver_call(monkeypatch, verbose=2, ftol=1e-9, method="trf"))
    callbacks = [d for d, p in prims if "callback" in p]
    assert 0 in callbacks and max(callbacks) >= 1  # row 0 before the loop, rows inside
    assert pushes == list(range(len(pushes))) and len(pushes) > 3
