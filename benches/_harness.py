"""The bench contract, and the shared pieces every bench uses.

The contract (every module listed in ``run.BENCHES`` keeps it)
---------------------------------------------------------------
A bench is a module ``benches/<name>.py`` with one entry point::

    def main(quick: bool, out: Path) -> dict

* ``quick``: a smoke run (small sizes, few repeats; ``tests/test_bench_harness.py``
  runs every bench this way). ``out``: a scratch folder for any extra file the bench
  wants to keep for the length of the run; the harness alone writes the results folder.
* It returns :func:`bench_result` (``name`` = the module's file stem, ``title``,
  ``table``, ``checks``, ``plot``, then its raw data, all JSON-serialisable). Build the
  table with :func:`markdown_table` and the plot with :func:`bars` / :func:`lines`
  panels; never draw or write files yourself.
* ``checks`` names every correctness check the bench made (line counts, equal output
  across variants, agreement with scipy) and whether it held: ``run.py`` fails the
  bench if any is False (after writing the JSON, so the data can be read). A mismatch
  that leaves no figure worth keeping may raise instead (the bench then fails with no
  result); ``checks`` is empty only for a bench whose every check raises.
* Time alternatives with :func:`interleaved_medians`: variants interleaved (A B C, A B C
  ...), medians of the repeats, ratios taken from the same run. Work that must happen
  between runs but is not timed (flushes, reading back lines) goes in its hooks.
* Import shared code as ``from _harness import ...`` (``run.py`` puts ``benches/`` on
  ``sys.path``). No ``__main__`` block: ``python benches/run.py --only <name> [--quick]`` runs one
  bench in a fresh interpreter and writes ``<platform>-<name>.json`` (with the machine)
  and ``<platform>-<name>.png`` into ``benches/results`` (or ``--out``), and refreshes
  ``<platform>-summary.md``. A new bench adds its name to ``run.BENCHES``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Keys every bench result has (see the contract above).
RESULT_KEYS = ("name", "title", "table", "checks", "plot")

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model string from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The repository's HEAD commit, with ``-dirty`` when the tree has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            # The results folder is rewritten by the run itself: not a source change.
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!benches/results",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "") if head else "unknown"
    except OSError:
        return "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    import jax
    import jaxlib
    import numpy
    import scipy

    device = jax.devices()[0]
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def platform_tag() -> str:
    """``cpu`` or ``gpu-<device>``: the prefix of every result file."""
    import jax

    if jax.default_backend() == "cpu":
        return "cpu"
    kind = getattr(jax.devices()[0], "device_kind", "gpu").lower()
    for short in ("h100", "h200", "a100", "l4", "v100"):
        if short in kind:
            return f"gpu-{short}"
    return "gpu-" + "".join(c if c.isalnum() else "-" for c in kind).strip("-")


def interleaved_medians(
    variants: Mapping[str, Callable[[], Any]],
    repeats: int,
    *,
    warmup: int = 1,
    rotate: bool = False,
    before: Callable[[str], Any] | None = None,
    after: Callable[[str, float], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time each variant ``repeats`` times, interleaved; seconds per call.

    Each callable must block until its work is done (``block_until_ready`` and
    anything else that belongs in the figure go inside it). ``before(name)`` and
    ``after(name, seconds)`` run around every call, warm-up included, outside the
    timing: configuration, flushes, reading back and checking what was written.
    ``rotate`` starts each round one variant later (A B C, B C A, ...), so that
    every variant follows every other equally often (a variant that leaves the
    machine busy, e.g. large allocations, then slows each of the others alike).

    Returns ``{name: {"median_s", "min_s", "max_s", "repeats", "samples_s"}}`` in
    the order of ``variants``.
    """
    names = list(variants)

    def one(name: str) -> float:
        if before is not None:
            before(name)
        t0 = time.perf_counter()
        variants[name]()
        elapsed = time.perf_counter() - t0
        if after is not None:
            after(name, elapsed)
        return elapsed

    for _ in range(warmup):
        for name in names:
            one(name)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names) if rotate else 0
        for name in names[k:] + names[:k]:
            samples[name].append(one(name))
    return {name: summarise(s) for name, s in samples.items()}


def run_python(script: str, *args: str, env: Mapping[str, str] | None = None) -> Any:
    """Run ``script`` (Python source) in a fresh interpreter with this tree's ``python/``
    on its path and ``env`` added; return the JSON its last line of output prints.

    For figures that need a fresh process (first fits, empty caches): raises
    ``RuntimeError`` with the end of its stderr when it fails.
    """
    full = dict(os.environ, PYTHONPATH=str(REPO / "python"), **(env or {}))
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=full, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the samples themselves (seconds)."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "repeats": len(samples),
        "samples_s": list(samples),
    }


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
) -> str:
    """A GitHub-flavoured markdown table; cells are written with ``str``.

    ``align`` has one letter per column, ``l`` or ``r`` (default: the first column
    left, the others right, as for a label followed by figures).
    """
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l'/'r' per column, got {align!r}")
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(f"every row needs {len(headers)} cells")
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- plots: a bench describes its panels; save_plot alone draws them -----------------


