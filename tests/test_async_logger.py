"""nlsq.utils.async_logger: verbosity, tracing, packing, vmap, errors, precision."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from nlsq.utils import _log_runtime, _routes, async_logger
from nlsq.utils.async_logger import (
    is_jax_array,
    log_array_async,
    log_convergence_async,
    log_iteration_async,
)

N_ITER = 500
# ffi_call: the native route (the default where the FFI target registers).
EMIT_PRIMITIVES = {"nlsq_log_emit", "debug_callback", "io_callback", "ffi_call"}
ITER_LINE = re.compile(
    r"^iter (?P<i>[ \d]{6})  cost (?P<cost>[ -]\d\.\d{6}e[+-]\d\d)"
    r"  \|grad\| (?P<g>[ -]\d\.\d{3}e[+-]\d\d)(?:  (?P<msg>.*))?$"
)


# -- helpers -----------------------------------------------------------------


def _subjaxprs(value: Any) -> Iterator[Any]:
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _subjaxprs(item)


def all_eqns(jaxpr: Any) -> Iterator[Any]:
    """Every equation of ``jaxpr`` and of the jaxprs nested in its parameters."""
    if isinstance(jaxpr, jax.extend.core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in _subjaxprs(param):
                yield from all_eqns(sub)


def emit_eqns(closed_jaxpr: Any) -> list[Any]:
    """The equations that hand data to the host."""
    return [e for e in all_eqns(closed_jaxpr) if e.primitive.name in EMIT_PRIMITIVES]


class LogFile:
    """The process-wide logger pointed at a file; ``lines()`` flushes and reads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[str]:
        assert async_logger.flush(timeout=30.0), "flush timed out"
        return self.path.read_text().splitlines() if self.path.exists() else []


@pytest.fixture
def log(tmp_path: Path) -> Iterator[LogFile]:
    path = tmp_path / "log.txt"
    async_logger.configure(sink=str(path))
    yield LogFile(path)
    async_logger.configure(sink=str(tmp_path / "after.txt"))


def _loop(verbose: int, n: int = N_ITER, message: str = "") -> Any:
    def body(carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        i, x = carry
        log_iteration_async(i, x * x, jnp.abs(x), message, verbose=verbose)
        return i + 1, x * 0.99

    def run(x0: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), x0))

    return run


def _iterations(lines: list[str]) -> list[int]:
    out = []
    for line in lines:
        m = ITER_LINE.match(line)
        assert m, f"not an iteration line: {line!r}"
        out.append(int(m["i"]))
    return out


# -- is_jax_array --------------------------------------------------------------


def test_is_jax_array() -> None:
    assert is_jax_array(jnp.array([1, 2, 3]))
    assert is_jax_array(jnp.float32(1.0))
    assert not is_jax_array(np.array([1, 2, 3]))
    assert not is_jax_array(np.float64(1.0))
    assert not is_jax_array(1.0)
    assert not is_jax_array([1, 2])
    seen = []
    jax.jit(lambda x: seen.append(is_jax_array(x)) or x)(1.0)
    jax.vmap(lambda x: seen.append(is_jax_array(x)) or x)(jnp.ones(2))
    assert seen == [True, True]


# -- verbosity and counts ------------------------------------------------------


@pytest.mark.parametrize(("verbose", "expected"), [(0, 0), (1, 50), (2, 500)])
def test_counts_under_jit(log: LogFile, verbose: int, expected: int) -> None:
    i, _ = jax.jit(_loop(verbose))(jnp.float32(1.0))
    assert int(i) == N_ITER
    lines = log.lines()
    assert len(lines) == expected
    assert _iterations(lines) == list(range(0, N_ITER, 10 if verbose == 1 else 1))[:expected]


@pytest.mark.parametrize(("verbose", "expected"), [(0, 0), (1, 50), (2, 500)])
def test_counts_eager_python_numbers(log: LogFile, verbose: int, expected: int) -> None:
    x = 1.0
    for i in range(N_ITER):
        log_iteration_async(i, x * x, abs(x), verbose=verbose)
        x *= 0.99
    lines = log.lines()
    assert len(lines) == expected
    assert _iterations(lines) == list(range(0, N_ITER, 10 if verbose == 1 else 1))[:expected]


