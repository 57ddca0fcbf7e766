"""Round trips, flush/close semantics, policies, failure modes and bad input
for ``nlsq._ringlog.RingLogger``."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from nlsq._ringlog import RingLogger

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "{i:>5d} {x:.3f}"
STAT_KEYS = {
    "pushed",
    "written",
    "dropped",
    "sink_errors",
    "high_water",
    "capacity",
    "latency_ns_p50",
    "latency_ns_p99",
}


def expected_line(i: int, x: float) -> str:
    return f"{format(i, '>5d')} {format(x, '.3f')}"


def push_some(log: RingLogger, n: int) -> list[str]:
    tid = log.register(TEMPLATE)
    for i in range(n):
        log.push(tid, i, i / 7)
    return [expected_line(i, i / 7) for i in range(n)]


def drop_counts(lines: list[str]) -> list[int]:
    prefix, suffix = "[nlsq] ", " log records dropped (ring full)"
    return [int(line[len(prefix) : -len(suffix)]) for line in lines if line.startswith(prefix)]


class SlowStream(io.StringIO):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def write(self, s: str) -> int:
        time.sleep(self.delay)
        return super().write(s)


class FailingStream:
    def __init__(self) -> None:
        self.calls = 0

    def write(self, s: str) -> int:
        self.calls += 1
        raise OSError("disk full (test)")


# --- round trips ---------------------------------------------------------------


def test_stringio_round_trip() -> None:
    s = io.StringIO()
    with RingLogger(sink=s) as log:
        expected = push_some(log, 500)
        assert log.flush() is True
        assert s.getvalue() == "".join(line + "\n" for line in expected)
        st = log.stats()
    assert set(st) == STAT_KEYS
    assert (st["pushed"], st["written"], st["dropped"], st["sink_errors"]) == (500, 500, 0, 0)
    assert st["capacity"] == 65536
    assert 1 <= st["high_water"] <= 501  # the flush marker occupies a slot too
    assert 0 < st["latency_ns_p50"] <= st["latency_ns_p99"]


def test_fd_round_trip_leaves_the_descriptor_open(tmp_path: Path) -> None:
    path = tmp_path / "fd.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        log = RingLogger(sink=fd)
        expected = push_some(log, 1000)
        log.close()
        os.write(fd, b"after\n")  # the logger did not close it
    finally:
        os.close(fd)
    assert path.read_text().splitlines() == [*expected, "after"]


@pytest.mark.parametrize("as_str", [True, False])
def test_path_round_trip_appends(tmp_path: Path, as_str: bool) -> None:
    path = tmp_path / "run.log"
    path.write_text("existing\n")
    with RingLogger(sink=str(path) if as_str else path) as log:
        expected = push_some(log, 300)
    assert path.read_text().splitlines() == ["existing", *expected]


def test_logging_logger_gets_one_info_record_per_line() -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("nlsq.test.ringlog")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Collect()
    logger.addHandler(handler)
    try:
        with RingLogger(sink=logger) as log:
            tid = log.register("{i:d} 100% {x:.1f}")
            for i in range(50):
                log.push(tid, i, 0.5)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == [f"{i} 100% 0.5" for i in range(50)]
    assert {r.levelno for r in records} == {logging.INFO}


def test_push_array_and_numpy_scalars() -> None:
    s = io.StringIO()
    with RingLogger(sink=s) as log:
        tid = log.register("{i:d} {x:.2f}")
        log.push_array(tid, np.array([3.0, 1.25]))  # float d field → integer
        log.push_array(tid, np.array([4, 2], dtype=np.int64))
        log.push_array(tid, np.array([5.0, 9.0, 0.5])[::2])  # strided
        log.push_array(tid, [6.0, 0.75])  # anything numpy.asarray takes
        log.push(tid, np.int32(7), np.float32(0.5))
        log.push(tid, True, 1)
    assert s.getvalue().splitlines() == [
        "3 1.25",
        "4 2.00",
        "5 0.50",
        "6 0.75",
        "7 0.50",
        "1 1.00",
    ]


def test_default_sink_writes_stdout_descriptor_in_order_with_prints() -> None:
    code = textwrap.dedent(
        """
        from nlsq._ringlog import RingLogger
        print("before")
        log = RingLogger()
        tid = log.register("{i:d}")
        for i in range(3):
            log.push(tid, i)
        log.flush()
        print("after")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.splitlines() == ["before", "0", "1", "2", "after"]


def test_default_sink_without_fileno_uses_the_stream(capsys: pytest.CaptureFixture[str]) -> None:
    # Under capsys, sys.stdout is a capture stream with no usable fileno().
    with RingLogger() as log:
        tid = log.register("{i:d} captured")
        log.push(tid, 42)
    assert capsys.readouterr().out == "42 captured\n"


# --- flush and close ------------------------------------------------------------


