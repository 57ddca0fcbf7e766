"""Levenberg-Marquardt (More 1978, MINPACK ``lmder``) in the TRF framework.

Same shape as ``_trf``: a NamedTuple state, one ``step`` (one Jacobian
evaluation followed by an inner ``lax.while_loop`` of trial steps), and one
``lax.while_loop`` driver.  The algorithmic rules are MINPACK's, which is what
``scipy.optimize.least_squares(method='lm')`` calls:

* variable scaling ``diag`` from the Jacobian column norms (``x_scale='jac'``,
  never decreasing) or ``1 / x_scale``; initial radius ``factor * ||diag x||``;
* trust-region radius and LM parameter ``par`` updated with MINPACK's rules
  (``ratio <= 0.25`` shrink by ``temp``, ``ratio >= 0.75`` expand to ``2 ||D p||``);
  a step is accepted when ``ratio >= 1e-4``;
* MINPACK's convergence tests (``info`` 1-8), reported with scipy's status codes.

The LM step itself comes from the SVD trust-region solver shared with TRF
(``solve_lsq_trust_region``, MINPACK's 10 % tolerance on the radius), so the
QR-reduced Jacobian is reused exactly as in ``_trf``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._common import BAD_START, EPS, norm, safe_div, solve_lsq_trust_region
from ._trf import SolveResult, reduce_jacobian

#: MINPACK ``info`` -> scipy status (6, 7, 8: tolerances below machine precision).
_INFO_TO_STATUS = jnp.array([-1, 2, 3, 4, 1, 0, 2, 3, 1])
_FACTOR = 100.0


class LMState(NamedTuple):
    x: jax.Array
    f: jax.Array
    fnorm: jax.Array
    J: jax.Array
    R: jax.Array
    qtf: jax.Array
    diag: jax.Array
    delta: jax.Array
    par: jax.Array
    nfev: jax.Array
    njev: jax.Array
    iteration: jax.Array
    accepted_any: jax.Array
    info: jax.Array  # MINPACK code, 0 while running
    gnorm: jax.Array  # MINPACK's scaled gradient (cosine) norm, for the gtol test
    g_norm: jax.Array  # max |J^T f|, scipy's optimality (the logged one)
    step_norm: jax.Array
    actual_reduction: jax.Array
    ok0: jax.Array

    # ``log_row`` reads these names on both solvers.
    @property
    def cost(self):
        return 0.5 * self.fnorm**2


def _colnorms(J):
    return jnp.sqrt(jnp.sum(J * J, axis=0))


def _gnorm(J, f, fnorm):
    """MINPACK's max cosine between ``f`` and a Jacobian column."""
    cn = _colnorms(J)
    g = J.T @ f
    cos = jnp.where(cn != 0, jnp.abs(g) / jnp.where(cn != 0, cn, 1.0), 0.0)
    return jnp.where(fnorm != 0, jnp.max(cos) / jnp.where(fnorm != 0, fnorm, 1.0), 0.0)