@pytest.mark.parametrize(("verbose", "expected"), [(0, 0), (1, 5), (2, 50)])
def test_counts_eager_jax_values(log: LogFile, verbose: int, expected: int) -> None:
    x = jnp.float32(1.0)
    for i in range(50):
        # Traced-free but on the device: the iteration too, so the gate runs on device.
        log_iteration_async(jnp.int32(i), x * x, jnp.abs(x), verbose=verbose)
        x = x * 0.99
    lines = log.lines()
    assert len(lines) == expected
    assert _iterations(lines) == list(range(0, 50, 10 if verbose == 1 else 1))[:expected]


def test_eager_values_match(log: LogFile) -> None:
    log_iteration_async(7, 123.456, 3.21e-4, "step ok", verbose=2)
    log_iteration_async(jnp.int32(8), jnp.float32(0.5), jnp.float32(2.0), verbose=2)
    assert log.lines() == [
        "iter      7  cost  1.234560e+02  |grad|  3.210e-04  step ok",
        "iter      8  cost  5.000000e-01  |grad|  2.000e+00",
    ]


def test_verbose0_traces_nothing() -> None:
    with_log = jax.make_jaxpr(_loop(0))(jnp.float32(1.0))
    assert emit_eqns(with_log) == []
    names = {e.primitive.name for e in all_eqns(with_log)}
    assert not names & {"custom_vmap_call", "cond", "stack"}, names

    def bare(x0: jax.Array) -> Any:
        def body(c: Any) -> Any:
            return c[0] + 1, c[1] * 0.99

        return jax.lax.while_loop(lambda c: c[0] < N_ITER, body, (jnp.int32(0), x0))

    # The loop body is exactly the body without the log call (x*x, abs are dead).
    without = jax.make_jaxpr(bare)(jnp.float32(1.0))
    assert len(list(all_eqns(without))) <= len(list(all_eqns(with_log)))
    quiet = jax.make_jaxpr(lambda x: log_array_async("a", x, verbose=0))(jnp.ones(3))
    assert emit_eqns(quiet) == []
    assert (
        emit_eqns(jax.make_jaxpr(lambda x: async_logger.template("v {v:.3e}")(v=x, verbose=0))(1.0))
        == []
    )


def test_verbose1_gates_with_cond_verbose2_does_not() -> None:
    def parents(verbose: int) -> list[str]:
        jaxpr = jax.make_jaxpr(_loop(verbose))(jnp.float32(1.0))
        names = []
        for eqn in all_eqns(jaxpr):
            if eqn.primitive.name == "cond":
                names += [e.primitive.name for e in all_eqns(eqn.params["branches"][1])]
        return names

    assert EMIT_PRIMITIVES & set(parents(1))
    assert parents(2) == []
    jaxpr2 = jax.make_jaxpr(_loop(2))(jnp.float32(1.0))
    assert len(emit_eqns(jaxpr2)) == 1


def test_verbose_must_be_static() -> None:
    with pytest.raises(TypeError, match="verbose must be a static"):
        jax.jit(lambda v: log_iteration_async(1, 1.0, 1.0, verbose=v))(2)
    with pytest.raises(TypeError, match="verbose must be an int"):
        log_iteration_async(1, 1.0, 1.0, verbose="2")


def test_lines_in_iteration_order(log: LogFile) -> None:
    jax.jit(_loop(2, n=2000))(jnp.float32(1.0))
    assert _iterations(log.lines()) == list(range(2000))


def test_one_transfer_per_record_of_packed_values() -> None:
    jaxpr = jax.make_jaxpr(_loop(2))(jnp.float32(1.0))
    (eqn,) = emit_eqns(jaxpr)
    (operand,) = eqn.invars
    assert operand.aval.shape == (3,)


# -- scan, cond, flush, configure ----------------------------------------------


