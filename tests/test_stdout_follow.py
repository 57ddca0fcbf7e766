"""``sink=None`` follows ``sys.stdout`` as ``print`` does.

The fit's lines go where ``print`` would put them at that moment: the
process's stdout (written from Rust through its descriptor), a
``contextlib.redirect_stdout`` target, pytest's ``capsys`` buffer, or a stream
whose ``fileno()`` names some other descriptor (ipykernel's ``OutStream``).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from nlsq import curve_fit
from nlsq._ringlog import RingLogger
from nlsq.utils import async_logger

HEADER = "{:^15}{:^15}{:^15}{:^15}{:^15}{:^15}".format(
    "Iteration", "Total nfev", "Cost", "Cost reduction", "Step norm", "Optimality"
)
X = np.linspace(0.0, 4.0, 60)
Y = 2.5 * np.exp(-1.3 * X) + 0.5


def model(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def fit(scale: float = 1.0) -> None:
    curve_fit(model, X, Y * scale, p0=[1, 1, 1], verbose=2)


def tables(text: str) -> list[list[str]]:
    """The text cut into verbose tables; fails on anything outside a complete table."""
    found: list[list[str]] = []
    for line in text.splitlines():
        if line == HEADER:
            found.append([])
        assert found, f"line before any table: {line!r}"
        found[-1].append(line)
    for table in found:
        assert len(table) >= 5, table
        assert table[-2].endswith(("condition is satisfied.", "conditions are satisfied.")), table
        assert table[-1].startswith("Function evaluations "), table
    return found


@pytest.fixture(autouse=True)
def _follow_stdout(tmp_path: Path) -> Iterator[None]:
    async_logger.configure(sink=None)
    yield
    async_logger.configure(sink=str(tmp_path / "after.txt"))


def test_redirect_stdout_after_an_earlier_fit(capsys: pytest.CaptureFixture[str]) -> None:
    fit()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fit(1.01)
    fit(1.02)
    assert len(tables(buf.getvalue())) == 1
    assert len(tables(capsys.readouterr().out)) == 2


def test_capsys_gets_the_table_and_prints_keep_their_place(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print("before")
    fit()
    print("after")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "before" and lines[-1] == "after"
    assert len(tables("\n".join(lines[1:-1]))) == 1


def test_a_stream_with_a_foreign_fileno_is_written_through_write() -> None:
    # ipykernel's OutStream: fileno() is the kernel's terminal, not the cell.
    read_fd, write_fd = os.pipe()

    class KernelLikeStream(io.StringIO):
        def fileno(self) -> int:
            return write_fd

    stream = KernelLikeStream()
    try:
        with contextlib.redirect_stdout(stream):
            fit()
        os.set_blocking(read_fd, False)
        try:
            leaked = os.read(read_fd, 1 << 16)
        except BlockingIOError:
            leaked = b""
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert leaked == b""
    assert len(tables(stream.getvalue())) == 1


def test_stdout_none_discards_like_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", None)
    fit()  # no error: print() with sys.stdout None writes nothing either
    assert async_logger.stats()["sink_errors"] == 0
    monkeypatch.undo()


def test_ring_logger_records_go_to_the_stdout_of_their_time() -> None:
    first, second = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(first):
        log = RingLogger()
        tid = log.register("{i:d}")
        log.push(tid, 1)
        assert log.follow_stdout() is False  # unchanged: nothing to do
    with contextlib.redirect_stdout(second):
        # Records pushed before the switch stay with the stdout they were made under.
        assert log.follow_stdout() is True
        log.push(tid, 2)
        assert log.flush(timeout=30.0)
    log.close()
    assert first.getvalue() == "1\n"
    assert second.getvalue() == "2\n"


def test_explicit_sink_never_follows() -> None:
    buf = io.StringIO()
    log = RingLogger(sink=buf)
    with contextlib.redirect_stdout(io.StringIO()):
        assert log.follow_stdout() is False
        tid = log.register("{i:d}")
        log.push(tid, 7)
        assert log.flush(timeout=30.0)
    log.close()
    assert buf.getvalue() == "7\n"


def test_terminal_pipe_redirect_and_back_in_a_fresh_process(tmp_path: Path) -> None:
    # Here sys.stdout is sys.__stdout__ (a pipe): the descriptor fast path,
    # with prints and table lines in program order.
    script = tmp_path / "follow.py"
    script.write_text(
        textwrap.dedent(
            """
            import contextlib, io
            import jax.numpy as jnp, numpy as np
            from nlsq import curve_fit
            x = np.linspace(0.0, 4.0, 60)
            y = 2.5 * np.exp(-1.3 * x) + 0.5
            def model(x, a, b, c):
                return a * jnp.exp(-b * x) + c
            print("first")
            curve_fit(model, x, y, p0=[1, 1, 1], verbose=2)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                curve_fit(model, x, y * 1.01, p0=[1, 1, 1], verbose=2)
            print("captured", len(buf.getvalue().splitlines()), buf.getvalue().count("Iteration"))
            curve_fit(model, x, y * 1.02, p0=[1, 1, 1], verbose=2)
            print("last")
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "first" and lines[1] == HEADER and lines[-1] == "last"
    captured = next(line for line in lines if line.startswith("captured"))
    n_captured, n_headers = map(int, captured.split()[1:])
    assert n_captured >= 5 and n_headers == 1
    at = lines.index(captured)
    assert len(tables("\n".join(lines[1:at]))) == 1
    assert len(tables("\n".join(lines[at + 1 : -1]))) == 1


def test_rows_of_a_long_fit_reach_a_pipe_while_it_runs(tmp_path: Path) -> None:
    # The terminal/pipe path: the drain writes the descriptor from Rust while
    # the fit's thread waits in XLA. The first fit compiles; the second is read.
    script = tmp_path / "long_fit.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            import jax.numpy as jnp, numpy as np
            from nlsq import curve_fit
            def model(x, a, b, c):
                return a * jnp.exp(-b * x) + c * jnp.cos(b * x)
            x = np.linspace(0.0, 5.0, 1_000_000)
            y = 2.5 * np.exp(-1.3 * x) + 0.5 * np.cos(1.3 * x)
            # 'trf': its QR route keeps the fit long enough to watch (lm's Gram route
            # finishes n = 1e6 in under 0.4 s).
            kw = dict(p0=[1.0, 0.1, 3.0], verbose=2, ftol=1e-15, xtol=1e-15, gtol=1e-15,
                      max_nfev=40, method="trf")
            curve_fit(model, x, y, **kw)
            print("START", flush=True)
            start = time.time()
            curve_fit(model, x, y * 1.01, **kw)
            print("RETURNED", time.time() - start, time.time(), flush=True)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    arrivals: list[tuple[float, str]] = []
    for line in proc.stdout:  # read as the lines come, with the time each arrived
        arrivals.append((time.time(), line.rstrip("\n")))
    assert proc.wait(timeout=300) == 0
    start = next(i for i, (_, line) in enumerate(arrivals) if line == "START")
    second = arrivals[start + 1 :]
    fit_seconds, returned_at = map(float, second[-1][1].split()[1:])
    assert len(tables("\n".join(line for _, line in second[:-1]))) == 1
    rows_before = [t for t, line in second[1:-3] if t < returned_at - 0.2 * fit_seconds]
    assert fit_seconds > 0.5, "the fit was too short to show progress"
    assert len(rows_before) >= 2, (fit_seconds, returned_at, [t for t, _ in second])