def test_close_is_idempotent_and_refuses_later_pushes() -> None:
    s = io.StringIO()
    log = RingLogger(sink=s)
    tid = log.register("{i:d}")
    log.push(tid, 1)
    assert not log.closed
    log.close()
    log.close()
    assert log.closed
    assert s.getvalue() == "1\n"
    with pytest.raises(ValueError, match="closed"):
        log.push(tid, 2)
    assert log.flush() is True


def test_flush_times_out_on_a_stalled_sink_and_push_never_waits() -> None:
    stream = SlowStream(0.3)
    log = RingLogger(sink=stream, capacity=64)
    tid = log.register("{i:d}")
    log.push(tid, 0)
    time.sleep(0.05)  # the drain is now inside the slow write
    t0 = time.perf_counter()
    assert log.flush(timeout=0.05) is False
    assert time.perf_counter() - t0 < 0.25
    t0 = time.perf_counter()
    for i in range(10_000):
        log.push(tid, i)
    assert time.perf_counter() - t0 < 0.5, "push waited on the sink"
    assert log.flush(timeout=30) is True
    st = log.stats()
    assert st["dropped"] > 0
    assert st["written"] + st["dropped"] == st["pushed"] == 10_001
    log.close()


def test_flush_rejects_a_negative_timeout() -> None:
    with RingLogger(sink=io.StringIO()) as log, pytest.raises(ValueError, match="timeout"):
        log.flush(timeout=-1)


# --- exit and fork --------------------------------------------------------------


