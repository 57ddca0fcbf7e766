"""Whole-fit overhead of verbose logging: ring logger against a blocking-print logger.

    python benches/run.py --only bench_fit_overhead [--quick]

``nlsq.curve_fit`` of ``a exp(-b x) + c`` on n = 1e3 ... 1e6 noisy points (1e7
as well when JAX runs on a GPU), the same data and start for every variant:

* ``verbose=0`` -- the reference: no callback is traced at all;
* ``verbose=1`` / ``verbose=2`` with the ring logger through each available
  route: ``ffi`` (the default on CPU: an XLA FFI custom call, no Python per
  row) and ``callback`` (XLA host callback whose Python side only pushes);
* ``verbose=1`` / ``verbose=2`` with a *blocking-print* logger
  (``benches/_blocking_print.py``): each row is formatted with ``str.format``
  and printed with ``print(..., flush=True)`` inside ``jax.debug.callback``;
* ``scipy.optimize.curve_fit(method='trf')`` on the same problem.

Each logging variant traces its own copy of the model, so each compiled
program keeps the route it was traced with; the variants then run
interleaved, the order rotated every round (A B C, B C A, C A B, ...), and
every figure is the median over the
repeats of one whole ``curve_fit`` call (which, at verbose > 0, returns only
when its table is written).  Overheads are against ``verbose=0`` measured in
the same loop.

Output goes to real files in a temporary directory (the ring's sink is a
file descriptor written from Rust; the blocking printer writes a
line-buffered text file), so the terminal is not flooded but every write
happens.  After every call the new lines are read back: every variant of one
verbosity must write the same number of lines, and the same text.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _blocking_print
import jax
import jax.numpy as jnp
import nlsq
import numpy as np
import scipy.optimize as so
from _harness import bench_result, interleaved_medians, lines, markdown_table, summarise
from nlsq.utils import _routes, async_logger

P_TRUE = (2.5, 1.3, 0.5)
P0 = (1.0, 1.0, 1.0)


def _model_np(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.exp(-b * x) + c


def _fresh_model(variant: str) -> Callable[..., jax.Array]:
    # A model of its own per variant: the logging route is fixed when a fit is
    # traced, and nlsq caches compiled fits by the model's code *and captured
    # values* (``_cache.CodeKeyed``), so a new function object with the same code
    # would reuse the program another route compiled.  ``variant`` is captured
    # (and unused) only to key the cache.
    def model(x: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
        _ = variant  # read only so that it is a captured value
        return a * jnp.exp(-b * x) + c

    return model


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 5.0, n)
    return x, _model_np(x, *P_TRUE) + 0.05 * rng.standard_normal(n)


def sizes_for(quick: bool) -> list[int]:
    """Problem sizes: 1e3..1e6 on CPU, up to 1e7 on an accelerator."""
    if quick:
        return [1_000, 10_000]
    sizes = [1_000, 10_000, 100_000, 1_000_000]
    if jax.default_backend() != "cpu":
        sizes.append(10_000_000)
    return sizes


def repeats_for(n: int, quick: bool) -> int:
    if quick:
        return 3
    return {1_000: 31, 10_000: 21, 100_000: 15}.get(n, 9)


def available_routes() -> list[str]:
    """Ring routes that can be built here, the default one first."""
    default = _routes.make_route(None).name
    routes = [default]
    for name in ("ffi", "callback"):
        if name in routes:
            continue
        try:
            _routes.make_route(name)
        except (ValueError, RuntimeError):
            continue
        routes.append(name)
    return routes


class Tail:
    """New lines of a file since the last read (the file is only appended to)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[str]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        # Only whole lines: everything was flushed before the read.
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode().splitlines()


class Variant:
    """One way of running the fit, and what it wrote on its last run."""

    def __init__(self, label: str, route: str | None, verbose: int, run: Callable[[], Any]):
        self.label = label
        self.route = route
        self.verbose = verbose
        self.run = run
        self.line_counts: list[int] = []
        self.last_lines: list[str] = []


def _label(route: str, verbose: int) -> str:
    logger = "blocking print" if route == _blocking_print.NAME else f"ring ({route})"
    return f"{logger}, verbose={verbose}"


