"""Logging to a slow sink: the ring keeps the computation's pace, a blocking print does not.

    python benches/run.py --only bench_slow_sink [--quick]

The sink is a Python text stream whose ``write`` sleeps 1 ms per line it is
given (a slow terminal, a remote console): a cost per line, so the ring's
batching cannot hide it.  (A sink that sleeps once per ``write`` *call* is
included for the ring as well: the drain writes a whole batch per call.)

Two workloads, each run with every variant interleaved, medians of the
repeats:

1. A jitted ``lax.while_loop`` of ``N`` iterations (a small vector update per
   iteration) that logs one line per iteration with ``log_iteration_async``.
   *compute* = the call plus ``jax.effects_barrier()``: the computation has
   finished and every callback returned; *until written* additionally waits
   for the sink to have every line (``async_logger.flush()``).
2. ``nlsq.curve_fit(..., verbose=2)`` of a two-Gaussian model from a poor
   start (about 60 iterations): the wall time of the call, which returns only
   after its final flush (the table is complete when ``curve_fit`` returns).

Variants: no logging (``verbose=0``); the ring (default route) writing to a
fast file; the ring with ``drop_new`` and with ``block`` writing to the slow
sink through a small ring (``CAPACITY`` records, so a burst overflows it); the
blocking-print logger (``benches/_blocking_print.py``: ``str.format`` and
``print(..., flush=True)`` in ``jax.debug.callback``) writing to the slow
sink.  Checked on every run: every line written when nothing was dropped;
else every record written or counted dropped (the ring's counters), drops only
under ``drop_new``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _blocking_print
import jax
import jax.numpy as jnp
import nlsq
import numpy as np
from _harness import bars, bench_result, interleaved_medians, markdown_table
from nlsq.utils import _routes, async_logger

DELAY_S = 1e-3
CAPACITY = 16
DROP_NOTICE = "[nlsq]"


class SlowStream:
    """A text stream that sleeps ``delay_s`` per line (or per call) and counts lines.

    No ``fileno``: the ring treats it as a Python stream and calls ``write``
    from its drain thread, one call per batch.
    """

    def __init__(self, delay_s: float, per: str = "line") -> None:
        self.delay_s = delay_s
        self.per = per
        self.lines = 0
        self.notices = 0
        self.calls = 0
        self._lock = threading.Lock()
        self._partial = ""

    def write(self, s: str) -> int:
        n = s.count("\n")
        time.sleep(self.delay_s * (n if self.per == "line" else 1))
        with self._lock:
            self.calls += 1
            text = self._partial + s
            *done, self._partial = text.split("\n")
            self.lines += len(done)
            self.notices += sum(1 for line in done if line.startswith(DROP_NOTICE))
        return len(s)

    def flush(self) -> None:
        pass

    def take(self) -> tuple[int, int]:
        """(lines, drop-notice lines) since the last call."""
        with self._lock:
            out = (self.lines, self.notices)
            self.lines = self.notices = 0
            return out


class FileCounter:
    """A fast sink: a real file; counts the new lines since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.offset = 0

    def take(self) -> tuple[int, int]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = data.splitlines()
        return len(lines), sum(1 for line in lines if line.startswith(DROP_NOTICE.encode()))


class Variant:
    """A logger configuration and the sink it writes to."""

    def __init__(
        self,
        label: str,
        *,
        route: str | None,
        sink: Any = None,
        policy: str = "drop_new",
        capacity: int = 65536,
    ) -> None:
        self.label = label
        self.route = route
        self.sink = sink
        self.policy = policy
        self.capacity = capacity
        self.fn: Callable[[], Any] | None = None
        # One entry per run, the warm-up (compiling) run first.
        self.compute: list[float] = []
        self.written_at: list[float] = []
        self.lines: list[int] = []
        self.dropped: list[int] = []
        self.accounted: list[bool] = []

    @property
    def logs(self) -> bool:
        return self.route is not None

    def ring_sink(self) -> Any:
        return self.sink.fd if isinstance(self.sink, FileCounter) else self.sink


def variants_for(tmp: Path, default_route: str, tag: str) -> list[Variant]:
    slow = SlowStream(DELAY_S)
    return [
        Variant("no logging", route=None),
        Variant("ring, fast file sink", route=default_route, sink=FileCounter(tmp / f"{tag}.log")),
        Variant(
            f"ring drop_new, slow sink, capacity {CAPACITY}",
            route=default_route,
            sink=slow,
            capacity=CAPACITY,
        ),
        Variant(
            f"ring block, slow sink, capacity {CAPACITY}",
            route=default_route,
            sink=slow,
            policy="block",
            capacity=CAPACITY,
        ),
        Variant(
            "ring drop_new, sink slow per write call",
            route=default_route,
            sink=SlowStream(DELAY_S, per="call"),
        ),
        Variant("blocking print, slow sink", route=_blocking_print.NAME, sink=slow),
    ]


