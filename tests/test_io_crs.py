"""CRS parsing, comparison by meaning, units and the working-CRS choice."""

from __future__ import annotations

import math

import pyproj
import pytest

from geoimplicit.errors import CRSError, CRSMismatchError, GeographicCRSError, MissingCRSError
from geoimplicit.io.crs import (
    choose_working_crs,
    crs_equal,
    crs_name,
    linear_units,
    parse_crs,
    require_projected,
    suggest_utm,
    vertical_units,
)


def test_parse_crs_forms(tmp_path):
    wkt = pyproj.CRS.from_epsg(2154).to_wkt()
    prj = tmp_path / "lambert.prj"
    prj.write_text(wkt)
    for value in ("EPSG:2154", "2154", 2154, wkt, prj, str(prj), pyproj.CRS.from_epsg(2154)):
        assert crs_equal(parse_crs(value), pyproj.CRS.from_epsg(2154)), value
    from rasterio.crs import CRS as RioCRS

    assert parse_crs(RioCRS.from_epsg(32632)).to_epsg() == 32632


@pytest.mark.parametrize("bad", ["EPSG:99999", "not a crs", "PROJCS[garbage"])
def test_parse_crs_errors_name_the_source(bad):
    with pytest.raises(CRSError, match="--crs"):
        parse_crs(bad, source="--crs")


def test_parse_crs_missing_file(tmp_path):
    with pytest.raises(CRSError, match="not found"):
        parse_crs(tmp_path / "nope.wkt")


def test_linear_and_vertical_units():
    assert linear_units("EPSG:2154") == ("metre", 1.0)
    assert linear_units("EPSG:2994") == ("foot", 0.3048)
    name, factor = linear_units("EPSG:2263")  # NY Long Island, US survey foot
    assert name == "US survey foot" and factor == pytest.approx(1200 / 3937)
    assert linear_units("EPSG:4326")[0] == "degree" and math.isnan(linear_units("EPSG:4326")[1])
    assert vertical_units("EPSG:2994") == ("foot", 0.3048)  # 2D feet CRS: z assumed in feet
    assert vertical_units("EPSG:2154+5720") == ("metre", 1.0)
    assert vertical_units("EPSG:2994+6360")[0] == "US survey foot"  # compound: the vertical axis wins


def test_crs_equal_by_meaning():
    # same CRS, different spellings: ESRI-style WKT without EPSG code, axis order swapped
    esri = pyproj.CRS.from_epsg(2994).to_wkt(version="WKT1_ESRI")
    assert crs_equal(pyproj.CRS.from_wkt(esri), "EPSG:2994")
    assert crs_equal("EPSG:4326", "OGC:CRS84")  # only the axis order differs
    # Lambert-93 on an "unknown" datum with the WGS 84 ellipsoid (how the IGN orthos are tagged)
    custom = pyproj.CRS.from_proj4(
        "+proj=lcc +lat_0=46.5 +lon_0=3 +lat_1=49 +lat_2=44 +x_0=700000 +y_0=6600000 +ellps=WGS84 +units=m"
    )
    assert custom.to_epsg() is None
    assert crs_equal(custom, "EPSG:2154")
    # really different: other zone, other datum (NAD27 vs NAD83 UTM 17N differ by tens of metres)
    assert not crs_equal("EPSG:32631", "EPSG:32632")
    assert not crs_equal("EPSG:26717", "EPSG:26917")
    assert not crs_equal("EPSG:2994", "EPSG:2154")
    assert not crs_equal("EPSG:2154", None)


def test_crs_equal_ign_ortho(shared_data):
    import rasterio

    with rasterio.open(shared_data / "ign_montpellier" / "test_data_rgb.tif") as ds:
        crs = parse_crs(ds.crs)
    assert crs.to_epsg() is None  # the WKT has no EPSG code
    assert crs_equal(crs, "EPSG:2154")


def test_require_projected():
    require_projected(parse_crs("EPSG:2154"), "a.tif")
    require_projected(parse_crs("EPSG:2994"), "a.tif")  # feet are fine
    with pytest.raises(GeographicCRSError, match="EPSG:32631") as info:
        require_projected(parse_crs("EPSG:4326"), "dem.tif", lonlat=(3.87, 43.6))
    assert "dem.tif" in str(info.value)
    assert suggest_utm(-123.07, 44.05) == "EPSG:32610"
    assert suggest_utm(151.2, -33.9) == "EPSG:32756"


def test_choose_working_crs():
    l93 = pyproj.CRS.from_epsg(2154)
    assert choose_working_crs({"a.laz": l93, "b.tif": None}) == l93
    assert crs_equal(choose_working_crs({"a.laz": l93}, "EPSG:32631"), "EPSG:32631")
    with pytest.raises(MissingCRSError, match="a.laz"):
        choose_working_crs({"a.laz": None, "b.tif": None})
    with pytest.raises(CRSMismatchError, match="--crs") as info:
        choose_working_crs({"a.laz": l93, "b.tif": pyproj.CRS.from_epsg(32632)})
    assert "a.laz" in str(info.value) and "b.tif" in str(info.value)


def test_crs_name():
    assert crs_name(parse_crs("EPSG:2154")).startswith("EPSG:2154")
    assert crs_name(None) == "no CRS"
