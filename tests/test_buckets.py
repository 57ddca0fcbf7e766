"""Shape buckets (nlsq._buckets): padded fits equal unpadded ones, one program per bucket."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nlsq import _buckets, curve_fit
from nlsq._jax_compat import enable_x64
from nlsq._problem import make_problem
from nlsq._solve import solve
from nlsq.utils import async_logger


def exp_model(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def centred_model(x, a, b):
    # Uses the mean of the data: padding would change it, so it must not be padded.
    return a * (x - jnp.mean(x)) + b


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 5, n)
    return x, 2.5 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.standard_normal(n)


def test_ladder():
    sizes = [_buckets.bucket_size(m) for m in range(1, 300_000, 37)]
    assert sizes == sorted(sizes)
    for m, size in zip(range(1, 300_000, 37), sizes, strict=True):
        assert size >= max(m, _buckets.MIN_BUCKET)
        if m > _buckets.MIN_BUCKET:
            if m > _buckets.FINE_FROM:
                bound = 1.125
            elif m > _buckets.HALF_STEPS_FROM:
                bound = 1.5
            else:
                bound = 2.0
            assert size < bound * m, (m, size)
    assert _buckets.bucket_size(256) == 256 and _buckets.bucket_size(257) == 512
    assert _buckets.bucket_size(4097) == 6144 and _buckets.bucket_size(6145) == 8192
    assert _buckets.bucket_size(65537) == 65536 + 8192
    assert len({_buckets.bucket_size(m) for m in range(200, 2000)}) == 4


def _fit(n, buckets, seed=0, **kw):
    x, y = _data(n, seed)
    kw.setdefault("p0", [1, 0.5, 0.1])
    return curve_fit(exp_model, x, y, full_output=True, buckets=buckets, **kw)


CASES = [
    {},
    {"sigma": "vector"},
    {"sigma": 0.3, "absolute_sigma": True},
    {"loss": "soft_l1", "f_scale": 0.1},
    {"loss": "cauchy"},
    {"bounds": ([0, 0, 0], [5, 5, 5])},
    {"method": "lm"},
    {"x_scale": "jac"},
    {"jac": "3-point"},
    {"max_nfev": 3},  # stops on max_nfev: status 0 must agree too
]


@pytest.mark.parametrize("n", [4, 257])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_padded_fit_equals_unpadded(n, case):
    kw = dict(CASES[case])
    if kw.get("sigma") == "vector":
        kw["sigma"] = 0.05 + np.random.default_rng(n).random(n)
    if kw.get("max_nfev") and kw.get("method") != "lm":
        # curve_fit raises when the fit does not converge; compare the messages then.
        with pytest.raises(RuntimeError) as unpadded:
            _fit(n, False, **kw)
        with pytest.raises(RuntimeError) as padded:
            _fit(n, True, **kw)
        assert str(unpadded.value) == str(padded.value)
        return
    popt0, pcov0, info0, msg0, ier0 = _fit(n, False, **kw)
    popt1, pcov1, info1, msg1, ier1 = _fit(n, True, **kw)
    np.testing.assert_allclose(popt1, popt0, rtol=1e-12, atol=0)
    np.testing.assert_allclose(pcov1, pcov0, rtol=1e-10, atol=1e-300)
    assert info1["nfev"] == info0["nfev"] and ier1 == ier0 and msg1 == msg0
    assert info1["fvec"].shape == (n,)  # sliced back to the real rows
    np.testing.assert_allclose(info1["fvec"], info0["fvec"], rtol=1e-10, atol=1e-12)
    cost0, cost1 = (0.5 * np.dot(i["fvec"], i["fvec"]) for i in (info0, info1))
    np.testing.assert_allclose(cost1, cost0, rtol=1e-12)


def test_one_program_per_bucket():
    _fit(300, True)  # bucket 512
    size = solve._cache_size()
    for n in (260, 301, 333, 384, 512):
        _fit(n, True)
    assert solve._cache_size() == size
    _fit(513, True)  # next bucket: one more program
    assert solve._cache_size() == size + 1


def test_turned_off_by_argument_and_environment(monkeypatch):
    _fit(700, False)
    size = solve._cache_size()
    _fit(701, False)
    assert solve._cache_size() == size + 1  # every length compiles its own program
    monkeypatch.setenv("NLSQ_BUCKETS", "off")
    assert not _buckets.buckets_enabled()
    _fit(702, None)
    assert solve._cache_size() == size + 2
    monkeypatch.setenv("NLSQ_BUCKETS", "on")
    assert _buckets.buckets_enabled() and not _buckets.buckets_enabled(False)


def test_models_that_mix_rows_are_not_padded():
    assert _buckets.model_is_rowwise(exp_model, 3)
    assert not _buckets.model_is_rowwise(centred_model, 2)
    assert not _buckets.model_is_rowwise(lambda x, a: a * jnp.cumsum(x), 1)
    assert not _buckets.model_is_rowwise(lambda x, a: a * np.exp(x), 1)  # NumPy only
    x, y = _data(77)
    y = 0.3 * (x - x.mean()) + 1.0 + 0.01 * np.sin(9 * x)
    p0, _ = curve_fit(centred_model, x, y, buckets=False)
    p1, _ = curve_fit(centred_model, x, y, buckets=True)
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_allclose(p1, [0.3, 1.0], atol=1e-2)


def _table(tmp_path, name, **kw):
    path = tmp_path / name
    async_logger.configure(sink=str(path))
    try:
        _fit(150, **kw)
    finally:
        async_logger.configure()
    return path.read_text()


@pytest.mark.parametrize("verbose", [1, 2])
def test_verbose_table_is_the_same(tmp_path, verbose):
    unpadded = _table(tmp_path, "a.log", buckets=False, verbose=verbose)
    padded = _table(tmp_path, "b.log", buckets=True, verbose=verbose)
    assert "Function evaluations" in unpadded
    assert padded == unpadded


@pytest.mark.parametrize("model", [lambda x, a, b: a * jnp.exp(-b * x), lambda x, a, b: a + 0 * b])
def test_padded_rows_known_without_tracing_the_model(model):
    # A padded problem reads its number of residuals off the data (no trace of
    # the model); it must be what the model's residuals actually have, also for
    # a model that returns a scalar (broadcast against ydata).
    calls = []

    def counted(x, a, b):
        calls.append(1)
        return model(x, a, b)

    x = np.linspace(0, 1, 300)
    data = _buckets.pad(x, 2 * x, None, 0)
    residual = _buckets.PaddedModelResidual(counted, None, 1)
    with enable_x64(True):  # as every fit runs
        problem = make_problem(residual, data, np.ones(2), jac_mode="auto")
        m = problem.m
        assert not calls  # the model was not traced for it
        assert m == jax.eval_shape(problem.fun, problem.x0).shape[0] == 512
