"""curve_fit_many (nlsq._many): every fit of a batch equals curve_fit on its dataset alone;
verbose tables of a batch, and of concurrent threads, are written whole."""

from __future__ import annotations

import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nlsq import curve_fit, curve_fit_many
from scipy.optimize import OptimizeWarning


def exp_model(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def _datasets(batch, seed=0, lengths=(40, 250)):
    rng = np.random.default_rng(seed)
    xs, ys, sig = [], [], []
    for i in range(batch):
        n = int(rng.integers(*lengths))
        x = np.linspace(0, 5, n)
        s = 0.02 + 0.05 * rng.random(n)
        xs.append(x)
        ys.append((1.5 + 0.2 * i) * np.exp(-(0.7 + 0.1 * i) * x) + 0.3 + s * rng.standard_normal(n))
        sig.append(s)
    return xs, ys, sig


def _check_equal(many, i, alone):
    popt, pcov, info, msg, ier = alone
    np.testing.assert_allclose(many.popt[i], popt, rtol=1e-10)
    # Entries that are zero but for rounding (e.g. symmetric xdata) are compared
    # against the matrix's scale, the others to 1e-8 relative.
    scale = np.abs(pcov).max() if np.all(np.isfinite(pcov)) else 0.0
    np.testing.assert_allclose(many.pcov[i], pcov, rtol=1e-8, atol=1e-14 * scale)
    assert many.nfev[i] == info["nfev"] and many.status[i] == ier and many.message[i] == msg
    np.testing.assert_allclose(many.cost[i], 0.5 * np.dot(info["fvec"], info["fvec"]), rtol=1e-10)
    assert many.success[i]


def test_one_dataset_given_as_a_broadcast_row():
    # ``y[None]`` is a stride-0 view, as a shared ``xdata`` row is: it must stay
    # the one dataset's own row (a batch of one), not be read as shared.
    xs, ys, _ = _datasets(1, lengths=(60, 61))
    x, y = xs[0], ys[0]
    many = curve_fit_many(exp_model, x, y[None], p0=[1, 0.5, 0.1])
    assert many.popt.shape == (1, 3)
    _check_equal(many, 0, curve_fit(exp_model, x, y, p0=[1, 0.5, 0.1], full_output=True))


def test_sequences_of_different_lengths_with_sigma():
    xs, ys, sig = _datasets(5)
    # method=None follows curve_fit's rule ('lm' here: no bounds, linear loss), so the
    # default batch equals the default curve_fit; an explicit method equals that method.
    for method in (None, "trf"):
        many = curve_fit_many(exp_model, xs, ys, p0=[1, 0.5, 0.1], sigma=sig, method=method)
        assert many.popt.shape == (5, 3) and many.pcov.shape == (5, 3, 3)
        assert len(many.message) == 5
        for i in range(5):
            alone = curve_fit(
                exp_model,
                xs[i],
                ys[i],
                p0=[1, 0.5, 0.1],
                sigma=sig[i],
                method=method,
                full_output=True,
            )
            _check_equal(many, i, alone)


def test_arrays_with_per_dataset_p0_and_bounds():
    xs, ys, _ = _datasets(4, seed=1, lengths=(120, 121))
    X, Y = np.stack(xs), np.stack(ys)
    p0 = np.array([[1.0, 0.5, 0.1], [2.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.2, 0.2]])
    lb = np.zeros((4, 3))
    ub = np.array([[5.0, 5, 5], [3, 3, 3], [10, 10, 10], [4, 4, 1]])
    many = curve_fit_many(exp_model, X, Y, p0=p0, bounds=(lb, ub))
    for i in range(4):
        alone = curve_fit(exp_model, X[i], Y[i], p0=p0[i], bounds=(lb[i], ub[i]), full_output=True)
        _check_equal(many, i, alone)
    # Shared 1-D xdata, method 'lm'.
    many = curve_fit_many(exp_model, X[0], Y, p0=p0[0], method="lm")
    for i in range(4):
        alone = curve_fit(exp_model, X[0], Y[i], p0=p0[0], method="lm", full_output=True)
        _check_equal(many, i, alone)


def test_fits_stop_on_their_own_criteria():
    xs, ys, _ = _datasets(3, seed=2)
    # Dataset 1 starts at its optimum's neighbourhood and stops early; the others go on.
    best1, _ = curve_fit(exp_model, xs[1], ys[1], p0=[1, 0.5, 0.1])
    p0 = np.array([[1, 0.5, 0.1], best1, [1, 0.5, 0.1]])
    many = curve_fit_many(exp_model, xs, ys, p0=p0, max_nfev=7)
    assert many.nfev[1] < many.nfev[0]
    for i in range(3):
        try:
            ref = curve_fit(exp_model, xs[i], ys[i], p0=p0[i], max_nfev=7, full_output=True)
        except RuntimeError as err:  # max_nfev reached: curve_fit raises, the batch reports
            assert many.status[i] == 0 and not many.success[i]
            assert many.message[i] in str(err)
        else:
            _check_equal(many, i, ref)


def test_bad_input_is_named():
    xs, ys, _ = _datasets(2)
    with pytest.raises(ValueError, match="dataset 1"):
        curve_fit_many(exp_model, xs, [ys[0], ys[1][:-1]])
    with pytest.raises(ValueError, match="p0"):
        curve_fit_many(exp_model, xs, ys, p0=np.ones((3, 3)))
    with pytest.raises(ValueError, match="jac"):
        curve_fit_many(exp_model, xs, ys, jac=lambda x, a, b, c: x)


def _tables(text: str):
    """Split a log into tables: (header, rows, closing lines), asserting each is whole."""
    lines = text.splitlines()
    tables, i = [], 0
    while i < len(lines):
        assert "Iteration" in lines[i], f"expected a header at line {i}: {lines[i]!r}"
        j = i + 1
        while not lines[j].startswith("Function evaluations"):
            j += 1
        rows, closing = lines[i + 1 : j - 1], lines[j - 1 : j + 1]
        tables.append((lines[i], rows, closing))
        i = j + 1
    return tables


def test_verbose_tables_per_fit(log_file):
    xs, ys, _ = _datasets(3, seed=3)
    many = curve_fit_many(exp_model, xs, ys, p0=[1, 0.5, 0.1], verbose=2)
    tables = _tables(log_file.read_text())
    assert len(tables) == 3
    for i, (header, rows, closing) in enumerate(tables):
        assert header.split()[0] == "Fit"
        fits = {int(r.split()[0]) for r in rows}
        assert fits == {i}  # rows of one fit only
        assert [int(r.split()[1]) for r in rows] == list(range(len(rows)))
        assert int(rows[-1].split()[2]) == many.nfev[i]
        assert closing[0] == many.message[i]
        assert f"Function evaluations {many.nfev[i]}," in closing[1]


def test_verbose_1_one_summary_line_per_fit(log_file):
    xs, ys, _ = _datasets(4, seed=4)
    many = curve_fit_many(exp_model, xs, ys, p0=[1, 0.5, 0.1], verbose=1)
    lines = log_file.read_text().splitlines()
    assert len(lines) == 4
    seen = set()
    for line in lines:
        m = re.fullmatch(r"fit (\d+) finished: nfev (\d+), cost (\S+), status (-?\d+)", line)
        assert m, line
        i = int(m[1])
        seen.add(i)
        assert int(m[2]) == many.nfev[i] and int(m[4]) == many.status[i]
        assert float(m[3]) == pytest.approx(many.cost[i], rel=1e-4)
    assert seen == set(range(4))


def test_concurrent_verbose_fits_do_not_interleave(log_file):
    xs, ys, _ = _datasets(4, seed=5, lengths=(300, 301))
    curve_fit(exp_model, xs[0], ys[0], p0=[1, 0.5, 0.1])  # compile outside the threads
    start = threading.Barrier(4)
    errors = []

    def work(i):
        try:
            start.wait()
            for _ in range(3):
                curve_fit(exp_model, xs[i], ys[i], p0=[1, 0.5, 0.1], verbose=2)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    tables = _tables(log_file.read_text())
    assert len(tables) == 12
    for _, rows, closing in tables:
        iterations = [int(r.split()[0]) for r in rows]
        assert iterations == list(range(len(rows)))  # one fit's rows, in order, complete
        assert f"Function evaluations {int(rows[-1].split()[1])}," in closing[1]


def _svd_matrices():
    rng = np.random.default_rng(7)
    well = rng.standard_normal((3, 3))
    U, _, Vt = np.linalg.svd(rng.standard_normal((3, 3)))
    ill = U @ np.diag([1.0, 1e-6, 1e-13]) @ Vt  # cond 1e13
    rank_deficient = well.copy()
    rank_deficient[:, 2] = 0.0  # a parameter with no effect
    repeated = np.diag([2.0, 2.0, 1.0])
    tall = rng.standard_normal((6, 3))  # TRF's [J_h; diag] for bounded problems
    return [well, ill, rank_deficient, repeated, tall, rng.standard_normal((8, 8))]


@pytest.mark.parametrize("index", range(6))
def test_vectorized_svd_equals_lapack(index):
    """The batched fits' Jacobi SVD gives LAPACK's factors to rounding."""
    import jax
    from nlsq._jax_compat import enable_x64
    from nlsq._reduce import thin_svd, vectorized_small_svd

    A = _svd_matrices()[index]
    with enable_x64(True):
        U_ref, s_ref, Vt_ref = (np.asarray(v) for v in thin_svd(jnp.asarray(A)))
        with vectorized_small_svd():
            jacobi = jax.jit(jax.vmap(thin_svd))  # traced here, inside the switch
            U, s, Vt = (np.asarray(v)[1] for v in jacobi(jnp.stack([2 * A, A])))
    scale = s_ref[0]
    np.testing.assert_allclose(s, s_ref, rtol=0, atol=4e-16 * scale * A.shape[0])
    assert np.all(np.diff(s) <= 0)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(A.shape[1]), atol=1e-14)
    np.testing.assert_allclose((U * s) @ Vt, A, atol=1e-14 * scale)
    # What the solvers use: s, V (up to sign, for distinct s) and U^T f through
    # V diag(s) U^T, the same matrix for either factorization.
    f = np.arange(1.0, A.shape[0] + 1)
    np.testing.assert_allclose(Vt.T @ (s * (U.T @ f)), Vt_ref.T @ (s_ref * (U_ref.T @ f)),
                               atol=1e-13 * scale * np.linalg.norm(f))  # fmt: skip
    distinct = np.abs(np.diff(s_ref)) > 1e-8 * scale
    for k in np.flatnonzero(np.r_[distinct, True] & np.r_[True, distinct]):
        assert abs(abs(Vt[k] @ Vt_ref[k]) - 1) < 1e-10
    if index == 2:  # the zero column: an exactly zero singular value, as LAPACK's
        assert s[-1] == 0.0 and np.all(np.isfinite(U))


