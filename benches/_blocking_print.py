"""A naive blocking-print logging backend: the baseline the ring logger is measured against.

Registered with :func:`nlsq.utils._routes.register_route` under the name
``"blocking_print"``, it takes the same packed records as the ring routes but,
in the style of the seed's original code, formats each one on the host with
Python's ``str.format`` and ``print(..., file=f, flush=True)`` inside a
``jax.debug.callback``: the XLA thread that runs the callback waits for the
formatting and the ``write`` of every line.

Only records staged inside a traced computation take this route (the rows of
``curve_fit``'s table); lines pushed eagerly on the host (the table's header and
closing lines) still go through the ring in every variant.
"""

from __future__ import annotations

import functools
import string
import sys
from collections.abc import Callable
from typing import Any, TextIO

import jax
import numpy as np
from nlsq.utils import _log_runtime, _routes

NAME = "blocking_print"


class _Target:
    """Where the backend prints; swapped by :func:`set_stream` (default ``sys.stdout``)."""

    stream: TextIO | Any = None


def set_stream(stream: TextIO | Any) -> None:
    """Print every later line to ``stream`` (anything with ``write`` and ``flush``)."""
    _Target.stream = stream


@functools.cache
def _formatter(key: int) -> Callable[[np.ndarray], str]:
    """``str.format`` of template ``key``; ``d`` fields get ints (records carry floats)."""
    text = _log_runtime.template_text(key)
    fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(text) if name]
    names = [name for name, _ in fields]
    as_int = [bool(spec) and spec.endswith("d") for _, spec in fields]
    fmt = text.format_map

    def render(values: np.ndarray) -> str:
        return fmt(
            {
                n: (int(v) if i else float(v))
                for n, v, i in zip(names, values.tolist(), as_int, strict=True)
            }
        )

    return render


def _print_record(key: int, buf: np.ndarray) -> None:
    stream = _Target.stream if _Target.stream is not None else sys.stdout
    print(_formatter(key)(np.asarray(buf)), file=stream, flush=True)


def _print_rows(key: int, rows: np.ndarray) -> None:
    # vmap rows: [keep, batch index, values...]; the batched template's fields
    # start with the index.
    stream = _Target.stream if _Target.stream is not None else sys.stdout
    render = _formatter(key)
    for row in np.asarray(rows):
        if row[0] != 0:
            print(render(row[1:]), file=stream, flush=True)


class BlockingPrintBackend:
    """Each record: ``jax.debug.callback`` -> ``str.format`` -> ``print(flush=True)``."""

    name = NAME

    def emit(self, key: int, packed: jax.Array) -> None:
        host = _print_rows if packed.ndim == 2 else _print_record
        jax.debug.callback(functools.partial(host, key), packed)


def register() -> None:
    """Make ``configure(backend="blocking_print")`` / ``make_backend`` know the route."""
    _routes.register_route(NAME, BlockingPrintBackend)
