"""LSMR (Fong & Saunders 2011) as one ``lax.while_loop``: ``min ||A x - b||^2 + damp^2 ||x||^2``.

``A`` is given only through ``matvec(v) = A v`` and ``rmatvec(u) = A^T u``, so the
Jacobian of a fit never has to exist as a matrix: the trust-region solvers hand in
``jax.jvp`` / ``jax.vjp`` products, or products with a compressed sparse Jacobian.

The recurrences, the estimates of ``||r||``, ``||A||``, ``cond(A)`` and the stopping
tests (``istop`` 1-7) are those of the paper (and of ``scipy.sparse.linalg.lsmr``,
whose options ``damp, atol, btol, conlim, maxiter`` this takes), so the trust-region
steps built from it agree with scipy's ``tr_solver='lsmr'``.  Everything is
branch-free (``jnp.where``) so it runs inside the compiled solver loop, under
``vmap`` and on any device.

There is no LSMR in JAX; ``lineax`` has one, but pulls in ``equinox`` for a loop
this size, and its stopping rule differs from scipy's (which parity needs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class LsmrResult(NamedTuple):
    x: jax.Array
    istop: jax.Array  # scipy's reason for stopping (0: b = 0 or A^T b = 0)
    itn: jax.Array


def sym_ortho(a, b):
    """Stable Givens rotation ``(c, s, r)`` with ``[c s; -s c] [a; b] = [r; 0]``."""
    abs_a, abs_b = jnp.abs(a), jnp.abs(b)
    b_big = abs_b > abs_a
    # tau = a/b when |b| > |a|, else b/a (denominators made safe where unused).
    tau = jnp.where(b_big, a / jnp.where(b == 0, 1.0, b), b / jnp.where(a == 0, 1.0, a))
    root = jnp.sqrt(1 + tau * tau)
    s_big = jnp.sign(b) / root
    c_small = jnp.sign(a) / root
    c = jnp.where(b_big, s_big * tau, c_small)
    s = jnp.where(b_big, s_big, c_small * tau)
    r = jnp.where(b_big, b / jnp.where(s_big == 0, 1.0, s_big), a / jnp.where(c == 0, 1.0, c))
    # The exact cases first: b = 0, then a = 0.
    c = jnp.where(b == 0, jnp.sign(a), jnp.where(a == 0, 0.0, c))
    s = jnp.where(b == 0, 0.0, jnp.where(a == 0, jnp.sign(b), s))
    r = jnp.where(b == 0, abs_a, jnp.where(a == 0, abs_b, r))
    return c, s, r


class _Carry(NamedTuple):
    itn: jax.Array
    istop: jax.Array
    x: jax.Array
    u: jax.Array
    v: jax.Array
    h: jax.Array
    hbar: jax.Array
    alpha: jax.Array
    alphabar: jax.Array
    zetabar: jax.Array
    zeta: jax.Array
    rho: jax.Array
    rhobar: jax.Array
    cbar: jax.Array
    sbar: jax.Array
    # ||r|| estimate
    betadd: jax.Array
    betad: jax.Array
    rhodold: jax.Array
    tautildeold: jax.Array
    thetatilde: jax.Array
    d: jax.Array
    # ||A|| and cond(A) estimates
    normA2: jax.Array
    maxrbar: jax.Array
    minrbar: jax.Array


def _unit(w):
    """``(w / ||w||, ||w||)``, with ``w`` left as is when it is zero."""
    size = jnp.linalg.norm(w)
    return jnp.where(size > 0, w / jnp.where(size > 0, size, 1.0), w), size


def lsmr(
    matvec: Callable[[jax.Array], jax.Array],
    rmatvec: Callable[[jax.Array], jax.Array],
    b: jax.Array,
    n: int,
    *,
    damp=0.0,
    atol=1e-6,
    btol=1e-6,
    conlim=1e8,
    maxiter=None,
) -> LsmrResult:
    """``min ||A x - b||^2 + damp^2 ||x||^2`` from ``x = 0`` (``maxiter``: min(m, n) by default)."""
    m = b.shape[0]
    dtype = b.dtype
    maxiter = min(m, n) if maxiter is None else maxiter
    u, beta = _unit(b)
    v, alpha = _unit(jnp.where(beta > 0, rmatvec(u), jnp.zeros(n, dtype)))
    normb = beta
    ctol = 1.0 / conlim if conlim > 0 else 0.0
    zero = jnp.zeros((), dtype)
    one = jnp.ones((), dtype)

    def cond(c: _Carry):
        return (c.istop == 0) & (c.itn < maxiter)

    def body(c: _Carry) -> _Carry:
        itn = c.itn + 1
        # Golub-Kahan bidiagonalization: beta u = A v - alpha u, alpha v = A^T u - beta v.
        u, beta = _unit(matvec(c.v) - c.alpha * c.u)
        v_next, alpha = _unit(rmatvec(u) - beta * c.v)
        v = jnp.where(beta > 0, v_next, c.v)
        alpha = jnp.where(beta > 0, alpha, c.alpha)

        # Rotation Qhat_{k,2k+1} (damping), then Q_k, then Qbar_k.
        chat, shat, alphahat = sym_ortho(c.alphabar, damp)
        rhoold = c.rho
        cr, sr, rho = sym_ortho(alphahat, beta)
        thetanew = sr * alpha
        alphabar = cr * alpha
        rhobarold = c.rhobar
        zetaold = c.zeta
        thetabar = c.sbar * rho
        rhotemp = c.cbar * rho
        cbar, sbar, rhobar = sym_ortho(c.cbar * rho, thetanew)
        zeta = cbar * c.zetabar
        zetabar = -sbar * c.zetabar

        # Update h, hbar and x.
        hbar = c.h - (thetabar * rho / (rhoold * rhobarold)) * c.hbar
        x = c.x + (zeta / (rho * rhobar)) * hbar
        h = v - (thetanew / rho) * c.h

        # Estimate ||r||.
        betaacute = chat * c.betadd
        betacheck = -shat * c.betadd
        betahat = cr * betaacute
        betadd = -sr * betaacute
        thetatildeold = c.thetatilde
        ctildeold, stildeold, rhotildeold = sym_ortho(c.rhodold, thetabar)
        thetatilde = stildeold * rhobar
        rhodold = ctildeold * rhobar
        betad = -stildeold * c.betad + ctildeold * betahat
        tautildeold = (zetaold - thetatildeold * c.tautildeold) / rhotildeold
        taud = (zeta - thetatilde * tautildeold) / rhodold
        d = c.d + betacheck * betacheck
        normr = jnp.sqrt(d + (betad - taud) ** 2 + betadd * betadd)

        # Estimate ||A|| and cond(A).
        normA = jnp.sqrt(c.normA2 + beta * beta)
        normA2 = c.normA2 + beta * beta + alpha * alpha
        maxrbar = jnp.maximum(c.maxrbar, rhobarold)
        minrbar = jnp.where(itn > 1, jnp.minimum(c.minrbar, rhobarold), c.minrbar)
        condA = jnp.maximum(maxrbar, rhotemp) / jnp.minimum(minrbar, rhotemp)

        # Stopping tests, later ones taking precedence (as in the paper's code).
        normar = jnp.abs(zetabar)
        normx = jnp.linalg.norm(x)
        test1 = normr / normb
        denom = normA * normr
        test2 = jnp.where(denom != 0, normar / jnp.where(denom != 0, denom, 1.0), jnp.inf)
        test3 = 1.0 / condA
        t1 = test1 / (1 + normA * normx / normb)
        rtol = btol + atol * normA * normx / normb
        istop = jnp.zeros((), jnp.int32)
        istop = jnp.where(itn >= maxiter, 7, istop)
        istop = jnp.where(1 + test3 <= 1, 6, istop)
        istop = jnp.where(1 + test2 <= 1, 5, istop)
        istop = jnp.where(1 + t1 <= 1, 4, istop)
        istop = jnp.where(test3 <= ctol, 3, istop)
        istop = jnp.where(test2 <= atol, 2, istop)
        istop = jnp.where(test1 <= rtol, 1, istop)
        return _Carry(
            itn=itn,
            istop=istop,
            x=x,
            u=u,
            v=v,
            h=h,
            hbar=hbar,
            alpha=alpha,
            alphabar=alphabar,
            zetabar=zetabar,
            zeta=zeta,
            rho=rho,
            rhobar=rhobar,
            cbar=cbar,
            sbar=sbar,
            betadd=betadd,
            betad=betad,
            rhodold=rhodold,
            tautildeold=tautildeold,
            thetatilde=thetatilde,
            d=d,
            normA2=normA2,
            maxrbar=maxrbar,
            minrbar=minrbar,
        )

    # Nothing to do when b = 0 or A^T b = 0: x = 0 is the solution (istop 0).
    trivial = (normb == 0) | (alpha * beta == 0)
    first = _Carry(
        itn=jnp.zeros((), jnp.int32),
        istop=jnp.where(trivial, -1, 0).astype(jnp.int32),
        x=jnp.zeros(n, dtype),
        u=u,
        v=v,
        h=v,
        hbar=jnp.zeros(n, dtype),
        alpha=alpha,
        alphabar=alpha,
        zetabar=alpha * beta,
        zeta=zero,
        rho=one,
        rhobar=one,
        cbar=one,
        sbar=zero,
        betadd=beta,
        betad=zero,
        rhodold=one,
        tautildeold=zero,
        thetatilde=zero,
        d=zero,
        normA2=alpha * alpha,
        maxrbar=zero,
        minrbar=jnp.asarray(1e100, dtype),
    )
    out = lax.while_loop(cond, body, first)
    return LsmrResult(out.x, jnp.maximum(out.istop, 0), out.itn)