def _configure(v: Variant) -> None:
    """Install the variant's ring (the blocking printer's header lines use it too)."""
    if v.route == _blocking_print.NAME:
        _blocking_print.set_stream(v.sink)
        async_logger.configure(sink=v.sink)
    elif v.logs:
        async_logger.configure(sink=v.ring_sink(), capacity=v.capacity, policy=v.policy)
    else:
        async_logger.configure(sink=os.devnull)
    if v.route is not None:
        # configure() picks the default route again; a variant's first run traces
        # its program, and the route in force then is the one it keeps.
        _routes.set_route(_routes.make_route(v.route))


def _measure(variants: list[Variant], expected: int, repeats: int) -> None:
    """The variants interleaved, after one warm-up round (each traces under its own route).

    Timed (*compute*): the call plus ``jax.effects_barrier()``. *Until written* adds the
    final ``async_logger.flush()``, timed after it. Every run checks that every line is
    written, or, when records were dropped (only under ``drop_new``), that every record
    was written or counted dropped.
    """
    by_label = {v.label: v for v in variants}

    def before(label: str) -> None:
        v = by_label[label]
        _configure(v)
        if v.logs:
            v.sink.take()

    def timed(v: Variant) -> Callable[[], None]:
        def run() -> None:
            assert v.fn is not None
            v.fn()
            jax.effects_barrier()

        return run

    def after(label: str, seconds: float) -> None:
        v = by_label[label]
        t0 = time.perf_counter()
        async_logger.flush()
        v.compute.append(seconds)
        v.written_at.append(seconds + time.perf_counter() - t0)
        lines, notices = v.sink.take() if v.logs else (0, 0)
        stats = async_logger.stats()
        dropped = int(stats["dropped"])
        rows = lines - notices
        v.lines.append(rows)
        v.dropped.append(dropped)
        logged = expected if v.logs else 0
        if dropped == 0:
            accounted = rows == logged
        else:
            # A record may hold two lines (a fit's header with row 0, its closing
            # lines): the ring's own counters account for records.
            accounted = (
                v.policy == "drop_new"
                and int(stats["written"]) + dropped == int(stats["pushed"])
                and rows < logged
            )
        v.accounted.append(accounted)

    interleaved_medians(
        {v.label: timed(v) for v in variants}, repeats, warmup=1, before=before, after=after
    )
    for v in variants:
        del v.compute[0], v.written_at[0], v.lines[0], v.dropped[0]


def _summary(variants: list[Variant], expected: int) -> dict[str, Any]:
    base = statistics.median(variants[0].compute)
    out = {}
    for v in variants:
        comp = statistics.median(v.compute)
        out[v.label] = {
            "route": v.route,
            "policy": v.policy if v.logs else None,
            "capacity": v.capacity if v.logs else None,
            "compute_ms": 1e3 * comp,
            "until_written_ms": 1e3 * statistics.median(v.written_at),
            "extra_compute_ms": 1e3 * (comp - base),
            "lines_written": statistics.median(v.lines),
            "dropped": statistics.median(v.dropped),
            "lines_logged": expected if v.logs else 0,
            "every_line_accounted_for": all(v.accounted),
            "samples_compute_s": v.compute,
            "samples_until_written_s": v.written_at,
        }
    return out


def loop_workload(n: int, repeats: int, tmp: Path, default_route: str) -> dict[str, Any]:
    """Workload 1: a jitted while_loop logging every iteration."""
    variants = variants_for(tmp, default_route, "loop")

    def make(verbose: int) -> Callable[[], Any]:
        def body(c: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            i, x = c
            cost = 0.5 * jnp.dot(x, x)
            async_logger.log_iteration_async(i, cost, jnp.max(jnp.abs(x)), verbose=verbose)
            return i + 1, x * 0.999 + 1e-4

        x0 = jnp.linspace(0.0, 1.0, 10_000)
        f = jax.jit(lambda x: jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), x)))
        return lambda: jax.block_until_ready(f(x0))

    for v in variants:
        v.fn = make(2 if v.logs else 0)
    _measure(variants, n, repeats)
    return {"iterations": n, "repeats": repeats, "variants": _summary(variants, n)}


def _two_gauss_np(x: np.ndarray, *p: float) -> np.ndarray:
    a1, m1, s1, a2, m2, s2, c = p
    return a1 * np.exp(-(((x - m1) / s1) ** 2) / 2) + a2 * np.exp(-(((x - m2) / s2) ** 2) / 2) + c


def _fresh_two_gauss() -> Callable[..., jax.Array]:
    # One function object per variant: the route is fixed when a fit is traced.
    def model(x: jax.Array, a1, m1, s1, a2, m2, s2, c) -> jax.Array:  # noqa: ANN001
        return (
            a1 * jnp.exp(-(((x - m1) / s1) ** 2) / 2)
            + a2 * jnp.exp(-(((x - m2) / s2) ** 2) / 2)
            + c
        )

    return model


FIT_P_TRUE = (3.0, 3.0, 0.5, 2.0, 6.5, 1.0, 0.2)
FIT_P0 = (1.0, 4.0, 3.0, 1.0, 5.0, 3.0, 0.0)


