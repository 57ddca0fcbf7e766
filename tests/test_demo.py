"""`make demo` runs ``python -m nlsq.demo``: its table and summary must stay intact."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_prints_the_table_fit_and_summary() -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "nlsq.demo", "--n", "2000", "--repeats", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    ).stdout
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("Iteration"))
    rows = []
    for line in lines[header + 1 :]:
        if not re.match(r"^\s+\d+\s+\d+\s+\d\.\d{4}e[+-]\d\d", line):
            break
        rows.append(line)
    assert len(rows) >= 3, out
    assert any("termination condition is satisfied" in line for line in lines), out
    assert any(line.startswith("Function evaluations ") for line in lines), out
    fitted = dict(re.findall(r"^\s+([abc]) = ([-\d.]+) ±", out, flags=re.M))
    assert abs(float(fitted["a"]) - 2.5) < 0.05 and abs(float(fitted["b"]) - 1.3) < 0.05, out
    for variant in ("nlsq verbose=0", "nlsq verbose=2", "scipy trf"):
        assert re.search(rf"^\s+{variant}\s+\d+\.\d+\s+\d+\.\d+x$", out, flags=re.M), out
    assert re.search(r"\b0 dropped", out), out
