"""The device check runs end to end on a CPU (``--quick``), so it is known to
work before a GPU is lent: every step, the files, the exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_runs_every_step_on_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO / "python"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benches" / "gpu_check.py"), "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "versions and targets:" in proc.stdout
    assert "FFI target" in proc.stdout and "registered for cpu" in proc.stdout
    # The prints of the timed variants went to a file, not to the terminal.
    assert "iter    199" not in proc.stdout

    result = json.loads((tmp_path / "cpu-gpu_check.json").read_text())
    assert result["tag"] == "cpu" and result["ok"] is True
    assert {"ffi", "callback", "debug_callback"} <= set(result["routes"])

    assert result["checks"]["same lines on every route"] is True
    assert result["checks"]["zero drops"] is True
    # bench_scale's GPU section ran (here on the CPU, at the quick size) and its checks held.
    scale = [k for k in result["checks"] if k.startswith("scale: ")]
    assert scale and all(result["checks"][k] for k in scale), result["checks"]
    assert [p["n"] for p in result["scale"]["memory"]["points"]] == [100_000]
    same = result["check_details"]["same_lines"]
    assert same["ok"]
    counts = {r["lines"] for r in same["routes"].values()}
    assert len(counts) == 1 and counts.pop() >= 50

    drops = result["check_details"]["zero_drops"]
    assert drops["ok"] and drops["written"] == drops["steps"] == 2000
    assert not any(drops["lost"].values())

    variants = result["per_iteration"]["variants"]
    for name in (
        "no logging",
        "route ffi",
        "route callback",
        "no-op jax.debug.callback",
        "jax.debug.print",
        "route blocking_print",
    ):
        assert variants[name]["us_per_iter"] > 0, name

    for n in (10_000, 100_000):
        for route in ("ffi", "callback"):
            levels = result["curve_fit"][f"n={n} route={route}"]
            assert set(levels) == {"verbose=0", "verbose=1", "verbose=2"}

    summary = (tmp_path / "cpu-gpu_check.md").read_text()
    assert "| same lines on every route | True |" in summary
    assert "## µs per logged iteration" in summary
    assert "route=callback" in summary
    assert result["stats"]["route"] in result["routes"]
