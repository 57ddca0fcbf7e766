"""``import nlsq`` stays light: scipy.optimize is imported on first use only."""

import os
import subprocess
import sys
from pathlib import Path

PYTHON_DIR = str(Path(__file__).resolve().parents[1] / "python")

SCRIPT = """
import sys
import numpy as np
import jax.numpy as jnp
import nlsq

assert "scipy.optimize" not in sys.modules, "import nlsq imported scipy.optimize"
x = np.linspace(0.0, 4.0, 50)
popt, pcov = nlsq.curve_fit(lambda x, a, b: a * jnp.exp(-b * x), x, 2.0 * np.exp(-0.5 * x),
                            p0=[1.0, 1.0])
assert np.allclose(popt, [2.0, 0.5]), popt
assert pcov.shape == (2, 2)
assert "scipy.optimize" not in sys.modules, "a plain curve_fit imported scipy.optimize"

import scipy.optimize

assert nlsq.OptimizeResult is scipy.optimize.OptimizeResult
assert nlsq.OptimizeWarning is scipy.optimize.OptimizeWarning
res = nlsq.least_squares(lambda p: p - 3.0, np.zeros(2))
assert isinstance(res, scipy.optimize.OptimizeResult) and np.allclose(res.x, 3.0)
assert callable(nlsq.curve_fit_many) and "ManyFitResult" in dir(nlsq)
print("ok")
"""


def test_import_nlsq_leaves_scipy_optimize_for_first_use():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=dict(os.environ, PYTHONPATH=PYTHON_DIR, NLSQ_CACHE_DIR="off"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_unknown_attribute_is_an_attribute_error():
    import nlsq

    try:
        nlsq.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:  # pragma: no cover - the assertion is the test
        raise AssertionError("nlsq.no_such_name did not raise AttributeError")
