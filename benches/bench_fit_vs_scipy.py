"""nlsq.curve_fit versus scipy.optimize.curve_fit, per method, side by side.

Exponential model ``a exp(-b x) + c`` (3 parameters) on n = 1e3 ... 1e6 noisy
points, same data and starting point for all.  Variants: nlsq with its default
method (``'lm'`` here: no bounds), nlsq ``'trf'``, ``'lm'`` and ``'dogbox'``,
scipy ``'trf'`` and ``'lm'`` (MINPACK).  nlsq is timed after compilation (the
first call, which traces and compiles, is reported apart as ``compile_s``);
the variants run interleaved, the order rotated every round, and every timing
is the median of the repeats in this process, as wall time (``*_s``) and as
this process's CPU time (``*_cpu_s``: steadier than wall time on a shared
machine, where other processes take the cores).  Checked: every nlsq method
finds scipy's parameters (relative difference below ``POPT_RTOL``) and ``lm``
is not slower than ``trf`` (the condition for it being the default).

Run: ``python benches/run.py --only bench_fit_vs_scipy [--quick]``.
"""

from __future__ import annotations

import statistics
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


NLSQ_METHODS = {"nlsq": None, "nlsq_trf": "trf", "nlsq_lm": "lm", "nlsq_dogbox": "dogbox"}
SCIPY_METHODS = {"scipy": "trf", "scipy_lm": "lm"}


def bench_size(n: int, quick: bool) -> dict[str, Any]:
    x, y = _data(n)
    t0 = time.perf_counter()
    nlsq.curve_fit(model_jax, x, y, p0=P0)
    first = time.perf_counter() - t0
    fits = {}
    for name, method in NLSQ_METHODS.items():
        fits[name] = lambda method=method: nlsq.curve_fit(model_jax, x, y, p0=P0, method=method)
    for name, method in SCIPY_METHODS.items():
        fits[name] = lambda method=method: so.curve_fit(model_np, x, y, p0=P0, method=method)
    cpu: dict[str, list[float]] = {name: [] for name in fits}
    cpu_start: dict[str, float] = {}

    def before(name: str) -> None:
        cpu_start[name] = time.process_time()

    def after(name: str, _: float) -> None:
        cpu[name].append(time.process_time() - cpu_start[name])

    # The same arrays on every repeat keep the libraries on identical problems
    # (new data of the same shape would not recompile nlsq either).  The warm-up
    # round compiles every nlsq method; its CPU samples are dropped below.
    timing = interleaved_medians(
        fits, _repeats(n, quick), warmup=1, rotate=True, before=before, after=after
    )
    popt_s = fits["scipy"]()[0]
    row: dict[str, Any] = {"n": n, "repeats": timing["nlsq"]["repeats"]}
    for name in fits:
        row[f"{name}_s"] = timing[name]["median_s"]
        row[f"{name}_cpu_s"] = statistics.median(cpu[name][1:])
    for name in NLSQ_METHODS:
        popt = np.asarray(fits[name]()[0])
        row[f"{name}_max_rel_diff_popt"] = float(np.max(np.abs(popt / popt_s - 1)))
    row["speedup"] = row["scipy_s"] / row["nlsq_s"]
    row["lm_over_trf"] = row["nlsq_lm_s"] / row["nlsq_trf_s"]
    row["lm_over_trf_cpu"] = row["nlsq_lm_cpu_s"] / row["nlsq_trf_cpu_s"]
    row["compile_s"] = max(first - row["nlsq_s"], 0.0)
    row["max_rel_diff_popt"] = row["nlsq_max_rel_diff_popt"]
    row["timing"] = timing
    return row


def main(quick: bool, out: Path) -> dict[str, Any]:
    """Run the comparison (``out`` unused: nothing beyond the result to keep)."""
    sizes = SIZES[:3] if quick else SIZES
    rows = [bench_size(n, quick) for n in sizes]
    names = list(NLSQ_METHODS) + list(SCIPY_METHODS)
    table = markdown_table(
        [
            "n",
            "nlsq default (ms)",
            "nlsq trf",
            "nlsq lm",
            "nlsq dogbox",
            "scipy trf",
            "scipy lm",
            "scipy trf / nlsq",
            "lm / trf (wall, cpu)",
            "nlsq compile (s)",
            "max rel diff popt",
        ],
        [
            [f"{r['n']:.0e}"]
            + [f"{1e3 * r[name + '_s']:.2f}" for name in names]
            + [
                f"{r['speedup']:.2f}x",
                f"{r['lm_over_trf']:.2f}, {r['lm_over_trf_cpu']:.2f}",
                f"{r['compile_s']:.2f}",
                f"{max(r[m + '_max_rel_diff_popt'] for m in NLSQ_METHODS):.1e}",
            ]
            for r in rows
        ],
    )
    ns = [r["n"] for r in rows]
    return bench_result(
        "bench_fit_vs_scipy",
        title="Time per fit after compilation: nlsq.curve_fit vs scipy curve_fit, per method, "
        "a*exp(-b*x)+c (median of interleaved repeats)",
        table=table,
        checks={
            **{
                f"n={r['n']}: every method finds scipy's parameters (rtol {POPT_RTOL:g})": max(
                    r[m + "_max_rel_diff_popt"] for m in NLSQ_METHODS
                )
                < POPT_RTOL
                for r in rows
            },
            **{
                f"n={r['n']}: lm (the default) not slower than trf (CPU time)": r["lm_over_trf_cpu"]
                <= 1.0
                for r in rows
            },
        },
        plot=[
            lines(
                "Time per fit",
                "n (points)",
                "ms per fit (median)",
                ns,
                {
                    "nlsq trf (compiled)": [1e3 * r["nlsq_trf_s"] for r in rows],
                    "nlsq lm (compiled)": [1e3 * r["nlsq_lm_s"] for r in rows],
                    "nlsq dogbox (compiled)": [1e3 * r["nlsq_dogbox_s"] for r in rows],
                    "scipy curve_fit (trf)": [1e3 * r["scipy_s"] for r in rows],
                    "scipy curve_fit (lm, MINPACK)": [1e3 * r["scipy_lm_s"] for r in rows],
                },
            )
        ],
        model="a*exp(-b*x)+c",
        rows=rows,
    )
