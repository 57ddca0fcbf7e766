"""The program store (nlsq._programs): compiled solvers kept on disk by what they compute.

The danger of such a store is a stale program: a key that misses something the
program depends on returns a wrong result.  So most tests here change one thing
a model reads and check the key changes, and that what cannot be described is
not stored at all.  ``tests/test_cache.py`` checks the processes' side: a fresh
process loads the program without tracing and gets the same bits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from collections import OrderedDict
from pathlib import Path

import jax
import jax.numpy as jnp
import nlsq
import numpy as np
import pytest
from nlsq import _programs, _solve
from nlsq._problem import stored_description

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch) -> Path:
    """Each test's own store directory (on whatever persistent cache is in use)."""
    directory = tmp_path / "programs"
    monkeypatch.setattr(_programs, "program_dir", lambda: directory)
    return directory


LEAVES = [np.zeros(3), np.zeros(512), np.float64(1e-8)]


def _key(model, leaves=LEAVES, options=None, static_extra=()):
    return _programs.program_key("solver", options or {}, (model, *static_extra), leaves)


def _fresh_process_view(monkeypatch) -> None:
    """The single-fit solver as a fresh process sees it: no program held in memory."""
    monkeypatch.setattr(_solve.solve, "_programs", OrderedDict())
    monkeypatch.setattr(_solve.solve, "_by_key", OrderedDict())


def _namespace_model(source: str, **globals_):
    """A model compiled from ``source`` in a namespace holding ``globals_``."""
    ns = {"jnp": jnp, **globals_}
    exec(source, ns)  # noqa: S102
    return ns["f"]


def test_equal_code_gives_equal_keys_and_file_or_line_do_not_matter():
    a = _namespace_model("f = lambda x, a, b: a * jnp.exp(-b * x)")
    b = _namespace_model("\n\n\nf = lambda x, a, b: a * jnp.exp(-b * x)")  # other lines
    c = _namespace_model("f = lambda x, a, b: a * jnp.exp(-b * x) + 0.0")
    assert _key(a) is not None
    assert _key(a) == _key(b)
    assert _key(a) != _key(c)
    # A notebook cell gets a new file name in every kernel: still the same key.
    code = a.__code__.replace(co_filename="/tmp/ipykernel_1/123.py", co_firstlineno=40)
    moved = types.FunctionType(code, a.__globals__)
    assert _key(moved) == _key(a)


def test_every_value_the_model_reads_is_part_of_the_key():
    source = "f = lambda x, a: a * jnp.exp(-K * x) + OFFSET[0]"
    base = _namespace_model(source, K=1.0, OFFSET=np.array([0.5]))
    assert _key(base) == _key(_namespace_model(source, K=1.0, OFFSET=np.array([0.5])))
    assert _key(base) != _key(_namespace_model(source, K=2.0, OFFSET=np.array([0.5])))
    assert _key(base) != _key(_namespace_model(source, K=1.0, OFFSET=np.array([0.25])))

    def closure(k):
        return lambda x, a: a * x + k

    assert _key(closure(1.0)) == _key(closure(1.0))
    assert _key(closure(1.0)) != _key(closure(2.0))
    # A default argument, and a user function the model calls (described by its code).
    d1 = _namespace_model("def f(x, a, s=1.0):\n    return a * x * s")
    d2 = _namespace_model("def f(x, a, s=2.0):\n    return a * x * s")
    assert _key(d1) != _key(d2)
    helper1 = _namespace_model("def f(x):\n    return jnp.sin(x)")
    helper2 = _namespace_model("def f(x):\n    return jnp.cos(x)")
    user1 = _namespace_model("f = lambda x, a: a * helper(x)", helper=helper1)
    user2 = _namespace_model("f = lambda x, a: a * helper(x)", helper=helper2)
    assert _key(user1) is not None
    assert _key(user1) != _key(user2)


