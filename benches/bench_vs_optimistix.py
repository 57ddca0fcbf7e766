"""nlsq against optimistix's Levenberg-Marquardt, side by side (scipy's MINPACK as reference).

optimistix is the JAX library of nonlinear solvers (``optimistix.least_squares`` with
``LevenbergMarquardt``); it is what a JAX user reaches for instead of nlsq. Both fit the
exponential model ``a exp(-b x) + c`` to the same float64 data from the same start, each
the way its documentation shows: ``nlsq.curve_fit(f, x, y, p0)``, and one
``jax.jit``-compiled function around ``optimistix.least_squares`` (``throw=False``,
``rtol = atol = 1e-8``). Their stopping rules differ (optimistix: a Cauchy test on the
step and the cost; nlsq: scipy's ``ftol``/``xtol``/``gtol``), so the table gives each
one's step count; every solution is checked against scipy's.

* (i) one fit after compilation, n = 1e3 ... 1e6: nlsq, optimistix and
  ``scipy.optimize.curve_fit`` (MINPACK), interleaved, medians;
* (ii) ``B`` fits of n = 500 (``a`` and ``b`` differ per dataset) after compilation:
  ``nlsq.curve_fit_many`` against ``jax.jit(jax.vmap(solve))`` of optimistix;
* (iii) the first call in a fresh process with no compilation cache (``NLSQ_CACHE_DIR=off``;
  JAX's own cache is off by default): one fit at n = 1e3, and the batch of (ii); trace,
  compile and run, imports apart. The two libraries' processes alternate; medians.

Run: ``python benches/run.py --only bench_vs_optimistix [--quick]``.
"""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _harness import bars, bench_result, interleaved_medians, lines, markdown_table, run_python

SIZES = (1_000, 10_000, 100_000, 1_000_000)
P_TRUE = (2.5, 1.3, 0.5)
P0 = (1.0, 1.0, 1.0)
#: optimistix's tolerances (its documentation's usual values for float64).
RTOL = ATOL = 1e-8
MAX_STEPS = 256
#: How close every solution must be to scipy's (relative, per parameter).
POPT_RTOL = 1e-5


def model_jax(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def model_np(x, a, b, c):
    return a * np.exp(-b * x) + c


def optimistix_solve():
    """``solve(p0, x, y) -> (popt, steps, succeeded)``: optimistix's LM, not yet jitted."""
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=RTOL, atol=ATOL)

    def residual(p, data):
        x, y = data
        return model_jax(x, *p) - y

    def solve(p0, x, y):
        sol = optx.least_squares(
            residual, solver, p0, args=(x, y), max_steps=MAX_STEPS, throw=False
        )
        return sol.value, sol.stats["num_steps"], sol.result == optx.RESULTS.successful

    return solve


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 5.0, n)
    return x, model_np(x, *P_TRUE) + 0.05 * rng.standard_normal(n)


def _rel_diff(a: Any, b: Any) -> float:
    return float(np.max(np.abs(np.asarray(a) / np.asarray(b) - 1)))


def one_fit(n: int, repeats: int) -> dict[str, Any]:
    """(i): one dataset of ``n`` points, each library after its compilation."""
    import nlsq
    import scipy.optimize as so

    x, y = _data(n)
    solve = jax.jit(optimistix_solve())
    p0 = np.asarray(P0)
    variants = {
        "nlsq": lambda: nlsq.curve_fit(model_jax, x, y, p0=P0),
        "optimistix": lambda: jax.block_until_ready(solve(p0, x, y)),
        "scipy": lambda: so.curve_fit(model_np, x, y, p0=P0),
    }
    timing = interleaved_medians(variants, repeats, warmup=1, rotate=True)
    popt_scipy = variants["scipy"]()[0]
    popt_nlsq, _, info, _, _ = nlsq.curve_fit(model_jax, x, y, p0=P0, full_output=True)
    popt_optx, steps, ok = variants["optimistix"]()
    return {
        "n": n,
        "median_s": {k: t["median_s"] for k, t in timing.items()},
        "nlsq_nfev": int(info["nfev"]),
        "optimistix_steps": int(steps),
        "optimistix_succeeded": bool(ok),
        "nlsq_rel_diff": _rel_diff(popt_nlsq, popt_scipy),
        "optimistix_rel_diff": _rel_diff(popt_optx, popt_scipy),
    }


