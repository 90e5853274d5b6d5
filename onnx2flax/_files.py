"""Writing results into an output folder, and only there."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OnnxConversionError


class OutputExistsError(OnnxConversionError, FileExistsError):
    """A file to write already exists and overwriting was not asked for (``--force``)."""


def output_dir(path: str | os.PathLike) -> Path:
    """Create (if needed) and return the resolved output folder."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"output path {str(folder)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def write_file(folder: Path, name: str, data: bytes | str, *, force: bool = False) -> Path:
    """Write ``data`` to ``folder/name``; ``name`` is a plain file name chosen by us, and the
    target must stay inside ``folder`` (no separators, no links). Existing files are kept
    unless ``force``."""
    if not name or name != Path(name).name or name in (".", ".."):
        raise ValueError(f"refusing to write {name!r}: not a plain file name")
    target = folder / name
    if target.is_symlink():
        raise OutputExistsError(f"{str(target)!r} is a symbolic link; refusing to write through it")
    if target.exists() and not force:
        raise OutputExistsError(f"{str(target)!r} already exists; pass force=True (--force) "
                                "to overwrite it")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = folder / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(payload)
    os.replace(tmp, target)
    return target
