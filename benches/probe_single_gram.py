"""Single ``curve_fit(method='lm')``: the Gram route against the QR route.

``--threshold``: how close the Gram route's fit is to the QR route's as its
smallest scaled pivot (``nlsq._reduce.gram_pivot_ratio``) falls.  Every NIST StRD
model with at most ``FUSED_MAX_N`` parameters (both starts, scipy's default
tolerances and the NIST test's 1e-14), the exponential model, and polynomials on
a shifted interval (ill-conditioned on purpose) are fitted by the Gram program
with the refit switched off and by the QR program; printed per fit: the pivot
ratio, whether nfev and status agree, and the largest relative difference of
popt.  ``nlsq._solve.MIN_SINGLE_GRAM_PIVOT_RATIO`` is chosen from this table.
``PROBE_TIGHT=1e-9`` etc. sets the tolerances of the ``-tight`` rows (1e-14 unless
set): how often the routes stop differently when asked for rounding-level
convergence (see the note below ``MIN_SINGLE_GRAM_PIVOT_RATIO``).

Default: warm ``curve_fit`` times, QR program against Gram program against
``scipy.optimize.curve_fit`` (lm), at n = 1e3, 1e4, 1e5, interleaved in blocks in
one process, medians (``--rounds``).  ``--compile qr|gram``: the first fit's
time in this fresh process (run with ``NLSQ_CACHE_DIR=off``).

Run: ``python benches/probe_single_gram.py [--threshold | --compile ROUTE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import nlsq
import numpy as np
from nlsq import _solve


@contextlib.contextmanager
def route(name: str):
    """Fits by ``name``: 'gram' (refit off), 'qr' (the QR program), or 'auto' (as shipped)."""
    names = ("solve", "MIN_SINGLE_GRAM_PIVOT_RATIO")
    saved = {key: getattr(_solve, key) for key in names}
    if name == "qr":
        _solve.solve = _solve.solve_by_qr
    elif name == "gram":
        _solve.MIN_SINGLE_GRAM_PIVOT_RATIO = 0.0
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(_solve, key, value)


def _last_pivot_ratio():
    """Wrap ``_solve.unpack`` to remember the pivot ratio of the last program run."""
    seen = {}
    original = _solve.unpack

    def unpack(*args, **kwargs):
        out = original(*args, **kwargs)
        seen["ratio"] = out.pivot_ratio
        return out

    _solve.unpack = unpack
    return seen


def model_exp(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def _poly(degree: int):
    def poly(x, *c):
        return sum(c[k] * x**k for k in range(degree + 1))

    return poly


def threshold_cases():
    """(name, model, x, y, p0, options) of every fit the threshold table compares."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_nist import MODELS, NIST_DIR, parse_nist

    rng = np.random.default_rng(0)
    for name, model in MODELS.items():
        path = NIST_DIR / f"{name}.dat"
        if not path.is_file():
            continue
        s1, s2, _, x, y = parse_nist(path)
        if name == "Nelson":
            y = np.log(y)
        if len(s1) > nlsq._reduce.FUSED_MAX_N:
            continue
        for start, p0 in ((1, s1), (2, s2)):
            yield f"{name}-{start}", model, x, y, p0, {}
            tol = float(os.environ.get("PROBE_TIGHT", "1e-14"))
            tight = dict(ftol=tol, xtol=tol, gtol=tol, max_nfev=10_000)
            yield f"{name}-{start}-tight", model, x, y, p0, tight
    for n in (50, 1000, 30000):
        x = np.linspace(0, 4, n)
        y = 2.5 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.standard_normal(n)
        yield f"exp-{n}", model_exp, x, y, [1.0, 1.0, 0.0], {}
    for shift in (0.0, 3.0, 10.0, 30.0, 100.0):
        for degree in (2, 3, 4):
            x = np.linspace(shift, shift + 1, 200)
            y = np.cos(x - shift) + 0.01 * rng.standard_normal(x.size)
            yield f"poly{degree}-shift{shift:g}", _poly(degree), x, y, np.ones(degree + 1), {}


