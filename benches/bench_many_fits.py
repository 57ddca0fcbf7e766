"""Many fits: shape buckets, the persistent compilation cache and curve_fit_many.

Exponential model ``a exp(-b x) + c``, side by side in one run:

(i)   20 fits with n drawn from [200, 2000), each in a fresh process, with an empty
      and then a warm compilation cache: nlsq with buckets, nlsq without (a plain
      loop, every length compiles), ``curve_fit_many`` on the 20, and scipy;
(ii)  1000 fits of n = 500 after compilation: ``curve_fit_many`` against a
      ``curve_fit`` loop and a ``scipy.optimize.curve_fit`` loop;
(iii) compile time per bucket (first fit of each bucket size, cache off) against
      the warm time of the same fit.

Run: ``python benches/bench_many_fits.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

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


def _subprocess(script: str, *args: str, env: dict[str, str]) -> dict:
    full = dict(os.environ, PYTHONPATH=str(ROOT / "python"), **env)
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=full, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


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
            cold = _subprocess(_VARYING, arg, str(count), env=env)
            warm = _subprocess(_VARYING, arg, str(count), env=env)
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
    variants["curve_fit_many"]()
    compile_many = time.perf_counter() - t0
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {
        "batch": batch,
        "n": n,
        "first_call_many_s": compile_many,
        "median_s": {k: statistics.median(v) for k, v in samples.items()},
        "min_s": {k: min(v) for k, v in samples.items()},
    }


def main(quick: bool = False, out: Path | None = None) -> dict:
    count = 5 if quick else 20
    batch, repeats = (50, 2) if quick else (1000, 3)
    sizes = [300, 500] if quick else [256, 384, 512, 768, 1024, 1536, 2048]
    varying = varying_sizes(count)
    small = many_small(batch, 500, repeats)
    per_bucket = _subprocess(_PER_BUCKET, ",".join(map(str, sizes)), env={"NLSQ_CACHE_DIR": "off"})
    result = {
        "name": "bench_many_fits",
        "title": "Many fits: buckets, persistent cache, curve_fit_many",
        "varying": varying,
        "varying_count": count,
        "small": small,
        "per_bucket": per_bucket,
        "load_avg": os.getloadavg(),
    }
    result["table"] = table(result)
    return result


def table(result: dict) -> str:
    v, s = result["varying"], result["small"]
    lines = [
        f"(i) {result['varying_count']} fits, n in [200, 2000), fresh process "
        "(fits only; import apart)",
        "",
        "| variant | cold cache: fits s | warm cache: fits s | import s |",
        "|---|---:|---:|---:|",
    ]
    for name, r in v.items():
        lines.append(
            f"| {name} | {r['cold']['fits_s']:.3f} | {r['warm']['fits_s']:.3f} | "
            f"{r['warm']['import_s']:.2f} |"
        )
    scipy_loop = s["median_s"]["scipy loop"]
    lines += [
        "",
        f"(ii) {s['batch']} fits of n = {s['n']} after compilation (median; first "
        f"curve_fit_many call {s['first_call_many_s']:.2f} s)",
        "",
        "| variant | median s | min s | vs scipy loop |",
        "|---|---:|---:|---:|",
    ]
    for name, med in s["median_s"].items():
        lines.append(f"| {name} | {med:.3f} | {s['min_s'][name]:.3f} | {med / scipy_loop:.3f} |")
    lines += [
        "",
        "(iii) compile time per bucket (first fit, cache off) and the warm fit",
        "",
        "| n | first fit s | warm fit ms |",
        "|---:|---:|---:|",
    ]
    for r in result["per_bucket"]:
        lines.append(f"| {r['n']} | {r['first_s']:.3f} | {1e3 * r['warm_s']:.2f} |")
    lines.append(f"\nLoad average during the run: {result['load_avg'][0]:.1f}")
    return "\n".join(lines)


def plot(result: dict, png: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    v = result["varying"]
    names = list(v)
    pos = np.arange(len(names))
    axes[0].bar(pos - 0.2, [v[k]["cold"]["fits_s"] for k in names], 0.4, label="cold cache")
    axes[0].bar(pos + 0.2, [v[k]["warm"]["fits_s"] for k in names], 0.4, label="warm cache")
    axes[0].set_xticks(pos, names)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds (fits, fresh process)")
    axes[0].set_title(f"(i) {result['varying_count']} fits, n in [200, 2000)")
    axes[0].legend()
    s = result["small"]
    names = list(s["median_s"])
    axes[1].bar(names, [s["median_s"][k] for k in names])
    axes[1].set_yscale("log")
    axes[1].set_ylabel("seconds")
    axes[1].set_title(f"(ii) {s['batch']} fits of n = {s['n']}")
    pb = result["per_bucket"]
    axes[2].plot([r["n"] for r in pb], [r["first_s"] for r in pb], "o-", label="first fit")
    axes[2].plot([r["n"] for r in pb], [r["warm_s"] for r in pb], "s-", label="warm fit")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("bucket size n")
    axes[2].set_ylabel("seconds")
    axes[2].set_title("(iii) compile time per bucket")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    res = main(quick=args.quick, out=args.out)
    print(res["table"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_many_fits.json").write_text(json.dumps(res, indent=2, default=float))
    import matplotlib

    matplotlib.use("Agg")
    plot(res, args.out / "bench_many_fits.png")
