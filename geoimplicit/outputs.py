"""Atomic, non-clobbering outputs.

A file is written under a hidden temporary name beside the final one and renamed into place when complete, so
an interrupted run never leaves a file that looks finished.

A folder of products (a report, a generated scene) is written into a hidden staging folder. When the output
folder does not exist yet, the staging folder is renamed to it. When it exists, each product (a file or a
sub-folder) replaces its own name in it, one by one, and nothing else in the folder is touched: a user's notes,
the inputs, other runs' files all stay. A command declares the names it owns (``products``, its manifest): with
``--overwrite`` an owned name that this run did not write (a figure of a previous run made with other options)
is removed as well, so the folder never mixes two runs' products.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from geoimplicit.errors import DiskFullError, InputError, OutputExistsError

PARTIAL_MARK = ".partial-"
_GLOB_CHARS = set("*?[")


def check_output(path: str | os.PathLike, overwrite: bool, *, inputs: Iterable = (),
                 products: Sequence[str] | None = None, folder: bool | None = None) -> Path:
    """Refuse an output that cannot be written as asked; return it as a Path.

    Raises :class:`OutputExistsError` when the output exists and ``overwrite`` is false (for a folder: when
    it holds one of ``products``, or anything when no products are declared), when a file is asked for where a
    folder is (or the reverse, ``folder``), and :class:`InputError` when the output is one of ``inputs`` or a
    folder that holds one (``--overwrite`` would replace a file being read).
    """
    path = Path(path)
    folder = True if products is not None else folder
    _refuse_inputs(path, inputs, folder)
    if not path.exists():
        return path
    if path.is_dir() and folder is False:
        raise OutputExistsError("is a folder; a file is written here", path=path,
                                hint="give a file name (e.g. dsm.tif) or another path")
    if not path.is_dir() and folder:
        raise OutputExistsError("is a file; a folder of outputs is written here", path=path,
                                hint="give a folder name or another path")
    if overwrite:
        return path
    if path.is_dir():
        clashes = [n for n in products if (path / n).exists()] if products is not None else os.listdir(path)
        if not clashes:
            return path
        names = sorted(clashes)
        what = "exists and holds " + ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise OutputExistsError(f"output folder already {what}", path=path,
                                hint="pass --overwrite to replace this command's outputs (nothing else is removed)")
    raise OutputExistsError("output already exists", path=path, hint="pass --overwrite to replace it")


def _expand(inputs: Iterable) -> list[Path]:
    out = []
    for item in inputs:
        if item is None:
            continue
        text = os.fspath(item)
        names = glob.glob(text) if _GLOB_CHARS & set(text) else [text]
        out += [Path(os.path.abspath(n)) for n in names]
    return out


def _refuse_inputs(path: Path, inputs: Iterable, folder: bool | None) -> None:
    target = Path(os.path.abspath(path))
    for source in _expand(inputs):
        resolved = source.resolve() if source.exists() else source
        if resolved == target.resolve() or source == target:
            raise InputError("is both an input and the output", path=path, hint="write the output elsewhere (-o)")
        if folder is not False and (target in source.parents or target.resolve() in resolved.parents):
            raise InputError(f"the output folder holds the input {source.name}", path=path,
                             hint="write the outputs into another folder (-o), so that --overwrite can never "
                                  "replace an input")


def partial_path(path: str | os.PathLike) -> Path:
    """A unique temporary sibling of ``path`` with the same suffix (GDAL drivers key on it)."""
    path = Path(os.path.abspath(path))
    return path.with_name(f".{path.stem}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}{path.suffix}")


def _staging_path(final: Path) -> Path:
    """Beside ``final``, or inside it when it is a folder on another file system (a mount point)."""
    tmp = partial_path(final)
    if final.is_dir() and os.stat(final).st_dev != os.stat(final.parent).st_dev:
        tmp = final / tmp.name
    return tmp


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False, *, products: Sequence[str] | None = None,
                  inputs: Iterable = ()) -> Iterator[Path]:
    """Yield a temporary path to write; move it to ``path`` on success, delete it on any error.

    Works for files and for folders (the temporary path is not created; make it a folder if you need one).
    Into an existing folder, only the entries written (and the declared ``products``) are replaced. A full
    disk raises :class:`DiskFullError` naming the folder; nothing partial is left.

    >>> with atomic_output("dsm.tif", overwrite=True) as tmp:  # doctest: +SKIP
    ...     write_geotiff(tmp, ...)
    """
    final = Path(os.path.abspath(check_output(path, overwrite, inputs=inputs, products=products)))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_path(final)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic_output: nothing was written to {tmp}")
        _move_into_place(tmp, final, products)
    except Exception as exc:  # an OSError, or GDAL's own error class for a full disk
        _raise_if_disk_full(exc, final, tmp)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        aux = tmp.with_name(tmp.name + ".aux.xml")
        if aux.exists():
            aux.unlink()


def _move_into_place(tmp: Path, final: Path, products: Sequence[str] | None) -> None:
    if not tmp.is_dir():
        if final.is_dir():
            raise OutputExistsError("is a folder; a file is written here", path=final, hint="give another path")
        os.replace(tmp, final)
    elif not final.exists():
        os.replace(tmp, final)
    elif not final.is_dir():
        raise OutputExistsError("is a file; a folder of outputs is written here", path=final,
                                hint="give another path")
    else:
        _replace_entries(tmp, final, products)


def _replace_entries(staging: Path, final: Path, products: Sequence[str] | None) -> None:
    """Move each entry of ``staging`` into ``final``; remove owned products this run did not write."""
    trash = staging / f".replaced{PARTIAL_MARK}{uuid.uuid4().hex[:8]}"
    written = sorted(p.name for p in staging.iterdir())
    trash.mkdir()
    stale = [n for n in (products or ()) if n not in written and (final / n).exists()]
    for name in stale:
        os.replace(final / name, trash / name)
    for name in written:
        new, old = staging / name, final / name
        if old.exists() and (old.is_dir() or new.is_dir()):
            os.replace(old, trash / name)  # a folder cannot be replaced in one rename
        os.replace(new, old)


_NEARLY_FULL_BYTES = 16 * 2**20  # GDAL and lazrs report a full disk as a bare "write failed"


def is_disk_full(exc: BaseException, path: str | os.PathLike | None = None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) comes from a full disk.

    True for ENOSPC/EDQUOT and the messages of libraries that lose the errno (GDAL, SQLite); with ``path``,
    also for any error while the disk holding ``path`` has less than 16 MiB left.
    """
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen).lower()
        if any(s in text for s in ("no space left", "free disk space", "disk full", "database or disk is full")):
            return True
        seen = seen.__cause__ or seen.__context__
    return path is not None and free_bytes(path) < _NEARLY_FULL_BYTES


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the disk holding ``path`` (its nearest existing ancestor); a large number if unknown."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 2**62


def _raise_if_disk_full(exc: BaseException, final: Path, tmp: Path) -> None:
    if isinstance(exc, DiskFullError) and exc.path and Path(exc.path).is_relative_to(tmp):
        pass  # raised by a file inside this staging folder: name the folder the user asked for
    elif isinstance(exc, (DiskFullError, InputError, OutputExistsError)) or not is_disk_full(exc, final.parent):
        return
    folder = final if final.is_dir() else final.parent
    raise DiskFullError(f"disk full while writing {final.name}; the partial output was removed", path=folder,
                        hint="free some space on that disk (or write elsewhere with -o) and run the command again"
                        ) from exc


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
