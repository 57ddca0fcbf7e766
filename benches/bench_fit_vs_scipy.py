"""nlsq.curve_fit versus scipy.optimize.curve_fit(method='trf'), side by side.

Exponential model ``a exp(-b x) + c`` (3 parameters) on n = 1e3 ... 1e6 noisy
points, same data and starting point for both.  nlsq is timed after
compilation (the first call, which traces and compiles, is reported apart as
``compile_s``); every timing is the median of several repeats in this process.
Run: ``python benches/bench_fit_vs_scipy.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import nlsq  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.optimize as so  # noqa: E402

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


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _repeats(n: int, quick: bool) -> int:
    if quick:
        return 3
    return {1_000: 51, 10_000: 21, 100_000: 9, 1_000_000: 5}.get(n, 5)


def bench_size(n: int, quick: bool) -> dict:
    x, y = _data(n)
    t0 = time.perf_counter()
    nlsq.curve_fit(model_jax, x, y, p0=P0)
    first = time.perf_counter() - t0
    reps = _repeats(n, quick)
    # New data of the same shape on every repeat would not recompile either; the
    # same arrays keep the two libraries on identical problems.
    t_nlsq, (popt, _) = _median_time(lambda: nlsq.curve_fit(model_jax, x, y, p0=P0), reps)
    t_scipy, (popt_s, _) = _median_time(
        lambda: so.curve_fit(model_np, x, y, p0=P0, method="trf"), reps
    )
    return {
        "n": n,
        "repeats": reps,
        "nlsq_s": t_nlsq,
        "scipy_s": t_scipy,
        "speedup": t_scipy / t_nlsq,
        "compile_s": max(first - t_nlsq, 0.0),
        "max_rel_diff_popt": float(np.max(np.abs(popt / popt_s - 1))),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| n | nlsq (ms) | scipy trf (ms) | scipy / nlsq | nlsq compile (s) | max rel diff popt |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:.0e} | {1e3 * r['nlsq_s']:.2f} | {1e3 * r['scipy_s']:.2f} | "
            f"{r['speedup']:.2f}x | {r['compile_s']:.2f} | {r['max_rel_diff_popt']:.1e} |"
        )
    return "\n".join(lines)


def main(quick: bool, out: Path) -> dict:
    """Run the comparison, print the markdown table, write ``fit_vs_scipy.json`` into ``out``."""
    sizes = SIZES[:3] if quick else SIZES
    rows = [bench_size(n, quick) for n in sizes]
    result = {
        "bench": "fit_vs_scipy",
        "model": "a*exp(-b*x)+c",
        "quick": quick,
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "nlsq": nlsq.__version__,
            "jax": jax.__version__,
            "scipy": scipy.__version__,
            "numpy": np.__version__,
        },
        "rows": rows,
        "markdown": markdown(rows),
    }
    print(result["markdown"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit_vs_scipy.json").write_text(json.dumps(result, indent=2))
    return result


def plot(result: dict, png: Path) -> None:
    """Time per fit against n for both libraries (log-log)."""
    import matplotlib.pyplot as plt

    rows = result["rows"]
    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(ns, [1e3 * r["nlsq_s"] for r in rows], "o-", label="nlsq.curve_fit (compiled)")
    ax.plot(ns, [1e3 * r["scipy_s"] for r in rows], "s--", label="scipy curve_fit (trf)")
    ax.set(xscale="log", yscale="log", xlabel="n (points)", ylabel="ms per fit (median)")
    ax.set_title(f"Time per fit, {result['model']} ({result['device']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ns = parser.parse_args()
    main(ns.quick, ns.out)