def test_scan_and_cond(log: LogFile) -> None:
    fmt = async_logger.template("k {k:>3d} y {y:.2f}")

    def step(y: jax.Array, k: jax.Array) -> tuple[jax.Array, None]:
        jax.lax.cond(
            k % 2 == 0,
            lambda: fmt(k=k, y=y, verbose=2),
            lambda: None,
        )
        return y + 1.0, None

    jax.jit(lambda: jax.lax.scan(step, jnp.float32(0.5), jnp.arange(6)))()
    assert log.lines() == ["k   0 y 0.50", "k   2 y 2.50", "k   4 y 4.50"]


def test_flush_waits_for_dispatched_work(log: LogFile) -> None:
    # No block_until_ready: flush() alone must wait for the callbacks.
    jax.jit(_loop(2, n=300))(jnp.float32(1.0))
    assert len(log.lines()) == 300


def test_compiled_function_survives_configure(tmp_path: Path, log: LogFile) -> None:
    run = jax.jit(_loop(2, n=20))
    run(jnp.float32(1.0))
    assert len(log.lines()) == 20
    second = tmp_path / "second.txt"
    async_logger.configure(sink=str(second))
    run(jnp.float32(1.0))
    async_logger.flush()
    assert len(second.read_text().splitlines()) == 20
    assert len(log.path.read_text().splitlines()) == 20


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        async_logger.configure(backend="nope")
    if "ffi" not in _routes._FACTORIES:
        with pytest.raises(ValueError, match="ffi"):
            async_logger.configure(backend="ffi")


@pytest.mark.parametrize("backend", ["callback", "debug_callback"])
def test_each_route_logs_the_same_lines(tmp_path: Path, backend: str) -> None:
    path = tmp_path / f"{backend}.txt"
    async_logger.configure(sink=str(path), backend=backend)
    try:
        jax.jit(_loop(1, n=100))(jnp.float32(1.0))
        jax.vmap(lambda x: log_iteration_async(3, x, x, verbose=2))(jnp.arange(2.0))
        async_logger.flush()
        lines = path.read_text().splitlines()
    finally:
        async_logger.configure(sink=str(tmp_path / "after.txt"), backend=None)
    assert _iterations(lines[:10]) == list(range(0, 100, 10))
    assert lines[10:] == [
        "[0] iter      3  cost  0.000000e+00  |grad|  0.000e+00",
        "[1] iter      3  cost  1.000000e+00  |grad|  1.000e+00",
    ]


def test_configure_backend_reaches_templates_traced_before(tmp_path: Path) -> None:
    # A template's emitters are traced with the route active then, and JAX
    # caches those traces (jit always, custom_vmap from 0.11 on): a new route
    # must still reach every function traced after configure().
    # (Functions traced before keep their route, so each round defines new ones.)
    primitive = {"callback": "nlsq_log_emit", "debug_callback": "debug_callback"}
    fmt = async_logger.template("route switch {v:g}")

    def functions() -> list[tuple[Any, Any]]:
        def one(x: jax.Array) -> jax.Array:
            fmt(v=x)
            return x

        def rows(x: jax.Array) -> jax.Array:
            jax.vmap(lambda v: fmt(v=v))(x)
            return x

        def eager(x: jax.Array) -> None:
            fmt._jit_for("always")(x)  # what an eager call with a device value runs

        return [(one, jnp.float32(1.0)), (rows, jnp.arange(2.0)), (eager, 1.0)]

    try:
        for backend in ("callback", "debug_callback", "callback"):
            async_logger.configure(sink=str(tmp_path / f"{backend}.txt"), backend=backend)
            for fn, arg in functions():
                names = {e.primitive.name for e in emit_eqns(jax.make_jaxpr(fn)(arg))}
                assert names == {primitive[backend]}, (backend, fn.__name__, names)
    finally:
        async_logger.configure(sink=str(tmp_path / "after.txt"), backend=None)


