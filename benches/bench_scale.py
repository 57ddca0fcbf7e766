"""Fits that outgrow one device: time and peak memory against n, and forced-device scaling.

    python benches/bench_scale.py [--quick] [--max-n 1e8]

``curve_fit`` of ``a exp(-b x) + c`` (3 parameters) on n noisy points, data
created on the device as float64 ``jax.Array``s (16 n bytes: x and y).

1. **Memory against n** -- every point runs in a fresh interpreter, which reports
   its peak resident set size (``resource.getrusage``) and the time of a second
   fit (the first compiles).  Variants: ``chunked`` (the default: the reduced
   problem is accumulated chunk by chunk, ``chunk_size=None``) and ``one-shot``
   (``chunk_size=0``: the m x 3 Jacobian and the QR of ``[J | f]`` in memory, the
   behaviour before chunking; skipped above 2e7 points, where it would need
   more than this machine's memory).  The target bound is peak RSS <= 2 x data +
   1.5 GB.
2. **Strong scaling over forced CPU devices** -- the same fit with the data
   sharded over 1, 2 and 4 devices (``XLA_FLAGS=--xla_force_host_platform_device_count``).
   Forced devices are threads of one process sharing this machine's cores, so the
   figure shows the overhead of the sharded program (collectives, per-shard
   work), not a speed-up.
3. **GPU** -- filled when the bench runs where JAX sees a GPU: the memory
   section on the GPU with the device's peak bytes in use.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import markdown_table, write_json  # noqa: E402

REPO = HERE.parent
GB = 1e9

CHILD = r"""
import json, os, resource, sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from nlsq import curve_fit

n, chunk, devices, repeats = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
chunk = None if chunk == "auto" else int(chunk)

def model(x, a, b, c):
    return a * jnp.exp(-b * x) + c

with jax.enable_x64(True):
    key = jax.random.PRNGKey(0)
    if devices > 1:
        mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
        rows = NamedSharding(mesh, P("data"))
        make = jax.jit(lambda: jnp.linspace(0.0, 5.0, n), out_shardings=rows)
        x = make()
        y = jax.jit(lambda x: model(x, 2.5, 1.3, 0.5)
                    + 0.05 * jax.random.normal(key, x.shape), out_shardings=rows)(x)
    else:
        x = jnp.linspace(0.0, 5.0, n)
        y = model(x, 2.5, 1.3, 0.5) + 0.05 * jax.random.normal(key, (n,))
    y.block_until_ready()

