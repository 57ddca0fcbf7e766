"""A single Levenberg-Marquardt fit takes the Gram route (nlsq._reduce) when it is
safe: its results equal the QR route's, and a fit whose Gram route loses digits is
run again by the QR program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nlsq import _solve, curve_fit, least_squares
from nlsq._lm import single_fit_by_gram


def exp_model(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def gauss_model(x, a, mu, s, c):
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + c


def rational_model(x, a, b, c):
    return a / (1 + b * x) + c * x


def quadratic(x, a, b, c):
    return a + b * x + c * x * x


def _data(model, p, n, x0=0.0, x1=4.0, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(x0, x1, n)
    return x, np.asarray(model(x, *p)) + 0.02 * rng.standard_normal(n)


@pytest.fixture
def problems(monkeypatch):
    """Every Problem run by a fit, and the program that ran it ('solve' / 'solve_by_qr')."""
    seen = []
    run = _solve._run

    def spy(problem, fit_id, rows=True, program=None):
        seen.append((problem, "solve_by_qr" if program is _solve.solve_by_qr else "solve"))
        return run(problem, fit_id, rows, program)

    monkeypatch.setattr(_solve, "_run", spy)
    return seen


def _qr_route(monkeypatch):
    """Fits from now on by the QR program (the reference)."""
    monkeypatch.setattr(_solve, "solve", _solve.solve_by_qr)


def _has_qr(problem) -> bool:
    with jax.enable_x64(True):
        return "geqrf" in _solve.solve.lower(problem).as_text()


def test_eligible_fit_has_no_lapack_qr(problems):
    x, y = _data(exp_model, (2.5, 1.3, 0.5), 300)
    curve_fit(exp_model, x, y, p0=[1, 1, 0], method="lm")
    (problem, program), *_ = problems
    assert program == "solve" and not _has_qr(problem)
    with jax.enable_x64(True):
        assert "geqrf" in _solve.solve_by_qr.lower(problem).as_text()
    # scipy's 'lm' ignores `callback` (with a warning), so no fit gets here with one;
    # a problem that calls back must keep the driver's loop (no call repeated).
    assert single_fit_by_gram(problem) and not single_fit_by_gram(problem.with_callback(1))


@pytest.mark.parametrize(
    "options",
    [
        {"method": "trf"},
        {"method": "lm", "jac": "2-point"},
        {"method": "lm", "nine_parameters": True},
    ],
    ids=["trf", "finite-differences", "p=9"],
)
def test_ineligible_fits_keep_the_qr_route(problems, options, capsys):
    options = dict(options)
    if options.pop("nine_parameters", False):

        def model(x, *p):
            return sum(p[k] * jnp.cos(k * x) for k in range(9))

        p0 = np.ones(9)
    else:
        model, p0 = exp_model, [1, 1, 0]
    x, y = _data(exp_model, (2.5, 1.3, 0.5), 300)
    curve_fit(model, x, y, p0=p0, **options)
    (problem, program), *_ = problems
    assert program == "solve" and _has_qr(problem)


CASES = [
    (exp_model, (2.5, 1.3, 0.5), [1.0, 1.0, 0.0], 0.0, 4.0),
    (gauss_model, (3.0, 1.2, 0.4, 0.1), [2.0, 1.0, 0.5, 0.0], -1.0, 3.0),
    (rational_model, (2.0, 0.7, 0.3), [1.0, 1.0, 1.0], 0.0, 5.0),
]


@pytest.mark.parametrize("n", [40, 1000])
@pytest.mark.parametrize("case", range(len(CASES)), ids=["exp", "gauss", "rational"])
@pytest.mark.parametrize("sigma", [False, True])
def test_gram_route_equals_qr_route(monkeypatch, problems, case, n, sigma):
    model, p_true, p0, x0, x1 = CASES[case]
    x, y = _data(model, p_true, n, x0, x1, seed=case)
    kw = {"sigma": 0.02 + 0.01 * np.abs(np.sin(x))} if sigma else {}
    gram = curve_fit(model, x, y, p0=p0, method="lm", full_output=True, **kw)
    assert [program for _, program in problems] == ["solve"]
    assert not _has_qr(problems[0][0])
    _qr_route(monkeypatch)
    qr = curve_fit(model, x, y, p0=p0, method="lm", full_output=True, **kw)
    _assert_same_fit(gram, qr)


def _assert_same_fit(got, want):
    popt, pcov, info, msg, ier = got
    popt_q, pcov_q, info_q, msg_q, ier_q = want
    np.testing.assert_allclose(popt, popt_q, rtol=1e-10, atol=0)
    np.testing.assert_allclose(pcov, pcov_q, rtol=1e-8, atol=1e-14 * np.abs(pcov_q).max())
    assert info["nfev"] == info_q["nfev"] and ier == ier_q and msg == msg_q
    assert info["fvec"].shape == info_q["fvec"].shape
    np.testing.assert_allclose(info["fvec"], info_q["fvec"], rtol=1e-9, atol=1e-12)
    cost, cost_q = (0.5 * np.dot(i["fvec"], i["fvec"]) for i in (info, info_q))
    np.testing.assert_allclose(cost, cost_q, rtol=1e-12)


def test_least_squares_result_fields_equal_qr_route(monkeypatch, problems):
    x, y = _data(exp_model, (2.5, 1.3, 0.5), 200)

    def fun(p):
        return exp_model(x, *p) - y

    gram = least_squares(fun, np.array([1.0, 1.0, 0.0]), method="lm")
    assert [program for _, program in problems] == ["solve"]
    assert not _has_qr(problems[0][0])
    _qr_route(monkeypatch)
    qr = least_squares(fun, np.array([1.0, 1.0, 0.0]), method="lm")
    assert gram.nfev == qr.nfev and gram.njev == qr.njev and gram.status == qr.status
    np.testing.assert_allclose(gram.x, qr.x, rtol=1e-10)
    np.testing.assert_allclose(gram.cost, qr.cost, rtol=1e-12)
    assert gram.fun.shape == qr.fun.shape and gram.jac.shape == qr.jac.shape == (200, 3)
    np.testing.assert_allclose(gram.fun, qr.fun, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gram.jac, qr.jac, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gram.grad, qr.grad, rtol=1e-6, atol=1e-12 * np.abs(qr.jac).max())
    np.testing.assert_allclose(gram.optimality, qr.optimality, rtol=1e-6, atol=1e-12)


def _ill_conditioned():
    # Columns 1, x, x^2 on [100, 101]: nearly dependent (scaled pivot ~1e-10).
    rng = np.random.default_rng(3)
    x = np.linspace(100, 101, 60)
    return x, 1 + 2 * x - 0.5 * x * x + 0.01 * rng.standard_normal(x.size)


def test_ill_conditioned_fit_is_refitted_by_qr(monkeypatch, problems):
    x, y = _ill_conditioned()
    refit = curve_fit(quadratic, x, y, p0=[1.0, 1.0, 1.0], method="lm", full_output=True)
    assert [program for _, program in problems] == ["solve", "solve_by_qr"]
    # Without the refit the Gram route's answer is not the QR route's: the refit matters.
    monkeypatch.setattr(_solve, "MIN_SINGLE_GRAM_PIVOT_RATIO", 0.0)
    gram_only = curve_fit(quadratic, x, y, p0=[1.0, 1.0, 1.0], method="lm", full_output=True)
    _qr_route(monkeypatch)
    qr = curve_fit(quadratic, x, y, p0=[1.0, 1.0, 1.0], method="lm", full_output=True)
    _assert_same_fit(refit, qr)
    with pytest.raises(AssertionError):
        _assert_same_fit(gram_only, qr)


def test_verbose_fits_take_the_gram_route_and_a_rerun_writes_a_second_table(
    monkeypatch, problems, capsys
):
    x, y = _data(exp_model, (2.5, 1.3, 0.5), 300)
    gram = curve_fit(exp_model, x, y, p0=[1, 1, 0], method="lm", verbose=2, full_output=True)
    one_table = capsys.readouterr().out
    assert not _has_qr(problems[0][0])
    assert one_table.count("Iteration") == 1 and "nlsq:" not in one_table
    gram_program = _solve.solve
    _qr_route(monkeypatch)
    qr = curve_fit(exp_model, x, y, p0=[1, 1, 0], method="lm", verbose=2, full_output=True)
    assert capsys.readouterr().out == one_table  # the same table, row for row
    _assert_same_fit(gram, qr)
    monkeypatch.setattr(_solve, "solve", gram_program)
    # An ill-conditioned verbose fit: the Gram route's table, one line, the QR route's.
    problems.clear()
    x, y = _ill_conditioned()
    refit = curve_fit(quadratic, x, y, p0=[1.0, 1.0, 1.0], method="lm", verbose=2)
    out = capsys.readouterr().out
    assert [program for _, program in problems] == ["solve", "solve_by_qr"]
    first, note, second = out.partition("the fit runs again by the QR route:\n")
    assert note and "nlsq: the Gram route lost digits" in first, out
    assert first.count("Iteration") == 1 and second.count("Iteration") == 1, out
    assert "Function evaluations" in first and "Function evaluations" in second
    quiet = curve_fit(quadratic, x, y, p0=[1.0, 1.0, 1.0], method="lm")
    np.testing.assert_array_equal(refit[0], quiet[0])
    assert capsys.readouterr().out == ""


def test_padded_gram_fit_equals_unpadded(problems):
    x, y = _data(exp_model, (2.5, 1.3, 0.5), 300)
    padded = curve_fit(exp_model, x, y, p0=[1, 1, 0], method="lm", full_output=True, buckets=True)
    plain = curve_fit(exp_model, x, y, p0=[1, 1, 0], method="lm", full_output=True, buckets=False)
    with jax.enable_x64(True):  # ``m`` traces the model, as the solver does
        assert problems[0][0].m > 300 and problems[1][0].m == 300  # padded, then not
    assert not _has_qr(problems[0][0])
    np.testing.assert_allclose(padded[0], plain[0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(padded[1], plain[1], rtol=1e-10)
    assert padded[2]["nfev"] == plain[2]["nfev"] and padded[4] == plain[4]
    np.testing.assert_allclose(padded[2]["fvec"], plain[2]["fvec"], rtol=1e-10, atol=1e-12)
