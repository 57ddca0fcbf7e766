"""Cost per logged iteration of the native FFI route, against JAX's callback floor.

    python benches/bench_ffi.py [--quick]

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
the floor measured in the same run. Results: ``benches/results/<backend>-bench_ffi.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The same loop as bench 1, so the two tables measure the same body.
from bench_callback import _loop, _packed
from nlsq._ringlog import RingLogger
from nlsq.utils import _native, _routes, async_logger

HERE = Path(__file__).resolve().parent


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def main(quick: bool = False) -> dict[str, Any]:
    """Run the bench and return its result (``name``, ``title``, ``table``, data)."""
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
        for f in fns.values():
            jax.block_until_ready(f(jnp.float32(1)))
        jax.effects_barrier()
        async_logger.flush()
        own.flush()
        base = {"ring": _lines(ring_path), "own": _lines(own_path), "noop": calls[0]}

        samples: dict[str, list[float]] = {k: [] for k in fns}
        x0 = jnp.float32(1.0)
        for _ in range(repeats):
            for name, f in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(f(x0))
                jax.effects_barrier()
                samples[name].append((time.perf_counter() - t0) / n * 1e6)
                async_logger.flush()
                own.flush()
        counts = {
            "ring": _lines(ring_path) - base["ring"],
            "own": _lines(own_path) - base["own"],
            "noop": calls[0] - base["noop"],
        }
        own.close()
        async_logger.configure()
    expected = {"ring": 2 * n * repeats, "own": n * repeats, "noop": n * repeats}
    if counts != expected:
        raise AssertionError(f"line counts {counts}, expected {expected}")

    med = {k: statistics.median(v) for k, v in samples.items()}
    floor = med["no-op jax.debug.callback (floor)"]
    ffi = med["log_iteration_async, FFI route"]
    rows = [
        f"| {k} | {med[k]:.2f} | {min(v):.2f} | {med[k] / floor:.4f} |" for k, v in samples.items()
    ]
    table = "\n".join(
        [
            "| variant | µs / logged iteration (median) | min | × floor |",
            "|---|---:|---:|---:|",
            *rows,
        ]
    )
    return {
        "name": "bench_ffi",
        "title": (
            f"Native FFI route vs callbacks: cost per logged iteration in a jitted "
            f"while_loop ({n} iterations, median of {repeats}, {jax.default_backend()})"
        ),
        "table": table,
        "iterations": n,
        "repeats": repeats,
        "floor_us": floor,
        "ffi_route_us": ffi,
        "ffi_route_over_loop_us": ffi - med["no logging"],
        "floor_over_ffi": floor / ffi,
        "targets": {"ffi_le_3us": ffi <= 3.0, "ffi_20x_under_floor": floor / ffi >= 20.0},
        "medians_us": med,
        "samples_us": samples,
        "line_counts": counts,
        "ffi_stats": _native.stats(),
        "backend": jax.default_backend(),
        "x64": bool(jax.config.jax_enable_x64),
    }


def plot(result: dict[str, Any], png: Path) -> None:
    """Horizontal bars: µs per logged iteration, the callback floor marked."""
    import matplotlib.pyplot as plt

    med = result["medians_us"]
    names = list(med)
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 1.3))
    ax.barh(names, [med[k] for k in names], color="tab:blue")
    ax.invert_yaxis()
    ax.axvline(result["floor_us"], color="tab:red", linestyle="--", label="callback floor")
    ax.set_xscale("log")
    ax.set_xlabel("µs per logged iteration (median, log scale)")
    ax.set_title(result["title"], fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    res = main(quick=args.quick)
    print(res["title"])
    print(res["table"])
    print(
        f"FFI route {res['ffi_route_us']:.2f} µs/iteration, {res['floor_over_ffi']:.0f}x under "
        f"the floor; targets met: {res['targets']}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{res['backend']}-bench_ffi" + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(f"{res['title']}\n\n{res['table']}\n")