def fit_workload(n: int, repeats: int, tmp: Path, default_route: str) -> dict[str, Any]:
    """Workload 2: curve_fit(verbose=2) with about 60 iterations."""
    variants = variants_for(tmp, default_route, "fit")
    x = np.linspace(0.0, 10.0, n)
    y = _two_gauss_np(x, *FIT_P_TRUE) + 0.02 * np.random.default_rng(0).standard_normal(n)
    _configure(variants[1])
    probe = _fresh_two_gauss()
    nlsq.curve_fit(probe, x, y, p0=FIT_P0, verbose=2)
    async_logger.flush()
    lines_per_fit = variants[1].sink.take()[0]

    for v in variants:
        model = _fresh_two_gauss()
        verbose = 2 if v.logs else 0
        v.fn = lambda model=model, verbose=verbose: nlsq.curve_fit(
            model, x, y, p0=FIT_P0, verbose=verbose
        )
    _measure(variants, lines_per_fit, repeats)
    return {
        "points": n,
        "lines_per_fit": lines_per_fit,
        "repeats": repeats,
        "variants": _summary(variants, lines_per_fit),
    }


def _table(loop: dict[str, Any], fit: dict[str, Any]) -> str:
    head = [
        "variant",
        "loop: compute (ms)",
        "loop: until written (ms)",
        "loop: written / dropped",
        "curve_fit: time per fit (ms)",
        "curve_fit: written / dropped",
    ]
    rows = []
    for label, r in loop["variants"].items():
        f = fit["variants"][label]
        lw = f"{r['lines_written']:.0f} / {r['dropped']:.0f}" if r["route"] else "-"
        fw = f"{f['lines_written']:.0f} / {f['dropped']:.0f}" if f["route"] else "-"
        rows.append(
            [
                label,
                f"{r['compute_ms']:.1f}",
                f"{r['until_written_ms']:.1f}",
                lw,
                f"{f['until_written_ms']:.1f}",
                fw,
            ]
        )
    return markdown_table(head, rows)


def main(quick: bool, out: Path) -> dict[str, Any]:
    """Run both workloads and return the result (``out`` unused)."""
    _blocking_print.register()
    default_route = _routes.make_route(None).name
    n_iter = 100 if quick else 500
    repeats = 2 if quick else 9
    with tempfile.TemporaryDirectory(prefix="bench_slow_sink_") as tmpdir:
        tmp = Path(tmpdir)
        try:
            loop = loop_workload(n_iter, repeats, tmp, default_route)
            fit = fit_workload(2_000, repeats, tmp, default_route)
        finally:
            async_logger.configure()
            _blocking_print.set_stream(None)
    lv, fv = loop["variants"], fit["variants"]
    drop_label = f"ring drop_new, slow sink, capacity {CAPACITY}"
    block_label = f"ring block, slow sink, capacity {CAPACITY}"
    findings = {
        "loop_compute_ms_no_logging": lv["no logging"]["compute_ms"],
        "loop_compute_ms_ring_drop_new_slow": lv[drop_label]["compute_ms"],
        "loop_compute_ms_blocking_print_slow": lv["blocking print, slow sink"]["compute_ms"],
        "loop_lost_ms_ring_block_slow": lv[block_label]["extra_compute_ms"],
        "loop_dropped_ring_drop_new_slow": lv[drop_label]["dropped"],
        "fit_ms_ring_fast": fv["ring, fast file sink"]["until_written_ms"],
        "fit_ms_ring_drop_new_slow": fv[drop_label]["until_written_ms"],
        "fit_ms_ring_block_slow": fv[block_label]["until_written_ms"],
        "fit_ms_blocking_print_slow": fv["blocking print, slow sink"]["until_written_ms"],
    }
    title = (
        f"Logging to a slow sink ({DELAY_S * 1e3:g} ms per line): a {n_iter}-iteration jitted "
        f"loop logging every iteration, and curve_fit(verbose=2) with "
        f"{fit['lines_per_fit']} lines per fit (median of {repeats}, "
        f"{jax.default_backend()}, route {default_route})"
    )
    labels = list(lv)
    return bench_result(
        "bench_slow_sink",
        title=title,
        table=_table(loop, fit),
        checks={
            f"{workload}, {label}: every line written, or every record written or counted "
            "dropped (only under drop_new)": r["every_line_accounted_for"]
            for workload, w in (("loop", loop), ("curve_fit", fit))
            for label, r in w["variants"].items()
            if r["route"] is not None
        },
        plot=[
            bars(
                f"jitted loop, {n_iter} logged iterations",
                "ms (median)",
                labels,
                {
                    "compute": [lv[k]["compute_ms"] for k in labels],
                    "until written": [lv[k]["until_written_ms"] for k in labels],
                },
            ),
            bars(
                f"curve_fit(verbose=2), {fit['lines_per_fit']} lines",
                "ms per curve_fit call (median)",
                labels,
                {"until written": [fv[k]["until_written_ms"] for k in labels]},
            ),
        ],
        delay_s_per_line=DELAY_S,
        capacity_small=CAPACITY,
        default_route=default_route,
        loop=loop,
        fit=fit,
        findings=findings,
        backend=jax.default_backend(),
    )
