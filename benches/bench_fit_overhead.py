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

Two more sections (issue 13, items 3 and 5):

* *warm single fit*: ``nlsq.curve_fit(f, x, y, p0=...)`` at n = 1e3 with its
  default method ('lm') against ``scipy.optimize.curve_fit`` with its default
  (MINPACK's lm), in blocks of calls (one variant after the other, rotated;
  per-call medians).  Blocks, not single calls alternated: after each scipy call
  OpenBLAS's worker threads spin for a while, and on a machine with few cores
  they starve XLA's thread, which would charge nlsq for scipy's threads.  The
  split: the compiled program with its one transfer to the host, and the rest
  (argument checks, padding, the result);
* *cold first fit*: a fresh process with an empty ``NLSQ_CACHE_DIR``: import
  time, then the first fit; a second fresh process splits the first fit into
  preparing the problem, tracing, lowering, XLA compilation and the first run.

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

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

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


WARM_N = 1_000
BLOCK = 20  # calls per timed block (see the module doc)


def warm_single_fit(quick: bool) -> dict[str, Any]:
    """Warm ``curve_fit`` at n = 1e3 (default method) against scipy's default, in blocks."""
    import nlsq._curve_fit as cf
    from nlsq._jax_compat import enable_x64
    from nlsq._solve import solve

    x, y = _data(WARM_N)
    model = _fresh_model("warm single fit")
    captured: dict[str, Any] = {}
    real_fit = cf.run_fit

    def spy(problem, *args, **kwargs):
        captured["problem"] = problem
        return real_fit(problem, *args, **kwargs)

    with mock.patch.object(cf, "run_fit", spy):
        popt_nlsq = nlsq.curve_fit(model, x, y, p0=P0)[0]
    problem = captured["problem"]

    def compiled_program() -> None:
        with enable_x64(True):
            np.asarray(solve(problem)[0])

    def block(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(BLOCK):
                fn()

        return run

    variants = {
        "nlsq curve_fit (lm)": block(lambda: nlsq.curve_fit(model, x, y, p0=P0)),
        "compiled program + transfer": block(compiled_program),
        "scipy curve_fit (lm)": block(lambda: so.curve_fit(_model_np, x, y, p0=P0)),
    }
    timing = interleaved_medians(variants, 3 if quick else 15, rotate=True)
    per_call = {k: t["median_s"] / BLOCK for k, t in timing.items()}
    popt_scipy = so.curve_fit(_model_np, x, y, p0=P0)[0]
    nlsq_s, scipy_s = per_call["nlsq curve_fit (lm)"], per_call["scipy curve_fit (lm)"]
    return {
        "n": WARM_N,
        "block": BLOCK,
        "per_call_s": per_call,
        "host_side_s": nlsq_s - per_call["compiled program + transfer"],
        "ratio_to_scipy": nlsq_s / scipy_s,
        "target_ratio": 0.5,
        "max_rel_diff_popt_vs_scipy": float(np.max(np.abs(popt_nlsq / popt_scipy - 1))),
    }


# A fresh process, empty cache: import, then the first fit (or its stages).
_COLD = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np, jax, jax.numpy as jnp
    t1 = time.perf_counter()
    import nlsq
    t2 = time.perf_counter()
    f = lambda x, a, b, c: a * jnp.exp(-b * x) + c
    x = np.linspace(0.0, 5.0, 1000)
    y = 2.5 * np.exp(-1.3 * x) + 0.5
    out = {"import_jax_s": t1 - t0, "import_nlsq_s": t2 - t1}
    if sys.argv[1] == "whole":
        t3 = time.perf_counter(); nlsq.curve_fit(f, x, y, p0=[1, 1, 1]); t4 = time.perf_counter()
        out["first_fit_s"] = t4 - t3
    else:
        from unittest import mock
        import nlsq._curve_fit as cf
        from nlsq._jax_compat import enable_x64
        from nlsq._solve import solve
        seen = {}
        class Stop(Exception):
            pass
        def spy(problem, *args, **kwargs):
            seen["problem"] = problem
            raise Stop
        t3 = time.perf_counter()
        with mock.patch.object(cf, "run_fit", spy):
            try:
                nlsq.curve_fit(f, x, y, p0=[1, 1, 1])
            except Stop:
                pass
        t4 = time.perf_counter()
        with enable_x64(True):
            traced = solve.trace(seen["problem"]); t5 = time.perf_counter()
            lowered = traced.lower(); t6 = time.perf_counter()
            compiled = lowered.compile(); t7 = time.perf_counter()
            np.asarray(compiled(seen["problem"])[0]); t8 = time.perf_counter()
        out.update(prepare_s=t4 - t3, trace_s=t5 - t4, lower_s=t6 - t5, compile_s=t7 - t6,
                   run_s=t8 - t7)
    print(json.dumps(out))
    """
)


def _cold(mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="nlsq-cold-") as cache:
        env = dict(os.environ, NLSQ_CACHE_DIR=cache, PYTHONPATH=str(Path(nlsq.__file__).parents[1]))
        done = subprocess.run(
            [sys.executable, "-c", _COLD, mode], env=env, capture_output=True, text=True
        )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def cold_first_fit(quick: bool) -> dict[str, Any]:
    """Medians over fresh processes: the first fit, and its stages (empty cache each)."""
    runs = 1 if quick else 3
    whole = [_cold("whole") for _ in range(runs)]
    stages = [_cold("stages") for _ in range(runs)]

    def med(rows: list[dict[str, float]], key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    return {
        "runs": runs,
        "first_fit_s": med(whole, "first_fit_s"),
        "import_jax_s": med(whole, "import_jax_s"),
        "import_nlsq_s": med(whole, "import_nlsq_s"),
        "stages_s": {
            k: med(stages, k) for k in ("prepare_s", "trace_s", "lower_s", "compile_s", "run_s")
        },
        "target_s": 0.4,
    }


def markdown_warm_cold(warm: dict[str, Any], cold: dict[str, Any]) -> str:
    rows = [
        [f"warm {k}, n = {warm['n']:.0e}", f"{1e3 * v:.3f} ms"]
        for k, v in warm["per_call_s"].items()
    ]
    rows.append(["warm nlsq / scipy (target <= 0.5)", f"{warm['ratio_to_scipy']:.2f}"])
    rows.append(["cold: import nlsq", f"{cold['import_nlsq_s']:.3f} s"])
    rows.append(["cold: first fit (target <= 0.4 s)", f"{cold['first_fit_s']:.3f} s"])
    for k, v in cold["stages_s"].items():
        rows.append([f"cold first fit, {k[:-2]}", f"{v:.3f} s"])
    return markdown_table(["figure", "value"], rows)


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
    warm = warm_single_fit(quick)
    cold = cold_first_fit(quick)
    checks = {f"n={s['n']}: {k}": ok for s in sizes for k, ok in s["checks"].items()}
    checks["warm single fit: same popt as scipy (1e-6)"] = warm["max_rel_diff_popt_vs_scipy"] < 1e-6
    ns = [s["n"] for s in sizes]
    logging_labels = [k for k, v in sizes[0]["variants"].items() if v["route"] is not None]
    verbose1 = [k for k in logging_labels if k.endswith("verbose=1")]
    return bench_result(
        "bench_fit_overhead",
        title=(
            "Whole-fit overhead of verbose logging: curve_fit at verbose 1/2 against verbose=0 "
            f"(median of interleaved repeats, {jax.default_backend()})"
        ),
        table=markdown(sizes, routes) + "\n\n" + markdown_warm_cold(warm, cold),
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
        warm_single_fit=warm,
        cold_first_fit=cold,
        fixed_costs_us=fixed,
        ring_stats={k: v for k, v in ring_stats.items() if isinstance(v, int | float)},
        backend=jax.default_backend(),
    )
