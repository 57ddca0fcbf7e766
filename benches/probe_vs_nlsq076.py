"""Probe: this nlsq against NLSQ 0.7.6 (the PyPI package of the same import name), side by side.

Both packages are imported as ``nlsq``, so they cannot share a process: each runs in
fresh processes of its own interpreter, the two alternating, on the same CPython and
JAX versions (give an interpreter that has NLSQ 0.7.6 installed, and one with the same
JAX for this tree; this tree's ``python/`` goes on the latter's path). Each process,
with its own empty cache folder (``XDG_CACHE_HOME`` and ``HOME`` pointed at it, so
neither package finds an earlier compilation):

* ``first``: the first ``curve_fit`` of the exp model at n = 1e3 (import apart);
* ``warm``: then the median of single calls on the same data, and
  ``scipy.optimize.curve_fit`` on it in the same process (``÷ scipy`` is from the
  same process); ``warm_object``: the same through each package's object for repeated
  fits (NLSQ ``CurveFit().curve_fit(f, ...)``, here ``CurveFit(f).fit(...)``);
* ``varying``: then 20 fits with n drawn from [200, 2000) (``bench_many_fits`` (i));
* every ``popt`` against scipy's (largest relative difference).

NLSQ logs every fit at INFO level by default; the probe turns Python logging off in
its process (the figures are its fits, not its log). Not part of ``run.py``: it needs
the second environment, e.g.::

    python3.12 -m venv /tmp/nlsq076 && /tmp/nlsq076/bin/pip install nlsq==0.7.6
    python3.12 -m venv /tmp/ours && /tmp/ours/bin/pip install "jax==<the same>" scipy filelock
    python benches/probe_vs_nlsq076.py --nlsq076 /tmp/nlsq076/bin/python --ours /tmp/ours/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Figures printed in milliseconds (the others in seconds).
MS = ("warm_s", "warm_object_s", "scipy_s")

_CHILD = textwrap.dedent(
    """
    import inspect, json, logging, sys, time
    import numpy as np
    t0 = time.perf_counter()
    import jax, jax.numpy as jnp, nlsq, scipy.optimize as so
    logging.disable(logging.CRITICAL)
    import_s = time.perf_counter() - t0

    def popt_of(result):
        return np.asarray(getattr(result, "popt", None) if hasattr(result, "popt") else result[0])

    f = lambda x, a, b, c: a * jnp.exp(-b * x) + c
    f_np = lambda x, a, b, c: a * np.exp(-b * x) + c
    rng = np.random.default_rng(0)
    x = np.linspace(0, 5, 1000)
    y = f_np(x, 2.5, 1.3, 0.5) + 0.05 * rng.standard_normal(1000)
    t0 = time.perf_counter()
    popt = popt_of(nlsq.curve_fit(f, x, y, p0=[1.0, 1.0, 1.0]))
    first_s = time.perf_counter() - t0
    popt_scipy = so.curve_fit(f_np, x, y, p0=[1.0, 1.0, 1.0])[0]
    ours, theirs = [], []
    for _ in range(int(sys.argv[1])):
        t0 = time.perf_counter(); nlsq.curve_fit(f, x, y, p0=[1.0, 1.0, 1.0])
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); so.curve_fit(f_np, x, y, p0=[1.0, 1.0, 1.0])
        theirs.append(time.perf_counter() - t0)
    # Each package's object for repeated fits of one model, as its documentation shows.
    if "flength" in str(inspect.signature(nlsq.CurveFit)):  # NLSQ: CurveFit().curve_fit(f, ...)
        fitter = nlsq.CurveFit()
        by_object = lambda: fitter.curve_fit(f, x, y, p0=[1.0, 1.0, 1.0])
    else:  # this nlsq: CurveFit(f).fit(...)
        fitter = nlsq.CurveFit(f)
        by_object = lambda: fitter.fit(x, y, p0=[1.0, 1.0, 1.0])
    by_object()
    objects = []
    for _ in range(int(sys.argv[1])):
        t0 = time.perf_counter(); by_object(); objects.append(time.perf_counter() - t0)
    worst = float(np.max(np.abs(popt / popt_scipy - 1)))
    data = []
    for n in rng.integers(200, 2000, size=20):
        xs = np.linspace(0, 5, n)
        data.append((xs, f_np(xs, 2.5, 1.3, 0.5) + 0.05 * rng.standard_normal(n)))
    t0 = time.perf_counter()
    found = [popt_of(nlsq.curve_fit(f, xs, ys, p0=[1.0, 1.0, 1.0])) for xs, ys in data]
    varying_s = time.perf_counter() - t0
    for (xs, ys), p in zip(data, found):
        p_scipy = so.curve_fit(f_np, xs, ys, p0=[1.0, 1.0, 1.0])[0]
        worst = max(worst, float(np.max(np.abs(p / p_scipy - 1))))
    print(json.dumps({
        "jax": jax.__version__, "python": sys.version.split()[0], "import_s": import_s,
        "first_s": first_s, "warm_s": float(np.median(ours)),
        "warm_object_s": float(np.median(objects)), "scipy_s": float(np.median(theirs)),
        "varying_s": varying_s, "max_rel_diff_popt": worst,
    }))
    """
)


def _run(python: str, calls: int, cache: str, ours: bool) -> dict:
    env = dict(os.environ, XDG_CACHE_HOME=cache, HOME=cache, JAX_PLATFORMS="cpu")
    env.pop("NLSQ_CACHE_DIR", None)
    if ours:
        env["PYTHONPATH"] = str(ROOT / "python")
    else:
        env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [python, "-c", _CHILD, str(calls)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nlsq076", required=True, help="python with NLSQ 0.7.6 installed")
    parser.add_argument("--ours", required=True, help="python with the same JAX, for this tree")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200, help="warm single calls per process")
    args = parser.parse_args()
    pythons = {"this nlsq": (args.ours, True), "NLSQ 0.7.6": (args.nlsq076, False)}
    runs: dict[str, dict[str, list[dict]]] = {k: {"cold": [], "warm": []} for k in pythons}
    for _ in range(args.reps):
        for name, (python, ours) in pythons.items():
            with tempfile.TemporaryDirectory(prefix="nlsq-probe-home-") as cache:
                for kind in ("cold", "warm"):  # the second process finds the first's cache
                    runs[name][kind].append(_run(python, args.calls, cache, ours))
    keys = ("import_s", "first_s", "warm_s", "warm_object_s", "scipy_s", "varying_s")
    print(f"medians of {args.reps} process pairs; load average {os.getloadavg()[0]:.1f}")
    print("| package | cache | " + " | ".join(keys) + " | warm ÷ scipy | max rel diff popt |")
    print("|---|---|" + "---:|" * (len(keys) + 2))
    for name, by_kind in runs.items():
        for kind, rows in by_kind.items():
            med = {k: statistics.median(r[k] for r in rows) for k in keys}
            cells = [f"{med[k] * 1e3:.3f} ms" if k in MS else f"{med[k]:.3f} s" for k in keys]
            ratio = statistics.median(r["warm_s"] / r["scipy_s"] for r in rows)
            worst = max(r["max_rel_diff_popt"] for r in rows)
            print(f"| {name} | {kind} | " + " | ".join(cells) + f" | {ratio:.2f} | {worst:.1e} |")
    versions = {name: (r["cold"][0]["python"], r["cold"][0]["jax"]) for name, r in runs.items()}
    print("CPython, JAX:", versions)


if __name__ == "__main__":
    main()
