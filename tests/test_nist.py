"""NIST StRD nonlinear regression: certified values from both starting points.

The files live in ``../shared/nist`` next to the repository (CI has them), or
in ``$NLSQ_NIST_DIR``.  The
starting values, certified values and data are parsed from each file; the model
of each file is written below with ``jax.numpy``.  Every parameter must agree
with its certified value to at least 4 significant digits (log relative error
>= 4) with ``ftol = xtol = gtol = 1e-14``.

``max_nfev`` is raised from scipy's default ``100 * n`` to 10 000 for every case:
MGH17 from start 1 needs about 1 000 evaluations (scipy's own TRF exhausts the
default 500 there too, and converges with the larger budget, as nlsq does).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from nlsq import curve_fit

# ``NLSQ_NIST_DIR`` points elsewhere (e.g. from a git worktree that has no ``../shared``).
NIST_DIR = Path(
    os.environ.get("NLSQ_NIST_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "nist")
)


def _exp3(x, b1, b2, b3, b4, b5, b6):
    return b1 * jnp.exp(-b2 * x) + b3 * jnp.exp(-b4 * x) + b5 * jnp.exp(-b6 * x)


def _gauss(x, b1, b2, b3, b4, b5, b6, b7, b8):
    return (
        b1 * jnp.exp(-b2 * x)
        + b3 * jnp.exp(-((x - b4) ** 2) / b5**2)
        + b6 * jnp.exp(-((x - b7) ** 2) / b8**2)
    )


def _chwirut(x, b1, b2, b3):
    return jnp.exp(-b1 * x) / (b2 + b3 * x)


def _enso(x, b1, b2, b3, b4, b5, b6, b7, b8, b9):
    w = 2 * jnp.pi * x
    return (
        b1
        + b2 * jnp.cos(w / 12)
        + b3 * jnp.sin(w / 12)
        + b5 * jnp.cos(w / b4)
        + b6 * jnp.sin(w / b4)
        + b8 * jnp.cos(w / b7)
        + b9 * jnp.sin(w / b7)
    )


def _hahn1(x, b1, b2, b3, b4, b5, b6, b7):
    return (b1 + b2 * x + b3 * x**2 + b4 * x**3) / (1 + b5 * x + b6 * x**2 + b7 * x**3)


def _kirby2(x, b1, b2, b3, b4, b5):
    return (b1 + b2 * x + b3 * x**2) / (1 + b4 * x + b5 * x**2)


def _nelson(x, b1, b2, b3):
    # Two predictors, xdata of shape (n, 2); the response is log(y).
    return b1 - b2 * x[:, 0] * jnp.exp(-b3 * x[:, 1])


def _roszman1(x, b1, b2, b3, b4):
    return b1 - b2 * x - jnp.arctan(b3 / (x - b4)) / jnp.pi


MODELS = {
    "Chwirut1": _chwirut,
    "Chwirut2": _chwirut,
    "DanWood": lambda x, b1, b2: b1 * x**b2,
    "ENSO": _enso,
    "Gauss1": _gauss,
    "Gauss2": _gauss,
    "Gauss3": _gauss,
    "Hahn1": _hahn1,
    "Kirby2": _kirby2,
    "Lanczos1": _exp3,
    "Lanczos2": _exp3,
    "Lanczos3": _exp3,
    "MGH17": lambda x, b1, b2, b3, b4, b5: b1 + b2 * jnp.exp(-x * b4) + b3 * jnp.exp(-x * b5),
    "Misra1a": lambda x, b1, b2: b1 * (1 - jnp.exp(-b2 * x)),
    "Misra1b": lambda x, b1, b2: b1 * (1 - (1 + b2 * x / 2) ** (-2)),
    "Misra1c": lambda x, b1, b2: b1 * (1 - (1 + 2 * b2 * x) ** (-0.5)),
    "Misra1d": lambda x, b1, b2: b1 * b2 * x * ((1 + b2 * x) ** (-1)),
    "Nelson": _nelson,
    "Roszman1": _roszman1,
}

_PARAM = re.compile(r"^\s*b(\d+)\s*=\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


def parse_nist(path: Path):
    """(start1, start2, certified, x, y) from a StRD nonlinear regression file."""
    lines = path.read_text().splitlines()
    starts1, starts2, certified = [], [], []
    data_at = None
    for i, line in enumerate(lines):
        m = _PARAM.match(line)
        if m:
            starts1.append(float(m.group(2)))
            starts2.append(float(m.group(3)))
            certified.append(float(m.group(4)))
        if re.match(r"^\s*Data:\s+y\b", line):
            data_at = i + 1
    assert certified and data_at is not None, f"cannot parse {path}"
    rows = np.array([[float(v) for v in line.split()] for line in lines[data_at:] if line.strip()])
    y, x = rows[:, 0], rows[:, 1:]
    x = x[:, 0] if x.shape[1] == 1 else x
    return np.array(starts1), np.array(starts2), np.array(certified), x, y


def log_relative_error(estimate, certified):
    with np.errstate(divide="ignore"):
        return -np.log10(np.abs(estimate - certified) / np.abs(certified))


# scipy's own dogbox, given the exact Jacobian, ends MGH17 start 1 at the same kind
# of wrong point (see test_mgh17_start1_dogbox_is_scipys_failure): the first
# dogleg step goes to the corner of the 150-wide box, b5 = 2 + 150, where
# exp(-152 x) vanishes and b2, b3 lose their meaning.  Not ours to fix.
_SCIPY_DOGBOX_FAILS = {("MGH17", 1)}
CASES = [
    pytest.param(
        name,
        start,
        method,
        id=f"{name}-start{start}-{method}",
        marks=[pytest.mark.xfail(strict=True, reason="scipy's dogbox fails here too")]
        if method == "dogbox" and (name, start) in _SCIPY_DOGBOX_FAILS
        else [],
    )
    for method in ("trf", "dogbox")
    for name in MODELS
    for start in (1, 2)
]


@pytest.mark.skipif(not NIST_DIR.is_dir(), reason=f"NIST StRD files not found at {NIST_DIR}")
@pytest.mark.parametrize(("name", "start", "method"), CASES)
def test_nist_certified_values(name, start, method):
    s1, s2, certified, x, y = parse_nist(NIST_DIR / f"{name}.dat")
    if name == "Nelson":
        y = np.log(y)
    p0 = s1 if start == 1 else s2
    popt, _ = curve_fit(
        MODELS[name],
        x,
        y,
        p0=p0,
        method=method,
        ftol=1e-14,
        xtol=1e-14,
        gtol=1e-14,
        max_nfev=10_000,
    )
    lre = log_relative_error(popt, certified)
    assert np.all(lre >= 4), f"{name} start {start} {method}: LRE {np.round(lre, 2)}, popt {popt}"


def test_all_nist_files_have_models():
    if not NIST_DIR.is_dir():
        pytest.skip(f"NIST StRD files not found at {NIST_DIR}")
    assert {p.stem for p in NIST_DIR.glob("*.dat")} == set(MODELS)


@pytest.mark.skipif(not NIST_DIR.is_dir(), reason=f"NIST StRD files not found at {NIST_DIR}")
def test_mgh17_start1_dogbox_is_scipys_failure():
    import scipy.optimize as so
    from nlsq import least_squares

    s1, _, _, x, y = parse_nist(NIST_DIR / "MGH17.dat")

    def resid(b):
        return MODELS["MGH17"](x, *b) - y

    def resid_np(b):
        return b[0] + b[1] * np.exp(-x * b[3]) + b[2] * np.exp(-x * b[4]) - y

    def jac_np(b):
        e4, e5 = np.exp(-x * b[3]), np.exp(-x * b[4])
        return np.stack([np.ones_like(x), e4, e5, -x * b[1] * e4, -x * b[2] * e5], axis=1)

    kw = dict(method="dogbox", ftol=1e-14, xtol=1e-14, gtol=1e-14, max_nfev=10_000)
    ref = so.least_squares(resid_np, s1, jac=jac_np, **kw)
    res = least_squares(resid, s1, **kw)
    # Both stop (xtol) at b5 = x0[4] + Delta0 = 152, far from the certified 0.022.
    assert ref.status == res.status == 3
    assert ref.x[4] == pytest.approx(152.0) and res.x[4] == pytest.approx(152.0)
