"""Test-session setup shared by every test file."""

import os
import tempfile

import pytest

# Every fit switches on the persistent compilation cache (nlsq._cache); tests
# must never write into the user's ~/.cache/nlsq.  Subprocess tests that check
# the cache itself pass their own NLSQ_CACHE_DIR.
os.environ.setdefault("NLSQ_CACHE_DIR", tempfile.mkdtemp(prefix="nlsq-test-cache-"))


@pytest.fixture
def log_file(tmp_path):
    """The logger writes to this file for the test, and to its default sink after."""
    from nlsq.utils import async_logger  # after the cache directory is set above

    path = tmp_path / "fit.log"
    async_logger.configure(sink=str(path))
    try:
        yield path
    finally:
        async_logger.configure()
