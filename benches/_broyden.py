"""The sparse Broyden tridiagonal system (scipy's own ``jac_sparsity`` example).

``f_i = (3 - x_i) x_i + 1 - x_{i-1} - 2 x_{i+1}``: p residuals in p parameters,
each residual touching three neighbouring parameters, so the Jacobian is
tridiagonal.  One definition serves the many-parameter bench
(``bench_large_p``) and the scipy-parity tests of 'lsmr' and ``jac_sparsity``
(``tests/test_parity_lsmr.py``, which puts this folder on ``sys.path``, as
``tests/test_bench_harness.py`` does for ``_harness``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def broyden(x):
    """The residuals of a JAX array ``x``."""
    f = (3 - x) * x + 1
    f = f.at[1:].add(-x[:-1])
    return f.at[:-1].add(-2 * x[1:])


def broyden_np(x):
    """The residuals of a NumPy array ``x`` (for scipy)."""
    f = (3 - x) * x + 1
    f[1:] -= x[:-1]
    f[:-1] -= 2 * x[1:]
    return f


def broyden_jac(x):
    """The exact Jacobian, dense (for scipy's ``jac=``)."""
    n = x.size
    return sp.diags([-np.ones(n - 1), 3 - 2 * x, -2 * np.ones(n - 1)], [-1, 0, 1]).toarray()


def broyden_sparsity(p: int):
    """The Jacobian's nonzero pattern for ``p`` parameters (``jac_sparsity=``): tridiagonal."""
    return sp.diags([np.ones(p - 1), np.ones(p), np.ones(p - 1)], [-1, 0, 1], format="csr")
