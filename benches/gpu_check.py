"""The prepared device check: one command, no network, under 5 minutes on an H100.

    python benches/gpu_check.py --out DIR [--quick]

It
1. prints the versions and the registered FFI targets (``python -m nlsq.info``);
2. checks that every route writes the same lines (count and text) for the same
   logged loop and the same ``curve_fit(verbose=2)``;
3. runs a 20 000-step logged loop on the best route and checks zero drops
   (ring drops and every native-route loss in ``async_logger.stats()``);
4. measures µs per logged iteration, medians of interleaved repeats, for: no
   logging, the native route (on a GPU: the CUDA staging route, nlsq's default
   there; ``NLSQ_FFI_CUDA=0`` skips it),
   the callback route, a no-op
   ``jax.debug.callback``, ``jax.debug.print`` and a blocking print;
5. times ``curve_fit`` at n = 1e6 and 1e7, verbose 0/1/2, per route;
6. fills ``bench_scale``'s GPU section (:func:`bench_scale.gpu_section`): time
   and device peak memory of chunked fits at n = 1e7 and 1e8, each in a fresh
   process;
7. writes ``<tag>-gpu_check.json`` (``tag`` names the device: ``gpu-h100``,
   ``cpu``, ...) and ``<tag>-gpu_check.md`` into DIR.

On a CPU it runs the same steps over the routes the CPU has (``--quick`` shrinks
every size; ``tests/test_gpu_check.py`` runs it that way). The CUDA staging
route itself is exercised without a GPU by the Rust tests against the fake
driver (``cargo test -p nlsq-xla-ffi``).

Exit status: 0 when every check passed, 1 otherwise (the files are written
either way).

Bench contract (``_harness.py``): ``main(quick, out)`` returns
:func:`_harness.bench_result` (``checks`` by name, a plot panel, the raw data;
``check_details`` holds each check's counts). Unlike the benches of ``run.py``
it keeps a ``__main__`` block and writes its own two files, because the device
check is one command on a machine where nothing else of the harness runs; it is
not in ``run.BENCHES``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import nlsq  # noqa: F401 - an installed nlsq wins
except ImportError:  # a checkout with the built extension copied in (GPU machines: no Rust)
    sys.path.insert(0, str(HERE.parent / "python"))

import _blocking_print  # noqa: E402
from _harness import (  # noqa: E402
    bars,
    bench_result,
    interleaved_medians,
    machine_info,
    markdown_table,
    platform_tag,
    write_json,
)
from bench_callback import _loop as logged_loop  # noqa: E402  (the loop bench_callback times)
from bench_scale import gpu_section as scale_section  # noqa: E402
from nlsq import curve_fit  # noqa: E402
from nlsq.utils import _routes, async_logger  # noqa: E402

NAME = "gpu_check"
TITLE = "Device check: routes, drops, per-iteration cost, curve_fit at large n"


def versions() -> dict[str, Any]:
    """``python -m nlsq.info``'s report (versions, devices, route, FFI target),
    plus why the CUDA staging handler cannot run here, if it cannot."""
    from nlsq import _ringlog, info

    report = info.collect()
    print(info.format_report(report))
    report["cuda_unavailable_reason"] = _ringlog.ffi_cuda_unavailable_reason()
    return report


def routes() -> list[str]:
    """Routes this machine can run, the native one first when it can be set up:
    ``ffi`` on a CPU, ``cuda_staging`` on CUDA (unless ``NLSQ_FFI_CUDA=0``)."""
    _blocking_print.register()
    names = ["callback", "debug_callback"]
    native = {"cpu": "ffi", "cuda": "cuda_staging"}.get(_routes.backend_platform())
    if native is not None:
        try:
            async_logger.configure(sink=os.devnull, backend=native)
            if async_logger.stats()["route"] == native:
                names.insert(0, native)
        except (ValueError, RuntimeError) as exc:
            print(f"route {native} unavailable: {exc}")
    return names


@contextlib.contextmanager
def stdout_to(path: Path) -> Iterator[None]:
    """Send the process's fd 1 (where jax.debug.print and print go) to ``path``."""
    sys.stdout.flush()
    saved = os.dup(1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(fd)
        os.close(saved)


def use_route(name: str, sink: str) -> None:
    """Log through route ``name`` from now on, to ``sink``.

    The route is bound when a function is traced and the solvers' jit cache
    keys on shapes, not on the route: clear JAX's caches so the next fit is
    traced (and compiled) again under this route.
    """
    async_logger.configure(sink=sink, backend=name)
    jax.clear_caches()


def ring_log(i: Any, c: Any, g: Any) -> None:
    async_logger.log_iteration_async(i, c, g, verbose=2)


def model(x: Any, a: Any, b: Any, c: Any) -> Any:
    return a * jnp.exp(-b * x) + c


def fit_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 4.0, n)
    y = 2.5 * np.exp(-1.3 * x) + 0.5 + 0.01 * rng.standard_normal(n)
    return x, y


