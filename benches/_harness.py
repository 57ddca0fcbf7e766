"""Shared pieces of the benchmark harness: machine description, timing, tables, output.

Every bench module in this folder exposes ``main(quick: bool, out: Path) -> dict``; the
returned dict has at least ``"name"`` (file stem), ``"title"``, ``"table"`` (markdown) and the
raw measurements. ``benches/run.py`` adds machine information and writes the JSON; a module
may also expose ``plot(result: dict, png: Path) -> None``.

Timings are medians of repeated runs with the variants interleaved (A B C A B C ...), so that
slow drift of the machine (frequency, other load) hits every variant alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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
    variants: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Time each variant ``repeats`` times, interleaved; return median/min/max seconds.

    Each callable must block until its work is done (``block_until_ready`` and any flush
    belong inside it).
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {
        name: {
            "median_s": statistics.median(s),
            "min_s": min(s),
            "max_s": max(s),
            "repeats": len(s),
        }
        for name, s in samples.items()
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats keep the caller's formatting."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(result: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=float) + "\n")
