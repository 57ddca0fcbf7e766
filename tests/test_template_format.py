"""Templates rendered by the Rust formatter must equal Python's own ``format()``.

The property tests generate every kind of spec the template parser accepts and
values across the whole int64 / float64 range (including nan, inf, -0.0,
subnormals and the largest finite floats) and compare byte for byte. Where a
field receives a value whose Python type the spec does not suit (a float in a
``d`` field, an int in a field with a precision but no type), the documented
conversion is applied on the Python side first; see ``expected``.
"""

from __future__ import annotations

import math
import re
import sys

from hypothesis import example, given, settings
from hypothesis import strategies as st
from nlsq._ringlog import render

HAS_Z = sys.version_info >= (3, 11)
FLOAT_TYPES = ["e", "E", "f", "F", "g", "G", "%"]
TYPES = ["", "d", *FLOAT_TYPES]
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

# --------------------------------------------------------------------------- specs


def build_spec(
    fill: str,
    align: str,
    sign: str,
    z: bool,
    alt: bool,
    zero: bool,
    width: int | None,
    grouping: str,
    precision: int | None,
    typ: str,
) -> str:
    """Assemble a spec string in mini-language order."""
    return "".join(
        [
            fill + align if align else "",
            sign,
            "z" if z else "",
            "#" if alt else "",
            "0" if zero else "",
            "" if width is None else str(width),
            grouping,
            "" if precision is None else f".{precision}",
            typ,
        ]
    )


fills = st.one_of(
    st.sampled_from(["", " ", "*", "0", "x", "<", "=", "9", "-", "é", "€", "\u3000", "😀"]),
    st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)),
)


@st.composite
def specs(draw: st.DrawFn, types: list[str] = TYPES) -> tuple[str, str, int | None, bool]:
    """A spec the parser accepts: (spec, type, precision, z)."""
    typ = draw(st.sampled_from(types))
    align = draw(st.sampled_from(["", "<", ">", "^", "="]))
    fill = draw(fills) if align else ""
    z = HAS_Z and typ != "d" and draw(st.booleans())
    precision = None
    if typ != "d":
        precision = draw(st.none() | st.integers(0, 20) | st.sampled_from([0, 1, 16, 17, 50, 100]))
    spec = build_spec(
        fill,
        align,
        draw(st.sampled_from(["", "+", "-", " "])),
        z,
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.none() | st.integers(0, 40) | st.sampled_from([100, 256])),
        draw(st.sampled_from(["", ",", "_"])),
        precision,
        typ,
    )
    return spec, typ, precision, z


# --------------------------------------------------------------------------- values

SPECIAL_FLOATS = [
    0.0,
    -0.0,
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    0.5,
    1.5,
    2.5,
    -2.5,
    0.125,
    0.375,
    2.675,
    1e16,
    9999999999999998.0,
    1e15,
    1e-4,
    9.9999e-5,
    1e-5,
    123456.789,
    0.1,
    1 / 3,
    1e23,
    9.5,
    99.95,
    999999.5,
    2.0**63,
    -(2.0**63),
    2.0**70,
]
SPECIAL_INTS = [0, 1, -1, 9, 10, 999, 1000, -1000, 123456789, I64_MAX, I64_MIN, 2**53 + 1]

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_FLOATS),
    # short decimals land on rounding ties and on g's notation switch
    st.builds(lambda m, e: m * 10.0**e, st.integers(-99999, 99999), st.integers(-12, 20)),
    st.floats(-1e6, 1e6),
)
ints = st.one_of(
    st.integers(I64_MIN, I64_MAX), st.sampled_from(SPECIAL_INTS), st.integers(-5000, 5000)
)


