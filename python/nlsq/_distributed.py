"""Fits whose data span several processes (``jax.distributed``): results and the table.

Under ``jax.distributed.initialize`` every process runs the same compiled solver
on its own devices; the data are global ``jax.Array``s (for example from
``jax.make_array_from_process_local_data``).  Two things differ from one process:

* Results: the parameters, cost, gradient and ``R`` come out of the solver
  replicated on every device (the reduced problem is solved redundantly), so
  each process reads its own copy.  The per-row outputs (``fun``, and ``jac``
  when it is the full Jacobian) are sharded over processes; they are returned as
  global ``jax.Array``s (each process can read its own rows through
  ``addressable_shards``) instead of being gathered.
* The verbose table is written once, by process 0.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np


@functools.cache
def is_lead_process() -> bool:
    """True in the process that writes the verbose table (process 0).

    Settled by the first call: ``jax.process_index()`` starts the backends, and
    ``jax.distributed.initialize`` is refused once they exist.  (Asked on every
    verbose fit; a cached answer saves a few microseconds there.)
    """
    return jax.process_index() == 0


def table_verbosity(verbose: int) -> int:
    """``verbose`` in process 0, 0 in the others (one table per fit, not one per process)."""
    return verbose if is_lead_process() else 0


def fetch(tree: Any) -> Any:
    """``jax.device_get`` that keeps arrays spanning other processes' devices as they are.

    A leaf that is replicated (or lives only on this process's devices) is copied
    to the host; a leaf sharded over devices of other processes stays a global
    ``jax.Array`` (fetching it would raise JAX's "spans non-addressable devices").
    """

    def get(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if leaf.is_fully_replicated:
                return np.asarray(leaf.addressable_data(0))
            return leaf
        return jax.device_get(leaf)

    return jax.tree_util.tree_map(get, tree)