def fit(x: np.ndarray, y: np.ndarray, verbose: int) -> Any:
    popt, _ = curve_fit(model, x, y, p0=[1.0, 1.0, 0.0], verbose=verbose)
    jax.block_until_ready(popt)
    async_logger.flush()
    return popt


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def check_same_lines(names: list[str], tmp: Path, steps: int, n_fit: int) -> dict[str, Any]:
    """Every route writes the same lines for the same loop and the same fit."""
    x, y = fit_data(n_fit)
    outputs: dict[str, list[str]] = {}
    for name in names:
        path = tmp / f"same-{name}.log"
        use_route(name, str(path))
        jax.block_until_ready(logged_loop(steps, ring_log)(jnp.float32(1.0)))
        fit(x, y, verbose=2)
        async_logger.flush()
        async_logger.configure(sink=os.devnull)
        outputs[name] = lines_of(path)
    reference = outputs[names[0]]
    per_route = {
        name: {
            "lines": len(lines),
            "same_as_" + names[0]: lines == reference,
            "first_difference": next(
                (
                    {"line": k, "got": a, "expected": b}
                    for k, (a, b) in enumerate(zip(lines, reference, strict=False))
                    if a != b
                ),
                None,
            ),
        }
        for name, lines in outputs.items()
    }
    ok = all(lines == reference for lines in outputs.values()) and len(reference) >= steps
    return {"ok": ok, "reference": names[0], "routes": per_route}


def check_zero_drops(route: str, tmp: Path, steps: int) -> dict[str, Any]:
    """A ``steps``-iteration logged loop on ``route``: every line written, nothing lost."""
    path = tmp / "drops.log"
    use_route(route, str(path))
    before = async_logger.stats()
    jax.block_until_ready(logged_loop(steps, ring_log)(jnp.float32(1.0)))
    flushed = async_logger.flush(timeout=120.0)
    after = async_logger.stats()
    async_logger.configure(sink=os.devnull)
    lost = {
        "ring_dropped": after["dropped"] - before["dropped"],
        "callback_errors": after["callback_errors"] - before["callback_errors"],
    }
    for key in ("cuda_lost", "orphaned", "unrouted", "push_failed"):
        lost[key] = after["ffi"].get(key, 0) - before["ffi"].get(key, 0)
    written = len(lines_of(path))
    ok = flushed and written == steps and not any(lost.values())
    return {"ok": ok, "route": route, "steps": steps, "written": written, "lost": lost}


