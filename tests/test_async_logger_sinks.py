"""nlsq.utils.async_logger output: fd / pipe, StringIO, pytest capture, logging, failing sinks.

Also runs the examples of the seed page (``shared/seed/async_logger_docs.txt``).
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from nlsq.utils import async_logger
from nlsq.utils.async_logger import log_iteration_async

REPO = Path(__file__).resolve().parents[1]
SEED = REPO.parent / "shared" / "seed" / "async_logger_docs.txt"


@pytest.fixture(autouse=True)
def _restore(tmp_path: Path) -> Iterator[None]:
    yield
    async_logger.configure(sink=str(tmp_path / "restored.txt"))


def _jitted_loop(n: int, verbose: int = 2) -> Any:
    def body(carry: Any) -> Any:
        i, x = carry
        log_iteration_async(i, x, x / 2, verbose=verbose)
        return i + 1, x * 0.5

    return jax.jit(lambda x0: jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), x0)))


def _expected(n: int) -> list[str]:
    lines = []
    x = 1.0
    for i in range(n):
        lines.append(f"iter {i:>6d}  cost {x:>13.6e}  |grad| {x / 2:>10.3e}")
        x *= 0.5
    return lines


def test_pipe_fd() -> None:
    read_fd, write_fd = os.pipe()
    try:
        async_logger.configure(sink=write_fd)
        _jitted_loop(20)(jnp.float32(1.0))
        assert async_logger.flush(timeout=30.0)
        async_logger.configure(sink=io.StringIO())  # the old logger releases the fd
        data = os.read(read_fd, 1 << 16).decode()
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert data.splitlines() == _expected(20)


def test_stdout_of_a_subprocess_is_a_pipe(tmp_path: Path) -> None:
    # Default sink (sys.stdout) in a fresh interpreter whose stdout is a pipe.
    # flush() orders the ring's lines before a later print; the second loop is
    # never flushed explicitly: the exit hooks must deliver its lines.
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        from nlsq.utils import async_logger
        from nlsq.utils.async_logger import log_iteration_async
        def loop(verbose):
            def body(c):
                i, x = c
                log_iteration_async(i, x, x / 2, verbose=verbose)
                return i + 1, x * 0.5
            return jax.jit(lambda x: jax.lax.while_loop(lambda c: c[0] < 100, body, (0, x)))
        loop(1)(1.0)
        async_logger.flush()
        print("python print after the loop", flush=True)
        loop(2)(1.0)
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    marker = lines.index("python print after the loop")
    first = [int(line.split()[1]) for line in lines[:marker]]
    second = [int(line.split()[1]) for line in lines[marker + 1 :]]
    assert first == list(range(0, 100, 10))
    assert second == list(range(100))


def test_stringio() -> None:
    buf = io.StringIO()
    async_logger.configure(sink=buf)
    _jitted_loop(10)(jnp.float32(1.0))
    assert async_logger.flush(timeout=30.0)
    assert buf.getvalue().splitlines() == _expected(10)


def test_capsys(capsys: Any) -> None:
    async_logger.configure(sink=None)  # sys.stdout now: capsys's buffer
    _jitted_loop(5)(jnp.float32(1.0))
    assert async_logger.flush(timeout=30.0)
    assert capsys.readouterr().out.splitlines() == _expected(5)


def test_capfd(capfd: Any) -> None:
    async_logger.configure(sink=None)
    _jitted_loop(5)(jnp.float32(1.0))
    assert async_logger.flush(timeout=30.0)
    assert capfd.readouterr().out.splitlines() == _expected(5)


def test_logging_logger() -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("nlsq.test.async_logger")
    logger.handlers[:] = [Collect()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    async_logger.configure(sink=logger)
    _jitted_loop(10)(jnp.float32(1.0))
    assert async_logger.flush(timeout=30.0)
    assert [r.getMessage() for r in records] == _expected(10)


class _Exploding(io.TextIOBase):
    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        raise OSError("disk on fire")


def test_raising_stream_does_not_break_a_jitted_loop() -> None:
    async_logger.configure(sink=_Exploding())
    i, x = _jitted_loop(200)(jnp.float32(1.0))
    async_logger.flush(timeout=30.0)
    assert int(i) == 200
    assert float(x) == pytest.approx(0.5**200, rel=1e-6, abs=1e-45)
    assert async_logger.stats()["sink_errors"] >= 1


def test_raising_logging_handler_does_not_break_a_jitted_loop() -> None:
    class Boom(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("handler failed")

        def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
            raise RuntimeError("and so did its error handler")

    logger = logging.getLogger("nlsq.test.async_logger.boom")
    logger.handlers[:] = [Boom()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    async_logger.configure(sink=logger)
    i, _ = _jitted_loop(50)(jnp.float32(1.0))
    async_logger.flush(timeout=30.0)
    assert int(i) == 50
    assert async_logger.stats()["sink_errors"] >= 1


# -- the seed page -------------------------------------------------------------------


def test_seed_type_detection_example(capsys: Any) -> None:
    # The page is one long line in the copy we have; the example is quoted here
    # exactly as written there and checked against the page.
    example = (
        "from nlsq.utils.async_logger import is_jax_array\n"
        "import jax.numpy as jnp\n"
        "import numpy as np\n"
        "jax_arr = jnp.array([1, 2, 3])\n"
        "numpy_arr = np.array([1, 2, 3])\n"
        "print(is_jax_array(jax_arr)) # True\n"
        "print(is_jax_array(numpy_arr)) # False\n"
    )
    page = " ".join(SEED.read_text().split())
    assert " ".join(example.split()) in page
    exec(compile(example, "seed-example", "exec"), {})
    assert capsys.readouterr().out.split() == ["True", "False"]


def test_seed_trf_integration_import() -> None:
    page = " ".join(SEED.read_text().split())
    assert "from nlsq.utils.async_logger import log_iteration_async" in page
    exec("from nlsq.utils.async_logger import log_iteration_async", {})
