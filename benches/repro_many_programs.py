"""Compile many distinct programs in one process and watch its memory mappings.

Not a test and not a benchmark: a reproducer for the XLA:CPU crash seen when
hundreds of tests run in one pytest process (README, "Known limits").  XLA:CPU
(jaxlib 0.10 and 0.11 at least) gives every compiled kernel its own memory
mappings (code, read-only data, data: about three per kernel) and keeps them as
long as the executable lives; a jitted function's cache keeps its executables.
Linux caps the mappings of one process at ``vm.max_map_count`` (65530 by
default).  When a compilation or a load from the persistent cache needs a
mapping past the cap, LLVM fails ("LLVM compilation error: Cannot allocate
memory"), and the C++ exception that should carry the error to Python crashes
the process in the unwinder (SIGSEGV in ``_Unwind_Find_FDE``) instead.

Each step compiles one new program and prints the process's mapping count:

    python benches/repro_many_programs.py --what fit --verbose 2     # nlsq curve_fit
    python benches/repro_many_programs.py --what jax                 # no nlsq at all
    python benches/repro_many_programs.py --what jax --clear-every 50

``--what fit`` fits a new model each step (buckets off, persistent cache at a
temporary directory unless ``--no-cache``); ``--what jax`` jits a new pure-jax
program of a few unfused kernels, keeps the jitted function alive (as a
module-level jitted solver keeps its programs) and never imports nlsq.
``--clear-every N`` calls ``jax.clear_caches()`` every N steps, which drops the
executables and so their mappings.  ``--headroom N`` first takes one-page
anonymous mappings until only N are left below the limit (as if the process had
already compiled a few hundred programs), so that the limit is reached in
minutes rather than after a quarter of an hour.  It stops after ``--steps``
programs, or crashes.  Seen here (vm.max_map_count 65530), every run died
with SIGSEGV within ~500 mappings of the limit: ``--what fit`` at verbose 0
(cache on) and verbose 2 (cache off) with jax 0.11.2; ``--what jax`` with the
cache on and off with jax 0.11.2, and off with jax 0.10.2.
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import tempfile
import time


def mapping_count() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def map_limit() -> int | None:
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read())
    except OSError:
        return None


def use_up_mappings(headroom: int) -> list[mmap.mmap]:
    """Anonymous one-page mappings until ``headroom`` are left below the limit.

    Each shared anonymous mapping is its own mapping (the kernel does not merge
    them), so this stands for the mappings of programs compiled earlier.
    """
    limit = map_limit()
    if limit is None:
        return []
    return [mmap.mmap(-1, mmap.PAGESIZE) for _ in range(limit - headroom - mapping_count())]


def fit_step(step: int, verbose: int) -> None:
    import jax.numpy as jnp
    import numpy as np
    from nlsq import curve_fit

    # A new model and a new data length each step: a new program to compile.
    size = 20 + step
    x = np.linspace(0.0, 4.0, size)
    y = 2.5 * np.exp(-1.3 * x) + 0.5 + 0.01 * np.sin(7.0 * x)
    token = object()

    def model(x, a, b, c):
        assert token is not None  # captured: every step's model is distinct
        return a * jnp.exp(-b * x) + c

    curve_fit(model, x, y, p0=[1.0, 1.0, 0.0], verbose=verbose)


#: The jitted functions of --what jax, kept alive as a module-level jitted solver
#: keeps its compiled programs (a dropped function's executables are freed).
_KEEP: list = []


def jax_step(step: int) -> None:
    import jax
    import jax.numpy as jnp

    def program(x):
        # Stages XLA:CPU does not fuse into one kernel (a cumulative sum between
        # elementwise maps): several kernels, so several mappings, per program.
        for stage in range(4):
            x = jnp.cumsum(jnp.sin(x) * (stage + 1) + step)
        return x

    jitted = jax.jit(program)
    jitted(jnp.ones(8 + step)).block_until_ready()
    _KEEP.append(jitted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=("fit", "jax"), default="fit")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--verbose", type=int, default=0, help="curve_fit verbose (--what fit)")
    parser.add_argument("--no-cache", action="store_true", help="persistent cache off")
    parser.add_argument("--clear-every", type=int, default=0, help="jax.clear_caches() period")
    parser.add_argument("--print-every", type=int, default=10)
    parser.add_argument("--headroom", type=int, default=0, help="use up all but N mappings first")
    args = parser.parse_args()

    if args.what == "fit":
        os.environ["NLSQ_BUCKETS"] = "off"
        cache = "off" if args.no_cache else tempfile.mkdtemp(prefix="nlsq-repro-cache-")
        os.environ["NLSQ_CACHE_DIR"] = cache
    elif not args.no_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jax-repro-"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import jax
    import jaxlib

    print(
        f"python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
        f"vm.max_map_count {map_limit()}, what={args.what}, verbose={args.verbose}, "
        f"cache={'off' if args.no_cache else 'on'}, clear_every={args.clear_every}",
        flush=True,
    )
    if args.what == "fit":
        import nlsq

        print(f"nlsq from {nlsq.__file__}", flush=True)
    held = use_up_mappings(args.headroom) if args.headroom else []
    print(f"{len(held)} mappings taken beforehand, {mapping_count()} in all", flush=True)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        if args.what == "fit":
            fit_step(step, args.verbose)
        else:
            jax_step(step)
        if args.clear_every and step % args.clear_every == 0:
            jax.clear_caches()
        if step % args.print_every == 0:
            # stderr, unbuffered: the last line before a crash is the count then.
            print(
                f"step {step}: {mapping_count()} mappings, {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    print(f"done: {args.steps} programs, {mapping_count()} mappings", flush=True)


if __name__ == "__main__":
    main()
