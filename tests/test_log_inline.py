"""The effect-free inline route the solvers use for their rows (``nlsq.utils._emit``).

It must keep a jitted function free of effects (JAX's fast dispatch path), must
survive JAX's and XLA's dead-code elimination although it has no outputs, and
must push exactly the rows whose ``keep`` is true, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from nlsq.utils import _emit, _log_runtime, async_logger

TEXT = "inline {i:>4d} {v:.3e}"


@pytest.fixture
def log_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "inline.log"
    async_logger.configure(sink=str(path), backend="ffi")
    try:
        yield path
    finally:
        async_logger.configure()


def _loop(every: int):
    key = _log_runtime.intern(TEXT)

    @jax.jit
    def run(x: jax.Array) -> jax.Array:
        def body(c: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            i, v = c
            _emit._stage_inline_row(key, i % every == 0, [i, v])
            return i + 1, v * 0.5

        return lax.while_loop(lambda c: c[0] < 25, body, (0, x))[1]

    return run


def test_route_is_available_on_cpu_with_ffi(log_path: Path) -> None:
    assert _emit.inline_rows_available()


def test_rows_are_pushed_where_keep_is_true_in_order(log_path: Path) -> None:
    run = _loop(every=10)
    run(jnp.float32(1.0)).block_until_ready()
    async_logger.flush()
    lines = log_path.read_text().splitlines()
    assert lines == [f"inline {i:>4d} {0.5**i:.3e}" for i in (0, 10, 20)]


def test_every_row_and_no_effect_in_the_jaxpr(log_path: Path) -> None:
    run = _loop(every=1)
    closed = jax.make_jaxpr(run)(jnp.float32(1.0))
    assert not closed.effects, "an effect would take the call off the fast dispatch path"
    assert "nlsq_log_inline" in str(closed)
    # JAX's DCE keeps it and XLA gets the side-effecting custom call.
    assert "nlsq_ringlog_push" in run.lower(jnp.float32(1.0)).as_text()
    run(jnp.float32(1.0)).block_until_ready()
    async_logger.flush()
    assert len(log_path.read_text().splitlines()) == 25


def test_unused_result_does_not_remove_the_rows(log_path: Path) -> None:
    key = _log_runtime.intern(TEXT)

    @jax.jit
    def only_logs(x: jax.Array) -> jax.Array:
        _emit._stage_inline_row(key, True, [jnp.int32(7), x])
        return jnp.zeros(())

    only_logs(jnp.float32(2.0)).block_until_ready()
    async_logger.flush()
    assert log_path.read_text().splitlines() == [f"inline    7 {2.0:.3e}"]


def test_vmap_pushes_each_kept_row(log_path: Path) -> None:
    key = _log_runtime.intern(TEXT)

    def one(i: jax.Array, v: jax.Array) -> jax.Array:
        _emit._stage_inline_row(key, i > 0, [i, v])
        return v

    jax.jit(jax.vmap(one))(jnp.arange(4), jnp.arange(4.0)).block_until_ready()
    async_logger.flush()
    assert log_path.read_text().splitlines() == [
        f"inline {i:>4d} {float(i):.3e}" for i in (1, 2, 3)
    ]


def test_rows_in_an_output_free_shard_map_inside_a_loop(log_path: Path) -> None:
    # A sharded fit writes its rows inside a shard_map with no outputs (one device
    # of the mesh emits).  JAX 0.12 runs DCE inside while_loop bodies, and
    # shard_map's own DCE rule drops an effect-free body with no outputs.
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    key = _log_runtime.intern(TEXT)
    mesh = Mesh(jax.devices()[:1], ("data",))

    def emit(i: jax.Array, v: jax.Array) -> tuple[()]:
        _emit._stage_inline_row(key, lax.axis_index("data") == 0, [i, v])
        return ()

    @jax.jit
    def run(x: jax.Array) -> jax.Array:
        def body(c: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            i, v = c
            jax.shard_map(emit, mesh=mesh, in_specs=(P(), P()), out_specs=(), check_vma=False)(i, v)
            return i + 1, v * 0.5

        return lax.while_loop(lambda c: c[0] < 5, body, (0, x))[1]

    assert not jax.make_jaxpr(run)(jnp.float32(1.0)).effects
    assert "nlsq_ringlog_push" in run.lower(jnp.float32(1.0)).as_text()
    run(jnp.float32(1.0)).block_until_ready()
    async_logger.flush()
    assert log_path.read_text().splitlines() == [f"inline {i:>4d} {0.5**i:.3e}" for i in range(5)]
