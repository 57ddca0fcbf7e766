"""Where a fresh process's time goes: 20 varying-size fits, cold then warm cache (a probe).

    PYTHONPATH=python python benches/probe_compile_time.py [--reps 5] [--count 20]
        [--other PATH/TO/ANOTHER/python]  # e.g. an unpacked `git archive main python`

Each repeat runs, for each tree (this one, and ``--other`` when given, interleaved),
two fresh processes on one new cache directory: the first compiles (cold), the second
loads from the persistent cache (warm).  Each process fits the exp model to ``count``
datasets with n drawn from [200, 2000) (``bench_many_fits`` part (i)) and reports:

* ``fits_s`` / ``first_s``: wall time of all fits / of the first fit (import excluded);
* ``cpu_s`` / ``first_cpu``: the same in process CPU time (all threads): on a loaded
  machine this moves far less than the wall time, so compare trees with it;
* ``trace``, ``lower``, ``xla``, ``load``: totals of JAX's own compile-stage durations
  (``jax.monitoring``): tracing to a jaxpr, lowering to StableHLO, XLA (compile, or the
  cache lookup and load on a hit), and the persistent-cache load alone;
* ``programs``: how many XLA programs were compiled or loaded (one per bucket: 4 here);
  ``store_loads``: how many of them came from nlsq's program store (``nlsq._programs``:
  loaded without tracing or lowering, so they add nothing to ``trace``/``lower``/``load``).

Medians over the repeats are printed, with the machine's load average.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = textwrap.dedent(
    """
    import collections, json, sys, time
    import numpy as np
    import jax
    durations = collections.defaultdict(float)
    counts = collections.Counter()
    def on_duration(name, secs, **kwargs):
        durations[name] += secs
        counts[name] += 1
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    rng = np.random.default_rng(0)
    data = []
    for n in rng.integers(200, 2000, size=int(sys.argv[1])):
        x = np.linspace(0, 5, n)
        data.append((x, 2.5 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.standard_normal(n)))
    import jax.numpy as jnp, nlsq
    f = lambda x, a, b, c: a * jnp.exp(-b * x) + c
    wall, cpu = time.perf_counter(), time.process_time()
    first = None
    for x, y in data:
        nlsq.curve_fit(f, x, y, p0=[1, 1, 1])
        if first is None:
            first = (time.perf_counter() - wall, time.process_time() - cpu)
    stage = {
        "trace": "/jax/core/compile/jaxpr_trace_duration",
        "lower": "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "xla": "/jax/core/compile/backend_compile_duration",
        "load": "/jax/compilation_cache/cache_retrieval_time_sec",
    }
    try:  # trees with nlsq's program store (nlsq._programs) load without JAX events
        from nlsq._programs import counts as store
    except ImportError:
        store = {}
    print(json.dumps({
        "fits_s": time.perf_counter() - wall, "first_s": first[0],
        "cpu_s": time.process_time() - cpu, "first_cpu": first[1],
        **{k: durations[v] for k, v in stage.items()},
        "programs": counts[stage["xla"]] + store.get("loaded", 0),
        "store_loads": store.get("loaded", 0),
    }))
    """
)


def _run(python_dir: str, cache: str, count: int) -> dict:
    env = dict(os.environ, PYTHONPATH=python_dir, NLSQ_CACHE_DIR=cache)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(count)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--other", help="another tree's python/ directory to compare with")
    args = parser.parse_args()
    trees = {"this": str(ROOT / "python")}
    if args.other:
        trees["other"] = args.other
    runs: dict[str, dict[str, list[dict]]] = {t: {"cold": [], "warm": []} for t in trees}
    for _ in range(args.reps):
        for tree, path in trees.items():
            with tempfile.TemporaryDirectory(prefix="nlsq-probe-cache-") as cache:
                for kind in ("cold", "warm"):
                    runs[tree][kind].append(_run(path, cache, args.count))
    for kind in ("cold", "warm"):
        for tree, by_kind in runs.items():
            rows = by_kind[kind]
            medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            text = " ".join(f"{k} {v:.3f}" for k, v in medians.items())
            print(f"{tree:5s} {kind}: {text}")
    print("load average:", os.getloadavg())


if __name__ == "__main__":
    main()
