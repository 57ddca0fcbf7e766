"""``curve_fit_many`` with its batch sharded over 4 (forced) CPU devices.

Each check runs in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (JAX fixes the device count
when it starts) and reports JSON on its last line.
"""

from __future__ import annotations

from forced_devices import mesh_prelude, run_script

PRELUDE = mesh_prelude(
    "batch",
    """
import nlsq._many as many
from nlsq import curve_fit_many

spy_on(many, "solve_on_mesh")

def same(a, b):
    return dict(
        dp=float(np.max(np.abs(a.popt / b.popt - 1))),
        dc=float(np.nanmax(np.abs(a.pcov / b.pcov - 1))),
        nfev=a.nfev.tolist() == b.nfev.tolist(),
        status=a.status.tolist() == b.status.tolist(),
        message=a.message == b.message,
        cost=float(np.max(np.abs(a.cost / b.cost - 1))),
    )

rng = np.random.default_rng(11)
N = 301  # a length no other dimension of the program has
x = np.linspace(0, 5, N)
def datasets(B):
    a = 1 + 0.1 * np.arange(B)[:, None]
    b = 0.5 + 0.05 * np.arange(B)[:, None]
    return a * np.exp(-b * x) + 0.2 + 0.02 * rng.standard_normal((B, N))
""",
)


def test_sharded_batch_equals_unsharded_and_runs_per_device():
    out = run_script(
        PRELUDE,
        """
        res = {}
        # Host data and mesh=: B = 10 is padded with 2 dummy fits (12 = 4 x 3).
        Y = datasets(10)
        sigma = 0.02 * (1 + rng.random((10, N)))
        lb = np.tile([0.0, 0.0, -1.0], (10, 1))
        ub = np.tile([5.0, 0.9, 1.0], (10, 1))  # b's bound is active for the last fits
        for name, kw in [("lm", {}), ("trf sigma bounds", {"sigma": sigma, "bounds": (lb, ub)}),
                         ("dogbox soft_l1", {"method": "dogbox", "loss": "soft_l1"})]:
            ref = curve_fit_many(model, x, Y, p0=[1, 0.6, 0], **kw)
            n_before = len(COMPILED)
            got = curve_fit_many(model, x, Y, p0=[1, 0.6, 0], mesh=MESH, **kw)
            text = COMPILED[n_before].as_text()
            res[name] = dict(same(got, ref), collectives=collectives(text),
                             # (fits, rows): 3 fits per device (rows padded to a bucket)
                             local_batch=bool(re.search(r"f64\\[3,\\d{3}\\]", text)),
                             full_batch=bool(re.search(r"f64\\[1[02],\\d{3}\\]", text)))
        # Datasets already sharded over the mesh (B = 8): fitted where they are, with
        # xdata shared (n,) or per fit (B, n), sigma per fit on the devices too.
        Y8 = datasets(8)
        s8 = 0.02 * (1 + rng.random((8, N)))
        ref = curve_fit_many(model, x, Y8, p0=[1, 1, 0], sigma=s8)
        got = curve_fit_many(model, put(np.tile(x, (8, 1))), put(Y8), p0=[1, 1, 0],
                             sigma=put(s8))
        res["device data"] = dict(same(got, ref),
                                  collectives=collectives(COMPILED[-1].as_text()))
        got1 = curve_fit_many(model, x, put(Y8), p0=[1, 1, 0], sigma=s8)
        res["device data shared x"] = same(got1, ref)
        print(json.dumps(res))
        """,
    )
    for name, r in out.items():
        assert r["dp"] < 1e-10, (name, r)
        assert r["dc"] < 1e-8, (name, r)
        assert r["cost"] < 1e-10, (name, r)
        assert r["nfev"] and r["status"] and r["message"], (name, r)
        if "collectives" in r:
            # Fits are independent: every device loops over its own fits alone.
            assert r["collectives"] == [], (name, r["collectives"])
        if "local_batch" in r:
            assert r["local_batch"] and not r["full_batch"], (name, r)


def test_sharded_batch_rows_reach_the_host_without_a_gather():
    """verbose=2 on a sharded batch: each device's fits' rows reach the host, ungathered.

    What is shown: the rows of a fit are written into an on-device history by the
    device that runs the fit (``_many``), and the sharded program returns that
    history sharded over the batch, with no collective anywhere in it; reading it
    back copies each device's shard, and the tables written from it (fit index
    column) equal the unsharded run's, byte for byte.  Printing the same rows from
    the program with ``jax.debug.print`` under GSPMD (``jit`` with the batch
    sharded, no ``shard_map``) compiles to a program that all-gathers them to the
    one device that runs the print callback.
    """
    out = run_script(
        PRELUDE,
        """
        Y = datasets(6)  # padded to 8: 2 fits per device
        ref, ref_tab = table(lambda: curve_fit_many(model, x, Y, p0=[1, 1, 0], verbose=2))
        n_before = len(COMPILED)
        got, tab = table(lambda: curve_fit_many(model, x, Y, p0=[1, 1, 0], verbose=2, mesh=MESH))
        compiled = COMPILED[n_before]
        ours = compiled.as_text()
        history_sharding = jax.tree_util.tree_leaves(compiled.output_shardings)[-1]

        # The same vmapped fits, partitioned by GSPMD, their rows printed by jax.debug.print.
        _, problem, history_len, _, _ = ARGS[n_before]  # the batch, sharded over the mesh

        def printed(problem):
            outcome = many._run_batch(problem, history_len)
            jax.debug.print("rows {}", outcome.history)
            return outcome.x
        with jax.enable_x64(True):
            gspmd = jax.jit(printed).lower(problem).compile().as_text()
        fit_col = sorted({int(l.split()[0]) for l in tab.splitlines()
                          if l.split() and l.split()[0].isdigit()})
        print(json.dumps(dict(
            same_table=tab == ref_tab, rows=tab.count("\\n"), fits=fit_col,
            ours=collectives(ours), history_spec=str(history_sharding.spec),
            gspmd=collectives(gspmd), dp=same(got, ref)["dp"],
        )))
        """,
    )
    assert out["dp"] < 1e-10
    assert out["same_table"] and out["rows"] > 6 * 6
    assert out["fits"] == list(range(6))  # every device's fits, each with its index
    assert out["ours"] == []
    assert "batch" in out["history_spec"]
    assert "all-gather" in out["gspmd"], out["gspmd"]


def test_sharded_batch_errors_are_clear():
    out = run_script(
        PRELUDE,
        """
        errors = {}
        Y = datasets(4)
        bad = Y.copy()
        bad[2, 5] = np.nan
        for name, call, exc in [
            ("mesh", lambda: curve_fit_many(model, x, Y, mesh="batch"), TypeError),
            ("xshape", lambda: curve_fit_many(model, x[:7], put(Y)), ValueError),
            ("nan", lambda: curve_fit_many(model, x, put(bad)), ValueError),
            ("zero sigma", lambda: curve_fit_many(model, x, put(Y), sigma=np.zeros(N)),
             ValueError),
            ("other mesh", lambda: curve_fit_many(
                model, x, put(Y), mesh=Mesh(np.array(jax.devices()[:2]), ("b",))), ValueError),
        ]:
            try:
                call()
            except exc as e:
                errors[name] = str(e)
        print(json.dumps(errors))
        """,
    )
    assert "Mesh" in out["mesh"]
    assert "xdata" in out["xshape"] and "(301,)" in out["xshape"]
    assert out["nan"].startswith("dataset 2:") and "NaN" in out["nan"]
    assert "sigma" in out["zero sigma"]
    assert "differs" in out["other mesh"]
