"""Cost per logged iteration inside a jitted ``lax.while_loop``.

    python benches/run.py --only bench_callback [--quick]

One process, one small loop body (a scalar recurrence standing in for an
optimizer step: iteration, cost and gradient norm), ``N`` iterations that each
log one line.  Variants run interleaved (A B C ... A B C ...) and each figure is
the median over the repeats, per iteration, in µs, and as a ratio to JAX's own
floor, a no-op ``jax.debug.callback`` receiving the same three values packed in
one array.

Every variant that writes writes the same line to its own file (real
``write`` calls, flushed per line where the variant flushes at all), so the
terminal is not flooded; line counts are checked after the run.  The timed
section of a variant is the jitted call plus ``jax.effects_barrier()`` (all
its callbacks have returned).  ``ring + flush`` also waits for the drain thread
to have written every line.

Route comparison (no-op callbacks, same packed array): ``jax.debug.callback``
(unordered and ordered), ``io_callback`` (unordered and ordered) and the
``nlsq_log_emit`` primitive that the ``"callback"`` backend lowers straight to
XLA's host callback.

An ``"ffi"`` variant runs when the native FFI route is available
(``async_logger.configure(backend="ffi")`` succeeds).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _harness import bars, bench_result, interleaved_medians, markdown_table
from jax.experimental import io_callback
from nlsq.utils import _routes, async_logger

LINE = "iter {:>6d}  cost {:>13.6e}  |grad| {:>10.3e}"


class Variant:
    """One way of logging each iteration, with the file its lines go to."""

    def __init__(
        self,
        name: str,
        log: Callable[[jax.Array, jax.Array, jax.Array], None] | None,
        lines_per_run: int,
        *,
        after: Callable[[], None] = lambda: None,
        around: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        count: Callable[[], int] = lambda: 0,
        group: str = "logging",
        flush_in_timing: bool = False,
    ) -> None:
        self.name = name
        self.log = log
        self.lines_per_run = lines_per_run
        self.after = after
        self.around = around
        self.count = count
        self.group = group
        self.flush_in_timing = flush_in_timing
        self.base = 0  # lines already in the variant's file before the timed runs
        self.fn: Callable[[jax.Array], Any] | None = None
        self.runs = 0


def _loop(n: int, log: Callable[[jax.Array, jax.Array, jax.Array], None] | None) -> Callable:
    """The jitted loop: ``n`` iterations of a small body, each calling ``log``."""

    def body(carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        i, x = carry
        cost = 0.5 * x * x
        grad = jnp.abs(x)
        if log is not None:
            log(i, cost, grad)
        return i + 1, x * 0.999 + 1e-4

    @jax.jit
    def run(x0: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), x0))

    return run


def _packed(i: jax.Array, cost: jax.Array, grad: jax.Array) -> jax.Array:
    dtype = jnp.result_type(float)
    return jnp.stack([i.astype(dtype), cost.astype(dtype), grad.astype(dtype)])


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _line(buf: Any) -> str:
    # jax.debug.callback passes jax.Arrays: one conversion to NumPy first, so
    # the blocking variants are not charged for three device indexing ops.
    b = np.asarray(buf)
    return LINE.format(int(b[0]), float(b[1]), float(b[2]))


def build_variants(n: int, tmp: Path) -> list[Variant]:
    """Every variant, its loop not yet compiled.  Order = table order."""
    calls = [0]

    def noop(buf: np.ndarray) -> None:
        calls[0] += 1

    def counted() -> int:
        return calls[0]

    variants = [
        Variant("no callback", None, 0, group="reference"),
        Variant(
            "no-op jax.debug.callback (floor)",
            lambda i, c, g: jax.debug.callback(noop, _packed(i, c, g)),
            n,
            count=counted,
            group="route",
        ),
    ]

    # Route comparison: the same no-op, the same packed array.
    variants += [
        Variant(
            "no-op jax.debug.callback(ordered=True)",
            lambda i, c, g: jax.debug.callback(noop, _packed(i, c, g), ordered=True),
            n,
            count=counted,
            group="route",
        ),
        Variant(
            "no-op io_callback(ordered=False)",
            lambda i, c, g: io_callback(noop, None, _packed(i, c, g), ordered=False),
            n,
            count=counted,
            group="route",
        ),
        Variant(
            "no-op io_callback(ordered=True)",
            lambda i, c, g: io_callback(noop, None, _packed(i, c, g), ordered=True),
            n,
            count=counted,
            group="route",
        ),
        Variant(
            "no-op nlsq_log_emit (host callback, no device_put)",
            lambda i, c, g: _routes.host_callback(noop, _packed(i, c, g)),
            n,
            count=counted,
            group="route",
        ),
    ]

    # The ring.  Its sink is a file descriptor, written from Rust.
    ring_path = tmp / "ring.log"
    ring_fd = os.open(ring_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    async_logger.configure(sink=ring_fd, backend="callback")

    def ring_log(i: jax.Array, c: jax.Array, g: jax.Array) -> None:
        async_logger.log_iteration_async(i, c, g, verbose=2)

    def ring_lines() -> int:
        async_logger.flush()
        return _count_lines(ring_path)

    variants += [
        Variant(
            "log_iteration_async (ring)",
            ring_log,
            n,
            after=async_logger.flush,
            count=ring_lines,
        ),
        Variant(
            "log_iteration_async (ring) + flush",
            ring_log,
            n,
            count=ring_lines,
            flush_in_timing=True,
        ),
    ]
    # The route is chosen when a loop is traced; compile the ring loops now.
    for v in variants:
        v.fn = _loop(n, v.log)
        jax.block_until_ready(v.fn(jnp.float32(1.0)))
    jax.effects_barrier()
    async_logger.flush()

    variants.append(
        Variant(
            "log_iteration_async (ring, jax.debug.callback route)",
            ring_log,
            n,
            after=async_logger.flush,
            count=ring_lines,
        )
    )
    _routes.set_route(_routes.make_route("debug_callback"))
    variants[-1].fn = _loop(n, ring_log)
    jax.block_until_ready(variants[-1].fn(jnp.float32(1.0)))

    try:
        _routes.set_route(_routes.make_route("ffi"))
    except (ValueError, RuntimeError):
        pass
    else:
        variants.append(
            Variant(
                "log_iteration_async (ring, FFI route)",
                ring_log,
                n,
                after=async_logger.flush,
                count=ring_lines,
            )
        )
        variants[-1].fn = _loop(n, ring_log)
        jax.block_until_ready(variants[-1].fn(jnp.float32(1.0)))
    _routes.set_route(_routes.make_route("callback"))
    jax.effects_barrier()
    async_logger.flush()

    # Blocking alternatives, each to its own line-buffered file.
    print_path = tmp / "print.log"
    print_file = open(print_path, "w", buffering=1)  # noqa: SIM115 - closed by the caller

    def print_cb(buf: np.ndarray) -> None:
        print(_line(buf), file=print_file, flush=True)

    dprint_path = tmp / "debug_print.log"
    dprint_file = open(dprint_path, "w", buffering=1)  # noqa: SIM115

    def dprint(i: jax.Array, c: jax.Array, g: jax.Array) -> None:
        jax.debug.print("iter {:>6d}  cost {:>13.6e}  |grad| {:>10.3e}", i, c, g)

    log_path = tmp / "logging.log"
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(message)s"))
    pylogger = logging.getLogger("nlsq.bench_callback")
    pylogger.handlers[:] = [handler]
    pylogger.setLevel(logging.INFO)
    pylogger.propagate = False

    def logging_cb(buf: Any) -> None:
        b = np.asarray(buf)
        pylogger.info("iter %6d  cost %13.6e  |grad| %10.3e", int(b[0]), float(b[1]), float(b[2]))

    def file_lines(path: Path, f: Any) -> Callable[[], int]:
        def count() -> int:
            f.flush()
            return _count_lines(path)

        return count

    blocking = [
        Variant(
            "print(..., flush=True) in jax.debug.callback",
            lambda i, c, g: jax.debug.callback(print_cb, _packed(i, c, g)),
            n,
            count=file_lines(print_path, print_file),
        ),
        Variant(
            "jax.debug.print",
            dprint,
            n,
            around=lambda: contextlib.redirect_stdout(dprint_file),
            count=file_lines(dprint_path, dprint_file),
        ),
        Variant(
            "logging.info in jax.debug.callback",
            lambda i, c, g: jax.debug.callback(logging_cb, _packed(i, c, g)),
            n,
            count=file_lines(log_path, handler.stream),
        ),
    ]
    for v in blocking:
        v.fn = _loop(n, v.log)
        with v.around():
            jax.block_until_ready(v.fn(jnp.float32(1.0)))
            jax.effects_barrier()
    variants += blocking
    # Warm-up lines are in the files already; counts are taken relative to them.
    for v in variants:
        v.base = v.count()
    return variants


def measure(variants: list[Variant], repeats: int) -> dict[str, dict[str, Any]]:
    """Interleaved timing; every variant runs ``repeats`` times (compiled already).

    Timed: the jitted call and ``jax.effects_barrier()`` (every callback has
    returned), plus the ring's flush for the variant that includes it.
    """
    x0 = jnp.float32(1.0)
    by_name = {v.name: v for v in variants}
    contexts = contextlib.ExitStack()

    def timed(v: Variant) -> Callable[[], None]:
        def run() -> None:
            assert v.fn is not None
            jax.block_until_ready(v.fn(x0))
            jax.effects_barrier()
            if v.flush_in_timing:
                async_logger.flush()

        return run

    def before(name: str) -> None:
        contexts.enter_context(by_name[name].around())

    def after(name: str, seconds: float) -> None:
        contexts.close()
        by_name[name].after()
        by_name[name].runs += 1

    return interleaved_medians(
        {v.name: timed(v) for v in variants}, repeats, warmup=0, before=before, after=after
    )


def main(quick: bool, out: Path) -> dict[str, Any]:
    """Run the bench and return its result (``out`` unused)."""
    n = 200 if quick else 2000
    repeats = 3 if quick else 9
    checks: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="bench_callback_") as tmpdir:
        variants = build_variants(n, Path(tmpdir))
        timing = measure(variants, repeats)
        # Counts: the ring variants share one file, the no-op ones one counter.
        counts: dict[str, int] = {}
        shared: dict[int, list[Variant]] = {}
        for v in variants:
            shared.setdefault(id(v.count), []).append(v)
        for group in shared.values():
            total = group[0].count() - group[0].base
            expected = sum(v.lines_per_run * v.runs for v in group)
            for v in group:
                counts[v.name] = total
            names = ", ".join(v.name for v in group)
            checks[f"lines written == lines logged: {names}"] = total == expected
        ring_stats = async_logger.stats()

    per_iter = {k: [s / n * 1e6 for s in t["samples_s"]] for k, t in timing.items()}
    med = {k: t["median_s"] / n * 1e6 for k, t in timing.items()}
    floor = med[variants[1].name]
    measurements = {
        v.name: {
            "group": v.group,
            "us_per_iteration_median": med[v.name],
            "us_per_iteration_min": min(per_iter[v.name]),
            "us_per_iteration_max": max(per_iter[v.name]),
            "ratio_to_floor": med[v.name] / floor,
            "runs": v.runs,
            "lines_per_run": v.lines_per_run,
        }
        for v in variants
    }
    table = markdown_table(
        ["variant", "µs / logged iteration (median)", "min", "× floor"],
        [
            [
                k,
                f"{m['us_per_iteration_median']:.2f}",
                f"{m['us_per_iteration_min']:.2f}",
                f"{m['ratio_to_floor']:.3f}",
            ]
            for k, m in measurements.items()
        ],
    )
    title = (
        f"Cost per logged iteration in a jitted while_loop ({n} iterations, median of {repeats})"
    )
    return bench_result(
        "bench_callback",
        title=title,
        table=table,
        checks=checks,
        plot=[
            bars(
                "Cost per logged iteration",
                "µs per logged iteration (median)",
                list(med),
                {"median": list(med.values())},
                reference=("floor: no-op jax.debug.callback", floor),
            )
        ],
        iterations=n,
        repeats=repeats,
        floor_us=floor,
        measurements=measurements,
        line_counts=counts,
        ring_stats={k: v for k, v in ring_stats.items() if isinstance(v, int | float)},
        backend=jax.default_backend(),
        x64=bool(jax.config.jax_enable_x64),
    )
