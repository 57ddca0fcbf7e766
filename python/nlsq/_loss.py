"""Robust loss functions with scipy's conventions.

A loss ``rho(z)`` acts on ``z = (f / f_scale)**2``; the solver sees
``f_scale**2 * rho(z)`` so that small residuals behave like the linear loss.
``rho`` returns the stacked ``(rho, rho', rho'')`` (shape ``(3, m)``) exactly as
``scipy.optimize.least_squares`` documents it, so a user callable written for
scipy works unchanged (as long as JAX can trace it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from ._common import EPS


def _huber(z):
    mask = z <= 1
    zs = jnp.where(mask, 1.0, z)  # keeps the masked-out branch finite
    return jnp.stack(
        [
            jnp.where(mask, z, 2 * jnp.sqrt(zs) - 1),
            jnp.where(mask, 1.0, zs**-0.5),
            jnp.where(mask, 0.0, -0.5 * zs**-1.5),
        ]
    )


def _soft_l1(z):
    t = 1 + z
    return jnp.stack([2 * (jnp.sqrt(t) - 1), t**-0.5, -0.5 * t**-1.5])


def _cauchy(z):
    t = 1 + z
    return jnp.stack([jnp.log1p(z), 1 / t, -1 / t**2])


def _arctan(z):
    t = 1 + z**2
    return jnp.stack([jnp.arctan(z), 1 / t, -2 * z / t**2])


IMPLEMENTED_LOSSES: dict[str, Callable | None] = {
    "linear": None,
    "huber": _huber,
    "soft_l1": _soft_l1,
    "cauchy": _cauchy,
    "arctan": _arctan,
}


def validate_loss(loss) -> None:
    if not (callable(loss) or (isinstance(loss, str) and loss in IMPLEMENTED_LOSSES)):
        raise ValueError(
            f"`loss` must be one of {IMPLEMENTED_LOSSES.keys()} or a callable, got {loss!r}."
        )


def loss_rho(loss, f, f_scale):
    """``(3, m)`` array of scaled ``rho, rho', rho''`` at residuals ``f``; None for linear."""
    fn = IMPLEMENTED_LOSSES[loss] if isinstance(loss, str) else loss
    if fn is None:
        return None
    z = (f / f_scale) ** 2
    rho = jnp.asarray(fn(z), dtype=f.dtype)
    if rho.shape != (3, f.shape[0]):
        raise ValueError(
            f"The return value of `loss` callable has wrong shape: expected "
            f"{(3, f.shape[0])}, actual {rho.shape}."
        )
    return jnp.stack([rho[0] * f_scale**2, rho[1], rho[2] / f_scale**2])


def loss_cost(loss, f, f_scale):
    """Half the sum of the (scaled) loss: the cost the solver minimizes."""
    rho = loss_rho(loss, f, f_scale)
    if rho is None:
        return 0.5 * jnp.dot(f, f)
    return 0.5 * jnp.sum(rho[0])


def scale_for_robust_loss_function(J, f, rho):
    """Rescale ``J`` and ``f`` so the Gauss-Newton model matches the robust cost."""
    J_scale = rho[1] + 2 * rho[2] * f**2
    J_scale = jnp.sqrt(jnp.where(J_scale < EPS, EPS, J_scale))
    f = f * rho[1] / J_scale
    return J * J_scale[:, None], f
