"""The CUDA staging route's Python face, on a machine without a GPU.

The route itself (enqueue, publish, poll, push, drain, format; full staging
ring under each policy; failed copies and allocations) is tested against a
fake CUDA driver in ``cargo test -p nlsq-xla-ffi``; here: its counters in
``async_logger.stats()``, the flush hook, and the counted fallback when the
route is asked for but cannot run.
"""

from __future__ import annotations

import pytest
from nlsq import _ringlog
from nlsq.utils import _native, async_logger

CUDA_LOSSES = ("staging_full", "staging_block_timeout", "enqueue_failed", "cuda_unavailable")


def test_stats_show_every_cuda_counter() -> None:
    ffi = async_logger.stats()["ffi"]
    for key in CUDA_LOSSES + ("staging_setup_failed", "poller_failed", "cuda_fallback"):
        assert isinstance(ffi[key], int) and ffi[key] >= 0, key
    assert ffi["cuda_lost"] == sum(ffi[k] for k in CUDA_LOSSES)
    # The old names of the host-function design are gone.
    assert "no_slot" not in ffi and "host_failed" not in ffi


def test_flush_waits_for_the_poller_only_when_the_route_is_registered() -> None:
    assert not _native.cuda_registered()
    assert _native.wait_cuda_delivered(0.01)
    # Nothing was ever staged: the poller has nothing to deliver.
    assert _ringlog.ffi_cuda_wait_delivered(0.01) is True
    assert async_logger.flush(timeout=10)


def test_missing_driver_is_a_reason_not_an_error() -> None:
    reason = _ringlog.ffi_cuda_unavailable_reason()
    assert reason is not None and "libcuda.so.1" in reason


def test_opt_in_without_a_usable_driver_counts_a_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_native, "cuda_backend_present", lambda: True)
    monkeypatch.setenv(_native.CUDA_OPT_IN, "1")
    before = _native.stats()["cuda_fallback"]
    _native._reset_for_tests()
    try:
        reg = _native.register()
        assert reg.ok and "CUDA" not in reg.platforms
        assert reg.cuda_note == _ringlog.ffi_cuda_unavailable_reason()
        assert _native.stats()["cuda_fallback"] == before + 1
    finally:
        monkeypatch.undo()
        _native._reset_for_tests()
        _native.register()
