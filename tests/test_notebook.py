"""verbose output in a real Jupyter kernel (ipykernel, driven by nbclient).

ipykernel replaces ``sys.stdout`` with an ``OutStream`` whose ``fileno()`` is the
kernel's original terminal. Lines written to that descriptor never reach the
notebook, so the table must go through the stream: into the cell that ran the
fit, while the fit runs, and none of it into the next cell.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import nlsq
import pytest

HEADER = "{:^15}{:^15}{:^15}{:^15}{:^15}{:^15}".format(
    "Iteration", "Total nfev", "Cost", "Cost reduction", "Step norm", "Optimality"
)
ROW = re.compile(r"^ {3,}\d+ {3,}\d+ {3,}\d\.\d{4}e[+-]\d\d ")
CLOSING = re.compile(r"^Function evaluations \d+, initial cost \S+, final cost \S+, ")

# The kernel imports the nlsq this test imports (a worktree, or the installed one).
SETUP = f"""
import sys, time
sys.path.insert(0, {str(Path(nlsq.__file__).resolve().parents[1])!r})
import numpy as np, jax.numpy as jnp
from nlsq import curve_fit

def model(x, a, b, c):
    return a * jnp.exp(-b * x) + c * jnp.cos(b * x)

def data(n, seed=0):
    x = np.linspace(0.0, 5.0, n)
    noise = np.random.default_rng(seed).standard_normal(n)
    return x, 2.5 * np.exp(-1.3 * x) + 0.5 * np.cos(1.3 * x) + 0.01 * noise
"""


class TimedClient(nbclient.NotebookClient):
    """Records, for every output message, the kernel's send time and the cell."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[tuple[int, float, dict[str, Any]]] = []

    def output(self, outs, msg, display_id, cell_index):  # type: ignore[no-untyped-def]
        date = msg["header"]["date"]
        if isinstance(date, str):
            date = datetime.fromisoformat(date)
        self.messages.append((cell_index, date.timestamp(), msg["content"]))
        return super().output(outs, msg, display_id, cell_index)


KERNEL = "nlsq-test-python"


@pytest.fixture(autouse=True)
def _kernel_of_this_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A kernel spec of our own name, run by this interpreter: a "python3" spec
    # installed elsewhere on the machine (another Python) cannot be picked.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))


def run_notebook(*cells: str) -> tuple[Any, TimedClient]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (SETUP, *cells)]
    client = TimedClient(nb, timeout=600, kernel_name=KERNEL, allow_errors=False)
    client.execute()
    return nb, client


def stdout_of(cell: Any) -> str:
    assert all(o.output_type == "stream" and o.name == "stdout" for o in cell.outputs), [
        (o.output_type, o.get("name")) for o in cell.outputs
    ]
    return "".join(o.text for o in cell.outputs)


def assert_table(text: str) -> None:
    lines = text.splitlines()
    assert lines[0] == HEADER, lines[:3]
    assert len(lines) >= 5
    assert all(ROW.match(line) for line in lines[1:-2]), lines[1:-2]
    assert lines[-2].endswith("termination condition is satisfied."), lines[-2]
    assert CLOSING.match(lines[-1]), lines[-1]


def test_table_is_in_the_fit_cell_and_the_next_cell_has_only_its_own_output() -> None:
    nb, _ = run_notebook(
        "x, y = data(200)\npopt, pcov = curve_fit(model, x, y, p0=[1.0, 1.0, 1.0], verbose=2)",
        'print("next cell")',
        # A second fit later in the session: still in its own cell.
        "popt, pcov = curve_fit(model, x, y * 1.01, p0=[1.0, 1.0, 1.0], verbose=2)",
    )
    assert nb.cells[0].outputs == []
    assert_table(stdout_of(nb.cells[1]))
    assert stdout_of(nb.cells[2]) == "next cell\n"
    assert_table(stdout_of(nb.cells[3]))


def test_rows_of_a_long_fit_reach_the_notebook_before_the_fit_returns() -> None:
    # The first fit compiles; the second (same shapes) is the timed one. Its rows
    # are pushed from inside the compiled loop; the drain writes them to the
    # kernel's stream while the fit's thread waits in XLA (without the GIL),
    # and ipykernel sends them every 0.2 s.  'trf': its QR route keeps the fit long
    # enough to watch (lm's Gram route finishes n = 1e6 in under 0.4 s).
    fit = (
        "curve_fit(model, x, y, p0=[1.0, 0.1, 3.0], verbose=2, ftol=1e-15, xtol=1e-15, "
        'gtol=1e-15, max_nfev=40, method="trf")'
    )
    nb, client = run_notebook(
        f"x, y = data(1_000_000)\n{fit}",
        "y = data(1_000_000, seed=1)[1]\n"
        "start = time.time()\n"
        f"{fit}\n"
        'print("RETURNED", time.time() - start, time.time())',
    )
    text = stdout_of(nb.cells[2])
    assert_table(text.rsplit("RETURNED", 1)[0])
    fit_seconds, returned_at = map(float, text.rsplit("RETURNED", 1)[1].split())
    rows = [
        (sent, content["text"].count("\n"))
        for cell, sent, content in client.messages
        if cell == 2 and "text" in content and "RETURNED" not in content["text"]
    ]
    early = [(sent, n) for sent, n in rows if sent < returned_at]
    # More than one message carried rows before the fit returned: they were
    # sent while it ran, not in one piece at the end.
    assert len(early) >= 2, (fit_seconds, rows, returned_at)
    assert min(sent for sent, _ in early) < returned_at - 0.2 * fit_seconds, (
        fit_seconds,
        rows,
        returned_at,
    )
    assert fit_seconds > 0.5, "the fit was too short to show progress"
