"""Test-session setup shared by every test file."""

import os
import tempfile

# Every fit switches on the persistent compilation cache (nlsq._cache); tests
# must never write into the user's ~/.cache/nlsq.  Subprocess tests that check
# the cache itself pass their own NLSQ_CACHE_DIR.
os.environ.setdefault("NLSQ_CACHE_DIR", tempfile.mkdtemp(prefix="nlsq-test-cache-"))
