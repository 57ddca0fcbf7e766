"""nlsq: JAX curve fitting whose verbose per-iteration log never stalls the device."""

__version__ = "0.1.0"
