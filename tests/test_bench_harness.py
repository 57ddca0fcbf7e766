"""The benchmark harness runs end to end (``benches/run.py --quick``), so it cannot rot.

One subprocess runs every bench in its quick mode; the checks are on what it
wrote, never on timings: every bench kept the contract of ``benches/_harness.py``
(its JSON with the machine it ran on, a non-empty markdown table, plot panels and
a PNG drawn from them), every check it made passed, and the summary collects
every table. The shared helpers are also tested on their own.
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

import _harness  # noqa: E402
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
    _harness.check_result(result, name)
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


@pytest.mark.parametrize("name", BENCHES)
def test_every_check_a_bench_made_passed(quick_run: tuple[Path, str], name: str) -> None:
    out, platform = quick_run
    checks = _result(out, platform, name)["checks"]
    assert all(checks.values()), checks
    if name != "ring_micro":  # ring_micro raises on every mismatch instead
        assert checks, f"{name} recorded no checks"


def test_line_count_checks_passed(quick_run: tuple[Path, str]) -> None:
    out, platform = quick_run
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
            # Checked per run by the bench: every line written, or (drops, only under
            # drop_new) every record written or counted dropped. A record may hold two
            # lines (a fit's header with row 0, its closing lines).
            assert v["every_line_accounted_for"], (workload, label)
            if v["dropped"] == 0:
                assert v["lines_written"] == v["lines_logged"], (workload, label)
            if v["policy"] != "drop_new":
                assert v["dropped"] == 0, (workload, label)


# --- the shared helpers -----------------------------------------------------------------


def test_interleaved_medians_interleaves_rotates_and_runs_hooks_untimed() -> None:
    order: list[str] = []
    variants = {k: (lambda k=k: order.append(k)) for k in "abc"}
    hooks: list[str] = []
    timing = _harness.interleaved_medians(
        variants,
        3,
        warmup=1,
        rotate=True,
        before=lambda name: hooks.append(f"<{name}"),
        after=lambda name, seconds: hooks.append(f"{name}>"),
    )
    assert "".join(order) == "abc" + "abc" + "bca" + "cab"
    assert hooks[:2] == ["<a", "a>"] and len(hooks) == 2 * len(order)
    assert list(timing) == ["a", "b", "c"]
    for t in timing.values():
        assert t["repeats"] == 3 and len(t["samples_s"]) == 3
        assert t["min_s"] <= t["median_s"] <= t["max_s"]


def test_markdown_table_and_its_errors() -> None:
    table = _harness.markdown_table(["variant", "ms"], [["a", 1.5], ["b", 2]])
    assert table.splitlines() == ["| variant | ms |", "|---|---:|", "| a | 1.5 |", "| b | 2 |"]
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        _harness.markdown_table(["variant", "ms"], [["a"]])
    with pytest.raises(ValueError, match="align"):
        _harness.markdown_table(["variant", "ms"], [], align="lx")


def test_bench_result_names_what_is_missing() -> None:
    panel = _harness.bars("t", "x", ["a"], {"s": [1.0]})
    result = _harness.bench_result(
        "bench_x", title="T", table="| a |\n|---|\n| 1 |", checks={"ok": True}, plot=[panel], n=3
    )
    assert result["n"] == 3 and result["checks"] == {"ok": True}
    with pytest.raises(ValueError, match=r"lacks \['plot'\]"):
        _harness.check_result({k: result[k] for k in ("name", "title", "table", "checks")}, "b")
    with pytest.raises(ValueError, match="no plot panels"):
        _harness.bench_result("bench_x", title="T", table="t", checks={}, plot=[])


def test_save_plot_draws_every_panel_kind(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = {
        "title": "a title " * 30,
        "plot": [
            _harness.bars(
                "bars",
                "x",
                ["a", "b"],
                {"s": [1.0, 2.0], "t": [2.0, 3.0]},
                reference=("floor", 1.5),
                log=True,
            ),
            _harness.lines(
                "lines",
                "n",
                "ms",
                [1, 10],
                {"v1": [1, 2], "v2": [2, 3]},
                reference=("target", 2.5),
                dotted=["v1"],
            ),
        ],
    }
    _harness.save_plot(result, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
