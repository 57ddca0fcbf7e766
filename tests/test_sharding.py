"""Data sharded over 4 (forced) CPU devices: fitted where they are, same result as one device.

JAX fixes the device count when it starts, so each check runs in a fresh
interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and
reports JSON on its last line.
"""

from __future__ import annotations

import re

import pytest
from forced_devices import mesh_prelude, run_script
from nlsq._verbose import CLOSINGS

PRELUDE = mesh_prelude(
    "data",
    """
import nlsq._solve as solve_module
from nlsq import curve_fit

spy_on(solve_module, "solve")

def row_dims(text):
    # Every array dimension in the per-device (partitioned) program.
    return {int(d) for shape in re.findall(r"f64\\[([\\d,]+)\\]", text)
            for d in shape.split(",") if d}

rng = np.random.default_rng(7)
""",
)


def test_sharded_fit_equals_single_device_and_stays_sharded():
    out = run_script(
        PRELUDE,
        """
        M = 4 * 2503  # a length that no other array in the program has
        x = np.linspace(0, 5, M)
        y = 2 * np.exp(-0.7 * x) + 0.3 + 0.05 * rng.standard_normal(M)
        sigma = 0.05 * (1 + rng.random(M))
        res = {}
        for name, kw in [("plain", {}), ("sigma", {"sigma": sigma}),
                         ("soft_l1 bounds", {"loss": "soft_l1",
                                             "bounds": ([0, 0, 0], [5, 5, 1])}),
                         ("x_scale jac chunked", {"x_scale": "jac", "chunk_size": 1000})]:
            # No method: 'lm' unbounded ('trf' with bounds/loss), sharded as unsharded.
            ref, pref = curve_fit(model, x, y, p0=[1, 1, 0],
                                  **{k: v for k, v in kw.items() if k != "chunk_size"})
            n_before = len(COMPILED)
            kw = dict(kw)
            if "sigma" in kw:
                kw["sigma"] = put(kw["sigma"])
            (popt, pcov, info, msg, ier), tab = table(lambda: curve_fit(
                model, put(x), put(y), p0=[1, 1, 0], full_output=True, verbose=2, **kw))
            prog = COMPILED[n_before]
            text = prog.as_text()
            if name == "plain":
                plain_text = text
            fvec = info["fvec"]
            res[name] = dict(
                dp=float(np.max(np.abs(popt / ref - 1))),
                dc=float(np.max(np.abs(pcov / pref - 1))),
                full_rows_in_program=M in row_dims(text),
                local_rows_in_program=(M // 4) in row_dims(text),
                fvec_shards=sorted({s.data.shape[0] for s in fvec.addressable_shards})
                if isinstance(fvec, jax.Array) else None,
                fvec_len=int(np.shape(fvec)[0]),
                all_gathers=re.findall(r"all-gather\\(([^)]*)\\)", text),
                gathers=[l.split("=")[1].split()[0] for l in text.splitlines()
                         if " all-gather(" in l],
                rows=tab.count("\\n"),
                first=tab.splitlines()[:2],
            )
        n_before = len(COMPILED)
        curve_fit(model, put(x), put(y), p0=[1, 1, 0], verbose=0)
        res["collectives_verbose0"] = collectives(COMPILED[n_before].as_text())
        res["collectives_verbose2"] = collectives(plain_text)
        _, ref_tab = table(lambda: curve_fit(model, x, y, p0=[1, 1, 0], verbose=2))
        res["ref_rows"] = ref_tab.count("\\n")
        res["ref_first"] = ref_tab.splitlines()[:2]
        print(json.dumps(res))
        """,
    )
    for name in ("plain", "sigma", "soft_l1 bounds", "x_scale jac chunked"):
        r = out[name]
        assert r["dp"] < 1e-10, (name, r["dp"])
        assert r["dc"] < 1e-8, (name, r["dc"])
        # The partitioned program only ever sees a quarter of the rows.
        assert not r["full_rows_in_program"], name
        assert r["local_rows_in_program"], name
        assert r["fvec_len"] == 4 * 2503
        # Only the (n+1) x (n+1) triangles are gathered: 4 devices x 4 rows, 4 columns.
        assert r["gathers"] and all(g == "f64[16,4]{1,0}" for g in r["gathers"]), r["gathers"]
    # The verbose rows add no collective to the sharded program (no gather to log).
    assert out["collectives_verbose2"] == out["collectives_verbose0"]
    assert "all-gather" in out["collectives_verbose0"]  # the TSQR's triangles
    # One table, written once (not once per device), with the same rows as one device.
    assert out["plain"]["rows"] == out["ref_rows"]
    assert out["plain"]["first"] == out["ref_first"]


