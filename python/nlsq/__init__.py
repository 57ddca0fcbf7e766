"""nlsq: JAX curve fitting whose verbose per-iteration log never stalls the device.

``curve_fit`` and ``least_squares`` are drop-ins for their scipy namesakes; the
whole iteration loop is one compiled ``lax.while_loop`` and results are float64
(computed under a scoped ``jax.enable_x64``; the global flag is left alone).
"""

from scipy.optimize import OptimizeResult, OptimizeWarning

from ._curve_fit import CurveFit, curve_fit
from ._least_squares import least_squares
from ._many import ManyFitResult, curve_fit_many
from ._residual import HostFallbackWarning

__version__ = "0.1.0"

__all__ = [
    "CurveFit",
    "HostFallbackWarning",
    "ManyFitResult",
    "OptimizeResult",
    "OptimizeWarning",
    "__version__",
    "curve_fit",
    "curve_fit_many",
    "least_squares",
]
