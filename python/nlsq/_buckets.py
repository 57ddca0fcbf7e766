"""Shape buckets: pad ``curve_fit`` data to a ladder of sizes so one program serves many n.

The jitted solver is compiled per data shape.  Fitting spectra of many lengths
would compile once per length; instead the data are padded to the next size of a
geometric ladder (:func:`bucket_size`) with rows of weight zero, so every length
in a bucket reuses one compiled program (and one persistent-cache entry).

Why the padded rows change nothing
----------------------------------
A padded row repeats the last data point (so the model stays finite there) and
has weight 0, so its residual and its Jacobian row are exactly 0:

* the cost, the gradient ``J^T f``, the column norms (``x_scale='jac'``) and the
  QR-reduced Jacobian ``R`` (what every trust-region step uses) are those of the
  real rows; only the order of floating-point sums can differ (last bits);
* every built-in robust loss has ``rho(0) = 0`` (a user-supplied loss callable
  disables the padding);
* what depends on the number of residuals ``m`` uses the true one, carried in the
  traced data (:meth:`PaddedModelResidual.true_m`): the rank threshold of the
  trust-region solve (``EPS * m * s[0]``), the pseudo-inverse threshold of
  ``pcov`` (``EPS * max(m, n) * s[0]``), and ``curve_fit``'s degrees of freedom
  ``m - n``; the returned ``fun`` and ``jac`` are cut back to ``m`` rows.

Padding is only used where it is provably row-wise: 1-D ``xdata`` and ``ydata``,
no ``jac`` callable, no covariance-matrix ``sigma``, no loss callable, and a model
whose traced program uses only element-wise operations (:func:`model_is_rowwise`;
a model that sums, sorts, indexes or reshapes its data is fitted unpadded).

Memory
------
The ladder is ``2^k`` (at least 32) up to 4096 rows, ``2^k`` and ``1.5 * 2^k``
up to 65536 rows, and ``2^k * (1 + j/8)`` above.  So the padded data are at most
2x the real data up to 4096 rows (at most 2047 extra rows, i.e.
``2047 * (p + 2) * 8`` bytes for the residuals and Jacobian), at most 1.5x up to
65536 rows (at most 32767 extra rows) and at most 1.125x above.

Why coarse at the bottom: below a few thousand rows a fit's time is the fixed
cost of the solver's kernels (~0.16 ms at n = 32, ~0.2 ms at n = 1000 on CPU),
so padding rows is nearly free there while each extra bucket costs a whole
compilation (~0.4 s).  Fits of a few hundred to a few thousand rows, the common
case of many spectra, take 4 programs per decade instead of 7.

``NLSQ_BUCKETS=off`` (or ``curve_fit(..., buckets=False)``) turns it off.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ._jax_compat import enable_x64
from ._residual import ModelResidual

__all__ = ["PaddedModelResidual", "bucket_size", "buckets_enabled", "model_is_rowwise", "pad",
           "true_m"]  # fmt: skip

MIN_BUCKET = 32
HALF_STEPS_FROM = 1 << 12  # octaves from here on are split in halves
FINE_FROM = 1 << 16  # ... and from here on in eighths

# Primitives that act element by element (scalars broadcast): a program made of
# these maps row i of the data to row i of the output and nothing else.
_ELEMENTWISE = frozenset(
    """
    abs acos acosh add and asin asinh atan atan2 atanh broadcast_in_dim cbrt ceil clamp
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1
    floor ge gt igamma imag integer_pow is_finite le lgamma log log1p logistic lt max min mul
    ne neg nextafter not or pow real reduce_precision rem round rsqrt select_n sign sin sinh
    sqrt square stop_gradient sub tan tanh xor
    """.split()
)


def buckets_enabled(flag: bool | None = None) -> bool:
    """``flag`` if given, else False when ``NLSQ_BUCKETS`` is off/0/false/no."""
    if flag is not None:
        return bool(flag)
    return os.environ.get("NLSQ_BUCKETS", "").strip().lower() not in ("off", "0", "false", "no")


def bucket_size(m: int) -> int:
    """The smallest ladder size ``>= m`` (see the module doc for the ladder)."""
    if m <= MIN_BUCKET:
        return MIN_BUCKET
    octave = 1 << (int(m - 1).bit_length() - 1)  # largest power of 2 below m
    steps = 8 if octave >= FINE_FROM else 2 if octave >= HALF_STEPS_FROM else 1
    unit = octave // steps
    return octave + unit * -(-(m - octave) // unit)


def _rowwise_jaxpr(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        subs = [
            v.jaxpr if hasattr(v, "jaxpr") else v
            for v in eqn.params.values()
            if hasattr(v, "eqns") or hasattr(v, "jaxpr")
        ]
        if subs:
            # pjit / custom_jvp_call / closed_call: row-wise if their bodies are.
            if not all(_rowwise_jaxpr(getattr(s, "jaxpr", s)) for s in subs):
                return False
            continue
        if eqn.primitive.name not in _ELEMENTWISE:
            return False
    return True


@functools.lru_cache(maxsize=256)
def _rowwise(model, n_params: int) -> bool:
    x = jax.ShapeDtypeStruct((MIN_BUCKET + 1,), jnp.float64)
    p = [jax.ShapeDtypeStruct((), jnp.float64)] * n_params
    try:
        with enable_x64(True):
            closed = jax.make_jaxpr(model)(x, *p)
    except Exception:  # noqa: BLE001 - untraceable (NumPy model, shape error): don't pad
        return False
    outs = closed.out_avals
    if len(outs) != 1 or outs[0].shape not in ((MIN_BUCKET + 1,), ()):
        return False
    return _rowwise_jaxpr(closed.jaxpr)


def model_is_rowwise(model, n_params: int) -> bool:
    """Whether ``model(x, *p)`` maps each element of a 1-D ``x`` to one output element
    using only element-wise operations (traced once per model code and ``n_params``)."""
    try:
        return _rowwise(model, n_params)
    except TypeError:  # an unhashable model object
        return False


@dataclass(frozen=True)
class PaddedModelResidual(ModelResidual):
    """``weights * (f(xdata, *p) - ydata)`` on padded data ``(x, y, weights, m)``.

    Padded rows have weight 0; ``m`` (traced) is the number of real rows.
    """

    def __call__(self, x, data, xp=jnp):
        xdata, ydata, weights, _ = data
        return super().__call__(x, (xdata, ydata, weights), xp)

    def true_m(self, data):
        return data[3]

    def rows(self, data) -> int:
        """The number of residuals (padded rows included), read off the data.

        The model is row-wise on 1-D ``xdata`` (:func:`model_is_rowwise`), so its
        residuals have the padded length: no trace of the model (``jax.eval_shape``,
        a few milliseconds per new bucket) is needed to know it.
        """
        return data[1].shape[-1]


def true_m(problem):
    """The traced number of real residuals of a padded problem, else None (use the shape)."""
    residual = problem.residual
    return residual.true_m(problem.data) if hasattr(residual, "true_m") else None


def pad(xdata, ydata, transform, kind: int):
    """Padded ``data`` ``(x, y, weights, m)`` for :class:`PaddedModelResidual`.

    Data whose size is on the ladder get the same form (with no extra row), so
    they share the bucket's program.  ``transform`` and ``kind`` are ``curve_fit``'s
    (``kind`` 0: none, 1: ``1/sigma``).
    """
    return padded_data(padded_block(xdata, ydata, transform, kind), ydata.shape[0])


def padded_data(block: np.ndarray, m: int) -> tuple:
    """The data ``(x, y, weights, m)`` of :class:`PaddedModelResidual` from a
    :func:`padded_block` of ``m`` real rows."""
    return (block[0], block[1], block[2], np.float64(m))


def padded_block(xdata, ydata, transform, kind: int) -> np.ndarray:
    """The rows ``x, y, weights`` of :func:`pad` as one ``(3, size)`` block, filled in
    place (cheaper than three concatenations; a warm call, ``nlsq._warm``, checks
    the data's finiteness on its first two rows in one pass)."""
    m = ydata.shape[0]
    block = np.empty((3, bucket_size(m)))
    block[0, :m] = xdata
    block[1, :m] = ydata
    block[:2, m:] = block[:2, m - 1 : m]  # padded rows repeat the last real one
    block[2, :m] = 1.0 if kind == 0 else transform
    block[2, m:] = 0.0
    return block
