"""``tr_solver='lsmr'``: trust-region steps from LSMR, as scipy's ``trf.py`` / ``dogbox.py``.

* TRF (``trf_subspace``): LSMR gives an approximate Gauss-Newton step ``gn_h``
  (regularized, scipy's ``tr_options['regularize']``, by the anti-gradient's model
  value over the radius); the trust-region problem is then solved exactly in the
  2-D subspace spanned by ``g_h`` and ``gn_h`` (:func:`solve_trust_region_2d`).
  With bounds, LSMR works on ``[J_h; diag(sqrt(diag_h + reg))]`` and ``[f; 0]``.
* dogbox (``dogbox_newton_step``): LSMR's Gauss-Newton step in the scaled
  variables, active variables excluded from every product.

``tr_options`` are scipy's: ``regularize`` (TRF, default True), ``damp``,
``atol``, ``btol``, ``conlim``, ``maxiter`` (LSMR's; ``show`` is accepted and
does nothing).  They are static: a change recompiles.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax.numpy as jnp
import numpy as np

from ._common import build_quadratic_1d, minimize_quadratic_1d, norm, safe_div
from ._lsmr import lsmr
from ._operator import LinearMap, representation, right_multiplied

TR_SOLVERS = (None, "exact", "lsmr")
_LSMR_KEYS = ("damp", "atol", "btol", "conlim", "maxiter", "show")


@dataclasses.dataclass(frozen=True)
class LsmrOptions:
    """``tr_options`` for 'lsmr' (hashable: part of the compiled solver's key)."""

    damp: float = 0.0
    atol: float = 1e-6
    btol: float = 1e-6
    conlim: float = 1e8
    maxiter: int | None = None
    regularize: bool = True

    def lsmr_kwargs(self, damp=None) -> dict:
        return dict(
            damp=self.damp if damp is None else damp,
            atol=self.atol,
            btol=self.btol,
            conlim=self.conlim,
            maxiter=self.maxiter,
        )


def check_tr_options(tr_options, method: str, stacklevel: int = 3) -> LsmrOptions:
    """scipy's handling: unknown keys are an error (as ``lsmr()`` raises); dogbox drops
    'regularize' with a warning."""
    options = dict(tr_options or {})
    if method == "dogbox" and "regularize" in options:
        warnings.warn(
            "The keyword 'regularize' in `tr_options` is not relevant for 'dogbox' method.",
            stacklevel=stacklevel,
        )
        del options["regularize"]
    unknown = set(options) - set(_LSMR_KEYS) - {"regularize"}
    if unknown:
        raise TypeError(
            f"`tr_options` for tr_solver='lsmr' got unexpected keyword(s) {sorted(unknown)}; "
            f"known: {sorted((*_LSMR_KEYS, 'regularize'))}."
        )
    options.pop("show", None)
    maxiter = options.get("maxiter")
    if maxiter is not None and (not isinstance(maxiter, (int, np.integer)) or maxiter < 1):
        raise ValueError(f"tr_options['maxiter'] must be a positive int or None, got {maxiter!r}.")
    kwargs = {k: float(v) for k, v in options.items() if k in ("damp", "atol", "btol", "conlim")}
    return LsmrOptions(
        **kwargs,
        maxiter=None if maxiter is None else int(maxiter),
        regularize=bool(options.get("regularize", True)),
    )


def choose_tr_solver(tr_solver, method: str, jac_sparsity, jac_callable: bool) -> str:
    """scipy's rules for ``tr_solver`` (and ``jac_sparsity``) per method."""
    if tr_solver not in TR_SOLVERS:
        raise ValueError("`tr_solver` must be None, 'exact' or 'lsmr'.")
    # scipy uses `jac_sparsity` for finite differences only: a `jac` callable ignores it.
    sparse = jac_sparsity is not None and not jac_callable
    if method == "lm":
        if sparse:
            raise ValueError("method='lm' does not support `jac_sparsity`.")
        return "exact"  # scipy's MINPACK ignores tr_solver
    if sparse and tr_solver == "exact":
        raise ValueError("tr_solver='exact' is incompatible with `jac_sparsity`.")
    if tr_solver is None:
        return "lsmr" if sparse else "exact"
    return tr_solver


def configure(problem, tr_solver: str, tr_options, jac_sparsity, jac_callable: bool):
    """``problem`` set up for ``tr_solver`` (and its pattern)."""
    if tr_solver != "lsmr":
        return problem
    from ._sparsity import prepare_sparsity

    options = check_tr_options(tr_options, problem.method, stacklevel=4)
    sparsity = None
    if jac_sparsity is not None and not jac_callable:
        sparsity = prepare_sparsity(jac_sparsity, None, problem.n)
    problem = dataclasses.replace(
        problem, tr_solver="lsmr", lsmr_options=options, sparsity=sparsity
    )
    if problem.jac_scale and representation(problem) == "matrix-free":
        raise ValueError(
            "x_scale='jac' needs the Jacobian's column norms, which the matrix-free "
            "tr_solver='lsmr' never forms; give `jac_sparsity` or a numeric `x_scale`."
        )
    return problem


def solve_trust_region_2d(B, g, Delta):
    """``min 0.5 p^T B p + g^T p`` over ``||p|| <= Delta`` in 2-D (scipy's function).

    The Newton step when ``B`` is positive definite (its Cholesky factor exists) and
    the step lies inside; otherwise the minimum on the circle ``p = Delta (cos t, sin t)``:
    the best of 64 samples, refined by safeguarded Newton steps on ``q'(t) = 0``
    (scipy finds the same point as a root of a quartic).
    """
    b00, b01, b11 = B[0, 0], B[0, 1], B[1, 1]
    l00 = jnp.sqrt(jnp.where(b00 > 0, b00, 1.0))
    l10 = b01 / l00
    schur = b11 - l10 * l10
    positive_definite = (b00 > 0) & (schur > 0)
    l11 = jnp.sqrt(jnp.where(schur > 0, schur, 1.0))
    y0 = g[0] / l00
    y1 = (g[1] - l10 * y0) / l11
    p1 = -y1 / l11
    p0 = -(y0 + l10 * p1) / l00
    p_newton = jnp.stack([p0, p1])
    newton_ok = positive_definite & (jnp.dot(p_newton, p_newton) <= Delta**2)

    def value(t):
        c, s = jnp.cos(t), jnp.sin(t)
        quad = b00 * c * c + 2 * b01 * c * s + b11 * s * s
        return 0.5 * Delta**2 * quad + Delta * (g[0] * c + g[1] * s)

    def slope_curvature(t):
        c, s = jnp.cos(t), jnp.sin(t)
        d1 = Delta**2 * ((b11 - b00) * c * s + b01 * (c * c - s * s)) + Delta * (
            g[1] * c - g[0] * s
        )
        d2 = Delta**2 * ((b11 - b00) * (c * c - s * s) - 4 * b01 * c * s) - Delta * (
            g[0] * c + g[1] * s
        )
        return d1, d2

    samples = 64
    spacing = 2 * math.pi / samples
    grid = jnp.arange(samples) * spacing
    t = grid[jnp.argmin(value(grid))]
    for _ in range(8):
        d1, d2 = slope_curvature(t)
        move = jnp.clip(-safe_div(d1, jnp.where(d2 > 0, d2, 0.0)), -spacing, spacing)
        candidate = t + move
        t = jnp.where(value(candidate) <= value(t), candidate, t)
    p_circle = Delta * jnp.stack([jnp.cos(t), jnp.sin(t)])
    return jnp.where(newton_ok, p_newton, p_circle), newton_ok


def _regularization(J_h, g_h, Delta, diag_h=None):
    """scipy's ``reg_term``: -(best anti-gradient model value within the radius) / Delta^2."""
    a, b, _ = build_quadratic_1d(J_h, g_h, -g_h, diag=diag_h)
    to_tr = safe_div(Delta, norm(g_h))
    ag_value = minimize_quadratic_1d(a, b, 0.0, to_tr)[1]
    return -ag_value / Delta**2


def _augmented(J_h: LinearMap, diag, m: int) -> LinearMap:
    """``[J_h; diag(diag)]`` (scipy's ``regularized_lsq_operator``)."""
    return LinearMap(
        lambda v: jnp.concatenate([J_h.matvec(v), diag * v]),
        lambda u: J_h.rmatvec(u[:m]) + diag * u[m:],
    )


def trf_subspace(problem, J: LinearMap, f, d, g_h, diag_h, Delta):
    """``(J_h, S, B_S, g_S)`` of scipy's TRF 'lsmr' branch (with or without bounds)."""
    options = problem.lsmr_options
    n = g_h.shape[0]
    m = f.shape[0]
    J_h = right_multiplied(J, d)
    if diag_h is None:
        reg = _regularization(J_h, g_h, Delta) if options.regularize else 0.0
        damp_full = jnp.sqrt(options.damp**2 + reg)
        gn_h = lsmr(J_h.matvec, J_h.rmatvec, f, n, **options.lsmr_kwargs(damp_full)).x
    else:
        reg = _regularization(J_h, g_h, Delta, diag_h) if options.regularize else 0.0
        op = _augmented(J_h, jnp.sqrt(diag_h + reg), m)
        f_aug = jnp.concatenate([f, jnp.zeros(n, f.dtype)])
        gn_h = lsmr(op.matvec, op.rmatvec, f_aug, n, **options.lsmr_kwargs()).x
    S, _ = jnp.linalg.qr(jnp.stack([g_h, gn_h], axis=1), mode="reduced")
    JS = J_h @ S
    B_S = JS.T @ JS
    if diag_h is not None:
        B_S = B_S + (S.T * diag_h) @ S
    return J_h, S, B_S, S.T @ g_h


def dogbox_newton_step(problem, J: LinearMap, f, scale, active):
    """scipy's dogbox 'lsmr' Gauss-Newton step: LSMR in the scaled variables, active ones out."""
    n = scale.shape[0]
    keep = ~active

    def matvec(v):
        return J.matvec(jnp.where(keep, v, 0.0) * scale)

    def rmatvec(u):
        return jnp.where(keep, scale * J.rmatvec(u), 0.0)

    step = lsmr(matvec, rmatvec, f, n, **problem.lsmr_options.lsmr_kwargs()).x
    return jnp.where(keep, -step * scale, 0.0)
