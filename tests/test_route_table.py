"""The route table picks a route per backend; configure(backend=...) overrides; stats() shows it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nlsq.utils import _native, _routes, async_logger


@pytest.fixture
def fresh_table() -> Iterator[None]:
    _routes._reset_for_tests()
    yield
    _routes._reset_for_tests()
    async_logger.configure()


@pytest.mark.parametrize(
    ("platform", "opt_in", "route"),
    [
        ("cpu", None, "ffi"),
        ("cuda", None, "cuda_staging"),
        ("cuda", "1", "cuda_staging"),
        ("cuda", "0", "callback"),
        ("rocm", "1", "callback"),
        ("tpu", None, "callback"),
        ("metal", None, "callback"),
    ],
)
def test_default_route_per_backend(
    monkeypatch: pytest.MonkeyPatch, platform: str, opt_in: str | None, route: str
) -> None:
    if opt_in is None:
        monkeypatch.delenv(_native.CUDA_OPT_IN, raising=False)
    else:
        monkeypatch.setenv(_native.CUDA_OPT_IN, opt_in)
    chosen, why = _routes.default_route_for(platform)
    assert chosen == route
    assert platform.upper() in why.upper() or platform in why


def test_this_cpu_machine_uses_ffi_and_says_why(fresh_table: None) -> None:
    assert _routes.backend_platform() == "cpu"
    async_logger.configure()
    s = async_logger.stats()
    assert s["route"] == "ffi"
    assert s["route_platform"] == "cpu"
    assert "CPU" in s["route_reason"]


@pytest.mark.parametrize("name", ["callback", "debug_callback", "ffi"])
def test_configure_backend_overrides(fresh_table: None, name: str) -> None:
    async_logger.configure(backend=name)
    s = async_logger.stats()
    assert s["route"] == name
    assert s["route_reason"] == f"configure(backend={name!r})"


def test_non_cpu_backend_gets_callback(monkeypatch: pytest.MonkeyPatch, fresh_table: None) -> None:
    monkeypatch.setattr(_routes, "backend_platform", lambda: "rocm")
    async_logger.configure()
    assert async_logger.stats()["route"] == "callback"
    assert "rocm" in async_logger.stats()["route_reason"]


def test_unknown_or_unavailable_backend_is_a_clear_error(fresh_table: None) -> None:
    with pytest.raises(ValueError, match="'nope'.*available: "):
        async_logger.configure(backend="nope")
    # No CUDA here: asking for the CUDA route explicitly says why it cannot be used.
    with pytest.raises(RuntimeError, match="CUDA staging route is unavailable"):
        async_logger.configure(backend="cuda_staging")
    assert async_logger.stats()["route"] == "ffi"
