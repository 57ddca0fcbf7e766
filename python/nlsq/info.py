"""``python -m nlsq.info``: the versions and choices a bug report needs.

Prints the nlsq version, Python, jax/jaxlib (and NumPy, SciPy), the JAX backend
and its devices, the logging route chosen and why, whether the native FFI
target registered (and for which XLA FFI API version), and the cache directory.
``--json`` prints the same as one JSON object.  :func:`collect` returns it as a
dict, for scripts (the GPU check reuses it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from typing import Any

__all__ = ["collect", "format_report", "main"]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _nlsq_version() -> str:
    found = _version("nlsq")
    if found is not None:
        return found
    # A source checkout on PYTHONPATH: read pyproject.toml's version.
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        for line in pyproject.read_text().splitlines():
            if line.startswith("version"):
                return line.split("=", 1)[1].strip().strip('"') + " (source tree)"
    except OSError:
        pass
    return "unknown"


def collect() -> dict[str, Any]:
    """Everything :func:`main` prints, as a JSON-serialisable dict.

    Never raises for a broken part of the installation: each failing probe is
    reported as a string that names the error.
    """
    import jax

    from nlsq._cache_dir import resolve_cache_dir
    from nlsq.utils import _native, _routes

    info: dict[str, Any] = {
        "nlsq": _nlsq_version(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
    }
    try:
        info["backend"] = jax.default_backend()
        info["backend_platform"] = _routes.backend_platform()
        info["devices"] = [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]
    except Exception as exc:  # no usable backend: say so, keep going
        info["backend"] = f"unavailable ({type(exc).__name__}: {exc})"
        info["devices"] = []
    try:
        reg = _native.register()
        info["ffi_target"] = {
            "registered": reg.ok,
            "platforms": list(reg.platforms),
            "reason": reg.reason,
            "handlers_api": ".".join(map(str, reg.built_api)) if reg.built_api else None,
            "jaxlib_api": ".".join(map(str, reg.runtime_api)) if reg.runtime_api else None,
            "cuda": reg.cuda_note,
        }
    except Exception as exc:
        info["ffi_target"] = {"registered": False, "reason": f"{type(exc).__name__}: {exc}"}
    try:
        chosen = _routes.describe()
        info["logging_route"] = chosen["route"]
        info["logging_route_reason"] = chosen["route_reason"]
    except Exception as exc:
        info["logging_route"] = None
        info["logging_route_reason"] = f"{type(exc).__name__}: {exc}"
    cache = resolve_cache_dir()
    info["cache_dir"] = str(cache.path) if cache.path is not None else None
    info["cache_dir_source"] = cache.source
    return info


def format_report(info: dict[str, Any]) -> str:
    """The text :func:`main` prints for ``info`` (from :func:`collect`)."""
    ffi = info.get("ffi_target", {})
    if ffi.get("registered"):
        ffi_line = (
            f"registered for {', '.join(ffi.get('platforms', []))} "
            f"(handlers XLA FFI API {ffi.get('handlers_api')}, "
            f"jaxlib {ffi.get('jaxlib_api')})"
        )
        if ffi.get("cuda"):
            ffi_line += f"; CUDA: {ffi['cuda']}"
    else:
        ffi_line = f"not registered: {ffi.get('reason')}"
    rows = [
        ("nlsq", info["nlsq"]),
        ("python", f"{info['python']} ({info['platform']})"),
        ("jax", info["jax"]),
        ("jaxlib", info["jaxlib"]),
        ("numpy", info["numpy"]),
        ("scipy", info["scipy"]),
        ("backend", info["backend"]),
        ("devices", ", ".join(info["devices"]) or "none"),
        ("logging route", f"{info['logging_route']} ({info['logging_route_reason']})"),
        ("FFI target", ffi_line),
        (
            "cache dir",
            f"{info['cache_dir'] or 'disabled'} ({info['cache_dir_source']})",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nlsq.info", description="Print nlsq's versions and choices."
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        print(format_report(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
