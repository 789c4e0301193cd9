"""Atomic, non-clobbering output files.

Outputs are written to a hidden temporary name beside the final one and renamed into place only when
complete, so an interrupted run never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from geoimplicit.errors import OutputExistsError

PARTIAL_MARK = ".partial-"


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Raise :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is false; return it as a Path."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError("output already exists", path=path, hint="pass --overwrite to replace it")
    return path


def partial_path(path: str | os.PathLike) -> Path:
    """A unique temporary sibling of ``path`` with the same suffix (GDAL drivers key on it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` on success, delete it on any error.

    Works for files and for folders (the temporary path is not created; make it a folder if you need one).

    >>> with atomic_output("dsm.tif", overwrite=True) as tmp:  # doctest: +SKIP
    ...     write_geotiff(tmp, ...)
    """
    final = check_output(path, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic_output: nothing was written to {tmp}")
        if final.is_dir() and not tmp.is_dir():
            shutil.rmtree(final)
        if tmp.is_dir() and final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        aux = tmp.with_name(tmp.name + ".aux.xml")
        if aux.exists():
            aux.unlink()


def input_fingerprint(files, extra=None) -> str:
    """A short key for a resumable run: each input's resolved path, size and mtime, and ``extra`` settings.

    A run's work folder stores it; a re-run with a different key (an input or a setting changed) starts again.
    """
    import hashlib
    import json

    h = hashlib.sha256()
    for f in sorted(str(Path(p).resolve()) for p in files):
        st = os.stat(f)
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
