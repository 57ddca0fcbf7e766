"""The persistent compilation cache (nlsq._cache): where it lives, that fresh processes
load from it with identical results, that processes can share it, and that a fresh
lambda with the same code reuses the compiled solver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import nlsq
import numpy as np
import pytest
from nlsq import _cache, _solve

ROOT = Path(__file__).resolve().parents[1]

# One fit; prints the popt bits, the cache hits JAX counted, and the cache dir in use.
FIT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    HIT = "/jax/compilation_cache/cache_hits"
    TRACE = "/jax/core/compile/jaxpr_trace_duration"
    hits, traces = [], []
    def on_event(name, **kw):
        if name == HIT:
            hits.append(name)
    def on_duration(name, secs, **kw):
        if name == TRACE and kw.get("fun_name") == "_solve":
            traces.append(secs)
    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    import nlsq
    from nlsq import _programs
    x = np.linspace(0, 5, 300)
    y = 2.5 * np.exp(-1.3 * x) + 0.5 + 0.01 * np.cos(7 * x)
    popt, pcov = nlsq.curve_fit(lambda x, a, b, c: a * jnp.exp(-b * x) + c, x, y, p0=[1, 0.5, 0])
    print(json.dumps({
        "popt": [float(v).hex() for v in popt],
        "pcov": [float(v).hex() for v in pcov.ravel()],
        "hits": len(hits),
        "solver_traces": len(traces),
        "loaded": _programs.counts["loaded"],
        "dir": jax.config.jax_compilation_cache_dir,
    }))
    """
)