def test_the_call_and_the_options_are_part_of_the_key():
    f = _namespace_model("f = lambda x, a: a * x")
    assert _key(f) != _key(f, leaves=[np.zeros(3), np.zeros(1024), np.float64(1e-8)])
    assert _key(f) != _key(f, leaves=[np.zeros(3, np.float32), *LEAVES[1:]])
    assert _key(f) != _key(f, leaves=[*LEAVES[:2], 1e-8])  # a Python float: weakly typed
    assert _key(f) != _key(f, options={"xla_backend_optimization_level": 1})
    assert _key(f) != _key(f, static_extra=("trf",))


def test_what_cannot_be_described_is_not_stored():
    class Scale:
        k = 2.0

    obj = Scale()
    user_module = types.ModuleType("my_models")
    user_module.peak = lambda x: x
    assert _key(_namespace_model("f = lambda x, a: a * x * obj.k", obj=obj)) is None
    assert _key(_namespace_model("f = lambda x, a: a * m.peak(x)", m=user_module)) is None
    assert _key(lambda x, a: a * x, leaves=[jnp.zeros(3)]) is None  # a device array input
    # A device array the model captures is a constant of the program: keyed by value.
    captured = "f = lambda x, a: a * x + T[0]"
    t1 = _namespace_model(captured, T=jnp.array([1.0]))
    assert _key(t1) is not None
    assert _key(t1) == _key(_namespace_model(captured, T=jnp.array([1.0])))
    assert _key(t1) != _key(_namespace_model(captured, T=jnp.array([2.0])))
    assert _key(t1) != _key(_namespace_model(captured, T=jnp.array([1], jnp.int32)))
    # A subclass of a plain type, or a library class's instance, may compute with
    # what no value shows (methods, wrapped arguments): not described.
    import functools
    from typing import NamedTuple

    class Params(NamedTuple):
        k: float

        def scale(self):
            return 2.0 * self.k

    assert _key(_namespace_model("f = lambda x, a: a * x * P.scale()", P=Params(1.0))) is None
    half = functools.partial(jnp.multiply, 0.5)
    assert _key(_namespace_model("f = lambda x, a: a * half(x)", half=half)) is None
    # Library modules and functions are described by name (their version is keyed).
    assert _key(_namespace_model("f = lambda x, a: a * np.sinc(x)", np=np)) is not None
    assert _key(_namespace_model("f = lambda x, a: a * exp(x)", exp=jnp.exp)) is not None


def test_only_plain_fits_take_the_store(store, monkeypatch):
    _fresh_process_view(monkeypatch)
    x = np.linspace(0, 4, 200)
    y = 2.0 * np.exp(-0.7 * x)
    model = lambda x, a, b: a * jnp.exp(-b * x)  # noqa: E731
    nlsq.curve_fit(model, x, y, p0=[1, 1])
    # The store's route (whether it writes depends on JAX's cache: see test_cache.py).
    assert any(program is not None for program in _solve.solve._programs.values())
    captured = []
    real = _solve._run

    def grab(problem, fit_id, rows=True):
        captured.append(problem)
        return real(problem, fit_id, rows)

    try:
        _solve._run = grab
        nlsq.curve_fit(model, x, y, p0=[1, 1])
        nlsq.curve_fit(model, x, y, p0=[1, 1], jac=lambda x, a, b: jnp.stack(
            [jnp.exp(-b * x), -a * x * jnp.exp(-b * x)], axis=1))  # fmt: skip
        nlsq.curve_fit(model, x, y, p0=[1, 1], loss=lambda z: jnp.stack([z, z * 0 + 1, z * 0]))
    finally:
        _solve._run = real
    plain, user_jac, callable_loss = captured
    assert stored_description(plain) is not None
    # least_squares: the function and its extra arguments (arrays and floats are
    # traced; an int is static, so part of the key by value).
    fun = lambda p, t, y, k: (p[0] * jnp.exp(-p[1] * t) - y) * k  # noqa: E731
    captured.clear()
    try:
        _solve._run = grab
        for k in (1, 1, 2):
            nlsq.least_squares(fun, [1.0, 1.0], args=(x, y, k))
    finally:
        _solve._run = real
    one, same, other = (stored_description(problem) for problem in captured)
    assert one is not None and _key(one) == _key(same) and _key(one) != _key(other)
    assert stored_description(user_jac) is None
    assert stored_description(callable_loss) is None
    for changed in (
        {"verbose": 2},
        {"has_callback": True},
        {"fit_id": np.int64(3)},
        {"lsmr_options": ("lsmr",)},
    ):
        import dataclasses

        assert stored_description(dataclasses.replace(plain, **changed)) is None


