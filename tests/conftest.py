"""Test-session setup shared by every test file."""

import os
import tempfile
from collections.abc import Iterator

import pytest

# Every fit switches on the persistent compilation cache (nlsq._cache); tests
# must never write into the user's ~/.cache/nlsq.  Subprocess tests that check
# the cache itself pass their own NLSQ_CACHE_DIR.
os.environ.setdefault("NLSQ_CACHE_DIR", tempfile.mkdtemp(prefix="nlsq-test-cache-"))

#: Share of ``vm.max_map_count`` past which a finished test file's compiled
#: programs are dropped (see :func:`_release_compiled_programs`).
MAPPING_SHARE = 0.5


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs() -> Iterator[None]:
    """Drop JAX's compiled programs after a test file once mappings run high.

    XLA:CPU keeps about three memory mappings per compiled kernel for as long as
    the executable lives (a solver program has 60 to 90 kernels), and JAX's jit
    caches keep every executable.  Past ``vm.max_map_count`` (65530 by default)
    a compilation or a persistent-cache load fails, and XLA:CPU then crashes
    with SIGSEGV in the C++ unwinder instead of raising.  A whole suite in one
    pytest process crossed it with jax 0.11.2 (``benches/repro_many_programs.py``
    reproduces it without nlsq; README "Known limits").  ``clear_programs()``
    (``jax.clear_caches()`` and the programs nlsq holds) frees the executables
    and their mappings; later tests recompile or load from the persistent cache.
    Done between files only, so no test sees it.
    """
    yield
    from nlsq._map_guard import clear_programs, mapping_count, mapping_limit

    limit = mapping_limit()
    count = mapping_count()
    if limit is None or count is None or count < MAPPING_SHARE * limit:
        return
    clear_programs()


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
