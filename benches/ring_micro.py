"""Ring logger micro-benchmarks from Python.

Measures, side by side in one process:

* push latency: ``RingLogger.push`` with 6 values, ``push_array`` with a
  6-element array, and two references (a no-op Python call with the same
  arguments, the floor of any Python-side API; ``queue.SimpleQueue.put`` of a
  tuple, the pure-Python hand-off alternative). Each sample times a batch of
  pushes with ``perf_counter_ns``; median and p99 are over samples, per push.
* drain throughput: records/s formatted and written to a file by the ring's
  drain thread, against formatting with ``str.format`` and writing from Python.
* released drain (``ring_drain_released_pipe``): the drain alone. Records are
  queued while the drain is held in a write to a full pipe, then the pipe is
  read; the clock runs from the release until ``flush`` returns, so the
  producer's time is not in the figure (the issue-12 target, >= 2 M records/s).

Run ``python benches/run.py --only ring_micro [--quick]``.
"""

from __future__ import annotations

import os
import platform
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _harness import bars, bench_result, interleaved_medians, markdown_table
from nlsq._ringlog import RingLogger

ROW = "{it:^15d}{nfev:^15d}{cost:^15.4e}{reduction:^15.2e}{step:^15.2e}{optimality:^15.2e}"
PY_ROW = "{:^15d}{:^15d}{:^15.4e}{:^15.2e}{:^15.2e}{:^15.2e}"
VALUES = (12, 13, 1.2345e-3, 5.6e-5, 0.125, 3.2e-9)
BATCH = 100


def _percentiles(per_push_ns: list[float]) -> dict[str, float]:
    xs = sorted(per_push_ns)
    return {
        "median_ns": statistics.median(xs),
        "p99_ns": xs[min(len(xs) - 1, int(0.99 * len(xs)))],
        "samples": len(xs),
        "batch": BATCH,
    }