def test_exit_without_close_writes_every_record(tmp_path: Path) -> None:
    path = tmp_path / "exit.log"
    code = textwrap.dedent(
        f"""
        from nlsq._ringlog import RingLogger
        file_log = RingLogger(sink={str(path)!r})
        out_log = RingLogger()
        tf = file_log.register("{{i:d}} {{x:.3f}}")
        to = out_log.register("{{i:d}}")
        for i in range(20_000):
            file_log.push(tf, i, i / 3)
            out_log.push(to, i)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.splitlines() == [str(i) for i in range(20_000)]
    lines = path.read_text().splitlines()
    assert lines == [f"{i} {format(i / 3, '.3f')}" for i in range(20_000)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_logs_and_parent_keeps_logging(tmp_path: Path) -> None:
    parent_path, child_path = tmp_path / "parent.log", tmp_path / "child.log"
    log = RingLogger(sink=parent_path)
    tid = log.register("{who:d} {i:d}")
    for i in range(100):
        log.push(tid, 0, i)
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            child = RingLogger(sink=child_path)
            ct = child.register("{i:d}")
            for i in range(100):
                child.push(ct, i)
                log.push(tid, 1, i)
            ok = child.flush(timeout=10) and log.flush(timeout=10)
            child.close()
            status = 0 if ok else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for i in range(100, 200):
        log.push(tid, 0, i)
    log.close()
    assert child_path.read_text().splitlines() == [str(i) for i in range(100)]
    lines = parent_path.read_text().splitlines()
    # Parent records are written once each (not again by the child), in order.
    assert [ln for ln in lines if ln.startswith("0 ")] == [f"0 {i}" for i in range(200)]
    assert [ln for ln in lines if ln.startswith("1 ")] == [f"1 {i}" for i in range(100)]


# --- many producers and policies ------------------------------------------------


def run_producers(log: RingLogger, threads: int, per_thread: int) -> None:
    tid = log.register("{p:d} {i:d}")

    def produce(p: int) -> None:
        push = log.push
        for i in range(per_thread):
            push(tid, p, i)

    workers = [threading.Thread(target=produce, args=(p,)) for p in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def check_per_producer_order(lines: list[str], threads: int) -> int:
    last = [-1] * threads
    count = 0
    for line in lines:
        if line.startswith("[nlsq]"):
            continue
        p, i = map(int, line.split())
        assert i > last[p], f"producer {p}: {i} after {last[p]}"
        last[p] = i
        count += 1
    return count


def test_eight_producers_small_ring_accounts_for_every_record(tmp_path: Path) -> None:
    path = tmp_path / "mp.log"
    log = RingLogger(sink=path, capacity=256)
    run_producers(log, 8, 100_000)
    assert log.flush(timeout=60)
    st = log.stats()
    log.close()
    lines = path.read_text().splitlines()
    assert st["pushed"] == 800_000
    assert st["written"] + st["dropped"] == st["pushed"]
    assert check_per_producer_order(lines, 8) == st["written"]
    assert st["dropped"] > 0, "a 256-record ring should overflow here"
    assert sum(drop_counts(lines)) == st["dropped"]
    assert st["high_water"] == 256


def test_block_policy_loses_nothing() -> None:
    s = SlowStream(0.0005)
    log = RingLogger(sink=s, capacity=16, policy="block")
    run_producers(log, 4, 5_000)
    log.close()
    st = log.stats()
    assert (st["pushed"], st["written"], st["dropped"]) == (20_000, 20_000, 0)
    lines = s.getvalue().splitlines()
    assert check_per_producer_order(lines, 4) == 20_000
    assert not drop_counts(lines)


def test_overwrite_oldest_keeps_the_newest() -> None:
    s = SlowStream(0.2)
    log = RingLogger(sink=s, capacity=4, policy="overwrite_oldest")
    tid = log.register("{i:d}")
    log.push(tid, -1)
    time.sleep(0.05)  # the drain is stuck writing -1
    for i in range(100):
        log.push(tid, i)
    log.close()
    lines = s.getvalue().splitlines()
    assert [ln for ln in lines if not ln.startswith("[nlsq]")] == ["-1", "96", "97", "98", "99"]
    assert drop_counts(lines) == [96]


# --- failing sinks --------------------------------------------------------------


def test_raising_stream_is_counted_and_reported_once(capfd: pytest.CaptureFixture[str]) -> None:
    stream = FailingStream()
    log = RingLogger(sink=stream, capacity=8)
    tid = log.register("{i:d}")
    for i in range(5):
        log.push(tid, i)
        assert log.flush(timeout=10)
    log.close()
    st = log.stats()
    assert st["sink_errors"] == stream.calls >= 5
    assert st["written"] == 0
    err = capfd.readouterr().err
    assert err.count("[nlsq] log sink error") == 1
    assert "disk full (test)" in err


def test_broken_pipe_is_counted_not_raised(capfd: pytest.CaptureFixture[str]) -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        log = RingLogger(sink=w)
        tid = log.register("{i:d}")
        for i in range(100):
            log.push(tid, i)
        assert log.flush(timeout=10)
        log.close()
    finally:
        os.close(w)
    assert log.stats()["sink_errors"] >= 1
    assert capfd.readouterr().err.count("[nlsq] log sink error") == 1


def test_closed_stream_is_counted() -> None:
    s = io.StringIO()
    s.close()
    with RingLogger(sink=s) as log:
        tid = log.register("{i:d}")
        log.push(tid, 1)
        assert log.flush(timeout=10)
        assert log.stats()["sink_errors"] >= 1


# --- bad input ------------------------------------------------------------------


@pytest.fixture
def log() -> RingLogger:
    with RingLogger(sink=io.StringIO()) as lg:
        yield lg


def test_unknown_template_id(log: RingLogger) -> None:
    tid = log.register("{a:d}")
    for bad in (tid + 1, -1, 2**40):
        with pytest.raises(ValueError, match="unknown template id"):
            log.push(bad, 1)
    with pytest.raises(TypeError, match="template id"):
        log.push("0", 1)


def test_wrong_value_count(log: RingLogger) -> None:
    tid = log.register("{a:d} {b:.1f}")
    for values in ((1,), (1, 2.0, 3.0), tuple(range(20))):
        with pytest.raises(ValueError, match="takes 2 values"):
            log.push(tid, *values)
    with pytest.raises(ValueError, match="takes 2 values"):
        log.push_array(tid, np.zeros(3))
    assert log.stats()["pushed"] == 0


def test_non_numeric_values(log: RingLogger) -> None:
    tid = log.register("{a:d} {b:.1f}")
    for bad in ("1", None, [1.0], object()):
        with pytest.raises(TypeError, match="value 1 must be a number"):
            log.push(tid, 1, bad)
    with pytest.raises(ValueError, match="64-bit"):
        log.push(tid, 2**70, 1.0)
    assert log.stats()["pushed"] == 0


def test_push_array_checks_dtype_and_shape(log: RingLogger) -> None:
    tid = log.register("{a:.1f} {b:.1f}")
    with pytest.raises(TypeError, match="float64 or int64"):
        log.push_array(tid, np.zeros(2, dtype=np.float32))
    with pytest.raises(TypeError, match="float64 or int64"):
        log.push_array(tid, np.array(["a", "b"]))
    with pytest.raises(ValueError, match="1-D"):
        log.push_array(tid, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="1-D"):
        log.push_array(tid, np.float64(1.0))
    assert log.stats()["pushed"] == 0


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="policy"):
        RingLogger(sink=io.StringIO(), policy="drop_old")
    for cap in (0, -5, 2**40):
        with pytest.raises(ValueError, match="capacity"):
            RingLogger(sink=io.StringIO(), capacity=cap)
    with pytest.raises(TypeError, match="sink must be"):
        RingLogger(sink=3.5)
    with pytest.raises(ValueError, match="file descriptor"):
        RingLogger(sink=-1)
    with pytest.raises(OSError):
        RingLogger(sink=tmp_path / "missing-dir" / "x.log")
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        RingLogger(sink=w)


def test_bad_template_names_the_position(log: RingLogger) -> None:
    with pytest.raises(ValueError, match="position"):
        log.register("ok {a:d} {b")


def test_ids_are_unique_and_templates_interned() -> None:
    with RingLogger(sink=io.StringIO()) as a, RingLogger(sink=io.StringIO()) as b:
        assert a.id != b.id
        t = a.register("{x:d}")
        assert a.register("{x:d}") == t
        assert a.arity(t) == 1
        assert a.field_names(t) == ["x"]
        assert a.policy == "drop_new" and a.capacity == 65536
