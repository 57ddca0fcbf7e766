"""``python -m nlsq.info`` and the cache-directory resolution it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from nlsq import info
from nlsq._cache_dir import resolve_cache_dir
from nlsq.utils import _native, async_logger


def _run(*args: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "nlsq.info", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
        timeout=300,
    )
    return out.stdout


def test_command_prints_versions_route_target_and_cache() -> None:
    text = _run(NLSQ_CACHE_DIR="/tmp/nlsq-info-test")
    fields = dict(line.split(None, 1) for line in text.splitlines() if line.strip())
    assert fields["jax"].strip() == jax.__version__
    assert sys.version.split()[0] in fields["python"]
    assert fields["backend"].strip() == jax.default_backend()
    reg = _native.register()
    expected_route = "ffi" if reg.ok and jax.default_backend() == "cpu" else "callback"
    assert text.count("logging route") == 1
    assert f"logging route  {expected_route} (" in text
    assert ("FFI target     registered for cpu" in text) == reg.ok
    assert "cache dir      /tmp/nlsq-info-test (NLSQ_CACHE_DIR)" in text


def test_json_output_matches_collect() -> None:
    data = json.loads(_run("--json", NLSQ_CACHE_DIR="off"))
    assert data["cache_dir"] is None
    assert data["jax"] == jax.__version__
    assert data["ffi_target"]["registered"] == _native.register().ok
    here = info.collect()
    assert set(data) == set(here)
    assert here["logging_route"] == async_logger.stats()["route"]


@pytest.mark.parametrize(
    ("env", "expected", "source"),
    [
        ({"NLSQ_CACHE_DIR": "/x/y", "XDG_CACHE_HOME": "/xdg"}, "/x/y", "NLSQ_CACHE_DIR"),
        ({"NLSQ_CACHE_DIR": "OFF"}, None, "NLSQ_CACHE_DIR=off (disabled)"),
        ({"XDG_CACHE_HOME": "/xdg", "HOME": "/h"}, "/xdg/nlsq", "XDG_CACHE_HOME"),
        ({"XDG_CACHE_HOME": "", "HOME": "/h"}, "/h/.cache/nlsq", "default (~/.cache)"),
        ({"NLSQ_CACHE_DIR": " ", "HOME": "/h"}, "/h/.cache/nlsq", "default (~/.cache)"),
    ],
)
def test_cache_dir_resolution(env: dict[str, str], expected: str | None, source: str) -> None:
    found = resolve_cache_dir(env)
    assert found.path == (Path(expected) if expected else None)
    assert found.enabled == (expected is not None)
    assert found.source == source
