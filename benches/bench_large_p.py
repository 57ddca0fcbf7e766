"""Many parameters: nlsq's exact trust-region solver against 'lsmr', and scipy's 'lsmr'.

The sparse Broyden tridiagonal system (scipy's own ``jac_sparsity`` example):
``f_i = (3 - x_i) x_i + 1 - x_{i-1} - 2 x_{i+1}``, p = 10 ... 5000 parameters and as
many residuals, from ``x0 = -1``.  Variants, side by side in one process:

* ``nlsq exact``: the default solver -- the dense ``p x p`` Jacobian by autodiff and
  an SVD per iteration, O(p^3);
* ``nlsq lsmr + sparsity``: ``jac_sparsity`` (3 column groups, one ``jvp`` each),
  the Jacobian kept as its 3p - 2 nonzeros, LSMR for the trust-region step;
* ``nlsq lsmr matrix-free``: ``tr_solver='lsmr'`` alone: ``J v`` / ``J^T u`` by
  ``jvp`` / ``vjp``, no Jacobian at all;
* ``scipy lsmr + sparsity``: ``scipy.optimize.least_squares(jac_sparsity=...)``
  (grouped '2-point' differences, ``scipy.sparse`` products, its LSMR).

nlsq is timed after compilation (the warm-up round compiles each shape).  The
exact solver is skipped above ``EXACT_MAX_P`` (an SVD of a 5000 x 5000 matrix per
iteration takes minutes on the 2 shared cores this runs on; the trend is clear
before).  Checked: every variant solves the system (status > 0) and finds scipy's
root (``X_ATOL``).  The crossover is the smallest p from which 'lsmr' with the
pattern beats the exact solver.

Run: ``python benches/run.py --only bench_large_p [--quick]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nlsq
import numpy as np
import scipy.optimize as so
from _broyden import broyden, broyden_np, broyden_sparsity
from _harness import bench_result, interleaved_medians, lines, markdown_table

SIZES = (10, 100, 500, 1000, 2000, 5000)
QUICK_SIZES = (10, 100)
EXACT_MAX_P = 1000
X_ATOL = 1e-6


def _repeats(p: int, quick: bool) -> int:
    if quick:
        return 3
    return 7 if p <= 100 else 5


def bench_size(p: int, quick: bool) -> dict[str, Any]:
    x0 = -np.ones(p)
    pattern = broyden_sparsity(p)
    fits = {
        "nlsq_lsmr_sparse": lambda: nlsq.least_squares(broyden, x0, jac_sparsity=pattern),
        "nlsq_lsmr_free": lambda: nlsq.least_squares(broyden, x0, tr_solver="lsmr"),
        "scipy_lsmr_sparse": lambda: so.least_squares(broyden_np, x0, jac_sparsity=pattern),
    }
    if p <= EXACT_MAX_P:
        fits["nlsq_exact"] = lambda: nlsq.least_squares(broyden, x0)
    timing = interleaved_medians(fits, _repeats(p, quick), warmup=1, rotate=True)
    results = {name: fit() for name, fit in fits.items()}
    ref = results["scipy_lsmr_sparse"]
    row: dict[str, Any] = {"p": p, "repeats": timing["scipy_lsmr_sparse"]["repeats"]}
    for name in ("nlsq_exact", "nlsq_lsmr_sparse", "nlsq_lsmr_free", "scipy_lsmr_sparse"):
        res = results.get(name)
        row[f"{name}_s"] = timing[name]["median_s"] if res is not None else None
        row[f"{name}_status"] = None if res is None else int(res.status)
        row[f"{name}_nfev"] = None if res is None else int(res.nfev)
        row[f"{name}_max_abs_diff_x"] = (
            None if res is None else float(np.max(np.abs(np.asarray(res.x) - ref.x)))
        )
    row["timing"] = timing
    return row


def _ms(value) -> str:
    return "skipped" if value is None else f"{1e3 * value:.1f}"


def main(quick: bool, out: Path) -> dict[str, Any]:
    """Run the comparison (``out`` unused)."""
    sizes = QUICK_SIZES if quick else SIZES
    return summarise_rows([bench_size(p, quick) for p in sizes])


#: 'lsmr' must beat the exact solver by this factor to count (a tie is timing noise).
CROSSOVER_MARGIN = 1.1


def summarise_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The result (table, checks, plot) from the measured rows."""
    crossover = None
    for r in rows:
        exact, lsmr = r["nlsq_exact_s"], r["nlsq_lsmr_sparse_s"]
        if exact is None or lsmr * CROSSOVER_MARGIN < exact:
            crossover = crossover or r["p"]
        else:
            crossover = None  # must hold from here on
    names = ("nlsq_exact", "nlsq_lsmr_sparse", "nlsq_lsmr_free", "scipy_lsmr_sparse")
    table = markdown_table(
        [
            "p",
            "nlsq exact (ms)",
            "nlsq lsmr + sparsity",
            "nlsq lsmr matrix-free",
            "scipy lsmr + sparsity",
            "exact / lsmr+sparsity",
            "scipy / nlsq lsmr+sparsity",
            "nfev (exact, sparse, free, scipy)",
        ],
        [
            [str(r["p"])]
            + [_ms(r[f"{name}_s"]) for name in names]
            + [
                "-"
                if r["nlsq_exact_s"] is None
                else f"{r['nlsq_exact_s'] / r['nlsq_lsmr_sparse_s']:.2f}x",
                f"{r['scipy_lsmr_sparse_s'] / r['nlsq_lsmr_sparse_s']:.2f}x",
                ", ".join("-" if r[f"{n}_nfev"] is None else str(r[f"{n}_nfev"]) for n in names),
            ]
            for r in rows
        ],
    )
    table += (
        f"\n\nCrossover: 'lsmr' + jac_sparsity is faster than the exact solver (by more "
        f"than {CROSSOVER_MARGIN}x) from p = {crossover} on (exact skipped above "
        f"p = {EXACT_MAX_P})."
        if crossover is not None
        else "\n\nNo crossover in the measured range."
    )
    checks = {}
    for r in rows:
        for name in names:
            if r[f"{name}_status"] is None:
                continue
            checks[f"p={r['p']}: {name} converges (status > 0)"] = r[f"{name}_status"] > 0
            checks[f"p={r['p']}: {name} finds scipy's root (atol {X_ATOL:g})"] = (
                r[f"{name}_max_abs_diff_x"] < X_ATOL
            )
    ps = [r["p"] for r in rows]
    series = {
        "nlsq exact (dense SVD)": [r["nlsq_exact_s"] for r in rows],
        "nlsq lsmr + jac_sparsity": [r["nlsq_lsmr_sparse_s"] for r in rows],
        "nlsq lsmr matrix-free": [r["nlsq_lsmr_free_s"] for r in rows],
        "scipy lsmr + jac_sparsity": [r["scipy_lsmr_sparse_s"] for r in rows],
    }
    exact_ps = [r["p"] for r in rows if r["nlsq_exact_s"] is not None]
    return bench_result(
        "bench_large_p",
        title="Many parameters: sparse Broyden tridiagonal, time per least_squares fit "
        "(median of interleaved repeats, nlsq after compilation)",
        table=table,
        checks=checks,
        plot=[
            lines(
                f"Time per fit (exact solver up to p = {max(exact_ps)})",
                "p (parameters = residuals)",
                "ms per fit (median)",
                ps,
                {
                    # NaN where a variant was skipped: its line stops there.
                    name: [1e3 * v if v is not None else float("nan") for v in vs]
                    for name, vs in series.items()
                },
            )
        ],
        crossover_p=crossover,
        exact_max_p=EXACT_MAX_P,
        rows=rows,
    )