def test_stats_has_ring_counters_and_callback_errors(log: LogFile) -> None:
    log_iteration_async(0, 1.0, 1.0, verbose=2)
    log.lines()
    s = async_logger.stats()
    for key in ("pushed", "written", "dropped", "sink_errors", "callback_errors"):
        assert key in s, key
    assert s["pushed"] >= 1 and s["written"] >= 1


# -- messages ------------------------------------------------------------------


def test_messages_are_interned_once(log: LogFile) -> None:
    before = len(_log_runtime._TEXTS)
    for _ in range(3):
        # A fresh trace each time (new function object), same message.
        jax.jit(lambda x: log_iteration_async(1, x, x, "accepted", verbose=2))(2.0)
        log_iteration_async(2, 1.0, 1.0, "accepted", verbose=2)
    log_iteration_async(3, 1.0, 1.0, "rejected {not a field}", verbose=2)
    assert len(_log_runtime._TEXTS) - before <= 2
    lines = log.lines()
    assert lines[-1] == "iter      3  cost  1.000000e+00  |grad|  1.000e+00  rejected {not a field}"
    assert sum(line.endswith("  accepted") for line in lines) == 6
    # The message never travels: the record is the three numbers.
    jaxpr = jax.make_jaxpr(lambda x: log_iteration_async(1, x, x, "accepted", verbose=2))(1.0)
    assert [v.aval.shape for e in emit_eqns(jaxpr) for v in e.invars] == [(3,)]


def test_dynamic_message_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="`message` must be a static Python str"):
        jax.jit(lambda m: log_iteration_async(1, 1.0, 1.0, m, verbose=2))(jnp.int32(3))
    with pytest.raises(TypeError, match="`message`"):
        log_iteration_async(1, 1.0, 1.0, 42, verbose=2)
    with pytest.raises(TypeError, match="`message`"):
        # Checked even when nothing would be logged.
        log_iteration_async(1, 1.0, 1.0, jnp.ones(2), verbose=0)
    with pytest.raises(TypeError, match="`reason`"):
        log_convergence_async(jnp.int32(1), 3, 1.0, 0.1, 1e-9)
    with pytest.raises(TypeError, match="`name`"):
        log_array_async(None, jnp.ones(3))


def test_values_must_be_real_scalars() -> None:
    with pytest.raises(TypeError, match="`cost` must be a scalar"):
        jax.jit(lambda c: log_iteration_async(1, c, 1.0, verbose=2))(jnp.ones(3))
    with pytest.raises(TypeError, match="`gradient_norm`"):
        log_iteration_async(1, 1.0, "x", verbose=2)
    with pytest.raises(TypeError, match="real number"):
        log_iteration_async(1, 1.0 + 2j, 1.0, verbose=2)


# -- templates -------------------------------------------------------------------


def test_template_general_entry(log: LogFile) -> None:
    fmt = async_logger.template("step {step:>6d} loss {loss:.6e}")

    @jax.jit
    def run(x: jax.Array) -> jax.Array:
        def body(c: Any) -> Any:
            i, v = c
            fmt(step=i, loss=v, verbose=2)
            return i + 1, v / 2

        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, x))[1]

    run(jnp.float32(1.0))
    fmt(step=3, loss=0.125)
    fmt(step=11, loss=0.0, verbose=1)  # not a multiple of 10: skipped
    async_logger.template("=== restart ===")(verbose=2)
    assert log.lines() == [
        "step      0 loss 1.000000e+00",
        "step      1 loss 5.000000e-01",
        "step      2 loss 2.500000e-01",
        "step      3 loss 1.250000e-01",
        "=== restart ===",
    ]


def test_template_errors() -> None:
    fmt = async_logger.template("a {a:d} b {b:.2f}")
    with pytest.raises(TypeError, match=r"missing \['b'\]"):
        fmt(a=1)
    with pytest.raises(TypeError, match=r"unknown \['c'\]"):
        fmt(a=1, b=2.0, c=3)
    with pytest.raises(ValueError, match="every field needs a name"):
        async_logger.template("x {}")
    with pytest.raises(ValueError, match="duplicate"):
        async_logger.template("{x} {x}")
    with pytest.raises(ValueError, match="at most 12"):
        async_logger.template(" ".join(f"{{f{i}}}" for i in range(13)))
    with pytest.raises(ValueError):
        async_logger.template("unbalanced {x")
    bad = async_logger.template("{x:Q}")  # a spec the ring rejects, at first use
    with pytest.raises(ValueError):
        bad(x=1.0)


