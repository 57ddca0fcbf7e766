"""Probe: a small fit's compiled program as one kernel (``nlsq._kernel``) or as XLA's thunks.

For the exp model at several n, compiles the solver's program both ways in one
process and times them interleaved (the program alone: arguments already made,
results waited for), then whole ``curve_fit`` calls against scipy's.  Used to
choose ``nlsq._kernel.MAX_ROWS``; not part of ``run.py``.

    PYTHONPATH=python python benches/probe_single_kernel.py [--n 100 1000 2048] [--rounds 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("NLSQ_CACHE_DIR", "off")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import nlsq  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from nlsq import _kernel, _solve  # noqa: E402


def model(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def model_np(x, a, b, c):
    return a * np.exp(-b * x) + c


def _problem_args(x, y):
    """The arguments ``curve_fit`` passes to the solver's program."""
    seen = []
    original = _solve.solve
    _solve.solve = lambda *args: seen.append(args) or original(*args)
    try:
        nlsq.curve_fit(model, x, y, p0=[1.0, 1.0, 1.0])
    finally:
        _solve.solve = original
    return seen[0]


def _compiled(args, kernel: bool):
    def program(*a):  # a distinct function per variant: jit traces each anew
        if kernel:
            return _solve._solve(*a)
        with _kernel.kernels_off():
            return _solve._solve(*a)

    before = _kernel.traced_kernels()
    compiled = jax.jit(program).lower(*args).compile()
    used = _kernel.traced_kernels() > before
    return compiled, used


def _interleaved(cases: dict, rounds: int) -> dict:
    for run in cases.values():
        run()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) * 1e6 for name, t in times.items()}


def _row(n: int, rounds: int) -> str:
    rng = np.random.default_rng(0)
    x = np.linspace(0, 4, n)
    y = model_np(x, 2.5, 1.3, 0.5) + 0.05 * rng.standard_normal(n)
    args = _problem_args(x, y)
    thunks, _ = _compiled(args, kernel=False)
    kernel, used = _compiled(args, kernel=True)
    if not used:
        return f"| {n} | — | not a kernel here | | | |"
    got = np.asarray(kernel(*args)[0])
    want = np.asarray(thunks(*args)[0])
    assert np.allclose(got[:3], want[:3], rtol=1e-9), (got[:3], want[:3])
    programs = _interleaved(
        {
            "thunks": lambda: jax.block_until_ready(thunks(*args)),
            "kernel": lambda: jax.block_until_ready(kernel(*args)),
        },
        rounds,
    )
    fits = _interleaved(
        {
            "nlsq": lambda: nlsq.curve_fit(model, x, y, p0=[1.0, 1.0, 1.0]),
            "scipy": lambda: scipy.optimize.curve_fit(model_np, x, y, p0=[1.0, 1.0, 1.0]),
        },
        rounds // 2,
    )
    return (
        f"| {n} | {programs['thunks']:.0f} | {programs['kernel']:.0f} | "
        f"{programs['kernel'] / programs['thunks']:.2f} | {fits['nlsq']:.0f} | "
        f"{fits['scipy']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000, 2048])
    parser.add_argument("--rounds", type=int, default=1000)
    opts = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}")
    print("| n | program: thunks µs | one kernel µs | ratio | curve_fit µs | scipy µs |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in opts.n:
        print(_row(n, opts.rounds))


if __name__ == "__main__":
    main()
