"""Shared pieces of the trust-region solvers, written for tracing under ``jax.jit``.

Every function here is branch-free (``jnp.where`` instead of Python ``if`` on
values) so that it can live inside ``lax.while_loop``.  Names and the meaning of
the arguments follow scipy's ``optimize/_lsq/common.py`` so that the solver
code reads like the reference algorithm (Branch, Coleman & Li 1999).

Invariant: every function is shape-static; infinities in ``lb``/``ub`` mean an
absent bound and are handled without producing NaN in selected results.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

EPS = float(np.finfo(np.float64).eps)

#: Termination status while the iteration is still running (scipy's ``None``).
RUNNING = -99
#: Status of a fit whose initial residuals were not finite (never reported to users;
#: the wrappers raise scipy's ValueError instead).
BAD_START = -98

TERMINATION_MESSAGES = {
    -1: "Improper input parameters status returned from `leastsq`",
    0: "The maximum number of function evaluations is exceeded.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
    3: "`xtol` termination condition is satisfied.",
    4: "Both `ftol` and `xtol` termination conditions are satisfied.",
}


def norm(x):
    """Euclidean norm."""
    return jnp.sqrt(jnp.dot(x, x))


def safe_div(a, b):
    """``a / b`` where ``b != 0``, else 0 (used only where the result is then masked)."""
    ok = b != 0
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


def in_bounds(x, lb, ub):
    return jnp.all((x >= lb) & (x <= ub))


def step_size_to_bound(x, s, lb, ub):
    """Smallest ``t >= 0`` with ``x + t s`` on a bound and the mask (signed) of bounds hit."""
    nz = s != 0
    s_safe = jnp.where(nz, s, 1.0)
    steps = jnp.where(nz, jnp.maximum((lb - x) / s_safe, (ub - x) / s_safe), jnp.inf)
    min_step = jnp.min(steps)
    hits = jnp.where(steps == min_step, jnp.sign(s), 0.0)
    return min_step, hits


def intersect_trust_region(x, s, Delta):
    """Both roots ``t1 <= t2`` of ``||x + t s|| = Delta`` (``x`` inside the region)."""
    a = jnp.dot(s, s)
    b = jnp.dot(x, s)
    # Rounding can push x a hair outside the region; clamp so the roots stay real.
    c = jnp.minimum(jnp.dot(x, x) - Delta**2, 0.0)
    d = jnp.sqrt(jnp.maximum(b * b - a * c, 0.0))
    q = -(b + jnp.where(b >= 0, d, -d))
    t1 = safe_div(q, a)
    t2 = jnp.where(q != 0, c / jnp.where(q != 0, q, 1.0), 0.0)
    return jnp.minimum(t1, t2), jnp.maximum(t1, t2)


def evaluate_quadratic(J, g, s, diag=None):
    """``0.5 s^T (J^T J + diag) s + g^T s`` for a single step ``s``."""
    Js = J @ s
    q = jnp.dot(Js, Js)
    if diag is not None:
        q = q + jnp.dot(s * diag, s)
    return 0.5 * q + jnp.dot(s, g)


def build_quadratic_1d(J, g, s, diag=None, s0=None):
    """Coefficients of ``f(t) = a t^2 + b t + c`` along ``s0 + t s``."""
    v = J @ s
    a = jnp.dot(v, v)
    if diag is not None:
        a = a + jnp.dot(s * diag, s)
    a = 0.5 * a
    b = jnp.dot(g, s)
    if s0 is None:
        return a, b, 0.0
    u = J @ s0
    b = b + jnp.dot(u, v)
    c = 0.5 * jnp.dot(u, u) + jnp.dot(g, s0)
    if diag is not None:
        b = b + jnp.dot(s0 * diag, s)
        c = c + 0.5 * jnp.dot(s0 * diag, s0)
    return a, b, c


def minimize_quadratic_1d(a, b, lb, ub, c=0.0):
    """Minimum of ``a t^2 + b t + c`` over ``[lb, ub]``: candidates lb, ub, interior extremum.

    Ties resolve like ``np.argmin`` over ``[lb, ub, extremum]``.
    """
    ext = -0.5 * safe_div(b, a)
    ext_ok = (a != 0) & (lb < ext) & (ext < ub)
    t = jnp.stack([lb, ub, jnp.where(ext_ok, ext, lb)])
    y = t * (a * t + b) + c
    y = y.at[2].set(jnp.where(ext_ok, y[2], jnp.inf))
    i = jnp.argmin(y)
    return t[i], y[i]


def update_tr_radius(Delta, actual_reduction, predicted_reduction, step_norm, bound_hit):
    """New trust radius and the reduction ratio (scipy's rule: x0.25 / x2)."""
    ratio = jnp.where(
        predicted_reduction > 0,
        actual_reduction / jnp.where(predicted_reduction > 0, predicted_reduction, 1.0),
        jnp.where((predicted_reduction == 0) & (actual_reduction == 0), 1.0, 0.0),
    )
    Delta = jnp.where(
        ratio < 0.25,
        0.25 * step_norm,
        jnp.where((ratio > 0.75) & bound_hit, 2.0 * Delta, Delta),
    )
    return Delta, ratio


def check_termination(dF, F, dx_norm, x_norm, ratio, ftol, xtol):
    """Status 2 (ftol), 3 (xtol), 4 (both) or RUNNING."""
    ftol_ok = (dF < ftol * F) & (ratio > 0.25)
    xtol_ok = dx_norm < xtol * (xtol + x_norm)
    return jnp.where(ftol_ok & xtol_ok, 4, jnp.where(ftol_ok, 2, jnp.where(xtol_ok, 3, RUNNING)))


def compute_jac_scale(J, scale_inv_old=None):
    """Column-norm scaling of the Jacobian; never shrinks once started (scipy)."""
    scale_inv = jnp.sqrt(jnp.sum(J * J, axis=0))
    if scale_inv_old is None:
        scale_inv = jnp.where(scale_inv == 0, 1.0, scale_inv)
    else:
        scale_inv = jnp.maximum(scale_inv, scale_inv_old)
    return 1.0 / scale_inv, scale_inv


def CL_scaling_vector(x, g, lb, ub):  # noqa: N802 - the paper's name
    """Coleman-Li scaling vector ``v`` and its derivative sign ``dv``."""
    up = (g < 0) & jnp.isfinite(ub)
    lo = (g > 0) & jnp.isfinite(lb)
    v = jnp.where(lo, x - lb, jnp.where(up, ub - x, 1.0))
    dv = jnp.where(lo, 1.0, jnp.where(up, -1.0, 0.0))
    return v, dv


def find_active_constraints(x, lb, ub, rtol=1e-10):
    """-1 at an active lower bound, 1 at an active upper bound, 0 elsewhere."""
    lower_dist = x - lb
    upper_dist = ub - x
    lower_thr = rtol * jnp.maximum(1.0, jnp.abs(lb))
    upper_thr = rtol * jnp.maximum(1.0, jnp.abs(ub))
    lower = jnp.isfinite(lb) & (lower_dist <= jnp.minimum(upper_dist, lower_thr))
    upper = jnp.isfinite(ub) & (upper_dist <= jnp.minimum(lower_dist, upper_thr))
    return jnp.where(upper, 1, jnp.where(lower, -1, 0))


def make_strictly_feasible(x, lb, ub):
    """Move points on (or beyond) a bound one ulp inside (scipy's ``rstep=0``)."""
    x_new = jnp.where(x <= lb, jnp.nextafter(lb, ub), x)
    x_new = jnp.where(x >= ub, jnp.nextafter(ub, lb), x_new)
    tight = (x_new < lb) | (x_new > ub)
    return jnp.where(tight, 0.5 * (lb + ub), x_new)


def make_strictly_feasible_np(x, lb, ub, rstep=1e-10):
    """Host version with a relative step (used once on ``x0``, as scipy does)."""
    x_new = x.copy()
    lower_dist = x - lb
    upper_dist = ub - x
    lower = np.isfinite(lb) & (
        lower_dist <= np.minimum(upper_dist, rstep * np.maximum(1, np.abs(lb)))
    )
    upper = np.isfinite(ub) & (
        upper_dist <= np.minimum(lower_dist, rstep * np.maximum(1, np.abs(ub)))
    )
    lower &= ~upper
    x_new[lower] = lb[lower] + rstep * np.maximum(1, np.abs(lb[lower]))
    x_new[upper] = ub[upper] - rstep * np.maximum(1, np.abs(ub[upper]))
    tight = (x_new < lb) | (x_new > ub)
    x_new[tight] = 0.5 * (lb[tight] + ub[tight])
    return x_new


def solve_lsq_trust_region(
    n, m, uf, s, V, Delta, initial_alpha, rtol=0.01, max_iter=10, m_true=None
):
    """Exact solution of ``min ||J p + f||, ||p|| <= Delta`` from the SVD ``J = U S V^T``.

    ``uf = U^T f``.  Returns ``(p, alpha)`` where ``alpha`` is the Levenberg-Marquardt
    parameter found by Newton iterations on ``phi(alpha) = ||p(alpha)|| - Delta``
    (More 1978), warm-started from ``initial_alpha``.  ``m_true`` (traced) replaces
    ``m`` in the rank threshold when the residuals are padded with zero rows.
    """
    from jax import lax

    suf = s * uf
    if m >= n:
        threshold = EPS * (m if m_true is None else m_true) * s[0]
        full_rank = s[-1] > threshold
    else:
        full_rank = jnp.asarray(False)
    s_safe = jnp.where(s != 0, s, 1.0)
    p_gn = -V @ (uf / s_safe)
    gn_ok = full_rank & (norm(p_gn) <= Delta)

    def phi_and_derivative(alpha):
        denom = s**2 + alpha
        denom = jnp.where(denom != 0, denom, EPS)
        p_norm = norm(suf / denom)
        phi = p_norm - Delta
        phi_prime = -jnp.sum(suf**2 / denom**3) / jnp.where(p_norm != 0, p_norm, 1.0)
        return phi, phi_prime

    alpha_upper = norm(suf) / Delta
    phi0, phi0_prime = phi_and_derivative(0.0)
    alpha_lower = jnp.where(full_rank, -safe_div(phi0, phi0_prime), 0.0)
    default = jnp.maximum(0.001 * alpha_upper, jnp.sqrt(alpha_lower * alpha_upper))
    alpha0 = jnp.where(~full_rank & (initial_alpha == 0), default, initial_alpha)

    def cond(c):
        it, _, _, _, done = c
        return (it < max_iter) & ~done

    def body(c):
        it, alpha, lo, hi, _ = c
        alpha = jnp.where(
            (alpha < lo) | (alpha > hi),
            jnp.maximum(0.001 * hi, jnp.sqrt(lo * hi)),
            alpha,
        )
        phi, phi_prime = phi_and_derivative(alpha)
        hi = jnp.where(phi < 0, alpha, hi)
        ratio = safe_div(phi, phi_prime)
        lo = jnp.maximum(lo, alpha - ratio)
        alpha = alpha - (phi + Delta) * ratio / Delta
        return it + 1, alpha, lo, hi, jnp.abs(phi) < rtol * Delta

    _, alpha, _, _, _ = lax.while_loop(
        cond, body, (0, alpha0, alpha_lower, alpha_upper, jnp.asarray(False))
    )
    p = -V @ (suf / (s**2 + alpha))
    pn = norm(p)
    p = jnp.where(pn > 0, p * (Delta / jnp.where(pn > 0, pn, 1.0)), p)
    return jnp.where(gn_ok, p_gn, p), jnp.where(gn_ok, 0.0, alpha)
