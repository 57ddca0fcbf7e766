"""Many fits: shape buckets, the persistent compilation cache and curve_fit_many.

Exponential model ``a exp(-b x) + c``, side by side in one run:

(i)   20 fits with n drawn from [200, 2000), each in a fresh process, with an empty
      and then a warm compilation cache: nlsq with buckets, nlsq without (a plain
      loop, every length compiles), ``curve_fit_many`` on the 20, and scipy;
(ii)  1000 fits of n = 500 after compilation: ``curve_fit_many`` against a
      ``curve_fit`` loop and a ``scipy.optimize.curve_fit`` loop;
(iii) compile time per bucket (first fit of each bucket size, cache off) against
      the warm time of the same fit.

Checked: in (ii), ``curve_fit_many`` and the ``curve_fit`` loop find the same
parameters for every dataset.

Run: ``python benches/run.py --only bench_many_fits [--quick]``.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from _harness import bars, bench_result, interleaved_medians, lines, markdown_table, run_python

# One process: import, then 20 fits of varying n; prints the timings as JSON.
_VARYING = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    mode = sys.argv[1]
    rng = np.random.default_rng(0)
    sizes = rng.integers(200, 2000, size=int(sys.argv[2]))
    data = []
    for n in sizes:
        x = np.linspace(0, 5, n)
        data.append((x, 2.5 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.standard_normal(n)))
    if mode == "scipy":
        import scipy.optimize as so
        f = lambda x, a, b, c: a * np.exp(-b * x) + c
        t1 = time.perf_counter()
        for x, y in data:
            so.curve_fit(f, x, y, p0=[1, 1, 1])
    else:
        import jax.numpy as jnp, nlsq
        f = lambda x, a, b, c: a * jnp.exp(-b * x) + c
        t1 = time.perf_counter()
        if mode == "many":
            nlsq.curve_fit_many(f, [d[0] for d in data], [d[1] for d in data], p0=[1, 1, 1])
        else:
            for x, y in data:
                nlsq.curve_fit(f, x, y, p0=[1, 1, 1])
    t2 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "fits_s": t2 - t1}))
    """
)

