"""Where the cost of ``curve_fit(verbose=2)`` at small n goes (a probe, not a harness bench).

    PYTHONPATH=python python benches/probe_verbose_overhead.py [--n 1000] [--pairs 600]

1. Whole fits: ``verbose=0`` and ``verbose=2`` calls of ``nlsq.curve_fit`` interleaved in
   pairs in one process (the order alternates), sink = a file descriptor.  Prints median,
   25th percentile, minimum and the median paired difference: on a loaded machine the
   median alone swings with bursts of load, the paired difference much less.
2. The solver program alone (``_solve.solve`` + fetch, no header / closing / flush), for
   variants of the solver rows' custom call, interleaved in rotated rounds:

   * ``v0`` -- no rows;
   * ``v2`` -- the rows as shipped (side-effecting FFI custom call, pushes into the ring);
   * ``v2 unrouted`` -- the same custom call, but with a template key no route knows: the
     handler runs and pushes nothing (counted as ``unrouted``);
   * ``v2 no call`` -- the same rows lowered with ``has_side_effect=False`` and no result:
     XLA deletes the custom call, so this is v2's program without it (a lower bound for
     any side-effect-free variant, e.g. a call whose result is threaded into the carry).

Each variant traces its own model (a captured tag keys nlsq's compiled-fit cache).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import nlsq
import numpy as np
from jax import lax
from nlsq import _distributed, _solve
from nlsq import _jax_compat as compat
from nlsq.utils import _emit, _log_runtime, _native, _routes, async_logger

P0 = (1.0, 1.0, 1.0)


def _model(tag: str) -> Callable[..., jax.Array]:
    def model(x: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
        _ = tag  # read only so that it is a captured value (keys the cache)
        return a * jnp.exp(-b * x) + c

    return model


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 5.0, n)
    return x, 2.5 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.standard_normal(n)


def _summary(a: list[float], b: list[float]) -> str:
    ma, mb = np.median(a), np.median(b)
    qa, qb = np.percentile(a, 25), np.percentile(b, 25)
    diff = np.median(np.asarray(b) - np.asarray(a))
    return (
        f"median {1e3 * ma:.3f} / {1e3 * mb:.3f} ms ({100 * (mb / ma - 1):+.1f} %), "
        f"p25 {1e3 * qa:.3f} / {1e3 * qb:.3f} ms ({100 * (qb / qa - 1):+.1f} %), "
        f"min {1e3 * min(a):.3f} / {1e3 * min(b):.3f} ms, paired diff {1e6 * diff:+.1f} µs"
    )


def whole_fits(x: np.ndarray, y: np.ndarray, pairs: int) -> None:
    m0, m2 = _model("whole v0"), _model("whole v2")
    runs = {
        0: lambda: nlsq.curve_fit(m0, x, y, p0=P0, verbose=0),
        2: lambda: nlsq.curve_fit(m2, x, y, p0=P0, verbose=2),
    }
    for f in (*runs.values(), *runs.values()):
        f()
    times: dict[int, list[float]] = {0: [], 2: []}
    for i in range(pairs):
        for k in (0, 2) if i % 2 == 0 else (2, 0):
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    print(f"curve_fit verbose=0 / verbose=2: {_summary(times[0], times[2])}")


def _stage_variant(prim: Any = None, key_offset: int = 0) -> Callable[..., None]:
    def stage(key: int, keep: Any, values: Any) -> None:
        _log_runtime.ensure_registered(key)
        _routes._sync_native_route()
        dtype = jnp.result_type(float)
        row = jnp.stack(
            [jnp.asarray(keep).astype(dtype)] + [jnp.asarray(v).astype(dtype) for v in values],
            axis=-1,
        )
        (prim or _emit._inline_primitive()).bind(
            lax.stop_gradient(row).reshape(-1, row.shape[-1]),
            template_key=np.int64(key + key_offset),
            rows=np.int64(1),
        )

    return stage


def _no_call_primitive() -> Any:
    prim = compat.new_primitive("probe_rows_without_side_effect")
    prim.def_abstract_eval(lambda packed, **params: [])
    compat.register_always_live(prim)
    lowering = compat.ffi_lowering(_native.TARGET, has_side_effect=False)
    compat.register_lowering(prim, lowering, platform="cpu")
    return prim


def solver_only(x: np.ndarray, y: np.ndarray, rounds: int) -> None:
    variants: dict[str, tuple[int, Callable[..., None] | None]] = {
        "v0": (0, None),
        "v2": (2, None),
        "v2 unrouted": (2, _stage_variant(key_offset=1_000_000)),
        "v2 no call": (2, _stage_variant(prim=_no_call_primitive())),
    }
    problems: dict[str, Any] = {}
    shipped_stage, shipped_run = _emit._stage_inline_row, _solve._run
    for name, (verbose, stage) in variants.items():

        def grab(problem: Any, *args: Any, name: str = name, **kwargs: Any) -> Any:
            problems[name] = problem
            return shipped_run(problem, *args, **kwargs)

        _emit._stage_inline_row, _solve._run = stage or shipped_stage, grab
        try:
            nlsq.curve_fit(_model(f"solver {name}"), x, y, p0=P0, verbose=verbose)
        finally:
            _emit._stage_inline_row, _solve._run = shipped_stage, shipped_run

    def run(problem: Any) -> Any:
        with compat.enable_x64(True):
            return _distributed.fetch(_solve.solve(problem))

    names = list(problems)
    for name in names:
        run(problems[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            run(problems[name])
            times[name].append(time.perf_counter() - t0)
    base = np.median(times["v0"])
    for name in names:
        med = np.median(times[name])
        diff = np.median(np.asarray(times[name]) - np.asarray(times["v0"]))
        print(
            f"solver only, {name:12s}: median {1e6 * med:7.1f} µs "
            f"({100 * (med / base - 1):+5.1f} %), paired diff vs v0 {1e6 * diff:+6.1f} µs"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=600)
    args = parser.parse_args()
    x, y = _data(args.n)
    with tempfile.TemporaryDirectory(prefix="probe_verbose_") as tmp:
        fd = os.open(os.path.join(tmp, "ring.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            async_logger.configure(sink=fd)
            print(f"n = {args.n}, jax {jax.__version__}, load average {os.getloadavg()}")
            whole_fits(x, y, args.pairs)
            solver_only(x, y, args.pairs)
            async_logger.flush()
        finally:
            async_logger.configure()
            os.close(fd)


if __name__ == "__main__":
    main()