# -- log_array_async -------------------------------------------------------------


def test_log_array_summary_and_operands(log: LogFile) -> None:
    big = jnp.arange(200_000, dtype=jnp.float32).reshape(400, 500) / 1000.0
    big = big.at[0, 0].set(jnp.nan).at[1, 1].set(jnp.inf)

    def f(a: jax.Array) -> jax.Array:
        log_array_async("weights", a, verbose=2)
        return a.sum()

    jaxpr = jax.make_jaxpr(f)(big)
    eqns = emit_eqns(jaxpr)
    assert len(eqns) == 1
    shapes = [v.aval.shape for v in eqns[0].invars]
    assert shapes == [(5,)], shapes  # the summary, never the (400, 500) array

    jax.jit(f)(big)
    log_array_async("weights", big)  # eager, concrete: the jitted summary path
    log_array_async("host", np.array([[1.0, -2.0], [np.nan, 4.0]]))
    # The eager device summary is dispatched asynchronously; the host summary
    # is pushed at once, so on the FFI route it may be written first.
    lines = sorted(log.lines(), key=lambda line: line.startswith("array host"))
    finite = np.asarray(big, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    head = "array weights  shape (400, 500)  dtype float32  "
    assert lines[0] == lines[1]
    assert lines[0].startswith(head)
    nums = dict(re.findall(r"(min|max|mean|norm|nonfinite) (\S+)", lines[0]))
    assert float(nums["min"]) == pytest.approx(finite.min(), rel=1e-6)
    assert float(nums["max"]) == pytest.approx(finite.max(), rel=1e-6)
    assert float(nums["mean"]) == pytest.approx(finite.mean(), rel=1e-5)
    assert float(nums["norm"]) == pytest.approx(np.linalg.norm(finite), rel=1e-5)
    assert nums["nonfinite"] == "2"
    assert lines[2] == (
        "array host  shape (2, 2)  dtype float64  min -2.000000e+00  max 4.000000e+00  "
        "mean 1.000000e+00  norm 4.582576e+00  nonfinite 1"
    )


def test_log_array_all_nonfinite_and_empty(log: LogFile) -> None:
    log_array_async("bad", jnp.array([jnp.nan, jnp.inf]))
    log_array_async("empty", jnp.zeros((0, 3)))
    lines = log.lines()
    assert lines[0].endswith("min nan  max nan  mean nan  norm 0.000000e+00  nonfinite 2")
    assert lines[1].endswith("min nan  max nan  mean nan  norm 0.000000e+00  nonfinite 0")


# -- convergence -------------------------------------------------------------------


def test_log_convergence(log: LogFile) -> None:
    log_convergence_async("`gtol` termination condition is satisfied.", 23, 1.5, 0.25, 3e-9)
    log_convergence_async("quiet", 1, 1.0, 0.0, 0.0, verbose=0)
    jax.jit(lambda c: log_convergence_async("done", 5, c, 0.5, c / 10, verbose=2))(2.0)
    assert log.lines() == [
        "`gtol` termination condition is satisfied.  iterations 23  final cost 1.500000e+00"
        "  |grad| 3.000e-09  time 0.250 s",
        "done  iterations 5  final cost 2.000000e+00  |grad| 2.000e-01  time 0.500 s",
    ]


# -- vmap ------------------------------------------------------------------------


def test_vmap_logs_each_element_with_its_index(log: LogFile) -> None:
    def f(x: jax.Array) -> jax.Array:
        log_iteration_async(10, x, x / 10, verbose=2)
        return x + 1

    out = jax.jit(jax.vmap(f))(jnp.arange(3.0))
    assert np.allclose(out, [1.0, 2.0, 3.0])
    assert log.lines() == [
        "[0] iter     10  cost  0.000000e+00  |grad|  0.000e+00",
        "[1] iter     10  cost  1.000000e+00  |grad|  1.000e-01",
        "[2] iter     10  cost  2.000000e+00  |grad|  2.000e-01",
    ]


def test_nested_vmap_uses_flat_index(log: LogFile) -> None:
    fmt = async_logger.template("v {v:.1f}")
    jax.vmap(jax.vmap(lambda x: fmt(v=x)))(jnp.arange(6.0).reshape(2, 3))
    assert log.lines() == [f"[{k}] v {k:.1f}" for k in range(6)]


def test_vmap_verbose1_gates_per_element(log: LogFile) -> None:
    def f(i: jax.Array) -> None:
        log_iteration_async(i, 1.0, 1.0, verbose=1)

    jax.jit(jax.vmap(f))(jnp.array([0, 5, 10, 11, 20]))
    assert [line[:4] for line in log.lines()] == ["[0] ", "[2] ", "[4] "]
    assert _iterations([line[4:] for line in log.lines()]) == [0, 10, 20]


def test_vmap_of_while_loop(log: LogFile) -> None:
    run = jax.jit(jax.vmap(_loop(2, n=4)))
    run(jnp.array([1.0, 2.0]))
    lines = log.lines()
    assert len(lines) == 8
    assert [line[:3] for line in lines] == ["[0]", "[1]"] * 4


def test_unbatched_values_under_vmap_log_once(log: LogFile) -> None:
    jax.vmap(lambda x: log_iteration_async(1, 2.0, 3.0, verbose=2) or x)(jnp.ones(4))
    assert log.lines() == ["iter      1  cost  2.000000e+00  |grad|  3.000e+00"]


def test_grad_through_a_logging_function(log: LogFile) -> None:
    def loss(x: jax.Array) -> jax.Array:
        value = jnp.sum(x * x)
        log_iteration_async(0, value, 0.0, verbose=2)
        return value

    g = jax.jit(jax.grad(loss))(jnp.array([1.0, 2.0]))
    assert np.allclose(g, [2.0, 4.0])
    assert log.lines() == ["iter      0  cost  5.000000e+00  |grad|  0.000e+00"]


# -- precision -------------------------------------------------------------------


def test_float32_and_float64(log: LogFile) -> None:
    fmt = async_logger.template("{i:d} {v:.12e}")
    value = 1.2345678901234
    jax.jit(lambda v: fmt(i=1, v=v))(jnp.float32(value))
    with jax.enable_x64(True):
        run = jax.jit(lambda i, v: fmt(i=i, v=v))
        run(jnp.int64(2**40 + 1), jnp.float64(value))
        log_array_async("x64", jnp.array([value], dtype=jnp.float64))
    lines = log.lines()
    assert lines[0] == f"1 {float(np.float32(value)):.12e}"
    assert lines[1] == f"{2**40 + 1} {value:.12e}"
    assert "shape (1,)  dtype float64  min 1.234568e+00  max 1.234568e+00" in lines[2]


# -- failures ----------------------------------------------------------------------


def test_push_failure_does_not_break_a_jitted_loop(tmp_path: Path, capfd: Any) -> None:
    # Callback-route semantics (the FFI route counts these in its own stats).
    async_logger.configure(sink=str(tmp_path / "a.txt"), backend="callback")
    run = jax.jit(_loop(2, n=50))
    run(jnp.float32(1.0))
    before = async_logger.stats()["callback_errors"]
    async_logger.get_logger().close()  # every push now fails
    try:
        i, _ = run(jnp.float32(1.0))
        jax.effects_barrier()
        assert int(i) == 50
        assert _log_runtime.callback_errors() - before == 50
        err = capfd.readouterr().err
        assert err.count("nlsq.utils.async_logger: a log record could not be pushed") <= 1
    finally:
        async_logger.configure(sink=str(tmp_path / "b.txt"), backend=None)
    assert async_logger.stats()["callback_errors"] - before == 50
