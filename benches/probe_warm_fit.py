"""Probe: where a warm small ``curve_fit`` spends its time (exp model, n = 1e3, CPU).

Interleaved in one process, medians of single calls (µs):

* ``curve_fit`` against ``scipy.optimize.curve_fit`` (MINPACK), the figure of
  issue 13's target;
* the solver's compiled program alone (its arguments made, results waited for);
* the same program with ``max_nfev = 1`` (its start and finish: the part of its time
  that is not iterations);
* a trivial program with the solver's interface (same ``Problem`` leaves in, three
  outputs of the same shapes): what running *any* program with that interface costs.

``--sync`` runs it all with ``jax_cpu_enable_async_dispatch=False`` (set before JAX's
CPU client starts, so in a process of its own): programs then run on the calling
thread instead of XLA:CPU's thread pool.  Not part of ``run.py``.

    PYTHONPATH=python python benches/probe_warm_fit.py [--sync] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform

os.environ.setdefault("NLSQ_CACHE_DIR", "off")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import nlsq  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from nlsq import _solve  # noqa: E402
from nlsq._jax_compat import enable_x64  # noqa: E402
from probe_single_kernel import _interleaved, _problem_args, model, model_np  # noqa: E402

N = 1000
P0 = [1.0, 1.0, 1.0]


def _problem(x, y):
    """The ``Problem`` ``curve_fit`` hands the solver for this data."""
    return _problem_args(x, y)[0]


def _same_interface(problem):
    """A program taking ``problem``'s leaves and returning ``_solve``'s output shapes."""

    def trivial(p):
        small = jnp.zeros(3 * p.n + 7 + p.n * p.n).at[: p.n].set(p.x0)
        fun = p.data[0] * p.data[2] + p.data[1]
        return small, fun, jnp.outer(p.x0, p.x0)

    return jax.jit(trivial).lower(problem).compile()


def _median_us(cases: dict, rounds: int) -> dict:
    """``probe_single_kernel``'s interleaved medians, after 50 warm-up calls of each case
    (the first calls fill the program store and the caches)."""
    for run in cases.values():
        for _ in range(50):
            run()
    return _interleaved(cases, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sync", action="store_true", help="programs on the calling thread")
    parser.add_argument("--rounds", type=int, default=2000)
    opts = parser.parse_args()
    if opts.sync:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    rng = np.random.default_rng(0)
    x = np.linspace(0, 4, N)
    y = model_np(x, 2.5, 1.3, 0.5) + 0.01 * rng.standard_normal(N)
    problem = _problem(x, y)
    start_only = dataclasses.replace(problem, max_nfev=np.int64(1))
    trivial = _same_interface(problem)

    def program(p):
        with enable_x64(True):
            return jax.block_until_ready(_solve.solve(p))

    times = _median_us(
        {
            "curve_fit": lambda: nlsq.curve_fit(model, x, y, p0=P0),
            "scipy curve_fit": lambda: scipy.optimize.curve_fit(model_np, x, y, p0=P0),
            "program": lambda: program(problem),
            "program, max_nfev=1": lambda: program(start_only),
            "trivial program, same interface": lambda: jax.block_until_ready(trivial(problem)),
        },
        opts.rounds,
    )
    mode = "sync (jax_cpu_enable_async_dispatch=False)" if opts.sync else "async (JAX's default)"
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__}, dispatch {mode}, n = {N}")  # fmt: skip
    print("| call | µs (median) |")
    print("|---|---:|")
    for name, us in times.items():
        print(f"| {name} | {us:.0f} |")
    print(f"| curve_fit ÷ scipy | {times['curve_fit'] / times['scipy curve_fit']:.2f} |")


if __name__ == "__main__":
    main()
