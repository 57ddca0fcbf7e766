"""nlsq: JAX curve fitting whose verbose per-iteration log never stalls the device.

``curve_fit`` and ``least_squares`` are drop-ins for their scipy namesakes; the
whole iteration loop is one compiled ``lax.while_loop`` and results are float64
(computed under a scoped ``jax.enable_x64``; the global flag is left alone).
"""

from ._curve_fit import CurveFit, curve_fit
from ._residual import HostFallbackWarning

__version__ = "0.1.0"

# Imported on first use (PEP 562): scipy.optimize alone takes about as long to
# import as the rest of nlsq, and a plain ``curve_fit`` never needs it.
_LAZY = {
    "OptimizeResult": ("scipy.optimize", "OptimizeResult"),
    "OptimizeWarning": ("scipy.optimize", "OptimizeWarning"),
    "least_squares": ("nlsq._least_squares", "least_squares"),
    "ManyFitResult": ("nlsq._many", "ManyFitResult"),
    "curve_fit_many": ("nlsq._many", "curve_fit_many"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'nlsq' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