def _batch(push: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(BATCH):
            push()

    return run


def bench_push(samples: int) -> dict[str, dict[str, float]]:
    """Per-push latency of the ring logger and of the references, interleaved.

    A sample is one batch of ``BATCH`` calls; every 100 samples of a variant the
    ring is written out (or the queue emptied), untimed, so it never fills.
    """
    with tempfile.TemporaryDirectory() as d:
        log = RingLogger(sink=Path(d) / "push.log", capacity=1 << 16)
        tid = log.register(ROW)
        arr = np.array(VALUES, dtype=np.float64)
        push, push_array, v = log.push, log.push_array, VALUES

        def noop(tid: int, *values: float) -> None:
            return None

        q: queue.SimpleQueue[tuple[int, tuple[float, ...]]] = queue.SimpleQueue()

        def empty_queue() -> None:
            while not q.empty():
                q.get_nowait()

        variants = {
            "ringlogger_push_6": _batch(lambda: push(tid, *v)),
            "ringlogger_push_array_6": _batch(lambda: push_array(tid, arr)),
            "noop_python_call_6": _batch(lambda: noop(tid, *v)),
            "simplequeue_put_tuple": _batch(lambda: q.put((tid, v))),
        }
        between = {
            "ringlogger_push_6": log.flush,
            "ringlogger_push_array_6": log.flush,
            "simplequeue_put_tuple": empty_queue,
        }
        runs = dict.fromkeys(variants, 0)

        def after(name: str, seconds: float) -> None:
            runs[name] += 1
            if runs[name] % 100 == 0 and name in between:
                between[name]()

        timing = interleaved_medians(variants, samples, after=after)
        st = log.stats()
        log.close()
        assert st["dropped"] == 0, "the ring overflowed: push latency would include drops"
    # Each sample also paid for one lambda call per push: subtract nothing, but
    # report the no-op call so the ratio to it is the honest overhead.
    return {
        name: _percentiles([s / BATCH * 1e9 for s in t["samples_s"]]) for name, t in timing.items()
    }


def bench_drain(n: int) -> dict[str, dict[str, float]]:
    """Records/s written to a file: ring drain thread vs Python formatting."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "drain.log"
        log = RingLogger(sink=path, capacity=1 << 16, policy="block")
        tid = log.register(ROW)
        push = log.push
        t0 = time.perf_counter()
        for i in range(n):
            push(tid, i, i + 1, 1.0 / (i + 1), i * 1e-3, 0.5 + i, 1e-8 * i)
        t_push = time.perf_counter() - t0
        log.flush()
        t_all = time.perf_counter() - t0
        st = log.stats()
        log.close()
        lines = sum(1 for _ in path.open())
        assert lines == n == st["written"], (lines, n, st)
        results["ring_drain_to_file"] = {
            "records": n,
            "seconds": t_all,
            "records_per_s": n / t_all,
            "push_phase_s": t_push,
            "latency_ns_p50": st["latency_ns_p50"],
            "latency_ns_p99": st["latency_ns_p99"],
        }

        path2 = Path(d) / "python.log"
        fmt = PY_ROW.format
        t0 = time.perf_counter()
        with path2.open("w") as f:
            write = f.write
            for i in range(n):
                write(fmt(i, i + 1, 1.0 / (i + 1), i * 1e-3, 0.5 + i, 1e-8 * i) + "\n")
        t_py = time.perf_counter() - t0
        results["python_format_write_file"] = {
            "records": n,
            "seconds": t_py,
            "records_per_s": n / t_py,
        }
        assert path.read_text() == path2.read_text(), "ring and str.format disagree"
    return results


def _fill_pipe(fd: int) -> int:
    """Writes to ``fd`` until the pipe is full; returns the bytes written."""
    os.set_blocking(fd, False)
    written = 0
    try:
        while True:
            written += os.write(fd, b"x" * 65536)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)
    return written


def bench_drain_released(n: int) -> dict[str, dict[str, float]]:
    """Records/s of the drain alone, released into a pipe after queueing."""
    r, w = os.pipe()
    try:
        junk = _fill_pipe(w)
        log = RingLogger(sink=w, capacity=n + 16, policy="block")
        tid = log.register(ROW)
        push = log.push
        for i in range(n):
            push(tid, i, i + 1, 1.0 / (i + 1), i * 1e-3, 0.5 + i, 1e-8 * i)
        head = bytearray()
        lines = 0

        def read_all() -> None:
            nonlocal lines
            skipped = 0
            while lines < n:
                chunk = os.read(r, 1 << 20)
                if skipped < junk:
                    cut = min(junk - skipped, len(chunk))
                    skipped += cut
                    chunk = chunk[cut:]
                if len(head) < 1 << 16:
                    head.extend(chunk)
                lines += chunk.count(b"\n")

        reader = threading.Thread(target=read_all)
        t0, c0 = time.perf_counter(), time.process_time()
        reader.start()
        log.flush()
        seconds = time.perf_counter() - t0
        # The process's CPU time meanwhile: the drain's, plus the reader's
        # (the producer waits in flush); the steadier figure on a busy machine.
        cpu_seconds = time.process_time() - c0
        reader.join()
        st = log.stats()
        log.close()
    finally:
        os.close(r)
        os.close(w)
    assert lines == n == st["written"], (lines, n, st)
    shown = head.decode().splitlines()[:-1]
    fmt = PY_ROW.format
    for i, line in enumerate(shown):
        assert line == fmt(i, i + 1, 1.0 / (i + 1), i * 1e-3, 0.5 + i, 1e-8 * i), (i, line)
    return {
        "ring_drain_released_pipe": {
            "records": n,
            "seconds": seconds,
            "records_per_s": n / seconds,
            "cpu_seconds": cpu_seconds,
            "records_per_cpu_s": n / cpu_seconds,
            "checked_lines": len(shown),
        }
    }


def table(res: dict) -> str:
    rows = []
    floor = res["push"]["noop_python_call_6"]["median_ns"]
    for name, r in res["push"].items():
        rows.append(
            [
                f"push: {name}",
                f"{r['median_ns']:.0f} ns",
                f"{r['p99_ns']:.0f} ns",
                f"{r['median_ns'] / floor:.2f}x the no-op call",
            ]
        )
    for name, r in res["drain"].items():
        rows.append(
            [
                f"drain: {name}",
                f"{r['records_per_s'] / 1e6:.2f} M records/s",
                "",
                f"{r['records']} records in {r['seconds']:.3f} s"
                + (
                    f"; {r['records_per_cpu_s'] / 1e6:.2f} M records per CPU-second"
                    if "records_per_cpu_s" in r
                    else ""
                ),
            ]
        )
    return markdown_table(["benchmark", "median", "p99", "note"], rows, align="lrrl")


def main(quick: bool, out: Path) -> dict:
    """Run the benchmarks and return the result (``out`` unused).

    ``quick``: fewer samples and records (seconds instead of tens of seconds).
    Mismatches (a dropped push, a line the drain did not write, ring output that
    differs from ``str.format``) raise: the bench then has no result.
    """
    samples = 2_000 if quick else 20_000
    n = 200_000 if quick else 1_000_000
    res = {
        "push": bench_push(samples),
        "drain": {**bench_drain(n), **bench_drain_released(n)},
        "meta": {
            "quick": quick,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "targets": {"python_push_median_ns": 1000, "drain_records_per_s": 2_000_000},
        },
    }
    push, drain = res["push"], res["drain"]
    return bench_result(
        "ring_micro",
        title="Ring logger from Python: push latency and drain throughput",
        table=table(res),
        checks={},
        plot=[
            bars(
                "Push latency from Python",
                "ns per push",
                list(push),
                {
                    "median": [r["median_ns"] for r in push.values()],
                    "p99": [r["p99_ns"] for r in push.values()],
                },
            ),
            bars(
                "Drain throughput",
                "M records/s formatted and written to a file or pipe",
                list(drain),
                {"records/s": [r["records_per_s"] / 1e6 for r in drain.values()]},
            ),
        ],
        **res,
    )
