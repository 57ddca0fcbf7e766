"""nlsq.curve_fit versus scipy.optimize.curve_fit(method='trf'), side by side.

Exponential model ``a exp(-b x) + c`` (3 parameters) on n = 1e3 ... 1e6 noisy
points, same data and starting point for both.  nlsq is timed after
compilation (the first call, which traces and compiles, is reported apart as
``compile_s``); the two libraries run interleaved and every timing is the
median of the repeats in this process.  Checked: both find the same
parameters (relative difference below ``POPT_RTOL``).

Run: ``python benches/run.py --only bench_fit_vs_scipy [--quick]``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import nlsq
import numpy as np
import scipy.optimize as so
from _harness import bench_result, interleaved_medians, lines, markdown_table

SIZES = (1_000, 10_000, 100_000, 1_000_000)
P_TRUE = (2.5, 1.3, 0.5)
P0 = (1.0, 1.0, 1.0)


def model_jax(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def model_np(x, a, b, c):
    return a * np.exp(-b * x) + c


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 5.0, n)
    y = model_np(x, *P_TRUE) + 0.05 * rng.standard_normal(n)
    return x, y


def _repeats(n: int, quick: bool) -> int:
    if quick:
        return 3
    return {1_000: 51, 10_000: 21, 100_000: 9, 1_000_000: 5}.get(n, 5)


POPT_RTOL = 1e-5


def bench_size(n: int, quick: bool) -> dict[str, Any]:
    x, y = _data(n)
    t0 = time.perf_counter()
    nlsq.curve_fit(model_jax, x, y, p0=P0)
    first = time.perf_counter() - t0
    fits = {
        "nlsq": lambda: nlsq.curve_fit(model_jax, x, y, p0=P0),
        "scipy": lambda: so.curve_fit(model_np, x, y, p0=P0, method="trf"),
    }
    # The same arrays on every repeat keep the two libraries on identical problems
    # (new data of the same shape would not recompile nlsq either).
    timing = interleaved_medians(fits, _repeats(n, quick), warmup=0)
    popt, popt_s = fits["nlsq"]()[0], fits["scipy"]()[0]
    t_nlsq, t_scipy = timing["nlsq"]["median_s"], timing["scipy"]["median_s"]
    return {
        "n": n,
        "repeats": timing["nlsq"]["repeats"],
        "nlsq_s": t_nlsq,
        "scipy_s": t_scipy,
        "speedup": t_scipy / t_nlsq,
        "compile_s": max(first - t_nlsq, 0.0),
        "max_rel_diff_popt": float(np.max(np.abs(np.asarray(popt) / popt_s - 1))),
        "timing": timing,
    }


def main(quick: bool, out: Path) -> dict[str, Any]:
    """Run the comparison (``out`` unused: nothing beyond the result to keep)."""
    sizes = SIZES[:3] if quick else SIZES
    rows = [bench_size(n, quick) for n in sizes]
    table = markdown_table(
        [
            "n",
            "nlsq (ms)",
            "scipy trf (ms)",
            "scipy / nlsq",
            "nlsq compile (s)",
            "max rel diff popt",
        ],
        [
            [
                f"{r['n']:.0e}",
                f"{1e3 * r['nlsq_s']:.2f}",
                f"{1e3 * r['scipy_s']:.2f}",
                f"{r['speedup']:.2f}x",
                f"{r['compile_s']:.2f}",
                f"{r['max_rel_diff_popt']:.1e}",
            ]
            for r in rows
        ],
    )
    ns = [r["n"] for r in rows]
    return bench_result(
        "bench_fit_vs_scipy",
        title="Time per fit after compilation: nlsq.curve_fit vs scipy curve_fit(method='trf'), "
        "a*exp(-b*x)+c (median of interleaved repeats)",
        table=table,
        checks={
            f"n={r['n']}: same parameters as scipy (rtol {POPT_RTOL:g})": r["max_rel_diff_popt"]
            < POPT_RTOL
            for r in rows
        },
        plot=[
            lines(
                "Time per fit",
                "n (points)",
                "ms per fit (median)",
                ns,
                {
                    "nlsq.curve_fit (compiled)": [1e3 * r["nlsq_s"] for r in rows],
                    "scipy curve_fit (trf)": [1e3 * r["scipy_s"] for r in rows],
                },
            )
        ],
        model="a*exp(-b*x)+c",
        rows=rows,
    )