def test_vectorized_svd_keeps_rank_deficient_pcov():
    """A batch with a parameter that has no effect: pcov all inf with a warning, as curve_fit."""
    x = np.linspace(0, 4, 60)
    ys = [2.0 * np.exp(-0.8 * x) + 0.1 * np.sin(3 * x + k) for k in range(3)]

    def no_effect(x, a, b, c):
        return a * jnp.exp(-b * x) + 0.0 * c

    with pytest.warns(OptimizeWarning, match="Covariance"):
        many = curve_fit_many(no_effect, x, np.stack(ys), p0=[1.0, 0.5, 0.3])
    for i in range(3):
        with pytest.warns(OptimizeWarning, match="Covariance"):
            alone = curve_fit(no_effect, x, ys[i], p0=[1.0, 0.5, 0.3], full_output=True)
        np.testing.assert_allclose(many.popt[i], alone[0], rtol=1e-10)
        assert np.all(np.isinf(many.pcov[i])) and np.all(np.isinf(alone[1]))
        assert many.nfev[i] == alone[2]["nfev"]


def test_gram_reduction_equals_householder():
    """The batched LM's R and Q^T f from the Gram matrix: Householder's up to row signs,
    and a zero row (zero pivot ratio) for a column with no effect."""
    from nlsq._jax_compat import enable_x64
    from nlsq._reduce import gram_pivot_ratio, reduce_by_gram

    x = np.linspace(0, 5, 64)
    y = 2.0 * np.exp(-0.9 * x) + 0.4 + 0.01 * np.sin(7 * x)
    with enable_x64(True):
        for model in (exp_model, lambda x, a, b, c: a * jnp.exp(-b * x) + 0.0 * c):

            def fun(p, model=model):
                return model(x, *p) - y

            p = jnp.array([1.5, 0.7, 0.2])
            f = fun(p)
            R, qtf, f_squared = (np.asarray(v) for v in reduce_by_gram(fun, p))
            np.testing.assert_allclose(f_squared, np.dot(f, f), rtol=1e-14)
            J = np.asarray(jax.jacfwd(fun)(p))
            Q_h, R_h = np.linalg.qr(J)
            signs = np.sign(np.diag(R_h))
            signs[signs == 0] = 1.0
            scale = np.abs(R_h).max()
            np.testing.assert_allclose(R, signs[:, None] * R_h, atol=1e-13 * scale)
            # Where R's row is zero, Householder's Q^T f holds an arbitrary part of f
            # that nothing downstream reads (R^T Q^T f, U^T Q^T f); the Gram route's is 0.
            live = np.abs(np.diag(R_h)) > 1e-12 * scale
            np.testing.assert_allclose(qtf[live], (signs * (Q_h.T @ np.asarray(f)))[live],
                                       atol=1e-13 * np.linalg.norm(f))  # fmt: skip
            assert np.all(qtf[~live] == 0.0)
            ratio = float(gram_pivot_ratio(jnp.asarray(R)))
            assert (ratio == 0.0) if model is not exp_model else (ratio > 0.1)


