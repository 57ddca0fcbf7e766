"""A small fit as one compiled kernel (``nlsq._kernel``): where it is used, what it gives,
and that a kernel XLA refuses never fails a fit."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import nlsq
import numpy as np
import pytest
from nlsq import _jax_compat, _kernel, _solve

_TAGS = itertools.count()


def _exp_model(sort: bool = False):
    """A fresh model (a captured tag keys its own programs, so each test traces anew)."""
    tag = next(_TAGS)

    def model(x, a, b, c):
        _ = tag
        decay = jnp.exp(-b * x)
        if sort:  # the same values (x ascending, decay descending): sorted, reversed
            decay = jnp.sort(decay)[::-1]
        return a * decay + c

    return model


def _data(n: int = 400):
    rng = np.random.default_rng(1)
    x = np.linspace(0.0, 4.0, n)
    return x, 2.5 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.standard_normal(n)


def _fit(model, x, y, **kwargs):
    return nlsq.curve_fit(model, x, y, p0=[1.0, 1.0, 1.0], full_output=True, **kwargs)


def _assert_same_fit(got, want, rtol=1e-12):
    np.testing.assert_allclose(got[0], want[0], rtol=rtol)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9)
    assert got[2]["nfev"] == want[2]["nfev"]
    assert got[4] == want[4]


def test_a_small_lm_fit_is_one_kernel_and_equals_the_thunks_fit():
    x, y = _data()
    before = _kernel.traced_kernels()
    kernel = _fit(_exp_model(), x, y)
    assert _kernel.traced_kernels() == before + 1
    with _kernel.kernels_off():
        thunks = _fit(_exp_model(), x, y)
    assert _kernel.traced_kernels() == before + 1
    _assert_same_fit(kernel, thunks)
    # Against scipy (MINPACK): the same optimum.
    from scipy.optimize import curve_fit

    ref, _ = curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, x, y, p0=[1.0, 1.0, 1.0])
    np.testing.assert_allclose(kernel[0], ref, rtol=1e-7)


def test_the_compiled_program_holds_the_kernel_call():
    x, y = _data()
    seen = []
    original = _solve.solve
    _solve.solve = lambda *args: seen.append(args) or original(*args)
    try:
        _fit(_exp_model(), x, y)
    finally:
        _solve.solve = original
    with _jax_compat.enable_x64(True):  # as curve_fit traces it
        text = original.lower(*seen[0]).compile().as_text()
    assert 'xla_cpu_small_call="true"' in text


def _table(log_file, model, x, y, **kwargs) -> tuple[str, tuple]:
    """The verbose table a fit writes (to the ``log_file`` sink) and its results."""
    from nlsq.utils import async_logger

    start = log_file.stat().st_size if log_file.exists() else 0
    out = _fit(model, x, y, **kwargs)
    async_logger.flush()
    return log_file.read_text()[start:], out


@pytest.mark.parametrize("verbose", [1, 2])
@pytest.mark.parametrize("rows_in_a_kernel", [64, 2])
def test_a_logged_small_fit_keeps_its_rows_in_the_kernel_and_writes_the_same_table(
    log_file, monkeypatch, verbose, rows_in_a_kernel
):
    """The start and the first steps are one kernel that keeps their rows; the table is
    the one the per-iteration records write (also when the fit takes more steps than
    the kernel keeps: the rest are logged from the loop after it)."""
    monkeypatch.setattr(_solve, "ROWS_IN_A_KERNEL", rows_in_a_kernel)
    x, y = _data()
    y = y + 0.3 * np.sin(9 * x)  # a few more iterations
    kwargs = dict(verbose=verbose, ftol=1e-12, xtol=1e-12, gtol=1e-12)
    before = _kernel.traced_kernels()
    got_table, got = _table(log_file, _exp_model(), x, y, **kwargs)
    assert _kernel.traced_kernels() == before + 1
    with _kernel.kernels_off():
        want_table, want = _table(log_file, _exp_model(), x, y, **kwargs)
    _assert_same_fit(got, want, rtol=1e-10)
    assert got_table == want_table
    rows = [line for line in got_table.splitlines() if line.strip()[:1].isdigit()]
    if verbose == 2:
        assert len(rows) > 3  # with 2 rows kept, the loop after the kernel logged more
    else:
        assert [int(r.split()[0]) % 10 for r in rows] == [0] * len(rows)


@pytest.mark.parametrize(
    "case",
    ["trf", "many rows", "sort in the model", "switched off"],
)
def test_where_no_kernel_is_made(case, monkeypatch, capsys):
    x, y = _data(_kernel.MAX_ROWS + 1 if case == "many rows" else 400)
    kwargs = {}
    if case == "trf":
        kwargs["method"] = "trf"
    if case == "switched off":
        monkeypatch.setenv("NLSQ_SINGLE_KERNEL", "0")
    before = _kernel.traced_kernels()
    got = _fit(_exp_model(sort=case == "sort in the model"), x, y, **kwargs)
    assert _kernel.traced_kernels() == before
    with _kernel.kernels_off():
        want = _fit(_exp_model(), x, y, **kwargs)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-9)


def test_a_kernel_xla_refuses_is_compiled_again_without_it(monkeypatch):
    """With the primitive check emptied, a model with a sort is tagged; XLA:CPU cannot
    link a sort into the kernel and refuses it; the fit runs without the kernel and
    later calls of that shape go there directly."""
    monkeypatch.setattr(_kernel, "_NOT_IN_A_KERNEL", frozenset())
    x, y = _data()
    model = _exp_model(sort=True)
    before = _kernel.traced_kernels()
    got = _fit(model, x, y)
    assert _kernel.traced_kernels() == before + 1
    assert _solve.solve._kernel_refused
    with _kernel.kernels_off():
        want = _fit(_exp_model(), x, y)
    _assert_same_fit(got, want, rtol=1e-9)
    again = _fit(model, x, y)
    assert _kernel.traced_kernels() == before + 1  # no new trace: straight to the thunks
    np.testing.assert_array_equal(again[0], got[0])


def test_primitive_names_reach_nested_jaxprs():
    def inner(v):
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, jnp.sort(c[1])), (0, v))

    closed = jax.make_jaxpr(lambda v: jax.jit(inner)(v)[1] * 2)(jnp.ones(3))
    names = _jax_compat.primitive_names(closed)
    assert {"sort", "while", "mul"} <= names
    assert not _kernel.fits_in_a_kernel(names)
    assert _kernel.fits_in_a_kernel({"mul", "exp", "while", "reduce_sum", "dot_general"})
    assert not _kernel.fits_in_a_kernel({"pure_callback"})
    assert not _kernel.fits_in_a_kernel({"scatter-add"})
