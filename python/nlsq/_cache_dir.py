"""Where nlsq keeps files between processes (JAX's persistent compilation cache).

One small function so that every user (the compilation cache, ``python -m
nlsq.info``) resolves the directory the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CacheDir", "ENV_VAR", "resolve_cache_dir"]

ENV_VAR = "NLSQ_CACHE_DIR"
"""Overrides the cache directory; the value ``off`` disables the cache."""


@dataclass(frozen=True)
class CacheDir:
    """The resolved cache directory.

    Attributes
    ----------
    path : pathlib.Path or None
        The directory, or None when the cache is disabled.
    source : str
        How it was resolved (which variable or default), for diagnostics.
    """

    path: Path | None
    source: str

    @property
    def enabled(self) -> bool:
        return self.path is not None


def resolve_cache_dir(environ: dict[str, str] | None = None) -> CacheDir:
    """``$NLSQ_CACHE_DIR`` (``off`` disables), else ``${XDG_CACHE_HOME:-~/.cache}/nlsq``.

    Nothing is created; empty variables count as unset, as in the XDG spec.
    """
    env = os.environ if environ is None else environ
    override = env.get(ENV_VAR, "").strip()
    if override:
        if override.lower() == "off":
            return CacheDir(None, f"{ENV_VAR}=off (disabled)")
        return CacheDir(Path(override).expanduser(), f"{ENV_VAR}")
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return CacheDir(Path(xdg).expanduser() / "nlsq", "XDG_CACHE_HOME")
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return CacheDir(home / ".cache" / "nlsq", "default (~/.cache)")