def per_iteration(names: list[str], tmp: Path, steps: int, repeats: int) -> dict[str, Any]:
    """µs per logged iteration, medians of interleaved repeats."""
    _blocking_print.register()
    calls = [0]

    def noop(buf: Any) -> None:
        calls[0] += 1

    def packed(i: Any, c: Any, g: Any) -> Any:
        return jnp.stack([i.astype(c.dtype), c, g])

    def on_route(name: str) -> Callable[[], Any]:
        # The route is picked when the loop is traced: configure, then trace.
        async_logger.configure(sink=str(tmp / f"iter-{name}.log"), backend=name)
        loop = logged_loop(steps, ring_log)
        jax.block_until_ready(loop(jnp.float32(1.0)))
        return lambda: (jax.block_until_ready(loop(jnp.float32(1.0))), jax.effects_barrier())

    variants: dict[str, Callable[[], Any]] = {}
    base = logged_loop(steps, None)
    variants["no logging"] = lambda: jax.block_until_ready(base(jnp.float32(1.0)))
    for name in names:
        if name != "debug_callback":
            variants[f"route {name}"] = on_route(name)
    variants["route blocking_print"] = on_route(_blocking_print.NAME)
    cb = logged_loop(steps, lambda i, c, g: jax.debug.callback(noop, packed(i, c, g)))
    variants["no-op jax.debug.callback"] = lambda: (
        jax.block_until_ready(cb(jnp.float32(1.0))),
        jax.effects_barrier(),
    )
    dp = logged_loop(steps, lambda i, c, g: jax.debug.print("iter {} cost {} grad {}", i, c, g))
    variants["jax.debug.print"] = lambda: (
        jax.block_until_ready(dp(jnp.float32(1.0))),
        jax.effects_barrier(),
    )
    # Routes were bound at trace time; the sink of the last configure() gets
    # every ring route's lines, and fd 1 (redirected by the caller) the prints.
    async_logger.configure(sink=str(tmp / "iter-ring.log"))
    timing = interleaved_medians(variants, repeats=repeats)
    async_logger.flush()
    base_us = timing["no logging"]["median_s"] / steps * 1e6
    rows = {}
    for name, t in timing.items():
        us = t["median_s"] / steps * 1e6
        rows[name] = {"us_per_iter": us, "over_no_logging_us": us - base_us, **t}
    return {"steps": steps, "repeats": repeats, "variants": rows}


def fit_timings(names: list[str], sizes: list[int], repeats: int) -> dict[str, Any]:
    """``curve_fit`` wall time per size, verbose level and route."""
    out: dict[str, Any] = {}
    for n in sizes:
        x, y = fit_data(n)
        for name in names:
            if name == "debug_callback":
                continue
            use_route(name, os.devnull)
            variants = {f"verbose={v}": (lambda v=v, x=x, y=y: fit(x, y, v)) for v in (0, 1, 2)}
            timing = interleaved_medians(variants, repeats=repeats)
            v0 = timing["verbose=0"]["median_s"]
            out[f"n={n} route={name}"] = {
                k: {**t, "overhead_vs_verbose0": t["median_s"] / v0 - 1.0}
                for k, t in timing.items()
            }
    async_logger.configure(sink=os.devnull)
    return out


def summary(result: dict[str, Any]) -> str:
    checks = result["checks"]  # the detailed checks (same_lines, zero_drops)
    lines = [f"# {TITLE}", "", f"Device: {result['device']}  ", f"Tag: `{result['tag']}`", ""]
    lines += ["## Checks", ""]
    lines.append(
        markdown_table(
            ["check", "ok", "detail"],
            [
                [
                    "same lines on every route",
                    checks["same_lines"]["ok"],
                    ", ".join(
                        f"{k}: {v['lines']}" for k, v in checks["same_lines"]["routes"].items()
                    ),
                ],
                [
                    f"{checks['zero_drops']['steps']}-step loop, zero drops",
                    checks["zero_drops"]["ok"],
                    f"route {checks['zero_drops']['route']}, written "
                    f"{checks['zero_drops']['written']}, lost {checks['zero_drops']['lost']}",
                ],
            ],
        )
    )
    per = result["per_iteration"]
    lines += ["", f"## µs per logged iteration ({per['steps']} steps, medians)", ""]
    lines.append(
        markdown_table(
            ["variant", "µs / iter", "over no logging (µs)"],
            [
                [k, f"{v['us_per_iter']:.2f}", f"{v['over_no_logging_us']:.2f}"]
                for k, v in per["variants"].items()
            ],
        )
    )
    lines += ["", "## curve_fit wall time (s, medians) and overhead vs verbose=0", ""]
    rows = []
    for key, levels in result["curve_fit"].items():
        rows.append(
            [key]
            + [
                f"{levels[f'verbose={v}']['median_s']:.4f} "
                f"({100 * levels[f'verbose={v}']['overhead_vs_verbose0']:+.1f} %)"
                for v in (0, 1, 2)
            ]
        )
    lines.append(markdown_table(["size / route", "verbose=0", "verbose=1", "verbose=2"], rows))
    if "scale" in result:
        lines += ["", "## Scale (bench_scale's GPU section: one fresh process per point)", ""]
        lines.append(result["scale"]["table"])
    return "\n".join(lines) + "\n"