def _batch_data(count: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` datasets of ``n`` points (``a`` and ``b`` differ), as ``(count, n)`` arrays."""
    rng = np.random.default_rng(1)
    x = np.linspace(0.0, 5.0, n)
    a = 2 + rng.random(count)
    b = 1 + rng.random(count)
    ys = a[:, None] * np.exp(-b[:, None] * x) + 0.5 + 0.05 * rng.standard_normal((count, n))
    return np.broadcast_to(x, ys.shape).copy(), ys


def optimistix_batch():
    """``optimistix_solve`` over a batch: ``jax.vmap`` across the datasets, one start."""
    return jax.vmap(optimistix_solve(), in_axes=(None, 0, 0))


def batch(count: int, n: int, repeats: int) -> dict[str, Any]:
    """(ii): ``count`` datasets of ``n`` points, one compiled program per library."""
    import nlsq

    xs, ys = _batch_data(count, n)
    solve = jax.jit(optimistix_batch())
    p0 = np.asarray(P0)
    variants = {
        "nlsq.curve_fit_many": lambda: nlsq.curve_fit_many(model_jax, xs, ys, p0=P0),
        "optimistix, jit(vmap)": lambda: jax.block_until_ready(solve(p0, xs, ys)),
    }
    timing = interleaved_medians(variants, repeats, warmup=1, rotate=True)
    many = variants["nlsq.curve_fit_many"]()
    popt_optx, steps, ok = variants["optimistix, jit(vmap)"]()
    return {
        "count": count,
        "n": n,
        "median_s": {k: t["median_s"] for k, t in timing.items()},
        "nlsq_all_succeeded": bool(np.all(many.success)),
        "optimistix_all_succeeded": bool(np.all(ok)),
        "nlsq_median_nfev": float(np.median(many.nfev)),
        "optimistix_median_steps": float(np.median(steps)),
        "rel_diff_nlsq_vs_optimistix": _rel_diff(many.popt, popt_optx),
    }


# One fresh process: one library's first call, imports timed apart. Prints JSON.
# ``count`` 0: one fit of ``n`` points; else a batch of ``count`` fits of ``n`` points.
_FIRST_CALL = textwrap.dedent(
    """
    import json, sys, time
    library, count, n, here = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    sys.path.insert(0, here)
    import numpy as np
    t0 = time.perf_counter()
    import jax
    if library == "optimistix":
        jax.config.update("jax_enable_x64", True)
    import bench_vs_optimistix as bench
    x, y = bench._batch_data(count, n) if count else bench._data(n)
    if library == "nlsq":
        import nlsq
        fit = nlsq.curve_fit_many if count else nlsq.curve_fit
        t1 = time.perf_counter()
        found = fit(bench.model_jax, x, y, p0=bench.P0)
        popt = found.popt if count else found[0]
    else:
        solve = jax.jit(bench.optimistix_batch() if count else bench.optimistix_solve())
        t1 = time.perf_counter()
        popt = jax.block_until_ready(solve(np.asarray(bench.P0), x, y))[0]
    t2 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "first_s": t2 - t1, "popt": np.asarray(popt).tolist()}))
    """
)


def first_call(count: int, n: int, repeats: int) -> dict[str, Any]:
    """(iii): fresh processes, alternating libraries; medians of ``repeats`` each.

    ``count`` 0: one fit of ``n`` points, checked against scipy; else a batch of
    ``count`` fits, each library's checked against the other's.
    """
    import scipy.optimize as so

    here = str(Path(__file__).resolve().parent)
    env = {"NLSQ_CACHE_DIR": "off", "JAX_ENABLE_COMPILATION_CACHE": "false"}
    runs: dict[str, list[dict[str, Any]]] = {"nlsq": [], "optimistix": []}
    for _ in range(repeats):
        for library, samples in runs.items():
            samples.append(run_python(_FIRST_CALL, library, str(count), str(n), here, env=env))
    if count:
        # A batch: each library's parameters against the other library's first ones.
        reference = {"nlsq": runs["optimistix"][0]["popt"], "optimistix": runs["nlsq"][0]["popt"]}
    else:
        popt_scipy = so.curve_fit(model_np, *_data(n), p0=P0)[0]
        reference = dict.fromkeys(runs, popt_scipy)
    return {
        "count": count,
        "n": n,
        "repeats": repeats,
        **{
            f"{library}_{key}": statistics.median(r[key] for r in samples)
            for library, samples in runs.items()
            for key in ("import_s", "first_s")
        },
        **{
            f"{library}_rel_diff": max(_rel_diff(r["popt"], reference[library]) for r in samples)
            for library, samples in runs.items()
        },
    }


def main(quick: bool, out: Path) -> dict[str, Any]:
    """Run (i), (ii) and (iii) (``out`` unused: nothing beyond the result to keep)."""
    jax.config.update("jax_enable_x64", True)  # optimistix fits in float64 as nlsq does
    sizes = SIZES[:2] if quick else SIZES
    repeats = {1_000: 101, 10_000: 41, 100_000: 11, 1_000_000: 5}
    singles = [one_fit(n, 3 if quick else repeats[n]) for n in sizes]
    count = 40 if quick else 1000
    many = batch(count, 500, 2 if quick else 7)
    firsts = [first_call(c, n, 1 if quick else 5) for c, n in ((0, 1_000), (count, 500))]
    checks = {}
    for r in singles:
        for library in ("nlsq", "optimistix"):
            checks[f"(i) n={r['n']}: {library} finds scipy's parameters (rtol {POPT_RTOL:g})"] = (
                r[f"{library}_rel_diff"] < POPT_RTOL
            )
        checks[f"(i) n={r['n']}: optimistix reports success"] = r["optimistix_succeeded"]
    checks["(ii) every fit succeeded (nlsq and optimistix)"] = (
        many["nlsq_all_succeeded"] and many["optimistix_all_succeeded"]
    )
    checks[f"(ii) nlsq and optimistix find the same parameters (rtol {POPT_RTOL:g})"] = (
        many["rel_diff_nlsq_vs_optimistix"] < POPT_RTOL
    )
    for f in firsts:
        for library in ("nlsq", "optimistix"):
            found = "scipy's" if not f["count"] else "the other library's"
            checks[f"(iii) {_first_label(f)}: {library} finds {found} parameters"] = (
                f[f"{library}_rel_diff"] < POPT_RTOL
            )
    data = {"singles": singles, "batch": many, "firsts": firsts}
    ns = [r["n"] for r in singles]
    return bench_result(
        "bench_vs_optimistix",
        title="nlsq vs optimistix's Levenberg-Marquardt (scipy's MINPACK as reference), "
        "a*exp(-b*x)+c, float64",
        table=table(data),
        checks=checks,
        plot=[
            lines(
                "(i) one fit after compilation",
                "n (points)",
                "ms per fit (median)",
                ns,
                {
                    name: [1e3 * r["median_s"][name] for r in singles]
                    for name in ("nlsq", "optimistix", "scipy")
                },
            ),
            bars(
                f"(ii) {many['count']} fits of n = {many['n']}, after compilation",
                "seconds (median)",
                list(many["median_s"]),
                {"median": list(many["median_s"].values())},
            ),
            bars(
                "(iii) first call, fresh process, no cache",
                "seconds (median; imports apart)",
                [_first_label(f) for f in firsts],
                {lib: [f[f"{lib}_first_s"] for f in firsts] for lib in ("nlsq", "optimistix")},
            ),
        ],
        **data,
    )


def _first_label(first: dict[str, Any]) -> str:
    if first["count"]:
        return f"first batch of {first['count']} fits of n = {first['n']}"
    return f"first fit, n = {first['n']}"


def table(data: dict[str, Any]) -> str:
    rows = []
    for r in data["singles"]:
        med = r["median_s"]
        rows.append(
            [
                f"(i) one fit, n = {r['n']:.0e}",
                f"{1e3 * med['nlsq']:.3f} ms ({r['nlsq_nfev']} nfev)",
                f"{1e3 * med['optimistix']:.3f} ms ({r['optimistix_steps']} steps)",
                f"{1e3 * med['scipy']:.3f} ms",
                f"{med['optimistix'] / med['nlsq']:.2f}",
                f"{med['scipy'] / med['nlsq']:.2f}",
            ]
        )
    b = data["batch"]
    nlsq_s, optx_s = b["median_s"].values()
    rows.append(
        [
            f"(ii) {b['count']} fits of n = {b['n']}",
            f"{1e3 * nlsq_s:.1f} ms (median {b['nlsq_median_nfev']:.0f} nfev)",
            f"{1e3 * optx_s:.1f} ms (median {b['optimistix_median_steps']:.0f} steps)",
            "",
            f"{optx_s / nlsq_s:.2f}",
            "",
        ]
    )
    for f in data["firsts"]:
        rows.append(
            [
                f"(iii) {_first_label(f)}, fresh process, no cache",
                f"{f['nlsq_first_s']:.3f} s",
                f"{f['optimistix_first_s']:.3f} s",
                "",
                f"{f['optimistix_first_s'] / f['nlsq_first_s']:.2f}",
                "",
            ]
        )
    f = data["firsts"][0]
    note = (
        f"Imports in (iii) (median, apart from the figure): nlsq {f['nlsq_import_s']:.2f} s, "
        f"optimistix {f['optimistix_import_s']:.2f} s. (ii): largest relative difference "
        f"between the two libraries' parameters {b['rel_diff_nlsq_vs_optimistix']:.1e}."
    )
    headers = ["measurement", "nlsq", "optimistix", "scipy", "optimistix / nlsq", "scipy / nlsq"]
    return f"{markdown_table(headers, rows)}\n\n{note}"
