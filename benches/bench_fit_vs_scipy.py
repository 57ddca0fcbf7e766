"""nlsq.curve_fit versus scipy.optimize.curve_fit, per method, side by side.

Exponential model ``a exp(-b x) + c`` (3 parameters) on n = 1e3 ... 1e6 noisy
points, same data and starting point for all.  Variants: nlsq with its default
method, nlsq ``'trf'``, ``'lm'`` and ``'dogbox'``, scipy ``'trf'`` and ``'lm'``
(MINPACK).  nlsq is timed after compilation (the first call, which traces and
compiles, is reported apart as ``compile_s``).  The variants run interleaved,
the order rotated every round, and every timing is the median of the repeats
in this process, as wall time (``*_s``) and as this process's CPU time
(``*_cpu_s``; steadier than wall time on a shared machine, where other
processes take the cores).
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


def _repeats(n: int, quick: bool) -> int:
    if quick:
        return 3
    return {1_000: 51, 10_000: 21, 100_000: 9, 1_000_000: 5}.get(n, 5)


def _variants(x, y) -> dict:
    def nlsq_fit(method):
        return lambda: nlsq.curve_fit(model_jax, x, y, p0=P0, method=method)

    def scipy_fit(method):
        return lambda: so.curve_fit(model_np, x, y, p0=P0, method=method)

    return {
        "nlsq": nlsq_fit(None),
        "nlsq_trf": nlsq_fit("trf"),
        "nlsq_lm": nlsq_fit("lm"),
        "nlsq_dogbox": nlsq_fit("dogbox"),
        "scipy": scipy_fit("trf"),
        "scipy_lm": scipy_fit("lm"),
    }


def bench_size(n: int, quick: bool) -> dict:
    x, y = _data(n)
    variants = _variants(x, y)
    compile_s = {}
    for name, fit in variants.items():
        t0 = time.perf_counter()
        fit()
        compile_s[name] = time.perf_counter() - t0
    reps = _repeats(n, quick)
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    popt = {}
    names = list(variants)
    # New data of the same shape on every repeat would not recompile either; the
    # same arrays keep the libraries on identical problems.
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w0, c0 = time.perf_counter(), time.process_time()
            popt[name], _ = variants[name]()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    row = {"n": n, "repeats": reps}
    for name in names:
        row[f"{name}_s"] = statistics.median(wall[name])
        row[f"{name}_cpu_s"] = statistics.median(cpu[name])
    row["speedup"] = row["scipy_s"] / row["nlsq_s"]
    row["lm_over_trf"] = row["nlsq_lm_s"] / row["nlsq_trf_s"]
    row["lm_over_trf_cpu"] = row["nlsq_lm_cpu_s"] / row["nlsq_trf_cpu_s"]
    row["compile_s"] = max(compile_s["nlsq"] - row["nlsq_s"], 0.0)
    row["max_rel_diff_popt"] = float(np.max(np.abs(popt["nlsq"] / popt["scipy"] - 1)))
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| n | nlsq (ms) | nlsq trf | nlsq lm | nlsq dogbox | scipy trf | scipy lm "
        "| scipy trf / nlsq | lm / trf (wall, cpu) | compile (s) | max rel diff popt |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms = [f"{1e3 * r[k + '_s']:.2f}" for k in
              ("nlsq", "nlsq_trf", "nlsq_lm", "nlsq_dogbox", "scipy", "scipy_lm")]  # fmt: skip
        lines.append(
            f"| {r['n']:.0e} | " + " | ".join(ms) + f" | {r['speedup']:.2f}x | "
            f"{r['lm_over_trf']:.2f}, {r['lm_over_trf_cpu']:.2f} | {r['compile_s']:.2f} | "
            f"{r['max_rel_diff_popt']:.1e} |"
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
    for key, style, label in (
        ("nlsq_trf_s", "o-", "nlsq trf (compiled)"),
        ("nlsq_lm_s", "^-", "nlsq lm (compiled)"),
        ("nlsq_dogbox_s", "v-", "nlsq dogbox (compiled)"),
        ("scipy_s", "s--", "scipy trf"),
        ("scipy_lm_s", "D--", "scipy lm (MINPACK)"),
    ):
        ax.plot(ns, [1e3 * r[key] for r in rows], style, label=label)
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