def without(spec: str, typ: str, flag: str = "") -> str:
    """``spec`` with its type (and optionally the ``z`` flag) removed."""
    if typ:
        spec = spec[: -len(typ)]
    if flag:
        # z comes right after [[fill]align][sign]; drop the first z after that
        head = re.match(r"^(.?[<>^=])?[+\- ]?", spec)
        assert head is not None
        i = head.end()
        assert spec[i] == "z", spec
        spec = spec[:i] + spec[i + 1 :]
    return spec


def python_side(
    value: int | float, spec: str, typ: str, precision: int | None, z: bool
) -> tuple[int | float, str]:
    """The value and spec Python's ``format()`` must be given to produce what
    ``render`` documents for ``value`` in a field with ``spec``."""
    if isinstance(value, float) and typ == "d":
        if math.isfinite(value):
            return int(value), spec
        return value, without(spec, typ)
    if isinstance(value, int) and typ == "":
        if precision is not None:
            return float(value), spec
        if z:
            return value, without(spec, typ, "z")
    return value, spec


def expected(value: int | float, spec: str, typ: str, precision: int | None, z: bool) -> str:
    """What ``render`` must produce."""
    pv, ps = python_side(value, spec, typ, precision, z)
    return format(pv, ps)


# --------------------------------------------------------------------------- properties


@settings(max_examples=1500, deadline=None)
@given(specs(), floats)
@example(("", "", None, False), -0.0)
@example(("z.2f", "f", 2, True), -0.004)
@example(("010", "", None, False), -math.inf)
@example(("012,", "", None, False), 1234.5)
@example(("#.0e", "e", 0, False), 2.5)
@example(("#.3g", "g", 3, False), 1.0)
@example((".3", "", 3, False), 100.0)
@example((".100f", "f", 100, False), 1.7976931348623157e308)
@example((",d", "d", None, False), 1e308)
@example(("%", "%", None, False), 1e307)
def test_float_values_match_python(spec: tuple[str, str, int | None, bool], value: float) -> None:
    s, typ, precision, z = spec
    assert render("{:" + s + "}", [value]) == expected(value, s, typ, precision, z), (s, value)


@settings(max_examples=800, deadline=None)
@given(specs(), ints)
@example(("+,", "", None, False), I64_MIN)
@example(("0=30_d", "d", None, False), I64_MAX)
@example((".2e", "e", 2, False), 3)
@example((".3", "", 3, False), 12345)
def test_int_values_match_python(spec: tuple[str, str, int | None, bool], value: int) -> None:
    s, typ, precision, z = spec
    assert render("{:" + s + "}", [value]) == expected(value, s, typ, precision, z), (s, value)


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
literal_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8).map(
    lambda t: t.replace("{", "{{").replace("}", "}}")
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(literal_text, st.booleans(), specs(), st.one_of(floats, ints)),
        max_size=12,
    ),
    literal_text,
    st.data(),
)
@example(
    [("{{a}} ", True, ("^9.3e", "e", 3, False), 1.5), ("}}", False, ("", "", None, False), 7)],
    "",
    None,
)
def test_multi_field_templates_match_str_format(
    parts: list[tuple[str, bool, tuple[str, str, int | None, bool], int | float]],
    tail: str,
    data: st.DataObject | None,
) -> None:
    """Literal text, ``{{``/``}}`` escapes and up to 12 named or positional
    fields, against ``str.format`` itself."""
    ours, theirs = "", ""
    args: list[int | float] = []
    kwargs: dict[str, int | float] = {}
    values: list[int | float] = []
    for i, (lit, named, (s, typ, precision, z), v) in enumerate(parts):
        name = ""
        if named:
            name = data.draw(names.filter(lambda n: n not in kwargs)) if data else f"f{i}"
        pv, ps = python_side(v, s, typ, precision, z)
        ours += lit + "{" + name + ":" + s + "}"
        theirs += lit + "{" + name + ":" + ps + "}"
        if name:
            kwargs[name] = pv
        else:
            args.append(pv)
        values.append(v)
    assert render(ours + tail, values) == (theirs + tail).format(*args, **kwargs)