def bars(
    title: str,
    xlabel: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    reference: tuple[str, float] | None = None,
    log: bool = False,
) -> dict[str, Any]:
    """A panel of horizontal bars: one bar per label and series (grouped).

    ``reference`` draws a dashed vertical line (its legend label, its x).
    """
    return {
        "kind": "bars",
        "title": title,
        "xlabel": xlabel,
        "labels": list(labels),
        "series": {k: [float(v) for v in vs] for k, vs in series.items()},
        "reference": list(reference) if reference else None,
        "log": log,
    }


def lines(
    title: str,
    xlabel: str,
    ylabel: str,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    reference: tuple[str, float] | None = None,
    logx: bool = True,
    logy: bool = True,
    dotted: Sequence[str] = (),
) -> dict[str, Any]:
    """A panel of lines with markers, one per series, over ``x``.

    ``reference`` draws a dashed horizontal line; series named in ``dotted`` are
    drawn dotted (e.g. the verbose=1 twin of a verbose=2 line).
    """
    return {
        "kind": "lines",
        "title": title,
        "xlabel": xlabel,
        "ylabel": ylabel,
        "x": [float(v) for v in x],
        "series": {k: [float(v) for v in vs] for k, vs in series.items()},
        "reference": list(reference) if reference else None,
        "logx": logx,
        "logy": logy,
        "dotted": list(dotted),
    }


def save_plot(result: Mapping[str, Any], png: Path) -> None:
    """Draw ``result["plot"]`` (panels side by side) under ``result["title"]`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = result["plot"]
    tallest = max((len(p["labels"]) for p in panels if p["kind"] == "bars"), default=8)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6.5 * len(panels), 0.45 * tallest + 2.0), squeeze=False
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel["kind"] == "bars":
            _draw_bars(ax, panel)
        elif panel["kind"] == "lines":
            _draw_lines(ax, panel)
        else:
            raise ValueError(f"unknown plot panel kind {panel['kind']!r}")
        ax.set_title(panel["title"], fontsize=9)
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize=7)
    # About 95 characters of 8-point text fit across one 6.5-inch panel.
    fig.suptitle(textwrap.fill(result["title"], 95 * len(panels)), fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _draw_bars(ax: Any, panel: Mapping[str, Any]) -> None:
    labels, series = panel["labels"], panel["series"]
    height = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * height
        ax.barh([i + offset for i in range(len(labels))], values, height, label=name)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    if panel["reference"]:
        name, x = panel["reference"]
        ax.axvline(x, color="tab:red", linestyle="--", linewidth=0.8, label=name)
    if panel["log"]:
        ax.set_xscale("log")
    ax.set_xlabel(panel["xlabel"])


def _draw_lines(ax: Any, panel: Mapping[str, Any]) -> None:
    for name, values in panel["series"].items():
        ax.plot(panel["x"], values, ":" if name in panel["dotted"] else "-", marker="o", label=name)
    if panel["reference"]:
        name, y = panel["reference"]
        ax.axhline(y, color="tab:red", linestyle="--", linewidth=0.8, label=name)
    ax.set(xlabel=panel["xlabel"], ylabel=panel["ylabel"])
    if panel["logx"]:
        ax.set_xscale("log")
    if panel["logy"]:
        ax.set_yscale("log")


# --- the result ----------------------------------------------------------------------


def bench_result(
    name: str,
    *,
    title: str,
    table: str,
    checks: Mapping[str, bool],
    plot: Sequence[Mapping[str, Any]],
    **data: Any,
) -> dict[str, Any]:
    """The dict a bench's ``main`` returns: the contract's keys, then its raw data."""
    result = {
        "name": name,
        "title": title,
        "table": table,
        "checks": {k: bool(v) for k, v in checks.items()},
        "plot": list(plot),
        **data,
    }
    check_result(result, name)
    return result


def check_result(result: Mapping[str, Any], name: str) -> None:
    """Raise ``ValueError`` naming what a bench's result lacks."""
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"{name}: result lacks {missing} (see the contract in _harness.py)")
    if result["name"] != name:
        raise ValueError(f"{name}: result is named {result['name']!r}")
    if not str(result["title"]).strip() or not str(result["table"]).strip():
        raise ValueError(f"{name}: empty title or table")
    if not result["plot"]:
        raise ValueError(f"{name}: no plot panels")


def write_json(result: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=float) + "\n")
