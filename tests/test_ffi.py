"""The native logging path: the Rust XLA FFI target behind backend ``"ffi"``.

Covers the ABI mirror against the installed jaxlib header, registration and
its fallback, the custom call in the lowered program, byte-identical output
to the callback route, flush, trace-time and run-time errors, float32 and
float64, vmap, while_loop / cond / scan, and the CUDA handler's registration
rule (the CUDA handler itself runs on a device in ``benches/gpu_check.py``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from nlsq import _ringlog
from nlsq._ringlog import RingLogger
from nlsq.utils import _native, _routes, async_logger


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    yield
    jax.effects_barrier()
    async_logger.configure(backend=None)


def logged(backend: str, tmp_path: Path, body: Callable[[], None]) -> str:
    """Text written by ``body()`` with the process logger on ``backend``."""
    sink = tmp_path / f"{backend}-{len(list(tmp_path.iterdir()))}.log"
    async_logger.configure(sink=str(sink), backend=backend)
    assert _routes.active_route().name == backend
    body()
    assert async_logger.flush(timeout=30)
    async_logger.configure(backend=None)
    return sink.read_text()


def same_on_both(tmp_path: Path, make: Callable[[], Callable[[], None]]) -> str:
    """Run a freshly built program on each backend; the texts must match byte for byte."""
    via_callback = logged("callback", tmp_path, make())
    via_ffi = logged("ffi", tmp_path, make())
    assert via_ffi == via_callback
    return via_ffi


# -- ABI ---------------------------------------------------------------------


# C API 0.5 (jaxlib 0.12) renamed these, keeping their place and layout: the extension
# header's `type` became `id` at the same offset, and Error_GetMessage became
# Error_GetDetails in the same slot, whose arguments append `errc` after `message`
# (callees read `struct_size`, so our shorter arguments stay valid).
RENAMED_IN_NEWER_HEADERS = {
    "XLA_FFI_Extension_Base": "XLA_FFI_Extension",
    "XLA_FFI_Extension_Base.type": "XLA_FFI_Extension.id",
    "XLA_FFI_Error_GetMessage_Args": "XLA_FFI_Error_GetDetails_Args",
    "XLA_FFI_Api.XLA_FFI_Error_GetMessage": "XLA_FFI_Api.XLA_FFI_Error_GetDetails",
}


def test_abi_layout_matches_installed_header(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert cc, "a C compiler is needed to check the ABI mirror (the Rust build needs one too)"
    layout = dict(_ringlog.ffi_layout())
    same_version = _native.runtime_api_version() == tuple(_ringlog.ffi_api_version())
    lines = []
    for name in layout:
        c_name = name if same_version else RENAMED_IN_NEWER_HEADERS.get(name, name)
        if "." in name:
            struct, field = c_name.split(".")
            lines.append(f'  printf("{name} %zu\\n", (size_t)offsetof({struct}, {field}));')
        else:
            lines.append(f'  printf("{name} %zu\\n", (size_t){c_name}_STRUCT_SIZE);')
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n"
        '#include "xla/ffi/api/c_api.h"\n'
        "int main(void) {\n" + "\n".join(lines) + "\n  return 0;\n}\n"
    )
    exe = tmp_path / "layout"
    build = subprocess.run(
        [cc, "-I", jax.ffi.include_dir(), str(source), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    from_header = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
    for name, ours in layout.items():
        if "." in name or same_version:
            # Every field the handlers read sits where the installed header puts it.
            assert from_header[name] == ours, name
        else:
            # A newer minor version of the C API only appends fields (each struct carries
            # its own size), so a struct may have grown beyond the prefix we mirror.
            assert from_header[name] >= ours, name


def test_built_api_version_is_compatible_with_the_installed_one() -> None:
    built = tuple(_ringlog.ffi_api_version())
    runtime = _native.runtime_api_version()
    assert runtime is not None
    # Same major version, same or newer minor version: what the handlers were built for
    # is a prefix of what this jaxlib provides.
    assert runtime[0] == built[0] and runtime[1] >= built[1], (built, runtime)
    assert _native.abi_mismatch(built, runtime) is None


@pytest.mark.parametrize(
    ("runtime", "compatible"),
    [((0, 3), True), ((0, 4), True), ((0, 2), False), ((1, 3), False), (None, False)],
)
def test_abi_mismatch_rule(runtime: tuple[int, int] | None, compatible: bool) -> None:
    reason = _native.abi_mismatch((0, 3), runtime)
    assert (reason is None) == compatible
    if runtime is not None and not compatible:
        assert f"{runtime[0]}.{runtime[1]}" in reason


# -- registration --------------------------------------------------------------


def test_target_is_registered_and_the_default() -> None:
    reg = _native.register()
    assert reg.ok, reg.reason
    assert "cpu" in reg.platforms
    async_logger.configure(backend=None)
    assert _routes.active_route().name == "ffi"


def _refused(monkeypatch: pytest.MonkeyPatch, how: str) -> list[warnings.WarningMessage]:
    if how == "jax":

        def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError("simulated refusal")

        monkeypatch.setattr(jax.ffi, "register_ffi_target", refuse)
    else:
        monkeypatch.setattr(_ringlog, "ffi_api_version", lambda: (1, 0))
    _native._reset_for_tests()
    _routes._reset_for_tests()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not _native.available()
        assert _routes.make_route(None).name == "callback"
        async_logger.configure(backend=None)
        assert _routes.active_route().name == "callback"
        with pytest.raises(RuntimeError, match="not registered"):
            _routes.make_route("ffi")
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("how", ["jax", "abi"])
def test_refused_registration_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    saved = _native._state
    try:
        caught = _refused(monkeypatch, how)
        assert len(caught) == 1, [str(w.message) for w in caught]
        message = str(caught[0].message)
        assert "using 'callback'" in message
        assert ("simulated refusal" if how == "jax" else "API mismatch") in message
        # The callback route still logs.
        fmt = async_logger.template("fallback {i:d}")
        text = logged("callback", tmp_path, lambda: jax.jit(lambda i: fmt(i=i))(jnp.int32(4)))
        assert text == "fallback 4\n"
    finally:
        monkeypatch.undo()
        _native._reset_for_tests()
        _native._state = saved
        _routes._reset_for_tests()


# -- the lowered program -----------------------------------------------------------


def test_custom_call_is_in_the_lowered_and_compiled_program() -> None:
    async_logger.configure(backend="ffi")

    def f(x: jax.Array) -> jax.Array:
        async_logger.log_iteration_async(3, x, x, verbose=2)
        return x + 1

    lowered = jax.jit(f).lower(jnp.float32(1.0))
    text = lowered.as_text()
    call = [line for line in text.splitlines() if "stablehlo.custom_call" in line]
    assert len(call) == 1, text
    assert f"@{_native.TARGET}(" in call[0]
    assert "has_side_effect = true" in call[0]
    assert "template_key" in call[0]
    assert "callback" not in text
    assert f'custom_call_target="{_native.TARGET}"' in lowered.compile().as_text()


def test_verbose_zero_traces_no_custom_call() -> None:
    async_logger.configure(backend="ffi")

    def f(x: jax.Array) -> jax.Array:
        async_logger.log_iteration_async(3, x, x, verbose=0)
        return x + 1

    assert _native.TARGET not in jax.jit(f).lower(jnp.float32(1.0)).as_text()


# -- byte-identical output ---------------------------------------------------------


@pytest.mark.parametrize("verbose", [1, 2])
def test_while_loop_output_matches_callback(tmp_path: Path, verbose: int) -> None:
    step = async_logger.template("step {step:>4d} |{loss:^12.4e}| {rate:.2%}")

    def make() -> Callable[[], None]:
        @jax.jit
        def fit(x: jax.Array) -> jax.Array:
            def body(c: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
                i, x = c
                async_logger.log_iteration_async(i, x, x / 3, message="trial", verbose=verbose)
                step(step=i, loss=x * x, rate=x / 10, verbose=verbose)
                return i + 1, x * 0.93

            return lax.while_loop(lambda c: c[0] < 35, body, (jnp.int32(0), x))[1]

        return lambda: fit(jnp.float32(2.5)).block_until_ready()

    text = same_on_both(tmp_path, make)
    lines = text.splitlines()
    per_iteration = 35 if verbose == 2 else 4  # 0, 10, 20, 30
    assert len(lines) == 2 * per_iteration
    # Two unordered side effects per iteration: XLA may schedule either first
    # (the same way on both routes, as the equality above shows).
    first, last = sorted(lines[:2]), sorted(lines[-2:])
    assert first[0] == "iter      0  cost  2.500000e+00  |grad|  8.333e-01  trial"
    assert first[1] == "step    0 | 6.2500e+00 | 25.00%"
    assert last[1].startswith("step   34" if verbose == 2 else "step   30")


def test_scan_and_cond_output_matches_callback(tmp_path: Path) -> None:
    tick = async_logger.template("tick {k:d} {v:+.3f}")
    odd = async_logger.template("odd {k:d}")

    def make() -> Callable[[], None]:
        @jax.jit
        def run(xs: jax.Array) -> jax.Array:
            def body(carry: jax.Array, kx: tuple[jax.Array, jax.Array]) -> tuple:
                k, x = kx
                tick(k=k, v=x, verbose=2)
                lax.cond(k % 2 == 1, lambda: odd(k=k, verbose=2), lambda: None)
                return carry + x, None

            return lax.scan(body, jnp.float32(0), (jnp.arange(12), xs))[0]

        return lambda: run(jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32)).block_until_ready()

    lines = same_on_both(tmp_path, make).splitlines()
    assert len(lines) == 12 + 6
    assert lines[:3] == ["tick 0 -1.000", "tick 1 -0.818", "odd 1"]


def test_vmap_output_matches_callback(tmp_path: Path) -> None:
    row = async_logger.template("row {it:d} {val:.4f}")

    def make() -> Callable[[], None]:
        def one(x: jax.Array) -> jax.Array:
            def body(c: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
                i, x = c
                row(it=i, val=x, verbose=1)
                return i + 1, x + 1

            return lax.while_loop(lambda c: c[0] < 21, body, (jnp.int32(0), x))[1]

        f = jax.jit(jax.vmap(one))
        return lambda: f(jnp.arange(4, dtype=jnp.float32)).block_until_ready()

    lines = same_on_both(tmp_path, make).splitlines()
    assert len(lines) == 4 * 3  # iterations 0, 10, 20 of 4 elements
    assert lines[:4] == [f"[{b}] row 0 {b:.4f}" for b in range(4)]


def test_eager_device_values_match_callback(tmp_path: Path) -> None:
    def make() -> Callable[[], None]:
        def run() -> None:
            for i in range(3):
                async_logger.log_iteration_async(jnp.int32(i), jnp.float32(i / 3), 0.5, verbose=2)
            async_logger.log_array_async("w", jnp.array([1.0, jnp.nan, -2.0]))

        return run

    lines = same_on_both(tmp_path, make).splitlines()
    assert len(lines) == 4
    assert lines[-1].endswith("nonfinite 1")


# -- flush, dtypes, configure ------------------------------------------------------


def test_flush_sees_every_record(tmp_path: Path) -> None:
    n = 3000
    count = async_logger.template("n {i:d}")

    @jax.jit
    def run(x: jax.Array) -> jax.Array:
        def body(c: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            count(i=c[0], verbose=2)
            return c[0] + 1, c[1]

        return lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), x))[1]

    sink = tmp_path / "flush.log"
    async_logger.configure(sink=str(sink), backend="ffi", capacity=1 << 16)
    before = async_logger.stats()["pushed"]
    run(jnp.float32(0))
    assert async_logger.flush(timeout=30)
    assert async_logger.stats()["pushed"] - before == n
    assert sink.read_text().splitlines() == [f"n {i}" for i in range(n)]


@pytest.mark.parametrize("x64", [False, True])
def test_float32_and_float64_records(tmp_path: Path, x64: bool) -> None:
    value = 1 / 3
    with jax.enable_x64(x64):
        fmt = async_logger.template("v {v:.17g}")

        def make() -> Callable[[], None]:
            f = jax.jit(lambda x: fmt(v=x, verbose=2))
            return lambda: f(jnp.asarray(value))

        text = same_on_both(tmp_path, make)
    expected = float(np.float64(value)) if x64 else float(np.float32(value))
    assert text == f"v {format(expected, '.17g')}\n"


def test_programs_compiled_before_configure_log_to_the_new_sink(tmp_path: Path) -> None:
    fmt = async_logger.template("again {i:d}")
    async_logger.configure(sink=str(tmp_path / "first.log"), backend="ffi")
    f = jax.jit(lambda i: fmt(i=i, verbose=2))
    f(jnp.int32(1))
    async_logger.flush()
    async_logger.configure(sink=str(tmp_path / "second.log"), backend="callback")
    f(jnp.int32(2))  # still the compiled FFI program
    async_logger.flush()
    assert (tmp_path / "first.log").read_text() == "again 1\n"
    assert (tmp_path / "second.log").read_text() == "again 2\n"


# -- the direct form and errors -----------------------------------------------------


def test_direct_emit_into_own_logger_under_jit_and_vmap(tmp_path: Path) -> None:
    path = tmp_path / "direct.log"
    with RingLogger(sink=str(path)) as log:
        tid = log.register("{k:>3d} {x:.2f}")

        @jax.jit
        def f(xs: jax.Array) -> None:
            jax.vmap(lambda kx: _native.emit(kx, tid, log.id))(xs)

        f(jnp.stack([jnp.arange(3.0), jnp.arange(3.0) / 4], axis=1))
        _native.emit(np.array([7.0, 0.5]), tid, log.id)  # eagerly
        jax.effects_barrier()
        assert log.flush(timeout=30)
    assert path.read_text() == "  0 0.00\n  1 0.25\n  2 0.50\n  7 0.50\n"


@pytest.mark.parametrize(
    ("packed", "error", "match"),
    [
        (jnp.zeros((2, 2)), ValueError, r"1-D array, got shape \(2, 2\) \(rank 2\)"),
        (jnp.zeros((), jnp.float32), ValueError, r"rank 0"),
        (jnp.zeros(3, jnp.int32), TypeError, "dtype int32; expected float64 or float32"),
        (jnp.zeros(13), ValueError, "13 values per record, a record holds at most 12"),
    ],
)
def test_wrong_dtype_or_rank_is_a_trace_time_error(
    packed: jax.Array, error: type[Exception], match: str
) -> None:
    def f(p: jax.Array) -> None:
        _native.emit(p, 0, 1)

    with pytest.raises(error, match=match):
        jax.jit(f).lower(packed)  # raised while tracing, before anything runs


def test_handler_reports_bad_calls_as_xla_errors() -> None:
    # Bypass the Python checks to reach the Rust validation through XLA.
    call = _native._ffi_call()
    with pytest.raises(Exception, match="packed values have rank 2, expected a rank-1 array"):
        call(jnp.zeros((2, 2)), template_id=np.int64(0), logger_id=np.int64(1))
        jax.effects_barrier()
    with pytest.raises(Exception, match="dtype int64, expected float64 or float32"):
        with jax.enable_x64(True):
            call(jnp.zeros(2, jnp.int64), template_id=np.int64(0), logger_id=np.int64(1))
        jax.effects_barrier()
    with pytest.raises(Exception, match=r"attribute `template_key` has dtype int32"):
        call(jnp.zeros(2), template_key=np.int32(0))
        jax.effects_barrier()
    with pytest.raises(Exception, match="unexpected attribute `colour`"):
        call(jnp.zeros(2), template_key=np.int64(0), colour=np.int64(1))
        jax.effects_barrier()


def test_forward_mode_differentiation_logs_primal_values(tmp_path: Path) -> None:
    path = tmp_path / "jvp.log"
    with RingLogger(sink=str(path)) as log:
        tid = log.register("x {x:.2f}")

        def f(x: jax.Array) -> jax.Array:
            _native.emit(jnp.stack([x]), tid, log.id)
            return x**2

        primal, tangent = jax.jit(lambda x: jax.jvp(f, (x,), (1.0,)))(jnp.float32(3.0))
        assert (float(primal), float(tangent)) == (9.0, 6.0)
        jax.effects_barrier()
        assert log.flush(timeout=30)
    assert path.read_text() == "x 3.00\n"


def test_closed_logger_does_not_break_a_jitted_loop(tmp_path: Path) -> None:
    fmt = async_logger.template("k {k:d}")
    async_logger.configure(sink=str(tmp_path / "a.log"), backend="ffi")

    @jax.jit
    def run(x: jax.Array) -> jax.Array:
        def body(c: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            fmt(k=c[0], verbose=2)
            return c[0] + 1, c[1]

        return lax.while_loop(lambda c: c[0] < 40, body, (jnp.int32(0), x))[0]

    run(jnp.float32(0))
    async_logger.flush()
    before = _native.stats()["orphaned"]
    async_logger.get_logger().close()  # every routed push now finds it closed
    assert int(run(jnp.float32(0))) == 40
    jax.effects_barrier()
    assert _native.stats()["orphaned"] - before == 40


def test_records_for_a_closed_logger_are_counted_not_raised() -> None:
    log = RingLogger(sink=None)
    tid = log.register("{x:.1f}")
    log.close()
    before = _native.stats()["orphaned"]
    _native.emit(np.array([1.0]), tid, log.id)
    jax.effects_barrier()
    assert _native.stats()["orphaned"] == before + 1


# -- CUDA (on a device: benches/gpu_check.py) --------------------------------------


def test_cuda_handler_registered_only_with_driver_and_backend() -> None:
    reason = _ringlog.ffi_cuda_unavailable_reason()
    assert reason is None or re.search(r"libcuda\.so\.1", reason), reason
    expect = reason is None and _native.cuda_backend_present() and not _native.cuda_opted_out()
    assert ("CUDA" in _native.register().platforms) == expect
    targets = _ringlog.ffi_targets()
    assert set(targets) == {"cpu", "CUDA"}
