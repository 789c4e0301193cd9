"""Coordinate reference systems: parsing, comparing, units, and choosing one working CRS for a run.

CRSs are compared by what they mean, not by their EPSG code: the IGN orthos carry a WKT without an EPSG code
(and an "unknown" datum) that is still Lambert-93, and Autzen's LAS header spells EPSG:2994 as an ESRI WKT.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pyproj
from pyproj.exceptions import CRSError as _PyprojCRSError

from geoimplicit.errors import CRSError, CRSMismatchError, GeographicCRSError, MissingCRSError

log = logging.getLogger(__name__)

__all__ = [
    "parse_crs",
    "require_projected",
    "linear_units",
    "vertical_units",
    "crs_equal",
    "crs_name",
    "choose_working_crs",
    "suggest_utm",
    "to_rasterio_crs",
]

# Agreement (in CRS units) below which two CRSs that PROJ does not call equal are still the same in practice.
_SAME_TOLERANCE = 0.005


def parse_crs(value, *, source=None) -> pyproj.CRS:
    """Turn ``value`` into a :class:`pyproj.CRS`.

    Args:
        value: "EPSG:2154", "2154", a WKT or PROJ string, a path to a ``.wkt``/``.prj`` file, a pyproj or
            rasterio CRS.
        source: the file or option the value came from, named in the error message.

    Raises:
        CRSError: the value is not a CRS.
    """
    if value is None:
        raise CRSError("no CRS given", path=source, hint="pass a CRS such as EPSG:2154 or a .wkt file")
    if isinstance(value, pyproj.CRS):
        return value
    try:
        if hasattr(value, "to_wkt") and not isinstance(value, (str, bytes, os.PathLike)):  # rasterio CRS
            epsg = value.to_epsg(confidence_threshold=100) if hasattr(value, "to_epsg") else None
            if epsg:
                return pyproj.CRS.from_epsg(epsg)
            return pyproj.CRS.from_wkt(value.to_wkt())
        if isinstance(value, os.PathLike) or (
            isinstance(value, str) and value.strip() and _looks_like_path(value.strip())
        ):
            path = Path(value)
            if not path.exists():
                raise CRSError("CRS file not found", path=path, hint="give an existing .wkt/.prj file or an EPSG code")
            text = path.read_text(errors="replace").strip()
            try:
                return pyproj.CRS.from_user_input(text)
            except _PyprojCRSError as exc:
                raise CRSError(f"not a valid CRS file ({_short(exc)})", path=path,
                               hint="the file must hold a WKT or PROJ string") from None
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            return pyproj.CRS.from_epsg(int(value))
        return pyproj.CRS.from_user_input(value)
    except CRSError:
        raise
    except (_PyprojCRSError, TypeError, ValueError) as exc:
        shown = str(value)
        shown = shown if len(shown) < 60 else shown[:57] + "..."
        raise CRSError(f"cannot parse CRS {shown!r} ({_short(exc)})", path=source,
                       hint="use an EPSG code such as EPSG:2154, a WKT string or a .wkt/.prj file") from None


def _looks_like_path(text: str) -> bool:
    if "\n" in text or text.startswith(("PROJCS", "GEOGCS", "COMPD", "PROJCRS", "GEOGCRS", "{", "+")):
        return False
    if text.upper().startswith(("EPSG:", "ESRI:", "IGNF:", "OGC:", "URN:")):
        return False
    return text.lower().endswith((".wkt", ".prj", ".txt")) or os.sep in text or Path(text).exists()


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."


def crs_name(crs: pyproj.CRS | None) -> str:
    """A short human name: "EPSG:2154 (RGF93 v1 / Lambert-93)" or the CRS name when it has no code."""
    if crs is None:
        return "no CRS"
    auth = crs.to_authority(min_confidence=100)
    if auth:
        return f"{auth[0]}:{auth[1]} ({crs.name})"
    try:
        code = crs.to_epsg(min_confidence=70)
    except Exception:
        code = None
    if code and crs_equal(crs, pyproj.CRS.from_epsg(code)):
        return f"EPSG:{code} ({crs.name})"
    return crs.name or "custom CRS"


def linear_units(crs: pyproj.CRS) -> tuple[str, float]:
    """(unit name, metres per unit) of the horizontal axes, e.g. ("metre", 1.0) or ("foot", 0.3048).

    Geographic CRSs return ("degree", nan): degrees have no fixed length.
    """
    crs = parse_crs(crs)
    horizontal = _horizontal(crs)
    if horizontal.is_geographic:
        return ("degree", float("nan"))
    for axis in horizontal.axis_info:
        if axis.unit_conversion_factor:
            return (axis.unit_name, float(axis.unit_conversion_factor))
    return ("metre", 1.0)


def vertical_units(crs: pyproj.CRS) -> tuple[str, float]:
    """(unit name, metres per unit) of heights in ``crs``.

    The vertical axis of a compound CRS when there is one; otherwise the horizontal unit (the LAS habit:
    a header in feet has z in feet, as Autzen's EPSG:2994). A geographic 2D CRS gives ("metre", 1.0).
    """
    crs = parse_crs(crs)
    for sub in crs.sub_crs_list or []:
        if sub.is_vertical and sub.axis_info:
            axis = sub.axis_info[0]
            return (axis.unit_name, float(axis.unit_conversion_factor or 1.0))
    if len(crs.axis_info) >= 3 and crs.axis_info[2].direction == "up":
        axis = crs.axis_info[2]
        return (axis.unit_name, float(axis.unit_conversion_factor or 1.0))
    name, factor = linear_units(crs)
    if not np.isfinite(factor):
        return ("metre", 1.0)
    return (name, factor)


_UNIT_SYMBOLS = {"metre": "m", "meter": "m", "foot": "ft", "us survey foot": "US survey foot"}


def height_unit(crs) -> str | None:
    """The band unit of a height raster in ``crs`` ("m", "ft", ...), as GDAL stores it; None without a CRS."""
    if crs is None:
        return None
    name = vertical_units(crs)[0]
    return _UNIT_SYMBOLS.get(name.lower(), name)


def _horizontal(crs: pyproj.CRS) -> pyproj.CRS:
    if crs.is_compound:
        for sub in crs.sub_crs_list:
            if not sub.is_vertical:
                return sub
    return crs


def suggest_utm(lon: float, lat: float) -> str:
    """The EPSG code of the WGS 84 UTM zone at (lon, lat), e.g. "EPSG:32632"."""
    zone = int(np.clip(np.floor((lon + 180.0) / 6.0) + 1, 1, 60))
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def centre_lonlat(bounds, crs) -> tuple[float, float] | None:
    """(lon, lat) of the centre of ``bounds`` (left, bottom, right, top) given in ``crs``; None if unknown.

    The one place that finds where data are, for the UTM zone suggested by :func:`require_projected`.
    """
    if crs is None or bounds is None:
        return None
    try:
        to_ll = pyproj.Transformer.from_crs(parse_crs(crs), "EPSG:4326", always_xy=True)
        lon, lat = to_ll.transform((bounds[0] + bounds[2]) / 2.0, (bounds[1] + bounds[3]) / 2.0)
    except Exception:  # noqa: BLE001 - pyproj raises several types on odd CRSs
        return None
    ok = np.isfinite(lon) and np.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90
    return (float(lon), float(lat)) if ok else None


def require_projected(crs: pyproj.CRS, path=None, *, lonlat=None) -> None:
    """Raise :class:`GeographicCRSError` when ``crs`` is geographic (degrees) where metres or feet are needed.

    Args:
        crs: the CRS to check.
        path: the file it belongs to (named in the message).
        lonlat: an optional (lon, lat) inside the data, to suggest its UTM zone.
    """
    crs = parse_crs(crs, source=path)
    if not _horizontal(crs).is_geographic:
        return
    if lonlat is None and crs.area_of_use is not None:
        west, south, east, north = crs.area_of_use.bounds
        lonlat = ((west + east) / 2.0, (south + north) / 2.0) if (east - west) < 20 else None
    suggestion = suggest_utm(*lonlat) if lonlat is not None else "the UTM zone of the data (EPSG:326xx) or a national grid"
    raise GeographicCRSError(
        f"{crs_name(crs)} is geographic (degrees); distances and resolutions need a projected CRS in metres or feet",
        path=path,
        hint=f"reproject the input or pass --crs {suggestion}" if lonlat is not None
        else f"reproject the input or pass --crs with {suggestion}",
    )


def crs_equal(a: pyproj.CRS | None, b: pyproj.CRS | None) -> bool:
    """Whether two CRSs mean the same coordinates.

    True when PROJ calls them equal (ignoring axis order and naming), or, for a pair that PROJ cannot match
    (a WKT without EPSG code and an "unknown" datum), when points across the area of use of either one map to
    themselves within 5 mm (in CRS units) through a transformation between them.
    """
    if a is None or b is None:
        return a is None and b is None
    a, b = parse_crs(a), parse_crs(b)
    if a is b or a == b:
        return True
    try:
        if a.equals(b, ignore_axis_order=True) or a.is_exact_same(b):
            return True
    except Exception:  # pragma: no cover - defensive, pyproj version differences
        pass
    if not (a.is_projected and b.is_projected) or a.is_compound != b.is_compound:
        return False
    if linear_units(a)[0] != linear_units(b)[0]:
        return False
    try:
        xa, ya = _sample_points(a, b)
        if xa is None:
            return False
        a_to_b = pyproj.Transformer.from_crs(a, b, always_xy=True)
        xb, yb = a_to_b.transform(xa, ya)
        if not (np.all(np.isfinite(xb)) and np.all(np.isfinite(yb))):
            return False
        return bool(np.max(np.hypot(np.subtract(xb, xa), np.subtract(yb, ya))) < _SAME_TOLERANCE)
    except Exception:
        return False


def _sample_points(a: pyproj.CRS, b: pyproj.CRS):
    """Points in ``a``'s coordinates spread over the area of use of a or b, else around a's false origin."""
    area = a.area_of_use or b.area_of_use
    if area is not None:
        west, south, east, north = area.bounds
        lons = np.array([west, east, west, east, (west + east) / 2.0]) * 0.8 + 0.2 * (west + east) / 2.0
        lats = np.array([south, south, north, north, (south + north) / 2.0]) * 0.8 + 0.2 * (south + north) / 2.0
        to_a = pyproj.Transformer.from_crs("EPSG:4326", a, always_xy=True)
        return to_a.transform(lons, lats)
    op = _horizontal(a).coordinate_operation
    if op is None:
        return None, None
    east = next((p.value for p in op.params if "easting" in p.name.lower()), None)
    north = next((p.value for p in op.params if "northing" in p.name.lower()), None)
    if east is None or north is None:
        return None, None
    d = 50_000.0 / (linear_units(a)[1] or 1.0)
    offsets = np.array([(-d, -d), (d, -d), (-d, d), (d, d), (0.0, 0.0)])
    return east + offsets[:, 0], north + offsets[:, 1]


def choose_working_crs(named: Mapping[str, pyproj.CRS | None], user_crs=None) -> pyproj.CRS:
    """One CRS for the run.

    Args:
        named: input name (file path) -> its CRS, or None where the input has none.
        user_crs: the CRS the user asked for (``--crs``); wins over the inputs'.

    Returns:
        ``user_crs`` when given, else the CRS the inputs agree on (the first one as written).

    Raises:
        MissingCRSError: no input has a CRS and none was given.
        CRSMismatchError: the inputs' CRSs differ and none was given.
    """
    if user_crs is not None:
        return parse_crs(user_crs, source="--crs")
    known = [(name, parse_crs(crs, source=name)) for name, crs in named.items() if crs is not None]
    if not known:
        names = ", ".join(str(n) for n in named) or "the inputs"
        raise MissingCRSError(
            f"no CRS in {names}",
            hint="pass --crs (an EPSG code such as EPSG:2154, or a .wkt file)",
        )
    first_name, first = known[0]
    for name, crs in known[1:]:
        if not crs_equal(first, crs):
            raise CRSMismatchError(
                f"{first_name} is {crs_name(first)} but {name} is {crs_name(crs)}",
                hint="pass --crs to choose the working CRS; the other inputs are reprojected to it",
            )
    return first


def to_rasterio_crs(crs):
    """A rasterio CRS for ``crs`` (EPSG code when the CRS is exactly one, else its WKT)."""
    from rasterio.crs import CRS as RioCRS

    crs = parse_crs(crs)
    auth = crs.to_authority(min_confidence=100)
    if auth and auth[0] == "EPSG":
        return RioCRS.from_epsg(int(auth[1]))
    return RioCRS.from_wkt(crs.to_wkt())