def _run(cache: str | None, script: str = FIT_SCRIPT, **extra_env) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT / "python"), **extra_env)
    if cache is None:
        env.pop("NLSQ_CACHE_DIR", None)
    else:
        env["NLSQ_CACHE_DIR"] = cache
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "persistent compilation cache" not in err.lower(), err  # no read/write errors
    return json.loads(out.strip().splitlines()[-1])


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("*-cache"))


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("NLSQ_CACHE_DIR", str(tmp_path / "here"))
    assert _cache.cache_dir() == str(tmp_path / "here")
    for off in ("off", "OFF", " off "):
        monkeypatch.setenv("NLSQ_CACHE_DIR", off)
        assert _cache.cache_dir() is None
    monkeypatch.delenv("NLSQ_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_dir() == str(tmp_path / "xdg" / "nlsq")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _cache.cache_dir() == str(tmp_path / "home" / ".cache" / "nlsq")


def test_processes_share_the_cache_and_results_do_not_change(tmp_path):
    cache = tmp_path / "cache"
    # Two cold processes at once write the same entry: both must succeed, read no
    # half-written file, and agree bit for bit.
    first = [_run(str(cache)) for _ in range(2)]
    cold = [_result(p) for p in first]
    assert cold[0]["dir"] == str(cache)
    assert cold[0]["hits"] == 0 or cold[1]["hits"] == 0
    entries = _entries(cache)
    assert any(name.startswith("jit__solve") for name in entries), entries
    programs = sorted(p.name for p in (cache / "programs").iterdir())
    assert len(programs) == 1, programs  # both wrote the one program (nlsq._programs)
    # A third process loads the solver from nlsq's program store (no trace at all)
    # and gets the same numbers.
    warm = _result(_run(str(cache)))
    assert (warm["loaded"], warm["solver_traces"], warm["hits"]) == (1, 0, 0)
    # Without the program store, JAX's own cache serves it (after a trace).
    for path in (cache / "programs").iterdir():
        path.unlink()
    jax_warm = _result(_run(str(cache)))
    assert (jax_warm["loaded"], jax_warm["solver_traces"]) == (0, 1)
    assert jax_warm["hits"] >= 1
    # A program JAX's cache served is not stored: such an executable serializes
    # without some of its kernels (jaxlib 0.10), and would fail where it is loaded.
    assert list((cache / "programs").iterdir()) == []
    assert _entries(cache) == entries  # nothing recompiled, nothing new written
    for other in [*cold, jax_warm]:
        assert warm["popt"] == other["popt"]
        assert warm["pcov"] == other["pcov"]


def test_cache_off_and_user_directory_respected(tmp_path):
    off = _result(_run("off"))
    assert off["dir"] is None
    mine = tmp_path / "mine"
    script = (
        f"import jax; jax.config.update('jax_compilation_cache_dir', {str(mine)!r})\n" + FIT_SCRIPT
    )
    res = _result(_run(str(tmp_path / "nlsq-default"), script))
    assert res["dir"] == str(mine)
    assert not (tmp_path / "nlsq-default").exists()


def _make_model(k):
    # Every call returns a new function object with the same code.
    return lambda x, a, b: a * jnp.exp(-b * x) + k


def _jit_cache_size() -> int:
    return _solve.solve._cache_size()


def test_fresh_lambda_with_same_code_reuses_the_compiled_solver():
    x = np.linspace(0, 4, 97)
    y = 1.7 * np.exp(-0.8 * x) + 0.25
    popt1, _ = nlsq.curve_fit(_make_model(0.25), x, y, p0=[1, 1])
    size = _jit_cache_size()
    popt2, _ = nlsq.curve_fit(_make_model(0.25), x, y, p0=[1, 1])
    assert _jit_cache_size() == size  # no new trace for a new object with equal code
    np.testing.assert_array_equal(popt1, popt2)
    np.testing.assert_allclose(popt1, [1.7, 0.8], rtol=1e-6)
    # A different captured value is a different function: traced anew, other result.
    popt3, _ = nlsq.curve_fit(_make_model(0.5), x, y + 0.25, p0=[1, 1])
    assert _jit_cache_size() == size + 1
    np.testing.assert_allclose(popt3, [1.7, 0.8], rtol=1e-6)


def test_code_key_falls_back_to_identity_for_unhashable_captures():
    w = np.ones(3)
    f = lambda x: x * w  # noqa: E731
    g = lambda x: x * w  # noqa: E731
    assert _cache.code_keyed(f) == _cache.code_keyed(f)
    assert _cache.code_keyed(f) != _cache.code_keyed(g)  # the array cannot be hashed
    h1, h2 = _make_model(1.0), _make_model(2.0)
    assert _cache.code_keyed(h1) != _cache.code_keyed(h2)
    assert _cache.code_keyed(_make_model(1.0)) == _cache.code_keyed(h1)


@pytest.mark.parametrize("value", [1.0, 2.0])
def test_code_key_sees_global_values(value):
    ns = {"jnp": jnp, "K": value}
    exec("f = lambda x, a: a * x + K", ns)  # noqa: S102
    first = _cache.code_keyed(ns["f"])
    exec("f = lambda x, a: a * x + K", ns)  # noqa: S102
    assert first == _cache.code_keyed(ns["f"])
    ns["K"] = value + 1
    assert first != _cache.code_keyed(ns["f"])  # same object, but it now computes otherwise
    exec("f = lambda x, a: a * x + K", ns)  # noqa: S102
    assert first != _cache.code_keyed(ns["f"])


def _xla_accepts(name, value):
    """Ground truth, asked of JAX directly: does a jit with this option compile?"""
    try:
        jax.jit(lambda x: x + 1.0, compiler_options={name: value})(np.float32(0.0))
    except Exception as err:
        assert "No such compile option" in str(err), err
        return False
    return True


def test_unknown_compiler_option_falls_back(monkeypatch):
    known = "xla_cpu_use_fusion_emitters"
    # jaxlib <= 0.10 has the classic CPU emitters behind this option; XLA removed
    # it in jaxlib 0.11 (only the fusion emitters are left) and refuses the name.
    jaxlib_version = tuple(int(p) for p in jaxlib.__version__.split(".")[:2])
    assert _xla_accepts(known, False) is (jaxlib_version < (0, 11))
    assert _xla_accepts("xla_no_such_option_for_nlsq", True) is False

    monkeypatch.setattr(_cache, "_ACCEPTED", {})
    monkeypatch.setattr(
        _cache, "SOLVER_OPTIONS", {"xla_no_such_option_for_nlsq": True, known: False}
    )
    expected = {known: False} if _xla_accepts(known, False) else {}
    assert _cache.solver_options() == expected
    # Every route to the program compiles: calling it, and lower().compile() first.
    jitted = _cache.SolverJit(lambda x: x * 2.0)
    assert float(jitted(np.float32(1.5))) == 3.0
    assert jitted.options == expected
    jitted = _cache.SolverJit(lambda x: x * 3.0)
    assert float(jitted.lower(np.float32(1.5)).compile()(np.float32(1.5))) == 4.5
    assert jitted.options == expected
    # The solver itself runs with the options this XLA accepts.
    monkeypatch.undo()
    accepted = {k: v for k, v in _cache.SOLVER_OPTIONS.items() if _xla_accepts(k, v)}
    assert _cache.solver_options() == accepted


def test_options_settled_by_version_are_the_ones_xla_accepts():
    # The options whose presence the jaxlib version settles (no probe compilation)
    # must be accepted by this XLA exactly as the version says.
    version = _cache._jaxlib_version()
    options = {**_cache.SOLVER_OPTIONS, **_cache.SINGLE_FIT_OPTIONS}
    for name, below in _cache._PRESENT_BELOW.items():
        assert _xla_accepts(name, options[name]) is (version < below), name
    for name, through in _cache._PRESENT_THROUGH.items():
        if version <= through:
            assert _xla_accepts(name, options[name]), name


def test_single_fit_solver_alone_gets_its_extra_options():
    # -O1 is for the single-fit solver only: curve_fit_many's batched program
    # keeps -O3 (it runs slower at -O1).
    from nlsq import _many

    x = np.linspace(0, 1, 50)
    nlsq.curve_fit(lambda x, a, b: a * jnp.exp(-b * x), x, np.exp(-x), p0=[1.0, 1.0])
    nlsq.curve_fit_many(lambda x, a, b: a * jnp.exp(-b * x), x, np.exp(-x)[None], p0=[1, 1])
    accepted = {k: v for k, v in _cache.SINGLE_FIT_OPTIONS.items() if _xla_accepts(k, v)}
    assert _solve.solve.options == {**_cache.solver_options(), **accepted}
    assert _many._solve_batch.options == _cache.solver_options()


def test_codegen_parts_is_one_module_per_core_at_most_32(monkeypatch):
    monkeypatch.setattr(_cache.os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert _cache._codegen_parts() == 2
    monkeypatch.setattr(_cache.os, "sched_getaffinity", lambda pid: set(range(96)), raising=False)
    assert _cache._codegen_parts() == 32
