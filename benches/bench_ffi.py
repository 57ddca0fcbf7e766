"""Cost per logged iteration of the native FFI route, against JAX's callback floor.

    python benches/run.py --only bench_ffi [--quick]

One process; a jitted ``lax.while_loop`` of ``N`` iterations whose small body
(a scalar recurrence: iteration, cost, gradient norm) logs one line per
iteration. Variants run interleaved (A B C ... A B C ...); each figure is the
median over the repeats of (jitted call + ``jax.effects_barrier()``) / N, in µs.

* ``no logging`` -- the loop alone.
* ``no-op jax.debug.callback (floor)`` -- JAX's own floor for any host callback.
* ``log_iteration_async, callback route`` -- the ring through a host callback.
* ``log_iteration_async, FFI route`` -- the ring through the Rust XLA FFI target.
* ``FFI direct emit (own RingLogger)`` -- ``_native.emit`` into a logger of
  its own (direct form: ``logger_id`` / ``template_id`` attributes).

Every ring variant writes to a file descriptor sink; line counts are checked.
Targets (issue 6, CPU): FFI route ≤ 3 µs per logged iteration and ≥ 20× under
the floor measured in the same run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _harness import bars, bench_result, interleaved_medians, markdown_table

# The same loop as bench 1, so the two tables measure the same body.
from bench_callback import _loop, _packed
from nlsq._ringlog import RingLogger
from nlsq.utils import _native, _routes, async_logger


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def main(quick: bool, out: Path) -> dict[str, Any]:
    """Run the bench and return its result (``out`` unused)."""
    if not _native.available():
        raise SystemExit(f"FFI route unavailable: {_native.register().reason}")
    n = 200 if quick else 2000
    repeats = 3 if quick else 15
    calls = [0]

    def noop(buf: np.ndarray) -> None:
        calls[0] += 1

    with tempfile.TemporaryDirectory(prefix="bench_ffi_") as tmpdir:
        tmp = Path(tmpdir)
        ring_path = tmp / "ring.log"
        ring_fd = os.open(ring_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        async_logger.configure(sink=ring_fd)

        def ring(i: jax.Array, c: jax.Array, g: jax.Array) -> None:
            async_logger.log_iteration_async(i, c, g, verbose=2)

        own_path = tmp / "own.log"
        own = RingLogger(sink=str(own_path))
        own_tid = own.register("iter {i:>6d}  cost {c:>13.6e}  |grad| {g:>10.3e}")

        def direct(i: jax.Array, c: jax.Array, g: jax.Array) -> None:
            _native.emit(_packed(i, c, g), own_tid, own.id)

        # The route is fixed when a loop is traced: trace each under its own.
        fns: dict[str, Callable[[jax.Array], Any]] = {}
        fns["no logging"] = _loop(n, None)
        fns["no-op jax.debug.callback (floor)"] = _loop(
            n, lambda i, c, g: jax.debug.callback(noop, _packed(i, c, g))
        )
        _routes.set_route(_routes.make_route("callback"))
        fns["log_iteration_async, callback route"] = _loop(n, ring)
        jax.block_until_ready(fns["log_iteration_async, callback route"](jnp.float32(1)))
        _routes.set_route(_routes.make_route("ffi"))
        fns["log_iteration_async, FFI route"] = _loop(n, ring)
        fns["FFI direct emit (own RingLogger)"] = _loop(n, direct)
        x0 = jnp.float32(1.0)

        def timed(f: Callable[[jax.Array], Any]) -> Callable[[], None]:
            def run() -> None:
                jax.block_until_ready(f(x0))
                jax.effects_barrier()

            return run

        def write_out(name: str, seconds: float) -> None:
            async_logger.flush()
            own.flush()

        # Compile every variant (warm-up), then count lines from here on.
        for f in fns.values():
            timed(f)()
        write_out("", 0.0)
        base = {"ring": _lines(ring_path), "own": _lines(own_path), "noop": calls[0]}
        timing = interleaved_medians(
            {k: timed(f) for k, f in fns.items()}, repeats, warmup=0, after=write_out
        )
        counts = {
            "ring": _lines(ring_path) - base["ring"],
            "own": _lines(own_path) - base["own"],
            "noop": calls[0] - base["noop"],
        }
        own.close()
        async_logger.configure()
    expected = {"ring": 2 * n * repeats, "own": n * repeats, "noop": n * repeats}
    samples = {k: [s / n * 1e6 for s in t["samples_s"]] for k, t in timing.items()}
    med = {k: t["median_s"] / n * 1e6 for k, t in timing.items()}
    floor = med["no-op jax.debug.callback (floor)"]
    ffi = med["log_iteration_async, FFI route"]
    table = markdown_table(
        ["variant", "µs / logged iteration (median)", "min", "× floor"],
        [
            [k, f"{med[k]:.2f}", f"{min(v):.2f}", f"{med[k] / floor:.4f}"]
            for k, v in samples.items()
        ],
    )
    title = (
        f"Native FFI route vs callbacks: cost per logged iteration in a jitted "
        f"while_loop ({n} iterations, median of {repeats}, {jax.default_backend()})"
    )
    return bench_result(
        "bench_ffi",
        title=title,
        table=table,
        checks={
            "lines written == lines logged (ring, own logger, no-op calls)": counts == expected,
        },
        plot=[
            bars(
                "Cost per logged iteration",
                "µs per logged iteration (median, log scale)",
                list(med),
                {"median": list(med.values())},
                reference=("callback floor", floor),
                log=True,
            )
        ],
        iterations=n,
        repeats=repeats,
        floor_us=floor,
        ffi_route_us=ffi,
        ffi_route_over_loop_us=ffi - med["no logging"],
        floor_over_ffi=floor / ffi,
        targets={"ffi_le_3us": ffi <= 3.0, "ffi_20x_under_floor": floor / ffi >= 20.0},
        medians_us=med,
        samples_us=samples,
        line_counts=counts,
        ffi_stats=_native.stats(),
        backend=jax.default_backend(),
        x64=bool(jax.config.jax_enable_x64),
    )
