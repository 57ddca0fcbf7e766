"""Golden-format tests of the iteration table written through the ring logger.

verbose=2 must be scipy's table: the header, one row per iteration (the first
with blank reduction and step), the termination message and the summary line;
verbose=1 the header, the rows of iterations 0, 10, 20, ... and the two closing
lines.  The table is complete when curve_fit / least_squares return.
"""

from __future__ import annotations

import contextlib
import io
import re

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
from nlsq import curve_fit, least_squares
from nlsq.utils import async_logger

HEADER = "{:^15}{:^15}{:^15}{:^15}{:^15}{:^15}".format(
    "Iteration", "Total nfev", "Cost", "Cost reduction", "Step norm", "Optimality"
)
CLOSING = re.compile(
    r"^Function evaluations (\d+), initial cost (\S+), final cost (\S+), "
    r"first-order optimality (\S+)\.$"
)

X = np.linspace(0.0, 4.0, 80)
Y = 2.5 * np.exp(-1.3 * X) + 0.5 + 0.01 * np.cos(9 * X)


def model(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def model_np(x, a, b, c):
    return a * np.exp(-b * x) + c


def rosen(x):
    return jnp.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def rosen_np(x):
    return np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def _split_row(line: str) -> list[str]:
    assert len(line) == 90, f"row is not 6 x 15 wide: {line!r}"
    return [line[i : i + 15] for i in range(0, 90, 15)]


def check_row(line: str, first: bool) -> tuple[int, int]:
    """Assert ``line`` is a row in scipy's exact format; return (iteration, nfev)."""
    c = _split_row(line)
    it, nfev = int(c[0]), int(c[1])
    assert c[0] == f"{it:^15}" and c[1] == f"{nfev:^15}"
    assert c[2] == f"{float(c[2]):^15.4e}"
    if first:
        assert c[3] + c[4] == " " * 30
    else:
        assert c[3] == f"{float(c[3]):^15.2e}" and c[4] == f"{float(c[4]):^15.2e}"
    assert c[5] == f"{float(c[5]):^15.2e}"
    return it, nfev


def parse_table(text: str):
    lines = text.splitlines()
    assert lines[0] == HEADER
    rows = lines[1:-2]
    parsed = [check_row(r, first=(i == 0)) for i, r in enumerate(rows)]
    return lines, rows, parsed


def scipy_table(fun, *args, **kwargs) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        so.least_squares(fun, *args, verbose=2, **kwargs)
    return buf.getvalue()


def test_verbose2_curve_fit_is_scipys_table(log_file):
    popt, _, info, mesg, ier = curve_fit(model, X, Y, p0=[1, 1, 1], verbose=2, full_output=True)
    # No async_logger.flush() here: curve_fit must have flushed before returning.
    lines, rows, parsed = parse_table(log_file.read_text())
    assert [it for it, _ in parsed] == list(range(len(rows)))
    assert parsed[-1][1] == info["nfev"]
    assert lines[-2] == mesg
    m = CLOSING.match(lines[-1])
    assert m and int(m.group(1)) == info["nfev"]
    assert m.group(2) == f"{float(m.group(2)):.4e}" and m.group(4) == f"{float(m.group(4)):.2e}"

    def resid(p):
        return model_np(X, *p) - Y

    def jac(p):
        e = np.exp(-p[1] * X)
        return np.stack([e, -p[0] * X * e, np.ones_like(X)], axis=1)

    ref = scipy_table(resid, [1.0, 1.0, 1.0], jac=jac).splitlines()
    # Same header, same number of rows, same iteration/nfev columns and messages.
    assert ref[0] == lines[0]
    assert len(ref) == len(lines)
    assert [r[:30] for r in ref[1:-2]] == [r[:30] for r in rows]
    assert ref[-2] == lines[-2]
    assert ref[-1].split(",")[0] == lines[-1].split(",")[0]
    # Cost column: same values to the printed precision (within one unit of rounding).
    for a, b in zip(ref[1:-2], rows, strict=True):
        assert float(a[30:45]) == pytest.approx(float(b[30:45]), rel=2e-4)


def test_verbose1_every_tenth_row(log_file):
    res = least_squares(rosen, [-5.0, 10.0], verbose=1, x_scale=[0.01, 1.0])
    text1 = log_file.read_text()
    lines = text1.splitlines()
    assert lines[0] == HEADER
    rows = lines[1:-2]
    its = [check_row(r, first=(i == 0))[0] for i, r in enumerate(rows)]
    assert its == list(range(0, 10 * len(its), 10))
    assert lines[-2] == res.message
    assert CLOSING.match(lines[-1]).group(1) == str(res.nfev)

    # The same fit at verbose=2 has every row; verbose=1 keeps exactly every 10th.
    path2 = log_file.with_name("fit2.log")
    async_logger.configure(sink=str(path2))
    least_squares(rosen, [-5.0, 10.0], verbose=2, x_scale=[0.01, 1.0])
    rows2 = path2.read_text().splitlines()[1:-2]
    assert len(rows2) > 20, "choose a problem with more than 20 iterations"
    assert rows == [r for i, r in enumerate(rows2) if i % 10 == 0]


def test_verbose0_writes_nothing(log_file):
    curve_fit(model, X, Y, p0=[1, 1, 1])
    async_logger.flush()
    assert log_file.read_text() == ""


@pytest.mark.parametrize(
    "kw",
    [
        dict(method="lm"),
        dict(bounds=(0, 5)),
        dict(loss="huber"),
        dict(method="dogbox", bounds=(0, [10, 10, 0.45])),
    ],
)
def test_verbose2_other_paths(log_file, kw):
    p0 = [1.0, 1.0, 0.2]
    res = least_squares(lambda p: model(X, *p) - Y, p0, verbose=2, **kw)
    lines, rows, parsed = parse_table(log_file.read_text())
    assert [it for it, _ in parsed] == list(range(len(rows)))
    assert parsed[-1][1] == res.nfev
    assert lines[-2] == res.message
    m = CLOSING.match(lines[-1])
    assert m and int(m.group(1)) == res.nfev
    assert float(m.group(3)) == pytest.approx(res.cost, rel=1e-3)
    # The last row and the summary report the same optimality, that of the result.
    assert rows[-1][75:90].strip() == m.group(4) == f"{res.optimality:.2e}"


def test_verbose2_dogbox_is_scipys_table(log_file):
    kw = dict(method="dogbox", bounds=([0, 0, 0], [10, 10, 0.45]))
    res = least_squares(lambda p: model(X, *p) - Y, [1.0, 1.0, 0.2], verbose=2, **kw)
    lines, rows, _ = parse_table(log_file.read_text())

    def jac(p):
        e = np.exp(-p[1] * X)
        return np.stack([e, -p[0] * X * e, np.ones_like(X)], axis=1)

    ref = scipy_table(lambda p: model_np(X, *p) - Y, [1.0, 1.0, 0.2], jac=jac, **kw)
    ref = ref.splitlines()
    assert len(ref) == len(lines) and ref[-2] == lines[-2] == res.message
    assert [r[:30] for r in ref[1:-2]] == [r[:30] for r in rows]
    for a, b in zip(ref[1:-2], rows, strict=True):
        assert float(a[30:45]) == pytest.approx(float(b[30:45]), rel=2e-4)
    assert ref[-1].split(",")[0] == lines[-1].split(",")[0]


def test_scipy_reference_table_shape():
    # Guards the golden strings above against scipy itself.
    ref = scipy_table(rosen_np, [2.0, 2.0]).splitlines()
    assert ref[0] == HEADER
    check_row(ref[1], first=True)
    check_row(ref[2], first=False)
    assert CLOSING.match(ref[-1])


def _stop_after_two(intermediate_result):
    if intermediate_result.nfev >= 2:
        raise StopIteration


@pytest.mark.parametrize("backend", ["ffi", "callback", "debug_callback"])
@pytest.mark.parametrize(
    ("kw", "status"),
    [
        (dict(), None),  # whatever the fit ends with
        (dict(max_nfev=3), 0),
        (dict(callback=_stop_after_two), -2),
    ],
)
def test_closing_lines_follow_the_status_on_every_route(tmp_path, backend, kw, status):
    # The solver logs the closing lines itself, choosing the message by the status it
    # ended with; every route writes the whole table before least_squares returns.
    path = tmp_path / "fit.log"
    async_logger.configure(sink=str(path), backend=backend)
    try:
        tag = (backend, status)  # a captured value: a program per route

        def fun(p):
            _ = tag
            return model(X, *p) - Y

        before = async_logger.stats()["pushed"]
        res = least_squares(fun, [1.0, 1.0, 0.2], verbose=2, **kw)
        text = path.read_text()  # no flush: the fit has flushed
        pushed = async_logger.stats()["pushed"] - before
    finally:
        async_logger.configure(backend=None)
    if status is not None:
        assert res.status == status
    lines, rows, parsed = parse_table(text)
    assert lines[-2] == res.message
    m = CLOSING.match(lines[-1])
    assert m and int(m.group(1)) == res.nfev
    assert [it for it, _ in parsed] == list(range(len(rows)))
    # One record per row (the header rides with row 0) and one closing record.
    assert pushed == len(rows) + 1


def test_fit_that_cannot_start_writes_its_first_row_and_no_closing(log_file):
    with pytest.raises(ValueError, match="not finite in the initial point"):
        least_squares(lambda x: jnp.log(x - 2.0), [1.0], verbose=2)
    lines = log_file.read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 2
    assert lines[1].split()[:2] == ["0", "1"]
