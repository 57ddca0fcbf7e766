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

Run ``python benches/ring_micro.py [--quick]``; prints a markdown table and
writes ``benches/results/ring_micro.json``.
"""

from __future__ import annotations

import argparse
import json
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
from nlsq._ringlog import RingLogger

ROW = "{it:^15d}{nfev:^15d}{cost:^15.4e}{reduction:^15.2e}{step:^15.2e}{optimality:^15.2e}"
PY_ROW = "{:^15d}{:^15d}{:^15.4e}{:^15.2e}{:^15.2e}{:^15.2e}"
VALUES = (12, 13, 1.2345e-3, 5.6e-5, 0.125, 3.2e-9)
BATCH = 100
RESULTS = Path(__file__).resolve().parent / "results"


def _percentiles(per_push_ns: list[float]) -> dict[str, float]:
    xs = sorted(per_push_ns)
    return {
        "median_ns": statistics.median(xs),
        "p99_ns": xs[min(len(xs) - 1, int(0.99 * len(xs)))],
        "samples": len(xs),
        "batch": BATCH,
    }


def _time_batches(
    push: Callable[[], None], samples: int, between: Callable[[], None]
) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for s in range(samples):
        t0 = clock()
        for _ in range(BATCH):
            push()
        out.append((clock() - t0) / BATCH)
        if s % 100 == 99:
            between()
    return out


def bench_push(samples: int) -> dict[str, dict[str, float]]:
    """Per-push latency of the ring logger and of the references."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        log = RingLogger(sink=Path(d) / "push.log", capacity=1 << 16)
        tid = log.register(ROW)
        arr = np.array(VALUES, dtype=np.float64)
        push, push_array, v = log.push, log.push_array, VALUES

        def flush() -> None:
            log.flush()

        results["ringlogger_push_6"] = _percentiles(
            _time_batches(lambda: push(tid, *v), samples, flush)
        )
        results["ringlogger_push_array_6"] = _percentiles(
            _time_batches(lambda: push_array(tid, arr), samples, flush)
        )
        st = log.stats()
        log.close()
        assert st["dropped"] == 0, "the ring overflowed: push latency would include drops"

    def noop(tid: int, *values: float) -> None:
        return None

    results["noop_python_call_6"] = _percentiles(
        _time_batches(lambda: noop(tid, *v), samples, lambda: None)
    )
    q: queue.SimpleQueue[tuple[int, tuple[float, ...]]] = queue.SimpleQueue()

    def empty_queue() -> None:
        while not q.empty():
            q.get_nowait()

    results["simplequeue_put_tuple"] = _percentiles(
        _time_batches(lambda: q.put((tid, v)), samples, empty_queue)
    )
    # Each sample also paid for one lambda call: subtract nothing, but report
    # it so the ratio to the no-op floor is the honest overhead.
    return results


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
    rows = ["| benchmark | median | p99 | note |", "| --- | --- | --- | --- |"]
    floor = res["push"]["noop_python_call_6"]["median_ns"]
    for name, r in res["push"].items():
        rows.append(
            f"| push: {name} | {r['median_ns']:.0f} ns | {r['p99_ns']:.0f} ns | "
            f"{r['median_ns'] / floor:.2f}x the no-op call |"
        )
    for name, r in res["drain"].items():
        rows.append(
            f"| drain: {name} | {r['records_per_s'] / 1e6:.2f} M records/s | | "
            f"{r['records']} records in {r['seconds']:.3f} s |"
        )
    return "\n".join(rows)


def main(quick: bool = False, out: Path = RESULTS) -> dict:
    """Run the benchmarks, print a markdown table, write ``out/ring_micro.json``.

    Parameters
    ----------
    quick
        Fewer samples and records (seconds instead of tens of seconds).
    out
        Directory for ``ring_micro.json`` (created if missing).

    Returns
    -------
    dict
        ``{"push": {...}, "drain": {...}, "meta": {...}}`` as written to JSON.
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
    print(table(res))
    out.mkdir(parents=True, exist_ok=True)
    (out / "ring_micro.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def plot(res: dict, png: Path) -> None:
    """Push latency (median and p99) per variant; drain throughput beside it."""
    import matplotlib.pyplot as plt

    push, drain = res["push"], res["drain"]
    names = list(push)
    fig, (ax_p, ax_d) = plt.subplots(1, 2, figsize=(12, 4))
    y = range(len(names))
    ax_p.barh([i - 0.2 for i in y], [push[k]["median_ns"] for k in names], 0.4, label="median")
    ax_p.barh([i + 0.2 for i in y], [push[k]["p99_ns"] for k in names], 0.4, label="p99")
    ax_p.set_yticks(list(y), names, fontsize=8)
    ax_p.invert_yaxis()
    ax_p.set_xlabel("ns per push")
    ax_p.set_title("Push latency from Python", fontsize=9)
    ax_p.legend(fontsize=8)
    dn = list(drain)
    ax_d.barh(dn, [drain[k]["records_per_s"] / 1e6 for k in dn], color="tab:green")
    ax_d.invert_yaxis()
    ax_d.set_xlabel("M records/s formatted and written to a file")
    ax_d.set_title("Drain throughput", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    main(quick=args.quick, out=args.out)