def bench_size(
    n: int, repeats: int, routes: list[str], ring: Tail, printed: Tail
) -> dict[str, Any]:
    """All variants on one problem size, interleaved."""
    x, y = _data(n)
    variants: list[Variant] = []

    def nlsq_fit(model: Callable[..., jax.Array], verbose: int) -> Callable[[], Any]:
        return lambda: nlsq.curve_fit(model, x, y, p0=P0, verbose=verbose)

    variants.append(Variant("verbose=0", None, 0, nlsq_fit(_fresh_model("verbose=0"), 0)))
    for route in [*routes, _blocking_print.NAME]:
        for verbose in (1, 2):
            label = _label(route, verbose)
            variants.append(Variant(label, route, verbose, nlsq_fit(_fresh_model(label), verbose)))
    variants.append(
        Variant(
            "scipy curve_fit (trf)",
            None,
            0,
            lambda: so.curve_fit(_model_np, x, y, p0=P0, method="trf"),
        )
    )

    # Warm-up = compilation, each logging variant under its own route.
    compile_s: dict[str, float] = {}
    for v in variants:
        if v.route is not None:
            _routes.set_route(_routes.make_route(v.route))
        t0 = time.perf_counter()
        v.run()
        compile_s[v.label] = time.perf_counter() - t0
        _settle(ring, printed)
    popt_nlsq = np.asarray(variants[0].run()[0])
    popt_scipy = np.asarray(variants[-1].run()[0])
    _settle(ring, printed)

    by_label = {v.label: v for v in variants}

    def record_lines(label: str, seconds: float) -> None:
        v = by_label[label]
        lines = _settle(ring, printed, v.route == _blocking_print.NAME)
        v.line_counts.append(len(lines))
        v.last_lines = lines

    # Rotated rounds: scipy's large allocations slow whichever fit comes next.
    timing = interleaved_medians(
        {v.label: v.run for v in variants}, repeats, warmup=0, rotate=True, after=record_lines
    )
    base = timing["verbose=0"]["median_s"]
    rows = {}
    for v in variants:
        t = timing[v.label]
        rows[v.label] = {
            "route": v.route,
            "verbose": v.verbose,
            **t,
            "overhead_pct": 100.0 * (t["median_s"] - base) / base,
            "extra_ms_per_fit": 1e3 * (t["median_s"] - base),
            "lines_per_fit": v.line_counts[-1] if v.line_counts else 0,
            "line_counts": v.line_counts,
            "compile_s": compile_s[v.label],
        }
    checks = _check_lines(variants)
    return {
        "n": n,
        "repeats": repeats,
        "variants": rows,
        "checks": checks,
        "max_rel_diff_popt_vs_scipy": float(np.max(np.abs(popt_nlsq / popt_scipy - 1))),
    }


def _settle(ring: Tail, printed: Tail, print_first: bool = False) -> list[str]:
    """Wait for every line of the last call, return them in table order.

    A blocking-print fit writes its rows to the print file and its header and
    closing lines (pushed eagerly on the host) to the ring: the table is the
    ring's first line, the printed rows, then the ring's other lines.
    """
    async_logger.flush()
    ring_lines = ring.read()
    print_lines = printed.read()
    if print_first and ring_lines:
        return ring_lines[:1] + print_lines + ring_lines[1:]
    return ring_lines + print_lines


def _check_lines(variants: list[Variant]) -> dict[str, bool]:
    """Same line count on every run, and the same text, for every variant of a verbosity."""
    checks: dict[str, bool] = {}
    for verbose in (1, 2):
        group = [v for v in variants if v.route is not None and v.verbose == verbose]
        counts = {c for v in group for c in v.line_counts}
        texts = {tuple(v.last_lines) for v in group}
        checks[f"verbose={verbose}: same line count"] = len(counts) == 1 and 0 not in counts
        checks[f"verbose={verbose}: same text"] = len(texts) == 1
    quiet = [v for v in variants if v.route is None]
    checks["verbose=0 and scipy write nothing"] = all(c == 0 for v in quiet for c in v.line_counts)
    return checks