def lm(
    fun: Callable,
    jac: Callable,
    x0,
    ftol,
    xtol,
    gtol,
    max_nfev,
    x_scale,
    *,
    jac_scale: bool,
    log_row: Callable | None = None,
    m_true=None,
) -> SolveResult:
    """Run MINPACK-style LM from ``x0`` (no bounds, linear loss)."""
    n = x0.shape[0]
    dtype = x0.dtype
    f0 = fun(x0)
    m = f0.shape[0]
    ok0 = jnp.all(jnp.isfinite(f0))
    fnorm0 = norm(f0)
    J0 = jac(x0)
    R0, qtf0 = reduce_jacobian(J0, f0)
    if jac_scale:
        cn = _colnorms(J0)
        diag = jnp.where(cn == 0, 1.0, cn)
    else:
        diag = 1.0 / x_scale
    xnorm = norm(diag * x0)
    delta = jnp.where(xnorm == 0, _FACTOR, _FACTOR * xnorm)
    gnorm = _gnorm(J0, f0, fnorm0)
    zero = jnp.zeros((), dtype)
    st = LMState(
        x=x0,
        f=f0,
        fnorm=fnorm0,
        J=J0,
        R=R0,
        qtf=qtf0,
        diag=diag,
        delta=delta,
        par=zero,
        nfev=jnp.asarray(1),
        njev=jnp.asarray(1),
        iteration=jnp.asarray(0),
        accepted_any=jnp.asarray(False),
        info=jnp.where(ok0, jnp.where(gnorm <= gtol, 4, 0), -1),
        gnorm=gnorm,
        g_norm=jnp.max(jnp.abs(J0.T @ f0)),
        step_norm=zero,
        actual_reduction=zero,
        ok0=ok0,
    )
    if log_row is not None:
        log_row(st, first=True)

    def step(st: LMState) -> LMState:
        diag = st.diag
        if jac_scale:
            diag = jnp.maximum(diag, _colnorms(st.J))
        J_h = st.R / diag
        U, s, Vt = jnp.linalg.svd(J_h, full_matrices=False)
        V = Vt.T
        uf = U.T @ st.qtf

        def trial_cond(c):
            return ~c[-1]

        def trial(c):
            delta, par, nfev, x, f, fnorm, xnorm, acc, info, step_norm, ared_cost, _ = c
            p_h, par_new = solve_lsq_trust_region(
                n, m, uf, s, V, delta, par, rtol=0.1, m_true=m_true
            )
            p = p_h / diag
            pnorm = norm(p_h)
            delta = jnp.where(st.accepted_any | acc, delta, jnp.minimum(delta, pnorm))
            x_try = st.x + p
            f_try = fun(x_try)
            fnorm1 = norm(f_try)
            blown = ~jnp.isfinite(fnorm1) | (0.1 * fnorm1 >= st.fnorm)
            actred = jnp.where(blown, -1.0, 1 - (fnorm1 / st.fnorm) ** 2)
            Jp = st.R @ p
            fn2 = st.fnorm**2
            prered = -(2 * jnp.dot(st.qtf, Jp) + jnp.dot(Jp, Jp)) / fn2
            dirder = jnp.dot(st.qtf, Jp) / fn2
            ratio = safe_div(actred, prered)
            temp = jnp.where(actred >= 0, 0.5, 0.5 * safe_div(dirder, dirder + 0.5 * actred))
            temp = jnp.where(blown | (temp < 0.1), 0.1, temp)
            shrink = ratio <= 0.25
            grow = ~shrink & ((par_new == 0) | (ratio >= 0.75))
            delta = jnp.where(
                shrink, temp * jnp.minimum(delta, pnorm / 0.1), jnp.where(grow, pnorm / 0.5, delta)
            )
            par_new = jnp.where(shrink, par_new / temp, jnp.where(grow, 0.5 * par_new, par_new))
            ok = ratio >= 1e-4
            x = jnp.where(ok, x_try, x)
            f = jnp.where(ok, f_try, f)
            xnorm = jnp.where(ok, norm(diag * x_try), xnorm)
            fnorm_new = jnp.where(ok, fnorm1, fnorm)
            nfev = nfev + 1
            c1 = (jnp.abs(actred) <= ftol) & (prered <= ftol) & (0.5 * ratio <= 1)
            c2 = delta <= xtol * xnorm
            info = jnp.where(c1 & c2, 3, jnp.where(c1, 1, jnp.where(c2, 2, 0)))
            info = jnp.where(info == 0, jnp.where(nfev >= max_nfev, 5, 0), info)
            c6 = (jnp.abs(actred) <= EPS) & (prered <= EPS) & (0.5 * ratio <= 1)
            info = jnp.where(info == 0, jnp.where(c6, 6, 0), info)
            info = jnp.where(info == 0, jnp.where(delta <= EPS * xnorm, 7, 0), info)
            info = jnp.where(info == 0, jnp.where(st.gnorm <= EPS, 8, 0), info)
            step_norm = jnp.where(ok, norm(p), step_norm)
            ared_cost = jnp.where(ok, 0.5 * (fn2 - fnorm1**2), ared_cost)
            done = (info != 0) | ok
            return (
                delta,
                par_new,
                nfev,
                x,
                f,
                fnorm_new,
                xnorm,
                acc | ok,
                info,
                step_norm,
                ared_cost,
                done,
            )

        init = (
            st.delta,
            st.par,
            st.nfev,
            st.x,
            st.f,
            st.fnorm,
            norm(diag * st.x),
            jnp.asarray(False),
            st.info,
            zero,
            zero,
            jnp.asarray(False),
        )
        delta, par, nfev, x, f, fnorm, _, acc, info, step_norm, ared_cost, _ = lax.while_loop(
            trial_cond, trial, init
        )
        # Unlike MINPACK, also re-linearize after the accepted step that ends the
        # fit, so the logged optimality and the returned jac/grad belong to x.
        new_jac = acc

        def on_new(_):
            J = jac(x)
            R, qtf = reduce_jacobian(J, f)
            return J, R, qtf

        J, R, qtf = lax.cond(new_jac, on_new, lambda _: (st.J, st.R, st.qtf), None)
        gnorm = jnp.where(new_jac, _gnorm(J, f, fnorm), st.gnorm)
        info = jnp.where(new_jac & (info == 0) & (gnorm <= gtol), 4, info)
        new = LMState(
            x=x,
            f=f,
            fnorm=fnorm,
            J=J,
            R=R,
            qtf=qtf,
            diag=diag,
            delta=delta,
            par=par,
            nfev=nfev,
            njev=st.njev + new_jac.astype(st.njev.dtype),
            iteration=st.iteration + 1,
            accepted_any=st.accepted_any | acc,
            info=info,
            gnorm=gnorm,
            g_norm=jnp.max(jnp.abs(J.T @ f)),
            step_norm=step_norm,
            actual_reduction=ared_cost,
            ok0=st.ok0,
        )
        if log_row is not None:
            log_row(new, first=False)
        return new

    st = lax.while_loop(lambda st: st.info == 0, step, st)
    status = jnp.where(st.ok0, _INFO_TO_STATUS[st.info], BAD_START)
    return SolveResult(
        x=st.x,
        cost=0.5 * st.fnorm**2,
        fun=st.f,
        jac=st.J,
        grad=st.J.T @ st.f,
        optimality=st.g_norm,
        active_mask=jnp.zeros(n, dtype=jnp.int32),
        nfev=st.nfev,
        njev=st.njev,
        status=status,
        initial_cost=0.5 * fnorm0**2,
        R=st.R,
    )
