"""``policy="block"`` with a Python-stream sink never deadlocks against a route switch.

The cycle this guards against (issue 10): a native push waits for ring space
while holding the Rust route lock; a route switch (``configure``) takes that
lock while holding the GIL; the drain needs the GIL to write the Python
stream. The script below runs that race for two seconds in a child process;
before the fix it hung (the child is killed after the timeout and the test
fails instead of hanging).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import io, threading, time
    import jax, jax.numpy as jnp
    from nlsq.utils import _routes, async_logger

    N = 400

    class SlowStream(io.StringIO):
        # A Python-stream sink: the drain takes the GIL to write it.
        def write(self, s):
            time.sleep(0.005)
            return super().write(s)

    sink = SlowStream()
    async_logger.configure(sink=sink, capacity=2, policy="block", backend="ffi")

    @jax.jit
    def loop(x):
        def body(c):
            i, x = c
            async_logger.log_iteration_async(i, x, x, verbose=2)
            return i + 1, x
        return jax.lax.while_loop(lambda c: c[0] < N, body, (jnp.int32(0), x))

    worker = threading.Thread(target=lambda: jax.block_until_ready(loop(jnp.float32(1.0))))
    worker.start()
    time.sleep(0.2)
    # Route switches, each holding the GIL, while the pushes wait for ring space.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and worker.is_alive():
        _routes._sync_native_route(force=True)
    worker.join()
    assert async_logger.flush(timeout=60)
    print("lines", len(sink.getvalue().splitlines()))
    """
)


def test_blocked_native_push_and_route_switch_do_not_deadlock() -> None:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO / "python"))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(
            "deadlock: a blocked push and a route switch waited for each other"
        ) from None
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lines 400" in proc.stdout