# Compile time per bucket: first fit of each size (cache off) and the same fit warm.
_PER_BUCKET = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, jax.numpy as jnp, nlsq
    f = lambda x, a, b, c: a * jnp.exp(-b * x) + c
    out = []
    for n in [int(s) for s in sys.argv[1].split(",")]:
        x = np.linspace(0, 5, n)
        y = 2.5 * np.exp(-1.3 * x) + 0.5
        t0 = time.perf_counter(); nlsq.curve_fit(f, x, y, p0=[1, 1, 1]); t1 = time.perf_counter()
        warm = []
        for _ in range(5):
            t2 = time.perf_counter(); nlsq.curve_fit(f, x, y, p0=[1, 1, 1])
            warm.append(time.perf_counter() - t2)
        out.append({"n": n, "first_s": t1 - t0, "warm_s": sorted(warm)[2]})
    print(json.dumps(out))
    """
)


def varying_sizes(count: int) -> dict:
    """(i): each variant in fresh processes, cold then warm cache."""
    rows = {}
    for mode, env in (
        ("buckets", {}),
        ("plain loop", {"NLSQ_BUCKETS": "off"}),
        ("many", {}),
        ("scipy", {}),
    ):
        with tempfile.TemporaryDirectory(prefix="nlsq-bench-cache-") as cache:
            env = dict(env, NLSQ_CACHE_DIR=cache)
            arg = "many" if mode == "many" else ("scipy" if mode == "scipy" else "loop")
            cold = run_python(_VARYING, arg, str(count), env=env)
            warm = run_python(_VARYING, arg, str(count), env=env)
        rows[mode] = {"cold": cold, "warm": warm}
    return rows


def many_small(batch: int, n: int, repeats: int) -> dict:
    """(ii): ``batch`` fits of ``n`` points, after compilation, medians of interleaved runs."""
    import jax.numpy as jnp
    import nlsq
    import scipy.optimize as so

    rng = np.random.default_rng(1)
    x = np.linspace(0, 5, n)
    a = 2 + rng.random(batch)
    b = 1 + rng.random(batch)
    Y = a[:, None] * np.exp(-b[:, None] * x) + 0.5 + 0.05 * rng.standard_normal((batch, n))

    def f(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    def f_np(x, a, b, c):
        return a * np.exp(-b * x) + c

    variants = {
        "curve_fit_many": lambda: nlsq.curve_fit_many(f, x, Y, p0=[1, 1, 1]),
        "curve_fit loop": lambda: [nlsq.curve_fit(f, x, y, p0=[1, 1, 1]) for y in Y],
        "scipy loop": lambda: [so.curve_fit(f_np, x, y, p0=[1, 1, 1]) for y in Y],
    }
    t0 = time.perf_counter()
    many = variants["curve_fit_many"]()
    compile_many = time.perf_counter() - t0
    loop = np.array([popt for popt, _ in variants["curve_fit loop"]()])
    # Counts too (untimed): nfev and status of each dataset, curve_fit_many vs curve_fit.
    alone = [nlsq.curve_fit(f, x, y, p0=[1, 1, 1], full_output=True) for y in Y]
    nfev_differ = int(np.sum(many.nfev != np.array([r[2]["nfev"] for r in alone])))
    status_differ = int(np.sum(many.status != np.array([r[4] for r in alone])))
    timing = interleaved_medians(variants, repeats)
    return {
        "batch": batch,
        "n": n,
        "first_call_many_s": compile_many,
        "median_s": {k: t["median_s"] for k, t in timing.items()},
        "min_s": {k: t["min_s"] for k, t in timing.items()},
        "max_rel_diff_popt_many_vs_loop": float(np.max(np.abs(np.asarray(many.popt) / loop - 1))),
        "nfev_differ_many_vs_loop": nfev_differ,
        "status_differ_many_vs_loop": status_differ,
    }


POPT_RTOL = 1e-6


def main(quick: bool, out: Path) -> dict:
    """Run (i), (ii) and (iii) and return the result (``out`` unused)."""
    count = 3 if quick else 20
    batch, repeats = (20, 1) if quick else (1000, 3)
    sizes = [300] if quick else [256, 512, 1024, 2048]
    varying = varying_sizes(count)
    small = many_small(batch, 500, repeats)
    per_bucket = run_python(_PER_BUCKET, ",".join(map(str, sizes)), env={"NLSQ_CACHE_DIR": "off"})
    data = {
        "varying": varying,
        "varying_count": count,
        "small": small,
        "per_bucket": per_bucket,
        "load_avg": os.getloadavg(),
    }
    names = list(varying)
    pb = per_bucket
    return bench_result(
        "bench_many_fits",
        title="Many fits: buckets, persistent cache, curve_fit_many",
        table=table(data),
        checks={
            f"(ii) curve_fit_many finds the curve_fit loop's parameters (rtol {POPT_RTOL:g})": (
                small["max_rel_diff_popt_many_vs_loop"] < POPT_RTOL
            ),
            "(ii) curve_fit_many counts the curve_fit loop's nfev for every dataset": (
                small["nfev_differ_many_vs_loop"] == 0
            ),
        },
        plot=[
            bars(
                f"(i) {count} fits, n in [200, 2000), fresh process",
                "seconds (fits; log scale)",
                names,
                {
                    "cold cache": [varying[k]["cold"]["fits_s"] for k in names],
                    "warm cache": [varying[k]["warm"]["fits_s"] for k in names],
                },
                log=True,
            ),
            bars(
                f"(ii) {small['batch']} fits of n = {small['n']}",
                "seconds (median; log scale)",
                list(small["median_s"]),
                {"median": list(small["median_s"].values())},
                log=True,
            ),
            lines(
                "(iii) compile time per bucket",
                "bucket size n",
                "seconds",
                [r["n"] for r in pb],
                {"first fit": [r["first_s"] for r in pb], "warm fit": [r["warm_s"] for r in pb]},
            ),
        ],
        **data,
    )


def table(result: dict) -> str:
    v, s = result["varying"], result["small"]
    count = result["varying_count"]
    rows = []
    scipy_i = {k: v["scipy"][k]["fits_s"] for k in ("cold", "warm")}
    for cache in ("cold", "warm"):
        for name, r in v.items():
            secs = r[cache]["fits_s"]
            rows.append(
                [
                    f"(i) {count} fits, n in [200, 2000), fresh process, {cache} cache",
                    name,
                    f"{secs:.3f}",
                    f"{secs / scipy_i[cache]:.1f}",
                ]
            )
    scipy_loop = s["median_s"]["scipy loop"]
    for name, med in s["median_s"].items():
        rows.append(
            [
                f"(ii) {s['batch']} fits of n = {s['n']}, after compilation (median)",
                name,
                f"{med:.3f}",
                f"{med / scipy_loop:.3f}",
            ]
        )
    for r in result["per_bucket"]:
        rows.append(
            [
                f"(iii) first fit of bucket n = {r['n']} (cache off); warm fit "
                f"{1e3 * r['warm_s']:.2f} ms",
                "curve_fit",
                f"{r['first_s']:.3f}",
                "",
            ]
        )
    note = (
        f"Fits only (import apart; import of nlsq in a fresh process: "
        f"{v['buckets']['warm']['import_s']:.2f} s). First curve_fit_many call in (ii): "
        f"{s['first_call_many_s']:.2f} s; datasets whose nfev / status differ from the "
        f"curve_fit loop's: {s.get('nfev_differ_many_vs_loop', '?')} / "
        f"{s.get('status_differ_many_vs_loop', '?')} of {s['batch']}. Load average during the run: "
        f"{result['load_avg'][0]:.1f}."
    )
    table = markdown_table(["measurement", "variant", "seconds", "vs scipy"], rows, align="llrr")
    return f"{table}\n\n{note}"


if __name__ == "__main__":
    # Section (ii) alone: ``python benches/bench_many_fits.py [--quick]``.
    import argparse

    parser = argparse.ArgumentParser(description="bench_many_fits, section (ii) only")
    parser.add_argument("--quick", action="store_true", help="20 fits, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats")
    args = parser.parse_args()
    batch, repeats = (20, 1) if args.quick else (1000, 3)
    small = many_small(batch, 500, args.repeats or repeats)
    scipy_loop = small["median_s"]["scipy loop"]
    print(f"(ii) {small['batch']} fits of n = {small['n']}, after compilation (median):")
    for name, med in small["median_s"].items():
        print(f"  {name:16s} {med:8.3f} s   {med / scipy_loop:6.3f} x scipy loop")
    print(f"  first curve_fit_many call {small['first_call_many_s']:.2f} s; max rel. popt "
          f"difference many vs loop {small['max_rel_diff_popt_many_vs_loop']:.1e}")  # fmt: skip
    nfev_differ, status_differ = (small[f"{k}_differ_many_vs_loop"] for k in ("nfev", "status"))
    print(f"  datasets with another nfev {nfev_differ}, another status {status_differ}; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
