"""LAS/LAZ point clouds: one file, a folder or a glob of tiles read as one data set, in chunks.

Opening a :class:`PointCloudDataset` reads headers only (bounds, counts, CRS). Points are streamed with laspy's
chunk iterator, so a file larger than memory works; chunks are reprojected to the working CRS with pyproj
when a file's CRS differs from it, and cropped to the requested bounds.

Heights: z is kept in the units it came in, except when a file is reprojected into a working CRS whose
vertical unit differs (Autzen's feet into a metric CRS): then z is scaled by the ratio of the units
(feet -> metres: x 0.3048). See ``docs/io.md``.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyproj

from geoimplicit.errors import (
    AOIError,
    CorruptInputError,
    InputError,
    InputFileNotFoundError,
    MissingCRSError,
    NoDataError,
)
from geoimplicit.io.crs import (
    centre_lonlat,
    choose_working_crs,
    crs_equal,
    crs_name,
    linear_units,
    parse_crs,
    require_projected,
    vertical_units,
)
from geoimplicit.outputs import atomic_output

log = logging.getLogger(__name__)

__all__ = ["PointCloudFile", "PointCloudDataset", "read_header", "write_las", "POINT_SUFFIXES"]

POINT_SUFFIXES = (".las", ".laz")
_FIX_CORRUPT = "re-download or re-export the file (e.g. pdal translate), then check it with `geoimplicit info`"
_FIELD_ALIASES = {"classification": "classification", "class": "classification"}


def _laspy_errors() -> tuple:
    import laspy

    errors = [laspy.errors.LaspyException, ValueError, OSError, EOFError, struct.error, IndexError, KeyError]
    try:
        import lazrs

        errors.append(lazrs.LazrsError)
    except ImportError:  # pragma: no cover - lazrs is a dependency
        pass
    return tuple(errors)


def _decompression_selection(fields: Sequence[str]):
    """Which LAZ 1.4 layers to decompress: x, y, z and only the fields asked for (a large saving for the
    layered point formats 6-10; ignored by the other formats)."""
    from laspy import DecompressionSelection as D

    layers = {"classification": D.CLASSIFICATION, "intensity": D.INTENSITY, "red": D.RGB, "green": D.RGB,
              "blue": D.RGB, "nir": D.NIR, "gps_time": D.GPS_TIME, "scan_angle": D.SCAN_ANGLE,
              "user_data": D.USER_DATA, "point_source_id": D.POINT_SOURCE_ID}
    selection = D.XY_RETURNS_CHANNEL | D.Z
    for name in fields:
        flag = layers.get(name)
        if flag is None and name not in ("return_number", "number_of_returns", "scanner_channel"):
            flag = D.FLAGS | D.ALL_EXTRA_BYTES  # flags and extra bytes: decompress what could hold them
        if flag is not None:
            selection |= flag
    return selection


def _corrupt(path, exc: Exception | str) -> CorruptInputError:
    reason = exc if isinstance(exc, str) else " ".join(str(exc).split()) or type(exc).__name__
    if len(reason) > 140:
        reason = reason[:137] + "..."
    return CorruptInputError(f"truncated or corrupt LAS/LAZ file ({reason})", path=path, hint=_FIX_CORRUPT)


@dataclass
class PointCloudFile:
    """What a LAS/LAZ header says.

    Attributes:
        path: the file.
        crs: the CRS from the header (WKT or GeoTIFF-keys VLRs), or the assumed one, or None.
        bounds: (minx, miny, minz, maxx, maxy, maxz) in the file's CRS and units.
        point_count: number of points.
        point_format: LAS point format id (0-10).
        version: "1.2", "1.4", ...
        units: horizontal unit name of ``crs`` ("metre", "foot", ...), or None without CRS.
        crs_source: "header", "assumed" or "none".
        z_units: vertical unit name (the compound CRS's vertical axis, else the horizontal unit).
        fields: dimension names of the point format.
    """

    path: Path
    crs: pyproj.CRS | None
    bounds: tuple[float, float, float, float, float, float]
    point_count: int
    point_format: int
    version: str
    units: str | None = None
    crs_source: str = "header"
    z_units: str | None = None
    fields: tuple[str, ...] = field(default_factory=tuple)
    scales: tuple[float, float, float] = (0.01, 0.01, 0.01)

    @property
    def xy_bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the file's CRS."""
        b = self.bounds
        return (b[0], b[1], b[3], b[4])


def _check_size(path: Path, header) -> None:
    """Catch truncation from the header alone (cheap): LAS data shorter than the count says, LAZ chunk table past EOF."""
    size = path.stat().st_size
    offset = int(header.offset_to_point_data)
    if offset > size:
        raise _corrupt(path, f"point data offset {offset} beyond the file size {size}")
    compressed = bool(getattr(header, "are_points_compressed", path.suffix.lower() == ".laz"))
    if not compressed:
        need = offset + int(header.point_count) * int(header.point_format.size)
        if need > size:
            raise _corrupt(path, f"file is {size} bytes but the header announces {header.point_count} points ({need} bytes)")
        return
    with open(path, "rb") as fh:
        fh.seek(offset)
        raw = fh.read(8)
    if len(raw) < 8:
        raise _corrupt(path, "no compressed point data")
    table = struct.unpack("<q", raw)[0]
    if table != -1 and table > size:
        raise _corrupt(path, f"LAZ chunk table at byte {table} beyond the file size {size} (file cut short)")


def read_header(path, *, assume_crs=None) -> PointCloudFile:
    """Read one LAS/LAZ header (no points).

    Args:
        path: a .las/.laz file.
        assume_crs: CRS to use when the header has none (or none that parses).

    Raises:
        InputFileNotFoundError, CorruptInputError.
    """
    import laspy

    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError("file not found", path=path, hint="check the path")
    if path.is_dir():
        raise InputError("is a folder", path=path, hint="give a .las/.laz file, or pass the folder as a data set")
    try:
        with laspy.open(path) as reader:
            header = reader.header
            _check_size(path, header)
            try:
                crs = header.parse_crs()
            except Exception as exc:  # unparseable CRS VLRs: treated as no CRS
                log.debug("%s: CRS VLRs do not parse: %s", path, exc)
                crs = None
            mins, maxs = header.mins, header.maxs
            info = dict(
                point_count=int(header.point_count),
                point_format=int(header.point_format.id),
                version=f"{header.version.major}.{header.version.minor}",
                fields=tuple(header.point_format.dimension_names),
                scales=tuple(float(s) for s in header.scales),
            )
    except CorruptInputError:
        raise
    except _laspy_errors() as exc:
        raise _corrupt(path, exc) from None
    source = "header"
    if crs is None:
        if assume_crs is not None:
            crs = parse_crs(assume_crs, source=path)
            source = "assumed"
        else:
            source = "none"
    elif assume_crs is not None and not crs_equal(crs, parse_crs(assume_crs)):
        log.warning("%s: header CRS is %s; the assumed CRS is used only for files without one", path, crs_name(crs))
    units = linear_units(crs)[0] if crs is not None else None
    z_units = vertical_units(crs)[0] if crs is not None else None
    bounds = tuple(float(v) for v in (mins[0], mins[1], mins[2], maxs[0], maxs[1], maxs[2]))
    return PointCloudFile(path=path, crs=crs, bounds=bounds, units=units, crs_source=source, z_units=z_units, **info)


def expand_paths(paths) -> list[Path]:
    """A file, a folder (its .las/.laz files), a glob, or a list of them -> sorted unique LAS/LAZ paths."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise InputError("no point cloud given", hint="pass a .las/.laz file, a folder or a glob")
    out: list[Path] = []
    for item in items:
        text = os.fspath(item)
        p = Path(text)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in POINT_SUFFIXES and q.is_file())
            if not found:
                raise InputFileNotFoundError("folder holds no .las/.laz file", path=p, hint="check the folder")
            out.extend(found)
        elif p.exists():
            out.append(p)
        elif any(ch in text for ch in "*?["):
            found = sorted(Path(q) for q in _glob.glob(text, recursive=True) if q.lower().endswith(POINT_SUFFIXES))
            if not found:
                raise InputFileNotFoundError("pattern matches no .las/.laz file", path=text, hint="check the pattern")
            out.extend(found)
        else:
            raise InputFileNotFoundError("file not found", path=p, hint="check the path")
    seen, unique = set(), []
    for p in out:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


class _Reprojector:
    """x, y (and z scale) from a file's CRS to the working CRS."""

    def __init__(self, src: pyproj.CRS, dst: pyproj.CRS):
        self.identity = crs_equal(src, dst)
        self.transformer = None if self.identity else pyproj.Transformer.from_crs(src, dst, always_xy=True)
        zs = vertical_units(src)[1]
        zd = vertical_units(dst)[1]
        self.z_scale = 1.0 if self.identity or abs(zs - zd) < 1e-12 else zs / zd

    def xy(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.identity:
            return x, y
        return self.transformer.transform(x, y)

    def bounds(self, b: Sequence[float]) -> tuple[float, float, float, float]:
        if self.identity:
            return tuple(b)
        return tuple(self.transformer.transform_bounds(*b, densify_pts=21))


def _with_points(files: list[PointCloudFile]) -> list[PointCloudFile]:
    """Drop files whose header counts no point (their bounds 0, 0, 0, 0 would spoil the extent)."""
    empty = [f for f in files if f.point_count == 0]
    if len(empty) == len(files):
        names = ", ".join(str(f.path) for f in empty[:3]) + (" ..." if len(empty) > 3 else "")
        raise NoDataError("holds no points (the header counts 0)" if len(files) == 1 else
                          f"none of the {len(files)} files holds a point (their headers count 0)", path=names,
                          hint="give a LAS/LAZ file with points (check the export that wrote it)")
    for f in empty:
        log.warning("%s: holds no points (the header counts 0); skipped", f.path)
    return [f for f in files if f.point_count > 0]


class PointCloudDataset:
    """LAS/LAZ files read as one data set in one working CRS, indexed by their header bounds.

    Args:
        paths: a file, a folder, a glob, or a list of them.
        crs: the working CRS (default: the files' common CRS).
        assume_crs: the CRS of files whose header has none (``autzen-thin-srs.las``).

    Raises:
        InputFileNotFoundError, CorruptInputError, MissingCRSError, CRSMismatchError, GeographicCRSError.
    """

    def __init__(self, paths, *, crs=None, assume_crs=None):
        self.files: list[PointCloudFile] = _with_points([read_header(p, assume_crs=assume_crs)
                                                         for p in expand_paths(paths)])
        missing = [f for f in self.files if f.crs is None]
        if missing and crs is None:
            names = ", ".join(str(f.path) for f in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise MissingCRSError(
                "no CRS in the LAS header", path=names,
                hint="pass --crs (or --assume-crs for files without one), e.g. EPSG:2154 or a .wkt file",
            )
        if missing:  # a working CRS was given: files without CRS are taken to be in it
            work = parse_crs(crs, source="--crs")
            for f in missing:
                f.crs, f.crs_source = work, "assumed"
                f.units, f.z_units = linear_units(work)[0], vertical_units(work)[0]
        self.crs: pyproj.CRS = choose_working_crs({str(f.path): f.crs for f in self.files}, crs)
        center = self._center_lonlat()
        require_projected(self.crs, self.files[0].path if crs is None else "--crs", lonlat=center)
        self._reproj = {}
        self._xy_bounds: list[tuple[float, float, float, float]] = []
        self._z_ranges: list[tuple[float, float]] = []
        for f in self.files:
            r = self._reprojector(f)
            self._xy_bounds.append(r.bounds(f.xy_bounds))
            self._z_ranges.append((f.bounds[2] * r.z_scale, f.bounds[5] * r.z_scale))

    # --- header-only properties -------------------------------------------------------------------------------
    def _center_lonlat(self):
        f = self.files[0]
        return centre_lonlat(f.xy_bounds, f.crs)

    def _reprojector(self, f: PointCloudFile) -> _Reprojector:
        key = id(f)
        if key not in self._reproj:
            self._reproj[key] = _Reprojector(f.crs, self.crs)
        return self._reproj[key]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of all files in the working CRS (from headers)."""
        b = np.array(self._xy_bounds)
        return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))

    @property
    def z_range(self) -> tuple[float, float]:
        """(min z, max z) from headers, in the working CRS's vertical units."""
        z = np.array(self._z_ranges)
        return (float(z[:, 0].min()), float(z[:, 1].max()))

    @property
    def point_count(self) -> int:
        return int(sum(f.point_count for f in self.files))

    @property
    def units(self) -> str:
        """Horizontal unit name of the working CRS."""
        return linear_units(self.crs)[0]

    @property
    def z_units(self) -> str:
        return vertical_units(self.crs)[0]

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"PointCloudDataset({len(self.files)} files, {self.point_count} points, {crs_name(self.crs)})"

    def files_for(self, bounds: Sequence[float] | None) -> list[PointCloudFile]:
        """Files whose header bounds (in the working CRS) touch ``bounds`` (all files when None)."""
        if bounds is None:
            return list(self.files)
        left, bottom, right, top = map(float, bounds)
        return [
            f for f, (l, b, r, t) in zip(self.files, self._xy_bounds)
            if l <= right and r >= left and b <= top and t >= bottom
        ]

    # --- points ---------------------------------------------------------------------------------------------
    def iter_chunks(
        self,
        bounds: Sequence[float] | None = None,
        *,
        chunk_size: int = 2_000_000,
        fields: Sequence[str] = ("x", "y", "z"),
        classes: Sequence[int] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Stream points as dicts of arrays, at most ``chunk_size`` points each, never a whole file at once.

        Args:
            bounds: (left, bottom, right, top) in the working CRS; points with left <= x <= right and
                bottom <= y <= top are kept (closed intervals).
            chunk_size: points read per step.
            fields: "x", "y", "z" (float64, working CRS) and any LAS dimension ("classification", "intensity",
                "red", "green", "blue", "return_number", "number_of_returns", ...).
            classes: keep only these classification codes.

        Raises:
            AOIError: ``bounds`` miss every file. CorruptInputError: a file cannot be read.
            InputError: a requested field is not in a file's point format.
        """
        if bounds is not None:
            left, bottom, right, top = map(float, bounds)
            if not (right > left and top > bottom):
                raise AOIError(f"invalid bounds {tuple(bounds)}", hint="give (left, bottom, right, top) with left < right and bottom < top")
        files = self.files_for(bounds)
        if not files:
            raise AOIError(
                f"the requested area {_fmt(bounds)} does not overlap the point clouds {_fmt(self.bounds)}",
                path=self.files[0].path if len(self.files) == 1 else os.path.dirname(self.files[0].path) or ".",
                hint=f"check the AOI/bbox and its CRS (the data are in {crs_name(self.crs)})",
            )
        fields = tuple(dict.fromkeys(["x", "y", "z", *[_FIELD_ALIASES.get(f, f) for f in fields]]))
        wanted = tuple(fields)
        classes_arr = None if classes is None else np.asarray(sorted(set(int(c) for c in classes)))
        for f in files:
            yield from self._iter_file(f, bounds, chunk_size, wanted, classes_arr)

    def __getstate__(self):  # the reprojectors are keyed by id(): rebuilt in a worker process
        return {**self.__dict__, "_reproj": {}}

    def file_chunks(self, file_no: int, start: int, count: int, bounds=None, *, fields=("x", "y", "z"),
                    serial: bool = True, read_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Points ``start`` to ``start + count`` of file ``file_no`` (one chunk, for a worker process), in pieces
        of at most ``read_size`` points (default: all at once): like :meth:`iter_chunks`; ``serial`` decodes in
        this thread only (the workers are the parallelism)."""
        import laspy

        fields = tuple(dict.fromkeys(["x", "y", "z", *[_FIELD_ALIASES.get(f, f) for f in fields]]))
        backend = laspy.LazBackend.Lazrs if serial and laspy.LazBackend.Lazrs.is_available() else None
        yield from self._iter_file(self.files[file_no], bounds, read_size or count, fields, None, start=start,
                                   count=count, laz_backend=backend)

    def _iter_file(self, f, bounds, chunk_size, fields, classes_arr, *, start=0, count=None, laz_backend=None):
        import laspy

        extra = [n for n in fields if n not in ("x", "y", "z")]
        by_class = classes_arr is not None and "classification" not in extra
        extra_needed = extra + ["classification"] if by_class else extra
        for name in extra_needed:
            if name not in f.fields:
                raise InputError(
                    f"point format {f.point_format} has no field {name!r} (it has {', '.join(f.fields)})",
                    path=f.path, hint="drop that field or use a file that has it",
                )
        reproj = self._reprojector(f)
        kw = {} if laz_backend is None else {"laz_backend": laz_backend}
        try:
            with laspy.open(f.path, decompression_selection=_decompression_selection(extra_needed), **kw) as reader:
                if start:
                    reader.seek(int(start))
                left = reader.header.point_count - int(start) if count is None else int(count)
                while left > 0:
                    chunk = reader.read_points(min(int(chunk_size), left))
                    if len(chunk) == 0:
                        break
                    left -= len(chunk)
                    out = _chunk_arrays(chunk, reproj, bounds, extra, classes_arr)
                    if out is not None:
                        yield {k: out[k] for k in fields}
        except (CorruptInputError, InputError):
            raise
        except _laspy_errors() as exc:
            raise _corrupt(f.path, exc) from None

    def read(self, bounds: Sequence[float] | None = None, **kw) -> dict[str, np.ndarray]:
        """All points in ``bounds`` as one dict of arrays (see :meth:`iter_chunks` for the arguments)."""
        chunks = list(self.iter_chunks(bounds, **kw))
        fields = tuple(dict.fromkeys(["x", "y", "z", *[_FIELD_ALIASES.get(f, f) for f in kw.get("fields", ())]]))
        if not chunks:
            return {k: np.empty(0, dtype=np.float64 if k in "xyz" else np.uint16) for k in fields}
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _chunk_arrays(chunk, reproj, bounds, extra, classes_arr) -> dict | None:
    """x, y, z (working CRS) and the ``extra`` fields of a laspy chunk, cropped to ``bounds`` and ``classes``;
    None when nothing is left."""
    x = np.asarray(chunk.x, dtype=np.float64)
    y = np.asarray(chunk.y, dtype=np.float64)
    z = np.asarray(chunk.z, dtype=np.float64)
    keep = None if classes_arr is None else np.isin(np.asarray(chunk.classification), classes_arr)
    if not reproj.identity:
        x, y = reproj.xy(x, y)
        if reproj.z_scale != 1.0:
            z = z * reproj.z_scale
    if bounds is not None:
        left, bottom, right, top = bounds
        inside = (x >= left) & (x <= right) & (y >= bottom) & (y <= top)
        keep = inside if keep is None else keep & inside
    out = {"x": x, "y": y, "z": z}
    for name in extra:
        out[name] = np.asarray(chunk[name])
    if keep is None:
        return {k: v if k in ("x", "y", "z") else np.array(v, copy=True) for k, v in out.items()}
    return {k: v[keep] for k, v in out.items()} if keep.any() else None


def _fmt(b) -> str:
    return "None" if b is None else "(" + ", ".join(f"{float(v):.2f}" for v in b) + ")"


def write_las(
    path,
    points: dict,
    crs,
    *,
    point_format: int = 6,
    version: str = "1.4",
    scale: float | Sequence[float] = 0.01,
    overwrite: bool = False,
) -> Path:
    """Write points to LAS (``.las``) or LAZ (``.laz``, lazrs) atomically, with the CRS in the header.

    Args:
        points: "x", "y", "z" (float64) and any dimension of the point format ("classification", "intensity",
            "red", ...). Unknown names raise ValueError.
        crs: anything :func:`parse_crs` takes; written as a WKT VLR (point formats >= 6) or GeoTIFF keys.
        point_format, version: LAS point format and version ("1.2" ... "1.4").
        scale: coordinate resolution in CRS units (one value or (sx, sy, sz)); offsets are the floored minima.
    """
    import laspy

    path = Path(path)
    if path.suffix.lower() not in POINT_SUFFIXES:
        raise ValueError(f"write_las: {path} must end in .las or .laz")
    for k in ("x", "y", "z"):
        if k not in points:
            raise ValueError(f"write_las: points need {k!r}")
    x, y, z = (np.asarray(points[k], dtype=np.float64) for k in ("x", "y", "z"))
    header = laspy.LasHeader(point_format=point_format, version=version)
    scales = np.broadcast_to(np.asarray(scale, dtype=np.float64), (3,)).copy()
    header.scales = scales
    mins = np.array([x.min() if x.size else 0.0, y.min() if y.size else 0.0, z.min() if z.size else 0.0])
    header.offsets = np.floor(mins)
    pcrs = parse_crs(crs) if crs is not None else None
    if pcrs is not None:
        header.add_crs(pcrs)
    las = laspy.LasData(header)
    las.x, las.y, las.z = x, y, z
    names = set(las.point_format.dimension_names)
    for key, values in points.items():
        if key in ("x", "y", "z"):
            continue
        name = _FIELD_ALIASES.get(key, key)
        if name not in names:
            raise ValueError(f"write_las: point format {point_format} has no field {key!r}")
        las[name] = np.asarray(values)
    with atomic_output(path, overwrite=overwrite) as tmp:
        las.write(tmp)
    return path
