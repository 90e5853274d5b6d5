"""Writing results into an output folder, and only there."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputExistsError, UnsafePathError

__all__ = ["OutputExistsError", "UnsafePathError", "output_dir", "write_file"]


def output_dir(path: str | os.PathLike) -> Path:
    """Create (if needed) and return the resolved output folder."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"output path {str(folder)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def write_file(folder: Path, name: str, data: bytes | str, *, force: bool = False) -> Path:
    """Write ``data`` to ``folder/name``; ``name`` must be a plain file name, and the
    target must stay inside ``folder`` (no separators, no links). Existing files are kept
    unless ``force``."""
    if (not isinstance(name, str) or not name or "\0" in name or name != Path(name).name
            or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name)):
        raise UnsafePathError(f"refusing to write {name!r}: not a plain file name")
    target = folder / name
    if target.is_symlink():
        raise UnsafePathError(f"{str(target)!r} is a symbolic link; refusing to write through it")
    if target.exists() and (not force or not target.is_file()):
        raise OutputExistsError(f"{str(target)!r} already exists; pass force=True (--force) "
                                "to overwrite it" if target.is_file() else
                                f"{str(target)!r} exists and is not a file")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = folder / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(payload)
    os.replace(tmp, target)
    return target
