"""``curve_fit(verbose=2)`` writes the same bytes in every environment of the matrix.

The golden file was written by this fit; every environment of ``make test-matrix``
(CPython 3.10 to 3.13, jax 0.6 to 0.12, whichever logging route the table picks
there) must reproduce it byte for byte.  Regenerate only on purpose:
``NLSQ_WRITE_GOLDEN=1 pytest tests/test_golden_table.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from nlsq import curve_fit, least_squares
from nlsq.utils import async_logger

GOLDEN = Path(__file__).parent / "golden"

# Deterministic data (no RNG: generators differ across NumPy versions).
X = np.linspace(0.0, 4.0, 60)
Y = 2.5 * np.exp(-1.3 * X) + 0.5 + 0.02 * np.sin(7.0 * X)


def exp_model(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def rosenbrock(p):
    return jnp.array([10.0 * (p[1] - p[0] ** 2), 1.0 - p[0]])


CASES = {
    "curve_fit_trf_verbose2.txt": lambda: curve_fit(
        exp_model, X, Y, p0=[1, 1, 0], method="trf", verbose=2
    ),
    "curve_fit_lm_verbose2.txt": lambda: curve_fit(
        exp_model, X, Y, p0=[1, 1, 0], method="lm", verbose=2
    ),
    "least_squares_bounded_verbose2.txt": lambda: least_squares(
        rosenbrock, np.array([-1.2, 1.0]), bounds=([-2.0, -2.0], [0.9, 2.0]), verbose=2
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_table_is_byte_identical_to_golden(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    async_logger.configure(sink=str(path))
    try:
        CASES[name]()
    finally:
        async_logger.configure()
    written = path.read_bytes()
    golden = GOLDEN / name
    if os.environ.get("NLSQ_WRITE_GOLDEN") == "1":
        golden.write_bytes(written)
    assert written == golden.read_bytes(), written.decode()
