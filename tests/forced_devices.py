"""Run a check in a fresh interpreter that sees 4 forced CPU devices (the sharding tests).

JAX fixes the device count when it starts, so the flag
``--xla_force_host_platform_device_count=4`` goes into the child's environment
(``XLA_FLAGS``) before the child imports jax.  The child runs ``mesh_prelude``'s
script head followed by the check's own code, and reports JSON on its last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parents[1] / "python"
DEVICE_COUNT = 4


def mesh_prelude(axis: str, setup: str = "") -> str:
    """The script head every sharded check shares, then the file's own ``setup`` code.

    It defines ``MESH`` (the 4 devices along ``axis``), ``put`` (an array placed
    on the devices, split along its first axis), ``model`` (the decaying
    exponential the checks fit), ``table`` (a fit's return value and the verbose
    table it wrote), ``spy_on`` (records every compiled program of a jitted
    function, in ``COMPILED``, and its arguments, in ``ARGS``) and ``collectives``
    (the cross-device operations in a compiled program's text).
    """
    return f"""
import io, json, re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from nlsq.utils import async_logger

assert len(jax.devices()) == {DEVICE_COUNT}, jax.devices()
MESH = Mesh(np.array(jax.devices()), ({axis!r},))
SPLIT = NamedSharding(MESH, P({axis!r}))
COMPILED, ARGS = [], []

def spy_on(module, name):
    # Keep the compiled program (and the arguments) of every call for inspection.
    original = getattr(module, name)
    def spy(*args):
        ARGS.append(args)
        COMPILED.append(original.lower(*args).compile())
        return original(*args)
    setattr(module, name, spy)

COLLECTIVES = r" (all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter)(?:-start)?\\("

def collectives(text):
    return sorted(re.findall(COLLECTIVES, text))

def model(x, a, b, c):
    return a * jnp.exp(-b * x) + c

def put(a):
    with jax.enable_x64(True):
        return jax.device_put(a, SPLIT)

def table(fit):
    buf = io.StringIO()
    async_logger.configure(sink=buf)
    try:
        out = fit()
        async_logger.flush()
    finally:
        async_logger.configure(sink=None)
    return out, buf.getvalue()
""" + textwrap.dedent(setup)


def run_script(prelude: str, body: str, timeout: float = 600) -> dict:
    """Run ``prelude`` then ``body`` (dedented) in a fresh interpreter; its last line, as JSON."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICE_COUNT}"
    env["PYTHONPATH"] = str(PYTHON_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    code = prelude + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
