"""Fits that outgrow one device: time and peak memory against n, and forced-device scaling.

``curve_fit`` of ``a exp(-b x) + c`` (3 parameters, true values 2.5, 1.3, 0.5) on
n noisy points, data created on the device as float64 ``jax.Array``s (16 n bytes:
x and y).

1. **Memory against n** -- every point runs in a fresh interpreter, which reports
   its peak resident set size (``resource.getrusage``), the device's peak bytes in
   use where the backend reports them, and the time of the fits after the first
   (which compiles).  ``method=None`` without bounds is ``'lm'`` (scipy's rule),
   chunked or not.  Variants: ``chunked`` (the default: the reduced problem is
   accumulated chunk by chunk, ``chunk_size=None``; it chunks from about 4e6
   points on, about 1e6 rows per chunk, and below that is the one-shot program;
   the quick run forces ``chunk_size=10000`` so that its check compares a real
   chunked fit with the one-shot one) and ``one-shot``
   (``chunk_size=0``: the m x 3 Jacobian and the QR of ``[J | f]`` in memory, the
   behaviour before chunking; skipped above 2e7 points, where it would need more
   than this machine's memory).  The target bound is peak memory <= 2 x data +
   1.5 GB.  One process per point (peak RSS is per process), so the variants are
   not interleaved: the times are medians of the repeats within each process.
2. **Strong scaling over forced CPU devices** -- the same fit with the data
   sharded over 1, 2 and 4 devices (``XLA_FLAGS=--xla_force_host_platform_device_count``).
   Forced devices are threads of one process sharing this machine's cores, so the
   figure shows the overhead of the sharded program (collectives, per-shard
   work), not a speed-up (up to as many devices as cores, the sharded program
   can also use cores the 1-device fit leaves idle).  Not run on a GPU.
3. **GPU** -- filled by the device check (``benches/gpu_check.py``, which calls
   :func:`gpu_section` when a GPU is lent: n = 1e7 and 1e8 chunked, 1e7 one-shot,
   device peak bytes per point), or by this bench itself where JAX sees a GPU.

Checked: every process finished; chunked and one-shot find the same parameters
at every n where both ran; every fit recovers the true parameters; the sharded
fits find the 1-device parameters; the chunked fit's peak memory (RSS on the
CPU, device peak bytes on a GPU) is within the bound at every n.

Run: ``python benches/run.py --only bench_scale [--quick]``; ``NLSQ_BENCH_SCALE_MAX_N``
(e.g. ``1e7``) caps n in the full run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _harness import bars, bench_result, lines, markdown_table, summarise

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GB = 1e9
TRUE = (2.5, 1.3, 0.5)
#: chunked against one-shot, sharded against one device: the same minimum, reached
#: through differently rounded factorisations (the parameters' own standard error
#: at n = 1e5 is ~1e-3 relative).
POPT_RTOL = 1e-6
#: every fit against the true parameters (noise 0.05, n >= 1e5).
TRUE_ATOL = 0.02

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
    """One fit of n points in a fresh interpreter: its JSON, or ``error`` and ``rc``."""
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
            r = json.loads(line[len("RESULT ") :])
            r["time"] = summarise(r["times_s"] or [r["first_s"]])
            return r
    return {"n": n, "error": (proc.stderr or proc.stdout)[-2000:], "rc": proc.returncode}


def _fmt_gb(b: float | None) -> str:
    return "—" if b is None else f"{b / GB:.2f}"


def _label(r: dict[str, Any]) -> str:
    chunk = r["chunk_size"]
    return r["variant"] if chunk in ("auto", "0") else f"{r['variant']} (chunk_size={chunk})"


def _peak(r: dict[str, Any], on_gpu: bool) -> float | None:
    """The memory the bound is about: device peak bytes on a GPU, else peak RSS."""
    return r.get("device_peak") if on_gpu else r.get("peak_rss")


#: Above this n a point times one fit after the compiling one (a 1e8 fit takes minutes).
LONG_N = 2 * 10**7


def memory_section(
    sizes: list[int], one_shot_max: int, repeats: int, on_gpu: bool, chunked: str = "auto"
) -> dict[str, Any]:
    """Each n in a fresh process per variant; ``chunked``: its ``chunk_size`` (or auto)."""
    points = []
    for n in sizes:
        for variant, chunk in (("chunked", chunked), ("one-shot", "0")):
            if variant == "one-shot" and n > one_shot_max:
                continue
            r = run_child(n, chunk, 1, repeats if n <= LONG_N else 1)
            r["variant"] = variant
            r["chunk_size"] = chunk
            r["data_bytes"] = 16 * n
            r["bound_bytes"] = 2 * 16 * n + 1.5 * GB
            points.append(r)
            print(f"  n={n:.0e} {variant}: {r.get('peak_rss', 0) / GB:.2f} GB", file=sys.stderr)
    rows = []
    for r in points:
        if "error" in r:
            rows.append([f"{r['n']:.0e}", _label(r), "failed", "", "", "", "", ""])
            continue
        peak = _peak(r, on_gpu)
        rows.append(
            [
                f"{r['n']:.0e}",
                _label(r),
                f"{r['time']['median_s']:.3f}",
                _fmt_gb(r["data_bytes"]),
                _fmt_gb(r["peak_rss"]),
                _fmt_gb(r.get("device_peak")),
                _fmt_gb(r["bound_bytes"]),
                "—" if peak is None else ("yes" if peak <= r["bound_bytes"] else "no"),
            ]
        )
    table = markdown_table(
        [
            "n",
            "variant",
            "time per fit (s, median)",
            "data (GB)",
            "peak RSS (GB)",
            "device peak (GB)",
            "bound 2 x data + 1.5 GB",
            "within" + (" (device peak)" if on_gpu else " (RSS)"),
        ],
        rows,
        align="llrrrrrr",
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
        med = r["time"]["median_s"]
        base = base or med
        rows.append([r["devices"], f"{med:.3f}", f"{med / base:.2f}"])
    table = markdown_table(["forced CPU devices", "time per fit (s, median)", "vs 1 device"], rows)
    return {"n": n, "points": points, "table": table}


def _close(a: list[float], b: list[float], rtol: float) -> bool:
    return bool(np.allclose(a, b, rtol=rtol, atol=0.0))


def checks(memory: dict[str, Any], scaling: dict[str, Any] | None, on_gpu: bool) -> dict:
    """The behaviour the bench checks (see the module docstring)."""
    runs = memory["points"] + (scaling["points"] if scaling else [])
    ok = [r for r in runs if "error" not in r]
    out = {f"every fit ran to completion ({len(runs)} fresh processes)": len(ok) == len(runs)}
    out[f"every fit recovers the true parameters {TRUE} (atol {TRUE_ATOL:g})"] = bool(ok) and all(
        np.allclose(r["popt"], TRUE, rtol=0.0, atol=TRUE_ATOL) for r in ok
    )
    by = {(r["n"], r["variant"]): r for r in memory["points"] if "error" not in r}
    for (n, variant), r in by.items():
        if (n, "one-shot") in by and variant == "chunked":
            out[f"n = {n:.0e}: chunked finds the one-shot parameters (rtol {POPT_RTOL:g})"] = (
                _close(r["popt"], by[n, "one-shot"]["popt"], POPT_RTOL)
            )
    what = "device peak bytes" if on_gpu else "peak RSS"
    for (n, variant), r in by.items():
        peak = _peak(r, on_gpu)
        if variant == "chunked" and peak is not None:
            out[f"n = {n:.0e}: chunked {what} within 2 x data + 1.5 GB"] = peak <= r["bound_bytes"]
    if scaling is not None:
        pts = {r["devices"]: r for r in scaling["points"] if "error" not in r}
        for devices, r in pts.items():
            if devices > 1 and 1 in pts:
                name = f"{devices} forced devices find the 1-device parameters"
                out[f"{name} (rtol {POPT_RTOL:g})"] = _close(r["popt"], pts[1]["popt"], POPT_RTOL)
    return out


def plot(memory: dict[str, Any], scaling: dict[str, Any] | None, on_gpu: bool) -> list[dict]:
    """Peak memory and time per fit for each n (bars: the one-shot stops at 2e7), scaling."""
    ns = sorted({r["n"] for r in memory["points"]})
    by = {(r["n"], r["variant"]): r for r in memory["points"] if "error" not in r}

    def values(variant: str, key) -> list[float]:
        # 0 where a point was not run (one-shot above its limit) or failed.
        return [key(by[n, variant]) if (n, variant) in by else 0.0 for n in ns]

    labels = [f"n = {n:.0e}" for n in ns]
    what = "device peak" if on_gpu else "peak RSS"
    panels = [
        bars(
            f"{what} against n (no bar: not run)",
            "GB",
            labels,
            {
                "chunked": values("chunked", lambda r: (_peak(r, on_gpu) or 0.0) / GB),
                "one-shot": values("one-shot", lambda r: (_peak(r, on_gpu) or 0.0) / GB),
                "bound 2 x data + 1.5 GB": [(32 * n + 1.5 * GB) / GB for n in ns],
            },
        ),
        bars(
            "time per fit against n (median; no bar: not run)",
            "seconds",
            labels,
            {
                "chunked": values("chunked", lambda r: r["time"]["median_s"]),
                "one-shot": values("one-shot", lambda r: r["time"]["median_s"]),
            },
        ),
    ]
    if scaling is not None:
        pts = [r for r in scaling["points"] if "error" not in r]
        panels.append(
            lines(
                f"forced CPU devices sharing {os.cpu_count()} cores, n = {scaling['n']:.0e} "
                "(overhead, not a real-device speed-up)",
                "devices",
                "seconds per fit (median)",
                [r["devices"] for r in pts],
                {"chunked, sharded": [r["time"]["median_s"] for r in pts]},
                logx=False,
                logy=False,
            )
        )
    return panels


def gpu_section(quick: bool) -> dict[str, Any]:
    """The GPU section, for ``benches/gpu_check.py``: the memory section where JAX runs.

    ``{"memory", "table", "checks"}``; on a CPU (the check's quick run) it measures
    the CPU the same way, at the quick size.
    """
    import jax

    on_gpu = jax.default_backend() == "gpu"
    if quick:
        sizes, one_shot_max, repeats, chunked = [10**5], 0, 1, "10000"
    else:
        sizes, one_shot_max, repeats, chunked = [10**7, 10**8], 10**7, 1, "auto"
    memory = memory_section(sizes, one_shot_max, repeats, on_gpu, chunked)
    return {"memory": memory, "table": memory["table"], "checks": checks(memory, None, on_gpu)}


def main(quick: bool, out: Path) -> dict[str, Any]:
    """Run the sections and return the result (``out`` unused)."""
    import jax

    on_gpu = jax.default_backend() == "gpu"
    if quick:
        sizes, one_shot_max, repeats, scale_n = [10**5], 10**5, 1, 10**5
        chunked = "10000"  # 10 chunks: auto would not chunk 1e5 rows
    else:
        max_n = float(os.environ.get("NLSQ_BENCH_SCALE_MAX_N", "1e8"))
        sizes = [n for n in (10**6, 10**7, 3 * 10**7, 10**8) if n <= max_n]
        one_shot_max, repeats, scale_n = 2 * 10**7, 3, 10**6
        chunked = "auto"
    memory = memory_section(sizes, one_shot_max, repeats, on_gpu, chunked)
    scaling = scaling_section(scale_n, repeats) if not on_gpu else None
    gpu_note = (
        "Measured on the GPU above (device peak bytes per point; the bound applies to them)."
        if on_gpu
        else "Not run here: no GPU on this machine. `python benches/gpu_check.py --out DIR` "
        "fills it when a GPU is lent (section 'Scale' of `<tag>-gpu_check.json`: n = 1e7 and "
        "1e8, device peak bytes per point), as does `python benches/run.py --only "
        "bench_scale` run where JAX sees a GPU."
    )
    table = memory["table"]
    if scaling is not None:
        table += (
            f"\n\n**Strong scaling over forced CPU devices** (n = {scale_n:.0e})\n\n"
            + scaling["table"]
            + f"\n\nForced devices are threads of one process sharing this machine's "
            f"{os.cpu_count()} cores (with whatever else runs on them): the figure shows the "
            "sharded program's overhead (collectives, per-shard work), not the speed-up of "
            "real devices. Up to as many devices as cores, the sharded program can also use "
            "cores that the 1-device fit leaves idle, so a ratio below 1 there is that, not "
            "scaling."
        )
    table += "\n\n**GPU**: " + gpu_note
    return bench_result(
        "bench_scale",
        title="Fits that outgrow one device: time and peak memory against n",
        table=table,
        checks=checks(memory, scaling, on_gpu),
        plot=plot(memory, scaling, on_gpu),
        memory=memory,
        scaling=scaling,
        gpu={"run": on_gpu, "note": gpu_note},
    )
