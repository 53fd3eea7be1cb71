"""JAX's persistent compilation cache in a user cache directory, so a second process skips compiling.

A default only: a process whose cache directory is set already (by jax.config or
JAX_COMPILATION_CACHE_DIR) keeps every one of its cache settings. Off with
BATCHFIT_COMPILATION_CACHE=0; another directory with BATCHFIT_CACHE_DIR=/path.
"""

from __future__ import annotations

import os
import pathlib

_JAX_DEFAULT_MIN_COMPILE_TIME_S = 1.0


def enable_compilation_cache() -> str | None:
    """Point JAX's compilation cache at the batchfit cache directory unless switched off or set already."""
    if os.environ.get("BATCHFIT_COMPILATION_CACHE", "1").lower() in ("0", "false", "no", "off"):
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:          # the user chose one: leave all of it as it is
        return jax.config.jax_compilation_cache_dir
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    path = str(os.environ.get("BATCHFIT_CACHE_DIR") or pathlib.Path(base) / "batchfit" / "jax")
    jax.config.update("jax_compilation_cache_dir", path)
    # Small models compile in well under JAX's default threshold; cache them too, unless the user set one.
    if (jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_DEFAULT_MIN_COMPILE_TIME_S
            and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