def test_uneven_length_padded_with_zero_weight_rows():
    out = run_script(
        PRELUDE,
        """
        M = 10011  # not a multiple of 4
        x = np.linspace(0, 5, M)
        y = 2 * np.exp(-0.7 * x) + 0.3 + 0.05 * rng.standard_normal(M)
        ref, pref, iref, _, _ = curve_fit(model, x, y, p0=[1, 1, 0], full_output=True)
        popt, pcov, info, _, _ = curve_fit(model, x, y, p0=[1, 1, 0], mesh=MESH,
                                           full_output=True)
        text = COMPILED[-1].as_text()
        print(json.dumps(dict(
            dp=float(np.max(np.abs(popt / ref - 1))),
            dc=float(np.max(np.abs(pcov / pref - 1))),
            fvec_len=int(np.shape(info["fvec"])[0]),
            dfvec=float(np.max(np.abs(np.asarray(info["fvec"]) - iref["fvec"]))),
            local=(10012 // 4) in row_dims(text),
        )))
        """,
    )
    assert out["dp"] < 1e-10
    # pcov is scaled by cost / (m - n) with the true m, not the padded one.
    assert out["dc"] < 1e-8
    assert out["fvec_len"] == 10011
    assert out["dfvec"] < 1e-12
    assert out["local"]


def test_sharded_errors_are_clear():
    out = run_script(
        PRELUDE,
        """
        errors = {}
        x = np.linspace(0, 1, 40)
        y = np.exp(-x)
        try:
            curve_fit(model, put(x), put(y), p0=[1, 1, 0], sigma=np.eye(40))
        except ValueError as e:
            errors["cov"] = str(e)
        try:
            curve_fit(model, x, y, p0=[1, 1, 0], mesh="data")
        except TypeError as e:
            errors["mesh"] = str(e)
        print(json.dumps(errors))
        """,
    )
    assert "covariance matrix" in out["cov"]
    assert "Mesh" in out["mesh"]


@pytest.mark.parametrize("route", ["ffi"])
def test_log_records_from_every_device_without_all_gather(route):
    """Inside shard_map, a log call runs on each device with its own rows' summary.

    The HLO shows the log custom call fed by device-local values and no collective
    at all; ``jax.debug.print`` of the same values under automatic sharding pins
    its callback to one device and gathers the sharded operand there.
    """
    out = run_script(
        PRELUDE,
        f"""
        from nlsq.utils import _emit
        async_logger.configure(backend={route!r})
        assert _emit.inline_rows_available()
        # The emitter the solvers' verbose rows go through.
        row = _emit.inline_row_emitter("dev {{i:d}} sum {{s:.1f}}")

        @jax.jit
        def per_device_log(x):
            def body(xl):
                row(True, 2, i=jax.lax.axis_index("data"), s=jnp.sum(xl))
                return xl * 2
            return jax.shard_map(body, mesh=MESH, in_specs=P("data"),
                                 out_specs=P("data"))(x)

        @jax.jit
        def debug_print(x):
            jax.debug.print("{{}}", x)
            return x * 2

        x = put(np.arange(16.0))
        ours = per_device_log.lower(x).compile().as_text()
        theirs = debug_print.lower(x).compile().as_text()
        _, tab = table(lambda: per_device_log(x).block_until_ready())
        collectives = ("all-gather", "all-reduce", "collective-permute", "all-to-all")
        print(json.dumps(dict(
            ours=[c for c in collectives if c in ours],
            theirs=[c for c in collectives if c in theirs],
            lines=sorted(tab.splitlines()),
        )))
        """,
    )
    assert out["ours"] == []
    assert out["theirs"], "expected jax.debug.print to move the sharded operand"
    assert out["lines"] == [
        "dev 0 sum 6.0",
        "dev 1 sum 22.0",
        "dev 2 sum 38.0",
        "dev 3 sum 54.0",
    ]


