"""A persistent XLA compilation cache: compiled programs are kept on disk, so a later
process running the same model at the same input shapes skips compilation."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir", "enable_compilation_cache"]


def default_cache_dir() -> Path:
    """``$ONNX2FLAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/onnx2flax/jax``, else
    ``~/.cache/onnx2flax/jax``."""
    explicit = os.environ.get("ONNX2FLAX_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onnx2flax" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None, *,
                             min_compile_time_s: float | None = None) -> Path:
    """Keep JAX's compiled programs in ``path`` (default :func:`default_cache_dir`) across
    processes; returns the folder. Call it before the first model runs: JAX decides once per
    process whether it uses a cache. Programs that compiled in less than
    ``min_compile_time_s`` are not stored (``None`` keeps JAX's setting,
    ``jax_persistent_cache_min_compile_time_secs``, 1 s by default).

    The command line does this by default (``--no-cache`` turns it off)."""
    import jax

    folder = Path(path) if path is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if min_compile_time_s is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    return folder