def test_ill_conditioned_fits_are_refitted_by_qr(monkeypatch):
    """A batch fit whose Gram route would lose digits (nearly dependent columns) is
    fitted again by the QR route; every fit still equals curve_fit alone."""
    from nlsq import _many

    def quadratic(x, a, b, c):
        return a + b * x + c * x * x

    rng = np.random.default_rng(3)
    xs = [np.linspace(0, 1, 50), np.linspace(100, 101, 60), np.linspace(-1, 1, 40)]
    ys = [1 + 2 * x - 0.5 * x * x + 0.01 * rng.standard_normal(x.size) for x in xs]
    refitted = []
    solve_qr = _many._solve_batch_qr

    def spy(problem, history_len):
        refitted.append(problem.x0.shape[0])
        return solve_qr(problem, history_len)

    monkeypatch.setattr(_many, "_solve_batch_qr", spy)
    many = curve_fit_many(quadratic, xs, ys, p0=[1.0, 1.0, 1.0])
    assert refitted == [1]  # only the fit on [100, 101] (one fit, no padding)
    for i in range(3):
        alone = curve_fit(quadratic, xs[i], ys[i], p0=[1.0, 1.0, 1.0], full_output=True)
        _check_equal(many, i, alone)


def test_pcov_from_triangular_equals_svd_route():
    """The Gram route's covariance (R^-1 R^-T) equals pcov_from_R's where it is settled,
    and says it is not settled where pcov_from_R's rank test could fail."""
    from nlsq._jax_compat import enable_x64
    from nlsq._reduce import pcov_from_R, pcov_from_triangular

    rng = np.random.default_rng(5)
    well = np.linalg.qr(rng.standard_normal((40, 3)), mode="r") * np.array([[1.0], [3.0], [0.2]])
    ill = np.triu(well.copy())
    ill[2, 2] = 1e-15 * np.abs(well).max()
    with enable_x64(True):
        pcov, certain = pcov_from_triangular(jnp.asarray(well), 40.0, 3)
        assert bool(certain)
        np.testing.assert_allclose(pcov, pcov_from_R(jnp.asarray(well), 40.0, 3), rtol=1e-12)
        _, certain = pcov_from_triangular(jnp.asarray(ill), 40.0, 3)
        assert not bool(certain)
        assert np.all(np.isnan(pcov_from_R(jnp.asarray(ill), 40.0, 3)))  # rank deficient there