kw = {} if chunk is None else {"chunk_size": chunk}
t0 = time.perf_counter()
popt, _ = curve_fit(model, x, y, p0=[1.0, 1.0, 1.0], **kw)
first = time.perf_counter() - t0
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    popt, _ = curve_fit(model, x, y, p0=[1.0, 1.0, 1.0], **kw)
    times.append(time.perf_counter() - t0)
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
stats = jax.devices()[0].memory_stats() or {}
print("RESULT " + json.dumps(dict(
    n=n, first_s=first, times_s=times, peak_rss=peak_rss, popt=list(map(float, popt)),
    device_peak=stats.get("peak_bytes_in_use"), backend=jax.default_backend(),
)))
"""


def run_child(
    n: int, chunk: str, devices: int, repeats: int, timeout: float = 1800
) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "python") + os.pathsep + env.get("PYTHONPATH", "")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), chunk, str(devices), str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"n": n, "error": (proc.stderr or proc.stdout)[-2000:], "rc": proc.returncode}


def _fmt_gb(b: float | None) -> str:
    return "—" if b is None else f"{b / GB:.2f}"


def memory_section(sizes: list[int], one_shot_max: int, repeats: int) -> dict[str, Any]:
    points = []
    for n in sizes:
        for variant, chunk in (("chunked", "auto"), ("one-shot", "0")):
            if variant == "one-shot" and n > one_shot_max:
                continue
            r = run_child(n, chunk, 1, repeats)
            r["variant"] = variant
            r["data_bytes"] = 16 * n
            r["bound_bytes"] = 2 * 16 * n + 1.5 * GB
            points.append(r)
            print(f"  n={n:.0e} {variant}: {r.get('peak_rss', 0) / GB:.2f} GB", file=sys.stderr)
    rows = []
    for r in points:
        if "error" in r:
            rows.append([f"{r['n']:.0e}", r["variant"], "failed", "", "", "", ""])
            continue
        med = statistics.median(r["times_s"]) if r["times_s"] else r["first_s"]
        rows.append(
            [
                f"{r['n']:.0e}",
                r["variant"],
                f"{med:.2f}",
                _fmt_gb(r["data_bytes"]),
                _fmt_gb(r["peak_rss"]),
                _fmt_gb(r["bound_bytes"]),
                "yes" if r["peak_rss"] <= r["bound_bytes"] else "no",
            ]
        )
    table = markdown_table(
        [
            "n",
            "variant",
            "time per fit (s, median)",
            "data (GB)",
            "peak RSS (GB)",
            "bound 2 x data + 1.5 GB",
            "within",
        ],
        rows,
    )
    return {"points": points, "table": table}


def scaling_section(n: int, repeats: int) -> dict[str, Any]:
    points = []
    for devices in (1, 2, 4):
        r = run_child(n, "auto", devices, repeats)
        r["devices"] = devices
        points.append(r)
    base = None
    rows = []
    for r in points:
        if "error" in r:
            rows.append([r["devices"], "failed", ""])
            continue
        med = statistics.median(r["times_s"])
        base = base or med
        rows.append([r["devices"], f"{med:.3f}", f"{med / base:.2f}"])
    table = markdown_table(["forced CPU devices", "time per fit (s, median)", "vs 1 device"], rows)
    return {"n": n, "points": points, "table": table}


def main(quick: bool = False, out: Path | None = None, max_n: float = 1e8) -> dict[str, Any]:
    import jax

    on_gpu = jax.default_backend() == "gpu"
    if quick:
        sizes, one_shot_max, repeats, scale_n = [10**5], 10**5, 1, 10**5
    else:
        sizes = [n for n in (10**6, 10**7, 3 * 10**7, 10**8) if n <= max_n]
        one_shot_max, repeats, scale_n = 2 * 10**7, 3, 10**6
    memory = memory_section(sizes, one_shot_max, repeats)
    scaling = scaling_section(scale_n, repeats) if not on_gpu else None
    gpu_note = (
        "Measured on the GPU above (device peak bytes in the JSON)."
        if on_gpu
        else "Not run here: no GPU on this machine. Run `python benches/bench_scale.py` where "
        "JAX sees a GPU to fill this section (device peak bytes are recorded per point)."
    )
    table = memory["table"]
    if scaling is not None:
        table += (
            f"\n\n**Strong scaling over forced CPU devices** (n = {scale_n:.0e})\n\n"
            + scaling["table"]
            + "\n\nForced devices share this machine's cores: the ratio is the sharded "
            "program's overhead, not a speed-up."
        )
    table += "\n\n**GPU**: " + gpu_note
    return {
        "name": "bench_scale",
        "title": "Fits that outgrow one device: time and peak memory against n",
        "table": table,
        "memory": memory,
        "scaling": scaling,
        "gpu": {"run": on_gpu, "note": gpu_note},
    }


def plot(result: dict[str, Any], png: Path) -> None:
    """Peak RSS and time per fit against n, one line per variant, with the bound."""
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(10, 4))
    points = [p for p in result["memory"]["points"] if "error" not in p]
    for variant in ("chunked", "one-shot"):
        pts = sorted((p for p in points if p["variant"] == variant), key=lambda p: p["n"])
        if not pts:
            continue
        ns = [p["n"] for p in pts]
        ax_mem.plot(ns, [p["peak_rss"] / GB for p in pts], "o-", label=variant)
        times = [statistics.median(p["times_s"]) if p["times_s"] else p["first_s"] for p in pts]
        ax_time.plot(ns, times, "o-", label=variant)
    ns = sorted({p["n"] for p in points})
    ax_mem.plot(ns, [(32 * n + 1.5 * GB) / GB for n in ns], "k--", label="2 x data + 1.5 GB")
    for ax, label in ((ax_mem, "peak RSS (GB)"), (ax_time, "time per fit (s)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (points)")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("curve_fit, 3 parameters, CPU")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-n", type=float, default=1e8)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    result = main(quick=args.quick, max_n=args.max_n)
    from _harness import machine_info, platform_tag

    result["machine"] = machine_info()
    write_json(result, args.out / f"{platform_tag()}-bench_scale.json")
    plot(result, args.out / f"{platform_tag()}-bench_scale.png")
    print(result["table"])
