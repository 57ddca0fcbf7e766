"""Run every benchmark, print markdown tables, write JSON, PNG plots and a summary.

    python benches/run.py [--quick] [--out DIR] [--only NAME ...]

The only entry point: ``--only NAME`` runs one bench. What a bench module provides
is the contract at the top of ``_harness.py``.

Each bench runs in a fresh interpreter (so one bench's logger configuration or JIT cache
cannot colour another's), writes ``<platform>-<name>.json`` (with machine information) and,
when it knows how, ``<platform>-<name>.png`` into DIR. ``<platform>-summary.md`` collects the
tables; the README quotes it. ``--quick`` is a smoke run (small sizes, few repeats) that a
test executes so the harness cannot rot; its figures are not for quoting.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import check_result, machine_info, platform_tag, save_plot, write_json  # noqa: E402

# In the order the README presents them.
BENCHES = (
    "bench_callback",  # 1: cost per logged iteration inside a jitted while_loop (FFI row too)
    "bench_ffi",  # 1: the FFI route against the callback floor, and its direct form
    "bench_fit_overhead",  # 2: curve_fit at verbose 0/1/2: ring vs blocking print, and scipy
    "bench_fit_vs_scipy",  # 2: time per fit after compilation against scipy
    "ring_micro",  # 3: push latency and drain throughput
    "bench_slow_sink",  # 4: a sink that sleeps per line
    "bench_many_fits",  # 5: buckets, persistent cache and curve_fit_many (issue 13)
    "bench_vs_optimistix",  # 5: against optimistix: one fit, a batch, the first fit
    "bench_scale",  # 6: time and peak memory against n (chunked), forced-device scaling
    "bench_large_p",  # 7: exact vs 'lsmr' (+ jac_sparsity) against p, and scipy (issue 11)
)


def run_one(name: str, quick: bool, out: Path) -> dict:
    """Import ``name`` and run it in this process; write its JSON and plot.

    Raises ``SystemExit`` naming the failed checks (after writing the JSON).
    """
    module = importlib.import_module(name)
    t0 = time.perf_counter()
    # The bench's scratch folder: the harness alone writes into ``out``.
    with tempfile.TemporaryDirectory(prefix=f"{name}_") as scratch:
        result = module.main(quick=quick, out=Path(scratch))
    check_result(result, name)
    result["quick"] = quick
    result["wall_s"] = time.perf_counter() - t0
    result["machine"] = machine_info()
    stem = f"{platform_tag()}-{name}"
    write_json(result, out / f"{stem}.json")
    save_plot(result, out / f"{stem}.png")
    failed = [k for k, ok in result["checks"].items() if not ok]
    if failed:
        raise SystemExit(f"{name}: checks failed: {failed}")
    return result


def write_summary(out: Path, quick: bool) -> Path:
    """``<platform>-summary.md``: every bench's table found in ``out``, in BENCHES order.

    Built from the JSON files, so re-running one bench (``--only``) keeps the others.
    """
    tag = platform_tag()
    tables = []
    machines = {}
    for name in BENCHES:
        path = out / f"{tag}-{name}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        info = result["machine"]
        machines[name] = info
        png = f"{tag}-{name}.png"
        plot = f"\n![{name}]({png})\n" if (out / png).is_file() else ""
        quick_note = " *(quick run)*" if result.get("quick") else ""
        tables.append(
            f"### {result.get('title', name)}{quick_note}\n\n`{name}` · commit "
            f"{info['commit']} · {info['date']} · {result.get('wall_s', 0):.0f} s\n\n"
            f"{result['table']}\n{plot}"
        )
    info = machine_info()
    header = (
        f"Measured on {info['cpu']} ({info['cores']} cores), backend {info['backend']} "
        f"({info['device']}), Python {info['python']}, JAX {info['jax']} (jaxlib "
        f"{info['jaxlib']}), NumPy {info['numpy']}, SciPy {info['scipy']}. "
        "Reproduce: `JAX_PLATFORMS=cpu .venv/bin/python benches/run.py` (or `make bench`)."
        + (" Quick run: smoke test only, not for quoting." if quick else "")
    )
    path = out / f"{tag}-summary.md"
    path.write_text(f"# Benchmark summary ({tag})\n\n{header}\n\n" + "\n".join(tables))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--only", nargs="*", choices=BENCHES, help="run only these benches")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(BENCHES)

    if args.in_process:
        for name in names:
            run_one(name, args.quick, out)
        return 0

    failed = []
    for name in names:
        print(f"\n## {name}\n", flush=True)
        for stale in (out / f"{platform_tag()}-{name}.json", out / f"{platform_tag()}-{name}.png"):
            stale.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--in-process", "--out", str(out), "--only", name]
        if args.quick:
            cmd.append("--quick")
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
            continue
        result = json.loads((out / f"{platform_tag()}-{name}.json").read_text())
        print(result["table"], flush=True)

    write_summary(out, args.quick)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
