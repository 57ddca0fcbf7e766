"""curve_fit_many (nlsq._many): every fit of a batch equals curve_fit on its dataset alone;
verbose tables of a batch, and of concurrent threads, are written whole."""

from __future__ import annotations

import re
import threading

import jax.numpy as jnp
import numpy as np
import pytest
from nlsq import curve_fit, curve_fit_many
from nlsq.utils import async_logger


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
    np.testing.assert_allclose(many.pcov[i], pcov, rtol=1e-8, atol=1e-300)
    assert many.nfev[i] == info["nfev"] and many.status[i] == ier and many.message[i] == msg
    np.testing.assert_allclose(many.cost[i], 0.5 * np.dot(info["fvec"], info["fvec"]), rtol=1e-10)
    assert many.success[i]


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


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "fit.log"
    async_logger.configure(sink=str(path))
    try:
        yield path
    finally:
        async_logger.configure()


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
