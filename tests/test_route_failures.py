"""Logging can never crash a fit: a failure injected into each route's set-up or
lowering gives one warning and a fit with scipy's answer (and, where a fallback
route works, the full table)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from nlsq import _jax_compat, curve_fit
from nlsq.utils import _emit, _native, _routes, async_logger

X = np.linspace(0.0, 4.0, 40)
Y = 2.5 * np.exp(-1.3 * X) + 0.5 + 0.01 * np.sin(7.0 * X)
P0 = [1.0, 1.0, 0.0]


def _fresh_model() -> Callable[..., jax.Array]:
    # A new function object: the fit is traced (and its route chosen) anew.
    def model(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    return model


@pytest.fixture
def clean_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    saved_native = _native._state
    _routes._reset_for_tests()
    _emit._Inline.failed = False
    _emit._inline_probe.cache_clear()
    yield tmp_path / "table.log"
    monkeypatch.undo()
    _native._reset_for_tests()
    _native._state = saved_native
    _routes._reset_for_tests()
    _emit._Inline.failed = False
    _emit._inline_probe.cache_clear()
    async_logger.configure(sink=str(tmp_path / "after.log"))


def _fit_twice(path: Path) -> tuple[list[str], list[str], list[np.ndarray]]:
    """configure + two fits; the nlsq RuntimeWarnings, the table lines, the popts."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async_logger.configure(sink=str(path))
        popts = [curve_fit(_fresh_model(), X, Y, p0=P0, verbose=2)[0] for _ in range(2)]
    messages = [
        str(w.message)
        for w in caught
        if issubclass(w.category, RuntimeWarning) and "nlsq" in str(w.message)
    ]
    return messages, path.read_text().splitlines(), popts


def _scipy_popt() -> np.ndarray:
    def model(x, a, b, c):
        return a * np.exp(-b * x) + c

    return scipy.optimize.curve_fit(model, X, Y, p0=P0)[0]


def _check(messages: list[str], lines: list[str], popts: list[np.ndarray], *, table: bool):
    assert len(messages) == 1, messages
    expected = _scipy_popt()
    for popt in popts:
        np.testing.assert_allclose(popt, expected, rtol=1e-6)
    if table:
        # Two complete tables: header, rows, closing message and summary each.
        assert sum(line.strip().startswith("Iteration") for line in lines) == 2
        assert sum(line.startswith("Function evaluations") for line in lines) == 2
        rows = [line for line in lines if line.split() and line.split()[0].isdigit()]
        assert len(rows) >= 6, lines


def _broken(*args: object, **kwargs: object) -> None:
    raise RuntimeError("injected failure")


def _internals_changed(*args: object, **kwargs: object) -> None:
    raise _jax_compat.JaxInternalsChanged("injected: internal missing")


def test_ffi_registration_refused(monkeypatch: pytest.MonkeyPatch, clean_routes: Path) -> None:
    monkeypatch.setattr(
        _native, "register", lambda: _native.Registration(ok=False, reason="injected refusal")
    )
    messages, lines, popts = _fit_twice(clean_routes)
    _check(messages, lines, popts, table=True)
    assert "injected refusal" in messages[0]
    assert async_logger.stats()["route"] == "callback"


def test_ffi_staging_raises_at_trace_time(
    monkeypatch: pytest.MonkeyPatch, clean_routes: Path
) -> None:
    # Set up fine; then both the inline row route and the routed FFI call fail
    # while the fit is traced.
    async_logger.configure(sink=str(clean_routes))
    monkeypatch.setattr(_emit, "_stage_inline_row", _broken)
    monkeypatch.setattr(_native, "emit_routed", _broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        popts = [curve_fit(_fresh_model(), X, Y, p0=P0, verbose=2)[0] for _ in range(2)]
    messages_all = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    # One warning per failed route (inline rows, then the FFI route), never per fit.
    assert len(messages_all) == 2, messages_all
    assert any("inline" in m for m in messages_all)
    assert any("'ffi' failed while tracing" in m for m in messages_all)
    _check(messages_all[1:], clean_routes.read_text().splitlines(), popts, table=True)
    assert async_logger.stats()["route"] == "callback"
    assert async_logger.stats()["route_failures"] >= 1


def test_inline_rule_rejected_by_jax(monkeypatch: pytest.MonkeyPatch, clean_routes: Path) -> None:
    # A JAX whose DCE-rule convention changed again: the inline primitive's
    # set-up fails, rows take the FFI route's templates.
    _emit._inline_primitive.cache_clear()
    monkeypatch.setattr(_jax_compat, "register_always_live", _internals_changed)
    try:
        messages, lines, popts = _fit_twice(clean_routes)
    finally:
        _emit._inline_primitive.cache_clear()
    _check(messages, lines, popts, table=True)
    assert "inline" in messages[0]
    assert async_logger.stats()["route"] == "ffi"


def _non_cpu_backend(monkeypatch: pytest.MonkeyPatch, platform: str) -> None:
    # The table picks the callback route for any non-CPU backend (ROCm, TPU, ...).
    monkeypatch.setattr(_routes, "backend_platform", lambda: platform)


def test_callback_route_internals_missing(
    monkeypatch: pytest.MonkeyPatch, clean_routes: Path
) -> None:
    _non_cpu_backend(monkeypatch, "rocm")
    monkeypatch.setattr(_routes, "_callback_primitive", _internals_changed)
    messages, lines, popts = _fit_twice(clean_routes)
    _check(messages, lines, popts, table=True)
    assert "'callback' is unavailable, using 'debug_callback'" in messages[0]
    assert async_logger.stats()["route"] == "debug_callback"


def test_callback_route_lowering_fails(monkeypatch: pytest.MonkeyPatch, clean_routes: Path) -> None:
    _non_cpu_backend(monkeypatch, "tpu")
    monkeypatch.setattr(_jax_compat, "emit_host_callback", _broken)
    messages, lines, popts = _fit_twice(clean_routes)
    _check(messages, lines, popts, table=True)
    assert "injected failure" in messages[0]
    assert async_logger.stats()["route"] == "debug_callback"


def test_every_route_fails_the_fit_still_returns(
    monkeypatch: pytest.MonkeyPatch, clean_routes: Path
) -> None:
    _non_cpu_backend(monkeypatch, "rocm")
    monkeypatch.setattr(_routes, "_callback_primitive", _internals_changed)
    monkeypatch.setattr(jax.debug, "callback", _broken)
    messages, lines, popts = _fit_twice(clean_routes)
    _check(messages, lines, popts, table=False)
    assert "log records are dropped" in messages[0]
    assert async_logger.stats()["route"] is None


def test_cuda_staging_unavailable_falls_back(
    monkeypatch: pytest.MonkeyPatch, clean_routes: Path
) -> None:
    # Opted in on a machine whose CUDA handler is not registered.
    _non_cpu_backend(monkeypatch, "cuda")
    monkeypatch.setenv(_native.CUDA_OPT_IN, "1")
    messages, lines, popts = _fit_twice(clean_routes)
    _check(messages, lines, popts, table=True)
    assert "'cuda_staging' is unavailable, using 'callback'" in messages[0]