def test_sharded_fit_log_call_fed_by_no_collective_of_its_own():
    """What feeds the verbose rows of a sharded fit, in the optimised HLO.

    A sharded fit's row (iteration, nfev, cost, reduction, step norm, optimality)
    holds scalars that every device already has: the solver reduced them itself
    (the cost is a ``psum`` of per-device sums, the optimality comes from ``g`` and
    ``R`` after the TSQR's ``all_gather`` of the ``(p+1) x (p+1)`` triangles).  So
    what is shown here is: (1) the log custom call ``nlsq_ringlog_push`` takes one
    ``f64[1, k]`` row of those scalars, built on the device, nothing row-sized;
    (2) every collective among its operands' producers (walked back through the
    computation that holds the call) is one the verbose=0 program has too, and the
    two programs have the same collectives: logging moves no data between devices.
    The same row printed with ``jax.debug.print`` would need no gather either
    (replicated scalars); ``jax.debug.print`` gathers what is sharded, which is
    what per-device records are: see the test above (per-device sums) and
    ``test_many_sharding.py`` (each device's fits' rows, where ``jax.debug.print``
    under GSPMD all-gathers them and our route does not).
    """
    out = run_script(
        PRELUDE,
        """
        INSTR = re.compile(r"^\\s*(?:ROOT )?%(\\S+) = (.*?) ([a-z][a-z0-9\\-_]*)\\(([^)]*)\\)")
        def computations(text):
            comps, cur = {}, None
            for line in text.splitlines():
                if line.endswith("{") and not line.startswith(" "):
                    cur = comps.setdefault(line.split()[0].lstrip("%"), {})
                elif cur is not None and (m := INSTR.match(line)):
                    cur[m.group(1)] = (m.group(3), re.findall(r"%([\\w.\\-]+)", m.group(4)),
                                       m.group(2), line)
            return comps
        def log_calls(text):
            found = []
            for comp in computations(text).values():
                for name, (op, operands, shape, line) in comp.items():
                    if op != "custom-call" or "nlsq_ringlog_push" not in line:
                        continue
                    seen, stack, feeding = set(), list(operands), []
                    while stack:
                        o = stack.pop()
                        if o in seen or o not in comp:
                            continue
                        seen.add(o)
                        if comp[o][0] in ("all-gather", "all-reduce", "collective-permute",
                                          "all-to-all", "reduce-scatter"):
                            feeding.append(comp[o][0] + " " + comp[o][2])
                        stack.extend(comp[o][1])
                    operand_shapes = [comp[o][2] for o in operands if o in comp]
                    found.append(dict(operands=operand_shapes, collectives=sorted(feeding)))
            return found
        def all_collectives(text):
            return sorted(m.group(2) + " " + m.group(1) for m in re.finditer(
                r"= (\\S+) (all-gather|all-reduce|collective-permute|all-to-all)\\(", text))
        x = np.linspace(0, 5, 4 * 1001)
        y = 2 * np.exp(-0.7 * x) + 0.3 + 0.05 * rng.standard_normal(x.size)
        res = {}
        for verbose in (0, 2):
            n_before = len(COMPILED)
            curve_fit(model, put(x), put(y), p0=[1, 1, 0], verbose=verbose)
            text = COMPILED[n_before].as_text()
            res[verbose] = dict(calls=log_calls(text), collectives=all_collectives(text))
        print(json.dumps(res))
        """,
    )
    v0, v2 = out["0"], out["2"]
    # Row 0 (with the header), the loop's rows, and one closing record per status
    # the fit may end with (a branch each of one switch after the loop).
    assert v0["calls"] == [] and len(v2["calls"]) == 2 + len(CLOSINGS)
    for call in v2["calls"]:
        # One row of at most 7 scalars (fields and the keep flag), made on each device.
        assert len(call["operands"]) == 1 and re.fullmatch(
            r"f64\[1,[1-7]\](\{1,0\})?", call["operands"][0]
        )
        assert set(call["collectives"]) <= set(v0["collectives"]), call
    # Row 0's values come from the solver's first reduction (the walk does reach it)...
    assert any(call["collectives"] for call in v2["calls"])
    # ...and logging adds no collective of its own.
    assert v2["collectives"] == v0["collectives"]
    assert "all-gather f64[16,4]{1,0}" in v0["collectives"]  # the TSQR's triangles