def test_a_damaged_entry_is_a_miss(store):
    assert _programs.save("k1", b"payload" * 100)
    assert _programs.load("k1") == b"payload" * 100
    path = store / "k1.xla"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit: the checksum fails
    path.write_bytes(bytes(blob))
    assert _programs.load("k1") is None
    path.write_bytes(bytes(blob[:20]))  # a truncated file
    assert _programs.load("k1") is None
    assert _programs.load("absent") is None
    # A payload that is whole but not an executable fails to load: a miss, no error.
    assert _programs.save("k2", b"\x03\x00\x00\x00not an executable")
    assert _programs.load_program("k2", (np.zeros(2),)) is None


def test_the_directory_stays_under_its_bound(tmp_path):
    for i in range(6):
        (tmp_path / f"{i}.xla").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"{i}.xla", (1000 + i, 1000 + i))
    (tmp_path / ".tmp-dead.xla").write_bytes(b"x")
    os.utime(tmp_path / ".tmp-dead.xla", (1, 1))  # a writer that died long ago
    _programs._evict(tmp_path, 3500)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["3.xla", "4.xla", "5.xla"]  # the least recently used went first


# A fit whose model reads K from the environment: a second process with another K
# must compile its own program, not load the first one's.
K_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import jax.numpy as jnp, numpy as np
    import nlsq
    from nlsq import _programs
    K = float(os.environ["NLSQ_TEST_K"])
    def model(x, a, b):
        return a * jnp.exp(-b * x) + K
    x = np.linspace(0, 5, 300)
    y = 2.5 * np.exp(-1.3 * x) + 0.75
    popt, _ = nlsq.curve_fit(model, x, y, p0=[1.0, 0.5])
    print(json.dumps({"popt": popt.tolist(), **_programs.counts}))
    """
)


def _run_k(cache: Path, k: float) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT / "python"))
    env.update(NLSQ_CACHE_DIR=str(cache), NLSQ_TEST_K=str(k))
    out = subprocess.run(
        [sys.executable, "-c", K_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_changed_global_in_a_new_process_compiles_its_own_program(tmp_path):
    first = _run_k(tmp_path, 0.75)
    assert (first["loaded"], first["stored"]) == (0, 1)
    np.testing.assert_allclose(first["popt"], [2.5, 1.3], rtol=1e-6)
    other = _run_k(tmp_path, 0.25)  # same code, another K: another program
    assert (other["loaded"], other["stored"]) == (0, 1)
    assert not np.allclose(other["popt"], first["popt"])
    again = _run_k(tmp_path, 0.75)
    assert (again["loaded"], again["stored"]) == (1, 0)
    assert again["popt"] == first["popt"]


def test_programs_with_other_custom_calls_are_not_stored(store):
    def host_sin(x):
        return np.sin(x)

    def model(x, a):  # a host callback: its target is set up by JAX's lowering
        return a * jax.pure_callback(host_sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    x = np.linspace(0, 3, 50)
    missed = _programs.counts["missed"]
    popt, _ = nlsq.curve_fit(model, x, 2.0 * np.sin(x), p0=[1.0])
    np.testing.assert_allclose(popt, [2.0], rtol=1e-8)
    assert _programs.counts["missed"] == missed + 1  # it took the store's route...
    assert not store.exists() or list(store.iterdir()) == []  # ...and stored nothing


def test_a_stored_program_that_fails_its_first_run_is_dropped_and_the_fit_compiles(
    store, monkeypatch
):
    """A loaded executable that cannot run here (jaxlib 0.10 fails one re-serialized
    from JAX's cache with "Function ... not found") never fails the fit."""
    x = np.linspace(0, 4, 150)
    y = 1.5 * np.exp(-0.9 * x) + 0.1
    model = lambda x, a, b, c: a * jnp.exp(-b * x) + c  # noqa: E731
    expected, _ = nlsq.curve_fit(model, x, y, p0=[1, 1, 0])

    def broken(*args):
        raise jax.errors.JaxRuntimeError("NOT_FOUND: Function fusion.3 not found")

    discarded, real_discard = [], _programs.discard
    monkeypatch.setattr(_programs, "load_program", lambda key, args, out_tree: broken)
    monkeypatch.setattr(_programs, "discard", discarded.append)
    _fresh_process_view(monkeypatch)
    popt, _ = nlsq.curve_fit(model, x, y, p0=[1, 1, 0])
    np.testing.assert_array_equal(popt, expected)
    (key,) = discarded  # the entry that failed is dropped from the store
    entry = store / f"{key}.xla"
    store.mkdir(exist_ok=True)
    entry.write_bytes(b"a stored program")
    real_discard(key)
    assert not entry.exists()


MANY_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    traces = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: traces.append(kw.get("fun_name"))
        if name == "/jax/core/compile/jaxpr_trace_duration" else None)
    import nlsq
    from nlsq import _programs
    rng = np.random.default_rng(1)
    xs = [np.linspace(0, 4, n) for n in (150, 170, 190)]
    ys = [2.0 * np.exp(-0.8 * x) + 0.3 + 0.01 * rng.standard_normal(x.size) for x in xs]
    res = nlsq.curve_fit_many(lambda x, a, b, c: a * jnp.exp(-b * x) + c, xs, ys, p0=[1, 1, 0])
    print(json.dumps({"popt": res.popt.tolist(), "nfev": res.nfev.tolist(),
                      "solver_traces": traces.count("_run_batch"), **_programs.counts}))
    """
)


def test_curve_fit_many_programs_are_stored_and_loaded(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT / "python"))
    env["NLSQ_CACHE_DIR"] = str(tmp_path)

    def run() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", MANY_SCRIPT], env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold = run()
    assert (cold["stored"], cold["loaded"], cold["solver_traces"]) == (1, 0, 1)
    warm = run()
    assert (warm["stored"], warm["loaded"], warm["solver_traces"]) == (0, 1, 0)
    assert warm["popt"] == cold["popt"]
    assert warm["nfev"] == cold["nfev"]


def test_a_fresh_closure_over_arrays_reuses_the_program_in_memory(monkeypatch):
    """``least_squares(lambda p: model(x, p) - y, ...)`` in a loop: each lambda is a new
    signature (its closure holds arrays, compared by identity), but the program key
    (by value) is the same: the program is reused without loading it again, and only
    the most recent signatures are held (each holds its call's data)."""
    from nlsq import _cache

    monkeypatch.setattr(_cache, "_HELD_SIGNATURES", 3)
    _fresh_process_view(monkeypatch)
    rng = np.random.default_rng(3)
    x = np.linspace(0.0, 4.0, 300)
    y = 2.0 * np.exp(-0.7 * x) + 0.01 * rng.standard_normal(x.size)
    results = []
    before = dict(_programs.counts)
    for _ in range(6):
        fun = lambda p: p[0] * jnp.exp(-p[1] * x) - y  # noqa: E731 - a fresh closure each time
        results.append(nlsq.least_squares(fun, np.array([1.0, 1.0]), method="lm").x)
    # The first call compiles the program (a miss; stored unless JAX's own cache
    # served it) or loads it; the five others neither compile nor load.
    assert _programs.counts["missed"] + _programs.counts["loaded"] == (
        before["missed"] + before["loaded"] + 1
    )
    assert len(_solve.solve._programs) <= 3
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])
