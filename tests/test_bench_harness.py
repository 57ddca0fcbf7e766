"""The benchmark harness runs end to end (``benches/run.py --quick``), so it cannot rot.

One subprocess runs every bench in its quick mode; the checks are on what it
wrote, never on timings: every bench produced its JSON with the machine it ran
on, a non-empty markdown table and a plot, every line-count check passed, and
the summary collects every table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benches" / "run.py"
sys.path.insert(0, str(REPO / "benches"))

from run import BENCHES  # noqa: E402

MACHINE_KEYS = {"cpu", "cores", "python", "jax", "jaxlib", "backend", "device", "commit", "date"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench_quick")
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"run.py --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    summaries = list(out.glob("*-summary.md"))
    assert len(summaries) == 1, f"expected one summary, found {summaries}"
    platform = summaries[0].name.removesuffix("-summary.md")
    return out, platform


def _result(out: Path, platform: str, name: str) -> dict[str, Any]:
    path = out / f"{platform}-{name}.json"
    assert path.is_file(), f"{name}: no {path.name}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", BENCHES)
def test_every_bench_wrote_json_table_and_plot(quick_run: tuple[Path, str], name: str) -> None:
    out, platform = quick_run
    result = _result(out, platform, name)
    assert result["name"] == name
    assert result["quick"] is True
    assert MACHINE_KEYS <= set(result["machine"]), set(result["machine"])
    assert all(str(result["machine"][k]).strip() for k in MACHINE_KEYS)
    assert result["title"].strip()
    table = result["table"].strip().splitlines()
    assert len(table) >= 3, f"{name}: table has no rows:\n{result['table']}"
    assert table[0].startswith("|") and set(table[1]) <= set("|-: ")
    assert (out / f"{platform}-{name}.png").stat().st_size > 1000


def test_summary_collects_every_table(quick_run: tuple[Path, str]) -> None:
    out, platform = quick_run
    summary = (out / f"{platform}-summary.md").read_text()
    assert "Quick run" in summary
    for name in BENCHES:
        assert _result(out, platform, name)["title"] in summary


def test_line_count_checks_passed(quick_run: tuple[Path, str]) -> None:
    out, platform = quick_run
    # Benches that raise on a mismatch record the counts; ours record named checks.
    callback = _result(out, platform, "bench_callback")
    for label, m in callback["measurements"].items():
        if m["lines_per_run"]:
            assert callback["line_counts"][label] >= m["lines_per_run"] * m["runs"], label
    ffi = _result(out, platform, "bench_ffi")
    n, reps = ffi["iterations"], ffi["repeats"]
    assert ffi["line_counts"] == {"ring": 2 * n * reps, "own": n * reps, "noop": n * reps}
    for name in ("bench_fit_overhead", "bench_slow_sink"):
        checks = _result(out, platform, name)["checks"]
        assert checks and all(checks.values()), (name, checks)


def test_fit_overhead_variants_wrote_the_same_lines(quick_run: tuple[Path, str]) -> None:
    out, platform = quick_run
    result = _result(out, platform, "bench_fit_overhead")
    for size in result["sizes"]:
        by_verbose: dict[int, set[int]] = {}
        for label, v in size["variants"].items():
            if v["route"] is None:
                assert set(v["line_counts"]) == {0}, label
            else:
                by_verbose.setdefault(v["verbose"], set()).update(v["line_counts"])
        assert set(by_verbose) == {1, 2}
        assert all(len(c) == 1 for c in by_verbose.values()), by_verbose
        assert by_verbose[2].pop() > by_verbose[1].pop()
    assert "blocking_print" in {v["route"] for v in result["sizes"][0]["variants"].values()}


def test_slow_sink_accounts_for_every_line(quick_run: tuple[Path, str]) -> None:
    out, platform = quick_run
    result = _result(out, platform, "bench_slow_sink")
    for workload in ("loop", "fit"):
        for label, v in result[workload]["variants"].items():
            if v["route"] is None:
                continue
            assert v["lines_written"] + v["dropped"] == v["lines_logged"], (workload, label)
            if v["policy"] != "drop_new":
                assert v["dropped"] == 0, (workload, label)