def fixed_costs(repeats: int) -> dict[str, float]:
    """Per-fit costs that do not depend on the number of rows, in µs (medians).

    At verbose > 0 ``curve_fit`` pushes the header eagerly before the solve,
    calls ``jax.effects_barrier()`` after it, pushes the two closing lines and
    waits in ``async_logger.flush()`` until the drain thread has written them.
    """
    line = async_logger.template("bench fixed-cost probe")
    # Three consecutive steps of one fit's tail, so timed in sequence, not interleaved.
    samples: dict[str, list[float]] = {"eager push": [], "effects_barrier": [], "flush": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        line(verbose=2)
        t1 = time.perf_counter()
        jax.effects_barrier()
        t2 = time.perf_counter()
        async_logger.flush()
        t3 = time.perf_counter()
        samples["eager push"].append(t1 - t0)
        samples["effects_barrier"].append(t2 - t1)
        samples["flush"].append(t3 - t2)
    out = {f"{k}_us": 1e6 * summarise(v)["median_s"] for k, v in samples.items()}

    # A jitted program that holds a logging effect leaves JAX's C++ fast
    # dispatch path, even when the gated branch is never taken.
    probe = async_logger.template("bench dispatch probe {i:d}")

    @jax.jit
    def plain(x: jax.Array) -> jax.Array:
        return x * 2

    @jax.jit
    def with_effect(x: jax.Array) -> jax.Array:
        probe(i=x[0], verbose=1)  # x[0] = 1.5: the cond's logging branch never runs
        return x * 2

    x = jnp.full(3, 1.5)
    dispatch = interleaved_medians(
        {
            "plain": lambda: jax.block_until_ready(plain(x)),
            "with_effect": lambda: jax.block_until_ready(with_effect(x)),
        },
        repeats,
    )
    out["jit_call_no_effect_us"] = 1e6 * dispatch["plain"]["median_s"]
    out["jit_call_with_logging_effect_us"] = 1e6 * dispatch["with_effect"]["median_s"]
    return out


def _pct(x: float) -> str:
    return f"{x:+.1f} %"


def markdown(sizes: list[dict[str, Any]], routes: list[str]) -> str:
    cols = [_label(r, v) for r in [*routes, _blocking_print.NAME] for v in (1, 2)]
    rows = []
    for s in sizes:
        v = s["variants"]
        rows.append(
            [
                f"{s['n']:.0e}",
                f"{v[cols[0]]['lines_per_fit']} / {v[cols[1]]['lines_per_fit']}",
                f"{1e3 * v['verbose=0']['median_s']:.2f}",
                *(_pct(v[c]["overhead_pct"]) for c in cols),
                f"{1e3 * v['scipy curve_fit (trf)']['median_s']:.2f}",
            ]
        )
    head = ["n", "lines/fit (v1 / v2)", "verbose=0 (ms)", *cols, "scipy trf (ms)"]
    return markdown_table(head, rows, align="r" * len(head))


def markdown_long(sizes: list[dict[str, Any]]) -> str:
    head = [
        "n",
        "variant",
        "median (ms)",
        "min (ms)",
        "extra per fit (ms)",
        "overhead",
        "lines/fit",
    ]
    rows = [
        [
            f"{s['n']:.0e}",
            label,
            f"{1e3 * r['median_s']:.2f}",
            f"{1e3 * r['min_s']:.2f}",
            f"{r['extra_ms_per_fit']:+.3f}",
            _pct(r["overhead_pct"]),
            r["lines_per_fit"],
        ]
        for s in sizes
        for label, r in s["variants"].items()
    ]
    return markdown_table(head, rows, align="rlrrrrr")


def main(quick: bool, out: Path) -> dict[str, Any]:
    """Run the bench and return its result (``out`` unused)."""
    _blocking_print.register()
    routes = available_routes()
    default_route = routes[0]
    with tempfile.TemporaryDirectory(prefix="bench_fit_overhead_") as tmpdir:
        tmp = Path(tmpdir)
        ring_path, print_path = tmp / "ring.log", tmp / "print.log"
        ring_fd = os.open(ring_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        print_file = open(print_path, "w", buffering=1)  # noqa: SIM115 - closed below
        try:
            async_logger.configure(sink=ring_fd, backend=default_route)
            _blocking_print.set_stream(print_file)
            ring, printed = Tail(ring_path), Tail(print_path)
            sizes = [
                bench_size(n, repeats_for(n, quick), routes, ring, printed)
                for n in sizes_for(quick)
            ]
            fixed = fixed_costs(50 if quick else 500)
            ring.read()
            ring_stats = async_logger.stats()
        finally:
            async_logger.configure()
            _blocking_print.set_stream(None)
            print_file.close()
            os.close(ring_fd)
    checks = {f"n={s['n']}: {k}": ok for s in sizes for k, ok in s["checks"].items()}
    ns = [s["n"] for s in sizes]
    logging_labels = [k for k, v in sizes[0]["variants"].items() if v["route"] is not None]
    verbose1 = [k for k in logging_labels if k.endswith("verbose=1")]
    return bench_result(
        "bench_fit_overhead",
        title=(
            "Whole-fit overhead of verbose logging: curve_fit at verbose 1/2 against verbose=0 "
            f"(median of interleaved repeats, {jax.default_backend()})"
        ),
        table=markdown(sizes, routes),
        checks=checks,
        plot=[
            lines(
                "Time per curve_fit call",
                "n (points)",
                "ms per fit (median)",
                ns,
                {
                    k: [1e3 * s["variants"][k]["median_s"] for s in sizes]
                    for k in sizes[0]["variants"]
                },
                dotted=verbose1,
            ),
            lines(
                "Logging overhead per fit",
                "n (points)",
                "overhead vs verbose=0 (%)",
                ns,
                {k: [s["variants"][k]["overhead_pct"] for s in sizes] for k in logging_labels},
                reference=("5 % target", 5.0),
                logy=False,
                dotted=verbose1,
            ),
        ],
        table_long=markdown_long(sizes),
        model="a*exp(-b*x)+c",
        p0=P0,
        routes=routes,
        default_route=default_route,
        sizes=sizes,
        fixed_costs_us=fixed,
        ring_stats={k: v for k, v in ring_stats.items() if isinstance(v, int | float)},
        backend=jax.default_backend(),
    )