def run_threshold() -> None:
    seen = _last_pivot_ratio()
    print(f"{'case':26} {'pivot':>9} {'nfev':>9} {'status':>7} {'popt rel':>9} {'of max':>9}")
    only = os.environ.get("PROBE_ONLY", "")
    for name, model, x, y, p0, kw in threshold_cases():
        if not name.startswith(only):
            continue
        fits = {}
        for which in ("gram", "qr"):
            with route(which):
                try:
                    popt, _, info, _, ier = nlsq.curve_fit(
                        model, x, y, p0=p0, method="lm", full_output=True, **kw
                    )
                except RuntimeError:  # not converged: compare the counts and status only
                    popt, info, ier = np.full(len(p0), np.nan), {"nfev": -1}, 0
            fits[which] = (popt, info["nfev"], ier)
            if which == "gram":
                ratio = seen["ratio"]
        (pg, ng, sg), (pq, nq, sq) = fits["gram"], fits["qr"]
        rel = np.max(np.abs(pg - pq) / np.maximum(np.abs(pq), 1e-300))
        of_max = np.max(np.abs(pg - pq)) / np.max(np.abs(pq))  # against the largest parameter
        same = "same" if ng == nq else f"{ng}/{nq}"
        status = "same" if sg == sq else f"{sg}/{sq}"
        print(f"{name:26} {ratio:9.2e} {same:>9} {status:>7} {rel:9.1e} {of_max:9.1e}")


def run_compile(which: str) -> None:
    x = np.linspace(0, 4, 1000)
    y = 2.5 * np.exp(-1.3 * x) + 0.5
    with route(which):
        start = time.perf_counter()
        nlsq.curve_fit(model_exp, x, y, p0=[1.0, 1.0, 0.0], method="lm")
        print(f"first fit {which}: {time.perf_counter() - start:.3f} s")


def _fits(n: int, rng):
    """``{variant: (route, call)}`` for the exponential model at ``n`` points."""
    import scipy.optimize as so

    def model_np(x, a, b, c):
        return a * np.exp(-b * x) + c

    x = np.linspace(0, 4, n)
    y = 2.5 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.standard_normal(n)
    p0 = [1.0, 1.0, 0.0]

    def nlsq_fit():
        return nlsq.curve_fit(model_exp, x, y, p0=p0, method="lm")

    def scipy_fit():
        return so.curve_fit(model_np, x, y, p0=p0, method="lm")

    return {"qr": ("qr", nlsq_fit), "gram": ("auto", nlsq_fit), "scipy": ("auto", scipy_fit)}


def run_timing(rounds: int) -> None:
    rng = np.random.default_rng(1)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    print(f"{'n':>7} {'qr us':>9} {'gram us':>9} {'scipy us':>9} {'qr/gram':>8} {'scipy/gram':>10}")
    for n in (1_000, 10_000, 100_000):
        fits = _fits(n, rng)
        popts = {}
        for key, (which, call) in fits.items():  # compile, and check the routes agree
            with route(which):
                popts[key] = call()[0]
        assert np.allclose(popts["qr"], popts["gram"], rtol=1e-10, atol=0)
        block = max(3, int(2e5 / n))
        times = {key: [] for key in fits}
        keys = list(fits)
        for r in range(rounds + 1):  # round 0 warms up, not counted
            for key in keys[r % 3 :] + keys[: r % 3]:  # the order rotated every round
                which, call = fits[key]
                with route(which):
                    start = time.perf_counter()
                    for _ in range(block):
                        call()
                    if r:
                        times[key].append((time.perf_counter() - start) / block * 1e6)
        med = {key: statistics.median(v) for key, v in times.items()}
        print(
            f"{n:7d} {med['qr']:9.0f} {med['gram']:9.0f} {med['scipy']:9.0f} "
            f"{med['qr'] / med['gram']:8.2f} {med['scipy'] / med['gram']:10.2f}"
        )
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", action="store_true")
    parser.add_argument("--compile", choices=("qr", "gram"))
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if args.threshold:
        run_threshold()
    elif args.compile:
        run_compile(args.compile)
    else:
        run_timing(args.rounds)


if __name__ == "__main__":
    main()