def main(quick: bool = False, out: Path | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    print("versions and targets:")
    info = versions()
    print(f"  CUDA staging handler: {info['cuda_unavailable_reason'] or 'usable'}")
    names = routes()
    print(f"routes: {names}")
    steps_same, n_same = (50, 200) if quick else (500, 2000)
    drop_steps = 2_000 if quick else 20_000
    iter_steps, repeats = (200, 2) if quick else (2_000, 7)
    sizes = [10_000, 100_000] if quick else [1_000_000, 10_000_000]
    fit_repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="nlsq-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        same = check_same_lines(names, tmp, steps_same, n_same)
        print(f"same lines: {same['ok']}")
        drops = check_zero_drops(names[0], tmp, drop_steps)
        print(f"zero drops: {drops['ok']} ({drops})")
        # fd 1 to a file: jax.debug.print and the blocking print write there.
        with stdout_to(tmp / "iter-stdout.log"):
            per = per_iteration(names, tmp, iter_steps, repeats)
        for key, value in per["variants"].items():
            print(f"  {key:28s} {value['us_per_iter']:9.2f} µs/iter")
        fits = fit_timings(names, sizes, fit_repeats)
    print("scale (bench_scale's GPU section):")
    scale = scale_section(quick)
    print(scale["table"])
    tag = platform_tag()
    data: dict[str, Any] = {
        "tag": tag,
        "device": str(jax.devices()[0]) + f" ({getattr(jax.devices()[0], 'device_kind', '?')})",
        "quick": quick,
        "machine": machine_info(),
        "versions": info,
        "routes": names,
        "checks": {"same_lines": same, "zero_drops": drops},
        "per_iteration": per,
        "curve_fit": fits,
        "stats": async_logger.stats(),
        "scale": scale,
        "ok": same["ok"] and drops["ok"] and all(scale["checks"].values()),
    }
    variants = per["variants"]
    # The bench contract (_harness.py): name, title, table, checks, plot, data.
    result = bench_result(
        NAME,
        title=TITLE,
        table=summary({**data}),
        checks={
            "same lines on every route": same["ok"],
            "zero drops": drops["ok"],
            **{f"scale: {k}": v for k, v in scale["checks"].items()},
        },
        plot=[
            bars(
                "µs per logged iteration",
                "µs / iteration (median)",
                list(variants),
                {"median": [v["us_per_iter"] for v in variants.values()]},
                log=True,
            )
        ],
        **{k: v for k, v in data.items() if k != "checks"},
        check_details=data["checks"],
    )
    result["seconds"] = time.perf_counter() - started
    if out is not None:
        write_json(result, out / f"{tag}-{NAME}.json")
        (out / f"{tag}-{NAME}.md").write_text(result["table"])
        print(f"wrote {out / f'{tag}-{NAME}.json'} and .md")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the json and md")
    parser.add_argument("--quick", action="store_true", help="small sizes (CI, CPU)")
    args = parser.parse_args()
    res = main(quick=args.quick, out=args.out)
    print(res["table"])
    sys.exit(0 if res["ok"] else 1)
