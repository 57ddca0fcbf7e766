"""Logging to a slow sink: the ring keeps the computation's pace, a blocking print does not.

    python benches/bench_slow_sink.py [--quick]

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
sink.  Checked on every run: lines written + records dropped = lines logged,
no drops without ``drop_new``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import nlsq
import numpy as np
from nlsq.utils import _routes, async_logger

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _blocking_print  # noqa: E402

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
        self.compute: list[float] = []
        self.written_at: list[float] = []
        self.lines: list[int] = []
        self.dropped: list[int] = []

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


def _run(v: Variant, expected_lines: int, record: bool) -> None:
    _configure(v)
    if v.logs:
        v.sink.take()
    assert v.fn is not None
    t0 = time.perf_counter()
    v.fn()
    jax.effects_barrier()
    t1 = time.perf_counter()
    async_logger.flush()
    t2 = time.perf_counter()
    lines, notices = v.sink.take() if v.logs else (0, 0)
    dropped = int(async_logger.stats()["dropped"])
    rows = lines - notices
    ok = rows + dropped == expected_lines and (dropped == 0 or v.policy == "drop_new")
    if v.logs and not ok:
        raise AssertionError(
            f"{v.label}: {rows} lines written + {dropped} dropped, expected {expected_lines}"
        )
    if record:
        v.compute.append(t1 - t0)
        v.written_at.append(t2 - t0)
        v.lines.append(rows)
        v.dropped.append(dropped)


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
            "samples_compute_s": v.compute,
            "samples_until_written_s": v.written_at,
        }
    return out


def _compile(variants: list[Variant], expected: int) -> None:
    """First run of each variant, under its own route: the route is fixed when traced."""
    for v in variants:
        _run(v, expected if v.logs else 0, record=False)


def _interleave(variants: list[Variant], expected: int, repeats: int) -> None:
    for _ in range(repeats):
        for v in variants:
            _run(v, expected if v.logs else 0, record=True)


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
    _compile(variants, n)
    _interleave(variants, n, repeats)
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
    _compile(variants, lines_per_fit)
    _interleave(variants, lines_per_fit, repeats)
    return {
        "points": n,
        "lines_per_fit": lines_per_fit,
        "repeats": repeats,
        "variants": _summary(variants, lines_per_fit),
    }


def _table(loop: dict[str, Any], fit: dict[str, Any]) -> str:
    head = (
        "| variant | loop: compute (ms) | loop: until written (ms) | loop: written / dropped "
        "| curve_fit: time per fit (ms) | curve_fit: written / dropped |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for label, r in loop["variants"].items():
        f = fit["variants"][label]
        lw = f"{r['lines_written']:.0f} / {r['dropped']:.0f}" if r["route"] else "-"
        fw = f"{f['lines_written']:.0f} / {f['dropped']:.0f}" if f["route"] else "-"
        lines.append(
            f"| {label} | {r['compute_ms']:.1f} | {r['until_written_ms']:.1f} | {lw} "
            f"| {f['until_written_ms']:.1f} | {fw} |"
        )
    return "\n".join(lines)


def main(quick: bool = False, out: Path | None = None) -> dict[str, Any]:
    """Run both workloads; return ``name``, ``title``, ``table`` and the raw data."""
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
    return {
        "name": "bench_slow_sink",
        "title": (
            f"Logging to a slow sink ({DELAY_S * 1e3:g} ms per line): a {n_iter}-iteration jitted "
            f"loop logging every iteration, and curve_fit(verbose=2) with "
            f"{fit['lines_per_fit']} lines per fit (median of {repeats}, "
            f"{jax.default_backend()}, route {default_route})"
        ),
        "table": _table(loop, fit),
        "delay_s_per_line": DELAY_S,
        "capacity_small": CAPACITY,
        "default_route": default_route,
        "loop": loop,
        "fit": fit,
        "findings": findings,
        "checks": {"lines written + dropped == lines logged, drops only under drop_new": True},
        "backend": jax.default_backend(),
    }


def plot(result: dict[str, Any], png: Path) -> None:
    """Grouped bars: compute vs until-written (loop), and time per fit."""
    import matplotlib.pyplot as plt

    loop, fit = result["loop"]["variants"], result["fit"]["variants"]
    labels = list(loop)
    y = np.arange(len(labels))
    fig, (ax_l, ax_f) = plt.subplots(1, 2, figsize=(13, 0.55 * len(labels) + 2), sharey=True)
    ax_l.barh(y - 0.2, [loop[k]["compute_ms"] for k in labels], 0.4, label="compute")
    ax_l.barh(y + 0.2, [loop[k]["until_written_ms"] for k in labels], 0.4, label="until written")
    for i, k in enumerate(labels):
        if loop[k]["dropped"]:
            ax_l.annotate(
                f"{loop[k]['dropped']:.0f} dropped",
                (loop[k]["until_written_ms"], i + 0.2),
                fontsize=7,
                va="center",
            )
    ax_l.set_yticks(y, labels, fontsize=8)
    ax_l.invert_yaxis()
    ax_l.set_xlabel("ms (median)")
    ax_l.set_title(f"jitted loop, {result['loop']['iterations']} logged iterations", fontsize=9)
    ax_l.legend(fontsize=8)
    ax_f.barh(y, [fit[k]["until_written_ms"] for k in labels], 0.5, color="tab:green")
    ax_f.set_xlabel("ms per curve_fit call (median)")
    ax_f.set_title(f"curve_fit(verbose=2), {result['fit']['lines_per_fit']} lines", fontsize=9)
    fig.suptitle(result["title"], fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    res = main(quick=args.quick)
    print(res["title"])
    print(res["table"])
