"""Two processes under ``jax.distributed`` (gloo CPU collectives on 127.0.0.1, 2 devices each).

Each process holds half of the data and passes it as a global ``jax.Array``
(``jax.make_array_from_process_local_data``).  Both must return the same
``popt``/``pcov`` as a single-process fit, and the verbose table must be
written once (by process 0).  The test starts both processes itself and kills
them if they outlive the time limit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from nlsq import curve_fit, least_squares

PYTHON_DIR = Path(__file__).resolve().parents[1] / "python"
TIME_LIMIT_S = 420
M = 4 * 1500


def data():
    rng = np.random.default_rng(11)
    x = np.linspace(0.0, 5.0, M)
    y = 2.0 * np.exp(-0.7 * x) + 0.3 + 0.05 * rng.standard_normal(M)
    sigma = 0.05 * (1.0 + rng.random(M))
    return x, y, sigma


def model(x, a, b, c):
    return a * jnp.exp(-b * x) + c


WORKER = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, pid = int(sys.argv[1]), int(sys.argv[2])
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=pid, initialization_timeout=120)
import jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
sys.path.insert(0, os.environ["TEST_DIR"])
from test_distributed import data, model, M
from nlsq import curve_fit, least_squares

assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
mesh = Mesh(np.array(jax.devices()), ("data",))
rows = NamedSharding(mesh, P("data"))
x, y, sigma = data()
half = slice(pid * M // 2, (pid + 1) * M // 2)   # this process's rows only

def global_array(a):
    with jax.enable_x64(True):
        return jax.make_array_from_process_local_data(rows, a[half], (M,))

gx, gy, gs = global_array(x), global_array(y), global_array(sigma)
popt, pcov, info, msg, ier = curve_fit(model, gx, gy, p0=[1, 1, 0], sigma=gs,
                                       full_output=True, verbose=2, method="trf")
fvec = info["fvec"]
local_rows = sorted(int(s.index[0].start) for s in fvec.addressable_shards)
popt_c, pcov_c = curve_fit(model, gx, gy, p0=[1, 1, 0], chunk_size=500)  # 'lm', chunked

def fun(p, x, y):
    return model(x, *p) - y

res = least_squares(fun, [1.0, 1.0, 0.0], args=(gx, gy))
sys.stdout.flush()
print("RESULT " + json.dumps(dict(
    popt=popt.tolist(), pcov=pcov.tolist(), nfev=int(info["nfev"]), ier=int(ier),
    fvec_global=list(fvec.shape), local_rows=local_rows,
    popt_chunked=popt_c.tolist(), pcov_chunked=pcov_c.tolist(),
    lsq_x=res.x.tolist(), lsq_cost=res.cost,
)), flush=True)
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes() -> list[tuple[int, str, str]]:
    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PYTHON_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env["TEST_DIR"] = str(Path(__file__).resolve().parent)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(port), str(pid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for pid in (0, 1)
    ]
    deadline = time.monotonic() + TIME_LIMIT_S
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def test_two_processes_same_fit_one_table():
    outs = run_two_processes()
    for rc, _, err in outs:
        assert rc == 0, err[-4000:]
    results = [
        json.loads(line[len("RESULT ") :])
        for _, out, _ in outs
        for line in out.splitlines()
        if line.startswith("RESULT ")
    ]
    assert len(results) == 2
    x, y, sigma = data()
    ref, pref, iref, _, ier = curve_fit(
        model, x, y, p0=[1, 1, 0], sigma=sigma, full_output=True, method="trf"
    )
    plain, pplain = curve_fit(model, x, y, p0=[1, 1, 0])  # 'lm', as the chunked global fit
    lsq = least_squares(lambda p: model(x, *p) - y, [1.0, 1.0, 0.0])
    for r in results:
        np.testing.assert_allclose(r["popt"], ref, rtol=1e-10)
        np.testing.assert_allclose(r["pcov"], pref, rtol=1e-8)
        np.testing.assert_allclose(r["popt_chunked"], plain, rtol=1e-10)
        np.testing.assert_allclose(r["pcov_chunked"], pplain, rtol=1e-8)
        np.testing.assert_allclose(r["lsq_x"], lsq.x, rtol=1e-10)
        assert r["nfev"] == iref["nfev"] and r["ier"] == ier
        assert r["fvec_global"] == [M]
    # The same numbers in both processes, bit for bit.
    assert results[0]["popt"] == results[1]["popt"]
    assert results[0]["pcov"] == results[1]["pcov"]
    # fvec stays a global array: each process addresses its own half of the rows.
    assert results[0]["local_rows"] == [0, M // 4]
    assert results[1]["local_rows"] == [M // 2, 3 * M // 4]
    # One table: header, rows and closing lines written by process 0 only.
    header = "Iteration"
    tables = [out.count(header) for _, out, _ in outs]
    assert tables == [1, 0], tables
    # The rows are the lines between the header and the closing lines (Gloo's own
    # connection messages go to the same stdout from two threads and can split into
    # a line that starts with a digit, so counting digit-led lines is not enough).
    lines0 = outs[0][1].splitlines()
    start = next(i for i, ln in enumerate(lines0) if header in ln) + 1
    end = next(i for i, ln in enumerate(lines0) if "termination condition" in ln)
    rows0 = lines0[start:end]
    assert all(ln.split()[0].isdigit() for ln in rows0), rows0
    assert len(rows0) == iref["nfev"]  # TRF: one row per function evaluation here
    assert "Function evaluations" in outs[0][1]
    assert "Function evaluations" not in outs[1][1]
